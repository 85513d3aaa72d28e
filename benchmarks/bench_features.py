"""Benchmark: the ingest and features stages on MovieLens-1M and on copies replicated N times.

    $VENV/bin/python benchmarks/bench_features.py                 # 1x and 4x, the figures of docs/performance.md
    $VENV/bin/python benchmarks/bench_features.py --sizes 1 --fraction 0.05   # a quick check of the script

A copy k > 0 of the data repeats every interaction with user ids suffixed "~k" (new users, the same
items), so the 4x data has 4x the users and interactions of the same catalogue. Each size runs in its own
process (a fresh JVM, timed from after the SparkSession starts) on its own warehouse, with the demo
config (local[*], every core). Prints rows per second for each stage and size, the time ratio of the
features stage between the largest and the smallest size, and writes them as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from xdrec.config import load_config  # noqa: E402
from xdrec.data.fetch import COMEDY_DOMAIN, INTERACTIONS_FILE, ITEMS_FILE, OTHER_DOMAIN, fetch_movielens  # noqa: E402

DOMAINS = (OTHER_DOMAIN, COMEDY_DOMAIN)


def replicate(source_dir: str, raw_dir: str, copies: int, fraction: float) -> int:
    """Write MovieLens (``fraction`` of its users) ``copies`` times over into ``raw_dir``; return rows."""
    rows = 0
    for domain in DOMAINS:
        interactions = pd.read_csv(os.path.join(source_dir, domain, INTERACTIONS_FILE), dtype={"user_id": str})
        if fraction < 1.0:
            interactions = interactions[interactions["user_id"].astype(int) % round(1 / fraction) == 0]
        replicated = pd.concat([interactions.assign(user_id=interactions["user_id"] + (f"~{k}" if k else ""))
                                for k in range(copies)], ignore_index=True)
        os.makedirs(os.path.join(raw_dir, domain), exist_ok=True)
        replicated.to_csv(os.path.join(raw_dir, domain, INTERACTIONS_FILE), index=False)
        pd.read_csv(os.path.join(source_dir, domain, ITEMS_FILE), dtype=str).to_csv(
            os.path.join(raw_dir, domain, ITEMS_FILE), index=False)
        rows += len(replicated)
    return rows


def run_one(warehouse: str, conf: str, overrides: list[str]) -> dict:
    """Ingest then features on one warehouse, in this process; the stages' wall times."""
    from xdrec.data.features import run_features
    from xdrec.data.ingest import run_ingest
    from xdrec.spark import get_spark

    config = load_config(conf, [f"warehouse={warehouse}", "data.fetch=none", *overrides])
    spark = get_spark(config.spark)
    timings = {}
    for stage, run in (("ingest", run_ingest), ("features", run_features)):
        started = time.perf_counter()
        run(spark, config)
        timings[stage] = round(time.perf_counter() - started, 1)
    spark.stop()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4", help="replication factors, comma-separated (default 1,4)")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of MovieLens users to start from")
    parser.add_argument("--root", default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--conf", default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", default=None, help="JSON results (default: <root>/bench_features.json)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one size in this process
    args = parser.parse_args()
    if args.one:
        print("BENCH " + json.dumps(run_one(args.one, args.conf, args.overrides)), flush=True)
        return

    root = args.root or tempfile.mkdtemp(prefix="xdrec-bench-")
    config = load_config(args.conf)
    movielens = os.path.join(root, "movielens-1m")
    fetch_movielens(movielens)
    results = []
    for size in [int(size) for size in args.sizes.split(",")]:
        warehouse = os.path.join(root, f"x{size}")
        raw_dir = os.path.join(warehouse, "raw", config.data.name)
        rows = replicate(movielens, raw_dir, size, args.fraction)
        print(f"[bench] {size}x: {rows:,} interactions in {raw_dir}", flush=True)
        command = [sys.executable, os.path.abspath(__file__), "--one", warehouse, "--conf", args.conf,
                   *[f"--set={override}" for override in args.overrides]]
        output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        timings = json.loads(next(line for line in output.splitlines() if line.startswith("BENCH "))[6:])
        results.append({"size": size, "interactions": rows, **{
            f"{stage}_{key}": value for stage, seconds in timings.items()
            for key, value in (("seconds", seconds), ("rows_per_second", round(rows / seconds)))}})
        print(f"[bench] {size}x: ingest {timings['ingest']}s, features {timings['features']}s", flush=True)

    print(f"\n{'size':>5} {'interactions':>13} {'ingest s':>9} {'rows/s':>9} {'features s':>11} {'rows/s':>9}")
    for result in results:
        print(f"{result['size']:>4}x {result['interactions']:>13,} {result['ingest_seconds']:>9} "
              f"{result['ingest_rows_per_second']:>9,} {result['features_seconds']:>11} "
              f"{result['features_rows_per_second']:>9,}")
    summary = {"results": results, "cpus": os.cpu_count()}
    smallest, largest = results[0], results[-1]
    if len(results) > 1:
        summary["features_time_ratio"] = round(largest["features_seconds"] / smallest["features_seconds"], 2)
        print(f"features time {largest['size']}x / {smallest['size']}x: {summary['features_time_ratio']} "
              "(target for 4x / 1x: at most 4.5)")
    summary["ingest_plus_features_seconds"] = round(smallest["ingest_seconds"] + smallest["features_seconds"], 1)
    print(f"ingest + features at {smallest['size']}x: {summary['ingest_plus_features_seconds']}s (target at most 300s)")
    out = args.out or os.path.join(root, "bench_features.json")
    with open(out, "w") as handle:
        json.dump(summary, handle, indent=2)
    print(f"[bench] results in {out}")


if __name__ == "__main__":
    main()
