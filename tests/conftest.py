"""Shared fixtures: one SparkSession (with Delta) for the whole test session, small synthetic data."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

from xdrec.config import SparkConfig, load_config
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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: threads only contend on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
