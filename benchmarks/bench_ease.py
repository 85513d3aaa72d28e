"""The EASE factor model fitted alone, as the train stage fits it, on a warehouse's training rows: its time,
peak memory (the driver Python's, the Spark JVM's and the largest Spark Python worker's, sampled as
bench_scale.py samples them), its choice on validation and a digest of the vectors it serves.

    $VENV/bin/python benchmarks/bench_ease.py --conf demo --set warehouse=<a demo's warehouse>
    PYTHONPATH=<another checkout>/lib $VENV/bin/python benchmarks/bench_ease.py ... --compare /tmp/bench_ease.npz

It runs with the library on the path, so two checkouts compare one after the other: each run saves the
vectors (``--out``) and, given an earlier run's file (``--compare``), prints their largest difference.
"""
from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np
from bench_scale import PeakMemory

from xdrec.config import load_config
from xdrec.spark import get_spark
from xdrec.training import train, tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", default="demo")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--out", default="/tmp/bench_ease.npz", help="where this run's vectors are saved")
    parser.add_argument("--compare", help="an earlier run's --out, to print the largest difference from")
    args = parser.parse_args()
    config = tune.tuned(load_config(args.conf, args.overrides))
    spark = get_spark(config.spark)
    inputs = train.read_inputs(spark, config)
    rows = train.training_rows(spark, config, inputs.versions).cache()
    print(f"{rows.count():,} training rows, {inputs.num_users:,} users, {inputs.num_items:,} items", flush=True)
    sampler = PeakMemory()
    sampler.start()
    started = time.perf_counter()
    model, chosen = train.fit_ease(config, inputs, rows)
    seconds = time.perf_counter() - started
    peaks = sampler.stop()
    users, items = model.user_embedding.weight.numpy(), model.item_embedding.weight.numpy()
    digest = hashlib.sha256(users.tobytes() + items.tobytes()).hexdigest()[:12]
    print(f"fitted in {seconds:.1f}s; peak MiB {peaks}; {chosen['items']:,} items, "
          f"rank {chosen['rank']}, multiple {chosen['multiple']:g}, validation "
          + ", ".join(f"{multiple:g}: {figure:.4f}" for multiple, figure in chosen["validation"].items())
          + f"; vectors {digest}")
    np.savez(args.out, users=users, items=items)
    if args.compare:
        with np.load(args.compare) as earlier:
            difference = max(float(np.abs(users - earlier["users"]).max()),
                             float(np.abs(items - earlier["items"]).max()))
            scale = float(np.abs(users).max())
        print(f"largest difference from {args.compare}: {difference:.1e} (largest user vector entry {scale:.2f})")


if __name__ == "__main__":
    main()
