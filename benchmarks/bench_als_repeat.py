"""Whether implicit ALS fits the same factors in every fresh Spark session: the start of every method that
starts from ALS-merged (``train.init``), and so of the demo's reproducibility.

    $VENV/bin/python benchmarks/bench_als_repeat.py --conf demo --set warehouse=<a demo's warehouse>
    $VENV/bin/python benchmarks/bench_als_repeat.py --conf demo --set warehouse=<...> --blocks 10   # MLlib's
    $VENV/bin/python benchmarks/bench_als_repeat.py --conf demo --set warehouse=<...> --blas both

Each session is a fresh process with its own JVM. It fits ALS-merged, with the settings the tune stage
chose (the config's when it has not run), on the warehouse's training rows, and prints the BLAS and LAPACK
that MLlib used, the fit's time, a digest of the factors and their largest difference from the first
session's. ``--blas java`` leaves out the OpenBLAS that ``scripts/setup.sh`` fetched
(``xdrec.spark.native_blas_dir``); ``both`` alternates the two, session by session.
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time

import numpy as np

from xdrec.config import load_config
from xdrec.data import tables
from xdrec.spark import get_spark
from xdrec.training import factors, train, tune


def fit_once(conf: str, overrides: list[str], blocks: int | None, java_blas: bool, out: str) -> None:
    config = tune.tuned(load_config(conf, overrides))
    if java_blas:  # no OpenBLAS in reach: netlib falls back to its Java implementations
        config.spark.conf.update({"spark.driver.extraJavaOptions": "", "spark.driver.extraLibraryPath": ""})
    spark = get_spark(config.spark)
    netlib = spark.sparkContext._jvm.dev.ludovic.netlib
    used = f"{netlib.blas.BLAS.getInstance().getClass().getSimpleName()}/" \
           f"{netlib.lapack.LAPACK.getInstance().getClass().getSimpleName()}"
    rows = train.training_rows(spark, config, {tables.INDEXED_INTERACTIONS: None})  # the latest version
    num_users = tables.read(spark, config.warehouse, tables.USER_INDEX).count()
    num_items = tables.read(spark, config.warehouse, tables.ITEM_INDEX).count()
    started = time.perf_counter()
    users, items = factors.als_factors(rows, num_users, num_items, config.als.rank, config.als.iterations,
                                       config.als.regularization, config.als.alpha, config.als.seed, blocks)
    np.savez(out, users=users, items=items, seconds=time.perf_counter() - started, used=used)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", default="demo")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=None, help="ALS blocks (default: the default parallelism)")
    parser.add_argument("--blas", choices=("native", "java", "both"), default="native")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fit_once(args.conf, args.overrides, args.blocks, args.blas == "java", args.child)
        return
    first, digests = None, []
    for session in range(args.sessions):
        out = f"/tmp/bench_als_repeat_{session}.npz"
        blas = args.blas if args.blas != "both" else ("native", "java")[session % 2]
        command = [sys.executable, __file__, "--conf", args.conf, "--blas", blas, "--child", out]
        command += [f"--set={override}" for override in args.overrides]
        command += ["--blocks", str(args.blocks)] if args.blocks else []
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with np.load(out) as fitted:
            users, items, seconds, used = fitted["users"], fitted["items"], float(fitted["seconds"]), str(fitted["used"])
        first = first or (users, items)
        digests.append(hashlib.sha256(users.tobytes() + items.tobytes()).hexdigest()[:12])
        difference = max(float(np.abs(users - first[0]).max()), float(np.abs(items - first[1]).max()))
        print(f"session {session + 1} ({used}): factors {digests[-1]}, largest difference from session 1 "
              f"{difference:.1e}, fitted in {seconds:.1f}s", flush=True)
    print(f"{len(set(digests))} distinct result(s) in {args.sessions} sessions "
          f"(blocks: {args.blocks or 'the default parallelism'})")


if __name__ == "__main__":
    main()
