"""The warehouse lock (xdrec.locks): one run at a time on a warehouse, held by real processes, on a local
folder and on a real S3-compatible server; a run killed outright never blocks its rerun."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from xdrec import files, locks
from xdrec.errors import XdrecError
from xdrec.pipeline import run_stage

# A run that holds the lock of the warehouse in argv[1] until it is killed.
HOLDER = """import sys, time
from xdrec.locks import warehouse_lock
with warehouse_lock(sys.argv[1], "train"):
    print("held", flush=True)
    time.sleep(600)
"""


def holding_process(warehouse: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, warehouse], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held", "the holder did not take the lock"
    return process


def killed(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)  # no cleanup runs: its lock stays behind
    process.wait(timeout=30)


def test_a_stage_stops_in_one_line_naming_the_run_that_holds_the_warehouse(spark, make_config, tmp_path):
    config = make_config(str(tmp_path / "warehouse"))
    holder = holding_process(config.warehouse)
    try:
        named = rf"in use by a train run \(process {holder.pid} on .*\); .*delete its lock .*_LOCK if"
        with pytest.raises(XdrecError, match=named):
            run_stage(spark, config, "train")
    finally:
        killed(holder)
    assert files.exists(locks.lock_path(config.warehouse))  # left behind by the killed run
    with locks.warehouse_lock(config.warehouse, "train"):  # the rerun takes it over: its holder has ended
        record = json.loads(files.read_text(locks.lock_path(config.warehouse)))
        assert record["pid"] == os.getpid() and record["stage"] == "train"
    assert not files.exists(locks.lock_path(config.warehouse))  # released


def test_nested_holds_share_one_lock_and_the_outer_one_releases_it(tmp_path):
    warehouse = str(tmp_path / "warehouse")
    with locks.warehouse_lock(warehouse, "pipeline"):
        token = json.loads(files.read_text(locks.lock_path(warehouse)))["token"]
        with locks.warehouse_lock(warehouse, "train"):
            assert json.loads(files.read_text(locks.lock_path(warehouse)))["token"] == token
        assert files.exists(locks.lock_path(warehouse))
    assert not files.exists(locks.lock_path(warehouse))


def test_the_holder_renews_its_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "RENEW_SECONDS", 0.05)
    path = locks.lock_path(str(tmp_path / "warehouse"))
    with locks.warehouse_lock(str(tmp_path / "warehouse"), "train"):
        first = json.loads(files.read_text(path))
        time.sleep(0.5)
        renewed = json.loads(files.read_text(path))
    assert renewed["token"] == first["token"] and renewed["renewed"] > first["renewed"]


def test_a_lock_this_process_left_behind_does_not_block_its_rerun(tmp_path):
    """As when a stage fails while its store is down, and so cannot remove its lock."""
    path = locks.lock_path(str(tmp_path / "warehouse"))
    with locks.warehouse_lock(str(tmp_path / "warehouse"), "train"):
        left_behind = files.read_text(path)
    files.write_text(path, left_behind)
    with locks.warehouse_lock(str(tmp_path / "warehouse"), "train"):
        assert files.read_text(path) != left_behind


def test_on_an_object_store_a_live_lock_holds_and_an_expired_lease_is_taken_over(s3_bucket):
    warehouse = f"s3a://{s3_bucket}/wh"
    holder = holding_process(warehouse)
    try:
        with pytest.raises(XdrecError, match=rf"in use by a train run \(process {holder.pid} "):
            with locks.warehouse_lock(warehouse, "evaluate"):
                pass
    finally:
        killed(holder)
    # A driver lost on a cluster: another machine's record, last renewed more than a lease ago.
    path = locks.lock_path(warehouse)
    record = json.loads(files.read_text(path))
    assert not files.create(path, "{}")  # the store refuses a second create
    files.write_json(path, {**record, "machine": "another-machine", "renewed": time.time()})  # renewed: it holds
    with pytest.raises(XdrecError, match="in use by a train run"):
        with locks.warehouse_lock(warehouse, "train"):
            pass
    files.write_json(path, {**record, "machine": "another-machine", "renewed": time.time() - locks.LEASE_SECONDS - 1})
    with locks.warehouse_lock(warehouse, "train"):
        assert json.loads(files.read_text(path))["pid"] == os.getpid()
    assert not files.exists(path)
