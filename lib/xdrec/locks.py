"""One run at a time on a warehouse: the lock that every stage but score holds while it runs.

Two train runs on one warehouse would train the same model versions into the same checkpoint folders and
race for ``models/SELECTED``; an evaluate run beside a train run would report models that selection has
since replaced. So a stage holds ``<warehouse>/_LOCK`` (a pipeline run holds it from its first stage to
its last), and a second run on the same warehouse stops at once, in one line naming the holder. Scoring
takes no lock: it serves the model version it reads once, into Delta tables with their own transactions,
so scheduled batch scoring runs while a new model trains.

The lock is a small JSON file naming its holder (host, process, stage, start). It is created only where
none exists (``files.create``: a hard link locally, a conditional PUT on an object store) and renewed every
:data:`RENEW_SECONDS` by a thread. A run killed outright cannot remove it, so a lock is **stale**, and the
next run takes it over with a warning, when its holder was a process on this machine that has ended, or
when nobody renewed it for :data:`LEASE_SECONDS` (a driver lost on a cluster)::

    with warehouse_lock(config.warehouse, "train"):
        run_train(spark, config)
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from xdrec import files
from xdrec.errors import XdrecError
from xdrec.logs import get_logger

log = get_logger("lock")

LOCK = "_LOCK"
RENEW_SECONDS = 30.0
# Ten renewals missed: long enough for a driver's pauses, short enough that a cluster rerun after a lost
# driver waits minutes, not hours.
LEASE_SECONDS = 300.0


@dataclass
class _Held:
    """A lock this process holds: its record, how many blocks hold it, and its renewing thread."""
    holder: dict
    renewal: threading.Thread
    stop: threading.Event
    depth: int = 1


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def lock_path(warehouse: str) -> str:
    return files.join(warehouse, LOCK)


def _machine() -> str:
    """This machine's boot: two containers may share a host name, never a boot id."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return socket.gethostname()


def _process_ended(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def stale_reason(holder: dict, now: float) -> str | None:
    """Why the lock ``holder`` no longer holds, or None while it does.

    >>> stale_reason({"renewed": 0.0, "machine": "elsewhere", "pid": 1}, now=LEASE_SECONDS + 1)
    'not renewed for 301 s'
    """
    if holder.get("machine") == _machine():
        if int(holder["pid"]) == os.getpid():  # not a nested hold (those never get here): a leftover
            return "its run in this process failed before it could remove the lock"
        if _process_ended(int(holder["pid"])):
            return f"its process {holder['pid']} on this machine has ended"
    if now - float(holder["renewed"]) > LEASE_SECONDS:
        return f"not renewed for {now - float(holder['renewed']):.0f} s"
    return None


def describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["started"])))
    return f"a {holder['stage']} run (process {holder['pid']} on {holder['host']}, since {started})"


def _read(path: str) -> dict | None:
    """The lock's record; None when there is none, or it is being written."""
    try:
        return json.loads(files.read_text(path))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _renew(path: str, holder: dict, stop: threading.Event) -> None:
    while not stop.wait(RENEW_SECONDS):
        try:
            if (_read(path) or {}).get("token") != holder["token"]:
                log.error(f"{path} is no longer this run's lock (taken over as stale); stopped renewing it")
                return
            holder["renewed"] = time.time()
            files.write_json(path, holder)
        except OSError as error:  # a store briefly unreachable: the lease allows ten misses
            log.warning(f"could not renew {path}: {error}")


def _acquire(path: str, stage: str) -> dict:
    now = time.time()
    holder = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "machine": _machine(), "pid": os.getpid(),
              "stage": stage, "started": now, "renewed": now}
    if files.create(path, json.dumps(holder)):
        return holder
    current = _read(path)
    if current is not None:
        reason = stale_reason(current, time.time())
        if reason is None:
            raise XdrecError(f"the warehouse is in use by {describe(current)}; run again when it has finished, "
                             f"or delete its lock {path} if that run is gone")
        # Read again just before removing, so that a run which took it over meanwhile keeps it.
        if _read(path) == current:
            log.warning(f"taking over the stale lock {path} of {describe(current)}: {reason}")
            files.remove(path)
    if files.create(path, json.dumps(holder)):
        return holder
    raise XdrecError(f"another run took the lock {path} at the same moment; run again when it has finished")


@contextmanager
def warehouse_lock(warehouse: str, stage: str) -> Iterator[None]:
    """Hold ``warehouse``'s lock for the block, on behalf of ``stage``; raise :class:`XdrecError` naming the
    holder when another live run holds it. Nested calls in one process share the outer one's lock."""
    path = lock_path(warehouse)
    with _held_guard:
        held = _held.get(path)
        if held is not None:
            held.depth += 1
    if held is None:
        holder = _acquire(path, stage)
        stop = threading.Event()
        renewal = threading.Thread(target=_renew, args=(path, holder, stop), name="xdrec-lock", daemon=True)
        renewal.start()
        with _held_guard:
            held = _held[path] = _Held(holder, renewal, stop)
    try:
        yield
    finally:
        with _held_guard:
            held.depth -= 1
            last = held.depth == 0
            if last:
                del _held[path]
        if last:
            held.stop.set()
            held.renewal.join()  # so that no renewal writes the lock again after it is removed
            try:
                if (_read(path) or {}).get("token") == held.holder["token"]:
                    files.remove(path)
            except OSError as error:  # raising here would hide why the block ended; the lock goes stale
                log.warning(f"could not remove the lock {path}: {error}; the next run takes it over")
