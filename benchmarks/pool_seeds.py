"""The benchmark's seeds-together intervals for seed runs it already made, from their kept reports.

    $VENV/bin/python benchmarks/pool_seeds.py --conf cdrib_video_game \
        --reports reports/bench-vg-noens-s123/cdrib_video_game --set warehouse=warehouse-vg-ens

Each ``seed*/metrics.json`` under ``--reports`` (or each folder given) is one seed's evaluation report; the
test users' values are read from the warehouse's ``user_metrics`` at the version that evaluation wrote,
as ``jobs/benchmark.py`` does at the end of a dataset's seeds (:func:`~xdrec.evaluation.benchmark.
pooled_bootstraps`). The seeds' runs must have used one warehouse and one data split, and Delta must not
have vacuumed those versions.
"""
from __future__ import annotations

import argparse
import json
import os
from glob import glob

from xdrec.config import load_config
from xdrec.evaluation.benchmark import aggregate, bootstrap_lines, pooled_bootstraps, together_label
from xdrec.spark import get_spark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", required=True)
    parser.add_argument("--reports", nargs="+", required=True,
                        help="a dataset's benchmark folder (its seed* folders), or seed folders")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    folders = sorted(folder for path in args.reports
                     for folder in ([path] if os.path.isfile(os.path.join(path, "metrics.json"))
                                    else glob(os.path.join(path, "seed*"))))
    per_seed = []
    for folder in folders:
        with open(os.path.join(folder, "metrics.json")) as handle:
            per_seed.append(json.load(handle))
    config = load_config(args.conf, args.overrides)
    pooled = pooled_bootstraps(get_spark(config.spark), config, per_seed, aggregate(per_seed))
    label = together_label(", ".join(os.path.basename(folder) for folder in folders))
    print("\n".join([f"served per seed: {[results['selected']['method'] for results in per_seed]}",
                     *bootstrap_lines([pooled["best"], pooled["served"]], [label, label])]))


if __name__ == "__main__":
    main()
