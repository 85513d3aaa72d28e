"""Logging: one logger per stage (``xdrec.<stage>``) under one configured ``xdrec`` logger.

Lines read ``18:02:11 [train] joint epoch 3/30: ...``: the time, the stage, the message. They go to the
``sys.stdout`` of the moment, so a notebook's or a test's capture of it sees them, and Spark's and
Horovod's own output stays beside them in order. ``XDREC_LOG_LEVEL`` (default INFO) sets the level.
"""
from __future__ import annotations

import logging
import os
import sys


class _CurrentStdout(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stdout`` is when a line is written."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # the base class sets it once; the property always reads sys.stdout
        pass


class _Stage(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.stage = record.name.removeprefix("xdrec.")
        return True


def get_logger(stage: str) -> logging.Logger:
    """The logger of ``stage`` (``ingest``, ``train`` ...), configuring the ``xdrec`` logger on first use."""
    root = logging.getLogger("xdrec")
    if not root.handlers:
        handler = _CurrentStdout()
        handler.addFilter(_Stage())
        handler.setFormatter(logging.Formatter("%(asctime)s [%(stage)s] %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("XDREC_LOG_LEVEL", "INFO").upper())
        root.propagate = False
    return logging.getLogger(f"xdrec.{stage}")
