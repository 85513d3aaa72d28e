"""The methods' results table: every transfer method, warm and cold-start users, mean over seeds.

A thin front to :func:`xdrec.benchmark.run_benchmark` (the data stages once per dataset, then train,
score and evaluate per seed) with every method of :data:`xdrec.config.METHODS` trained, the table written
to ``docs/results.md``, and a verdict per dataset: does a transfer method beat target_only and
popularity on cold-start users (full-ranking NDCG@10, mean over seeds)?

    $VENV/bin/python benchmarks/bench_methods.py                       # MovieLens-1M + both CDRIB pairs, seeds 1,2,3
    $VENV/bin/python benchmarks/bench_methods.py --conf demo --seeds 1
    $VENV/bin/python benchmarks/bench_methods.py --conf synthetic --seeds 1 --docs /tmp/results.md  # a smoke run

``--set section.key=value`` overrides reach every dataset (e.g. ``--set train.item_text=off`` for the
id-only ablation of the text-aware item tower).
"""
from __future__ import annotations

import argparse
import sys

from xdrec.benchmark import run_benchmark
from xdrec.config import METHODS, resolve_conf_path
from xdrec.errors import XdrecError

DATASETS = ("demo", "cdrib_sport_cloth", "cdrib_game_video")
HEADLINE = "NDCG@10"


def verdicts(datasets: dict) -> list[str]:
    """One line per dataset: the best transfer method on cold-start users against the two yardsticks."""
    lines = []
    for name, entry in datasets.items():
        full = entry["summary"]["full"]

        def cold(model: str) -> float:
            return full.get(model, {}).get("cold", {}).get(HEADLINE, {}).get("mean", float("nan"))

        transfer = [method for method in METHODS if method != "target_only" and method in full]
        best = max(transfer, key=cold)
        beaten = cold(best) > cold("target_only") and cold(best) > cold("popularity")
        lines.append(f"[bench] {name}: best on cold-start users {best} {HEADLINE} {cold(best):.4f} vs target_only "
                     f"{cold('target_only'):.4f}, popularity {cold('popularity'):.4f}: "
                     f"{'beats both' if beaten else 'does NOT beat both'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", action="append", help=f"a dataset config; repeatable (default: {', '.join(DATASETS)})")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", default="reports/bench_methods", help="the report folder")
    parser.add_argument("--docs", default="docs/results.md", help="where the results table goes")
    args = parser.parse_args()
    try:
        configs = args.conf or list(DATASETS)
        for name in configs:
            resolve_conf_path(name)  # fail before hours of work on a missing config
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
        overrides = [f"train.methods=[{','.join(METHODS)}]", *args.overrides]
        datasets = run_benchmark(configs, overrides, seeds, args.out, args.docs)
    except XdrecError as error:
        print(f"bench_methods: error: {error}", file=sys.stderr)
        return 2
    lines = verdicts(datasets)
    with open(args.docs, "a") as handle:
        handle.write("\n" + "\n".join(f"- {line.removeprefix('[bench] ')}" for line in lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
