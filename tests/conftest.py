"""Shared fixtures: one SparkSession (with Delta) for the whole test session, small synthetic data."""
from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch

import second_stack
import standalone
from stores import SeaweedStore, new_bucket
from xdrec.config import SparkConfig, load_config
from xdrec.pipeline import run_stage
from xdrec.spark import get_spark

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session", autouse=True)
def trace_files_in_a_temporary_folder(tmp_path_factory):
    """Failed jobs write their traces (xdrec.cli.write_trace) here, not into the checkout."""
    os.environ["XDREC_LOG_DIR"] = str(tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="session")
def spark():
    session = get_spark(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="2g"))
    yield session
    session.stop()


def synthetic_config(warehouse, *overrides):
    """conf/synthetic.yaml with its warehouse moved to ``warehouse`` and any extra overrides."""
    return load_config("synthetic", [f"warehouse={warehouse}", *overrides])


@pytest.fixture(scope="session")
def make_config():
    return synthetic_config


@pytest.fixture(scope="session")
def featured_warehouse(spark, tmp_path_factory):
    """conf/synthetic.yaml's data through fetch, ingest and features, once a session: (warehouse, what the
    features run returned). Tests that go on from there work on a copy (``featured_copy``)."""
    config = synthetic_config(str(tmp_path_factory.mktemp("featured") / "warehouse"))
    results = {stage: run_stage(spark, config, stage) for stage in ("fetch", "ingest", "features")}
    return config.warehouse, results["features"]


@pytest.fixture(scope="session")
def featured_copy(featured_warehouse):
    """``featured_copy(folder)``: a copy of ``featured_warehouse`` in ``folder``; returns its path. A local
    warehouse moves with its folder: ingest finds the copied files' bytes ingested, features its tables built."""
    def copy(folder) -> str:
        return shutil.copytree(featured_warehouse[0], os.path.join(str(folder), "warehouse"))
    return copy


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: threads only contend on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory):
    """The session's S3 server (:class:`SeaweedStore`, built by scripts/setup_store.sh). Its endpoint and
    keys go into the environment, where s3fs (and so xdrec.files) reads them."""
    weed = os.environ.get("XDREC_WEED") or ""
    if not os.access(weed, os.X_OK):
        pytest.fail(f"no SeaweedFS binary at XDREC_WEED={weed!r}: run scripts/setup_store.sh (scripts/test.sh does)")
    store = SeaweedStore(weed, tmp_path_factory.mktemp("seaweedfs"))
    settings = {"AWS_ENDPOINT_URL": store.endpoint, "AWS_ACCESS_KEY_ID": "xdrec", "AWS_SECRET_ACCESS_KEY": "xdrec-secret",
                "AWS_DEFAULT_REGION": "us-east-1"}
    previous = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    store.start()
    yield store
    if store.process.poll() is None:
        store.kill()  # its data is the session's temporary folder: nothing to shut down cleanly
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_store):
    """A new, empty bucket on the session's S3 server."""
    return new_bucket()


@pytest.fixture(scope="session")
def second_stack_python() -> str:
    return second_stack.interpreter()


@pytest.fixture(scope="session", autouse=True)
def second_stack_started(request, tmp_path_factory):
    """The second stack's pipeline (second_stack.start_pipeline), started with the session when a selected
    test needs it. It runs beside the main stack's tests, which left the CPUs 20-30% idle (vmstat, 2 cores), and
    the tests that wait for it run last (pytest_collection_modifyitems)."""
    if not any("second_stack_run" in item.fixturenames for item in request.session.items):
        yield None
        return
    store = request.getfixturevalue("s3_store")
    started = second_stack.start_pipeline(request.getfixturevalue("second_stack_python"), store.endpoint,
                                          str(tmp_path_factory.mktemp("second-stack")))
    yield started
    if started["process"].poll() is None:  # the session ended before a test waited for it
        started["process"].kill()
        started["process"].wait()


@pytest.fixture(scope="session", autouse=True)
def cluster_submission(request, second_stack_started, tmp_path_factory):
    """tests/test_cluster.py's ``spark-submit`` run on a standalone cluster (standalone.start_submission),
    started with the session when a selected test needs it. It begins when the second stack's pipeline ends,
    beside the main stack's tests, which left the CPUs 15-25% idle then (vmstat, 2 cores)."""
    if not any("cluster_run" in item.fixturenames for item in request.session.items):
        yield None
        return
    store = request.getfixturevalue("s3_store")
    submission = standalone.start_submission(second_stack_started, store.endpoint,
                                             str(tmp_path_factory.mktemp("cluster")))
    yield submission
    standalone.stop_submission(submission)


@pytest.fixture(scope="session")
def second_stack_run(second_stack_started):
    """The second stack's pipeline on the S3 server, as it finished (second_stack.finish_pipeline)."""
    return second_stack.finish_pipeline(second_stack_started)


def pytest_collection_modifyitems(items):
    """The modules that wait for the second stack's pipeline or the cluster's run last, so that these run beside
    the others."""
    waiting = {item.module for item in items if {"second_stack_run", "cluster_run"} & set(item.fixturenames)}
    items.sort(key=lambda item: item.module in waiting)
