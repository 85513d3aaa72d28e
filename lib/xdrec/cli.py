"""Command line: ``xdrec STAGE [--conf NAME_OR_PATH] [--set section.key=value ...]``.

The same entry serves the console script and the thin files in ``jobs/`` that ``spark-submit`` runs.
A user error (bad config key, missing file, unknown stage, missing table) ends in one line on stderr
and exit code 2; an unexpected failure in one line with its root cause (for a JVM error, the innermost
Java exception) and exit code 1, its full traceback written to a log file under ``<warehouse>/logs/``
(``$XDREC_LOG_DIR`` when set), which the line names. ``XDREC_DEBUG=1`` also prints the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Callable

from xdrec import files
from xdrec.config import DEFAULT_CONF, METHODS, load_config
from xdrec.errors import XdrecError

PIPELINE = "pipeline"


class OneLineArgumentParser(argparse.ArgumentParser):
    """Reports a bad argument as an XdrecError, so it ends in one line and exit code 2."""

    def error(self, message: str) -> None:  # one line instead of usage + message
        raise XdrecError(message)


def parse_args(argv: list[str], stage: str | None) -> argparse.Namespace:
    from xdrec.pipeline import STAGES

    parser = OneLineArgumentParser(prog="xdrec" if stage is None else f"jobs/{stage}.py",
                             description="Cross-domain recommendation on Spark.")
    if stage is None:
        parser.add_argument("stage", help=f"one of: {', '.join([*STAGES, PIPELINE])}")
    parser.add_argument("--conf", default=DEFAULT_CONF,
                        help="a config name in conf/ (default: demo) or a path to a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key; repeatable")
    args = parser.parse_args(argv)
    args.stage = stage or args.stage
    if args.stage not in (*STAGES, PIPELINE):
        raise XdrecError(f"unknown stage '{args.stage}' (known: {', '.join([*STAGES, PIPELINE])})")
    return args


def root_cause(error: BaseException) -> str:
    """``error`` in one line with its deepest cause: for a JVM error (Py4JJavaError) the Java exception and
    its innermost cause, which say what went wrong, rather than "An error occurred while calling o123.x"."""
    java = getattr(error, "java_exception", None)
    if java is not None:
        try:
            outer = root = java
            while root.getCause() is not None and not root.getCause().equals(root):
                root = root.getCause()
            outer_line, root_line = _first_line(str(outer.toString())), _first_line(str(root.toString()))
            return outer_line if root_line == outer_line else f"{outer_line}; root cause: {root_line}"
        except Exception:  # noqa: BLE001 - the JVM is gone: fall back to the Python side's text
            pass
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {_first_line(str(error))}"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


# Where write_trace puts traces once a job has loaded its config: <warehouse>/logs.
_trace_folder = {"path": "logs"}


def write_trace(error: BaseException) -> str | None:
    """Write ``error``'s full traceback to a new file under ``$XDREC_LOG_DIR``, else the job's
    ``<warehouse>/logs`` (``logs`` before its config is read); its path, or None when that cannot be written."""
    folder = os.environ.get("XDREC_LOG_DIR") or _trace_folder["path"]
    path = files.join(folder, f"xdrec-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log")
    try:
        files.write_text(path, f"xdrec {' '.join(sys.argv)}\n"
                         + "".join(traceback.format_exception(type(error), error, error.__traceback__)))
        return path
    except OSError:
        return None


def guarded(body: Callable[[], None]) -> int:
    """Run ``body``; turn what it raises into one line on stderr and an exit code (see module doc)."""
    try:
        body()
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("xdrec: interrupted\n")
        return 130
    except Exception as error:  # noqa: BLE001 - the one place that turns failures into an exit code
        from pyspark.errors import PySparkException

        if os.environ.get("XDREC_DEBUG") == "1":
            traceback.print_exc()
        if isinstance(error, XdrecError):  # the user's to fix, and the line says what
            sys.stderr.write(f"xdrec: error: {error}\n")
            return 2
        trace = write_trace(error)
        where = f" (full trace: {trace})" if trace else ""
        kind = "Spark error" if isinstance(error, PySparkException) or hasattr(error, "java_exception") else "failed"
        sys.stderr.write(f"xdrec: {kind}: {root_cause(error)}{where}\n")
        return 1


def run_job(stage: str | None = None, argv: list[str] | None = None) -> int:
    """Parse arguments, get the SparkSession, run one stage (or the pipeline); return the exit code."""

    def body() -> None:
        args = parse_args(sys.argv[1:] if argv is None else argv, stage)
        config = load_config(args.conf, args.overrides)
        _trace_folder["path"] = files.join(config.warehouse, "logs")

        from xdrec.pipeline import run_pipeline, run_stage
        from xdrec.spark import get_spark

        spark = get_spark(config.spark)
        if args.stage == PIPELINE:
            run_pipeline(spark, config)
        else:
            run_stage(spark, config, args.stage)

    return guarded(body)


def run_benchmark_job(argv: list[str] | None = None) -> int:
    """``jobs/benchmark.py``: parse its arguments, check every config, run the benchmark; the exit code."""

    def body() -> None:
        from xdrec.evaluation import benchmark

        parser = OneLineArgumentParser(prog="jobs/benchmark.py", description=benchmark.__doc__.splitlines()[0])
        parser.add_argument("--conf", action="append", required=True, help="a dataset config; repeatable")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
        parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
        parser.add_argument("--methods", default="config",
                            help="comma-separated methods to train, 'config' (default: each config's train.methods) "
                                 "or 'all'")
        parser.add_argument("--out", default="reports/benchmark", help="the report folder")
        parser.add_argument("--docs", default=None, help="also copy the summary table to this file")
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        try:
            seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
        except ValueError:
            raise XdrecError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
        methods = {"all": list(METHODS), "config": None}.get(args.methods, args.methods.split(","))
        overrides = ([f"train.methods=[{','.join(methods)}]"] if methods else []) + args.overrides
        for name in args.conf:
            load_config(name, overrides)  # a bad config or method fails now, not hours in
        benchmark.run_benchmark(args.conf, overrides, seeds, args.out, args.docs)

    return guarded(body)


def main() -> None:
    sys.exit(run_job())
