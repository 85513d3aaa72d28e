"""The growth curve: every stage at multiples of MovieLens-1M's size, in one run.

    $VENV/bin/python benchmarks/bench_scale.py --sizes 1,4 --out docs/scale              # ~25 min on 2 cores
    $VENV/bin/python benchmarks/bench_scale.py --sizes 0.02 --out /tmp/scale-smoke      # the CI smoke's size, ~1.5 min
    $VENV/bin/python benchmarks/bench_scale.py --sizes 4 --stages ingest,features --work /tmp/x --out /tmp/x/report
        # only a warehouse, /tmp/x/x4/warehouse with its config /tmp/x/x4/scale.yaml, for another benchmark

For each size s the script generates two domains of realistic shape (:func:`generate`) with s × MovieLens-1M's
1,000,209 interactions, 6,040 users and 3,706 items in all, as CSV files and an item catalogue with titles.
It then runs ingest → features → train → score → evaluate on them through the pipeline's own stages, with
a config that keeps each stage's work proportional to the data:
- train: ``joint`` alone, from a random start, no blend, no MLflow, the popularity factor model only, each
  epoch ``--train-steps`` steps (``train.max_steps_per_epoch``; 250 by default, about one pass at 1x): the
  stage's growth is then that of everything but the passes (staging the pairs, reading them, building the
  tables, validating), and a pass's own cost per row is measured by ``--train-steps 0`` (one full pass an
  epoch, as the runs in docs/performance.md before 2026-12-05 did);
- score: ``joint`` (the model UDF), whatever selection chose;
- evaluate: popularity as the only baseline, 100 bootstrap samples, a seeded sample of 2,000 test users per
  group (cold-start, warm; ``evaluate.users_per_group``): both protocols then cost users x catalogue, which
  grows with the data, not with its square.

Per stage and size it records the wall time, the stage's input rows per second and peak memory, sampled
every 0.2 s: the driver's Python process, the Spark JVM (in local mode the driver and the executor), the
largest Spark Python worker, and the largest other Python process (Horovod's training workers). Then, for
each stage and each pair of consecutive sizes, time ratio / interactions ratio: 1.0 is a constant cost per
row, and the issue's bar for 16× → 64× is 4.5 / 4 = 1.125. Figures go to ``--out``: ``scale.json``, a Markdown
table ``scale.md`` and ``scale.png`` (time and memory against size, per stage).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import psutil
import yaml

from xdrec.pipeline import run_stage
from xdrec.config import SparkConfig, load_config
from xdrec.spark import get_spark

ML1M = {"interactions": 1_000_209, "users": 6_040, "items": 3_706}
STAGES = ("ingest", "features", "train", "score", "evaluate")
SOURCE, TARGET = "books", "movies"
SOURCE_SHARE = 0.6  # of the interactions; the source domain is the data-rich one
TASTES = 20
WORDS = ("red", "silent", "lost", "city", "river", "night", "garden", "storm", "winter", "glass", "empire",
         "ocean", "hidden", "last", "golden", "iron", "paper", "wild", "broken", "secret", "northern", "bright",
         "dark", "little", "long", "first", "final", "falling", "burning", "distant", "quiet", "endless")
ROWS_PER_FILE = 500_000
EVALUATED_USERS = 2_000  # test users per group (cold-start, warm)


def zipf_cdf(count: int, exponent: float = 1.0) -> np.ndarray:
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    return np.cumsum(weights) / weights.sum()


def _domain(rng: np.random.Generator, users: np.ndarray, user_taste: np.ndarray, item_count: int,
            interactions: int) -> tuple[dict, dict]:
    """One domain: (interaction columns, catalogue columns).

    Items have a Zipf(1) popularity over a random order and one of ``TASTES`` tastes. A user's activity is
    log-normal (σ 1), scaled to ``interactions`` in all; each pick is from the user's taste in 60% of
    cases and from the whole catalogue otherwise, by popularity both times. A title is three words, most
    of them the taste's, and a number.
    """
    item_taste = rng.integers(0, TASTES, item_count)
    by_popularity = rng.permutation(item_count)  # by_popularity[r]: the item of popularity rank r
    activity = rng.lognormal(0.0, 1.0, len(users))
    counts = np.maximum(1, np.rint(activity / activity.sum() * interactions)).astype(np.int64)
    counts = np.minimum(counts, item_count // 2)
    # Three times the picks, then each user's first ``counts`` distinct ones: repeats of the head items are common.
    user_rows = np.repeat(np.arange(len(users)), 3 * counts)
    items = by_popularity[np.searchsorted(zipf_cdf(item_count), rng.random(len(user_rows)))]
    from_taste = rng.random(len(user_rows)) < 0.6
    for taste in range(TASTES):
        picks = np.flatnonzero(from_taste & (user_taste[users[user_rows]] == taste))
        ranked = by_popularity[item_taste[by_popularity] == taste]  # the taste's items, most popular first
        if len(ranked) and len(picks):
            items[picks] = ranked[np.searchsorted(zipf_cdf(len(ranked)), rng.random(len(picks)))]
    pairs, first = np.unique(user_rows * item_count + items, return_index=True)
    pairs = pairs[np.argsort(first)]  # in the order picked, users ascending
    user_rows, items = pairs // item_count, pairs % item_count
    starts = np.searchsorted(user_rows, np.arange(len(users)))
    keep = np.arange(len(pairs)) - starts[user_rows] < counts[user_rows]
    user_rows, items = user_rows[keep], items[keep]
    liked = item_taste[items] == user_taste[users[user_rows]]
    ratings = np.clip(np.rint(3.0 + liked + rng.normal(0.0, 0.8, len(items))), 1, 5).astype(np.int64)
    interactions = {"user_id": np.char.add("u", users[user_rows].astype(str)), "item_id": items,
                    "rating": ratings, "timestamp": 1_600_000_000 + rng.integers(0, 365 * 86_400, len(items))}
    taste_words = rng.integers(0, len(WORDS), size=(TASTES, 4))
    words = np.where(rng.random((item_count, 3)) < 0.7,
                     taste_words[item_taste[:, None], rng.integers(0, 4, (item_count, 3))],
                     rng.integers(0, len(WORDS), (item_count, 3)))
    titles = [" ".join(WORDS[w] for w in row) + f" {number}" for number, row in enumerate(words)]
    catalogue = {"item_id": np.arange(item_count), "title": titles,
                 "category": [f"taste {t}" for t in item_taste]}
    return interactions, catalogue


def generate(folder: str, size: float, seed: int) -> dict:
    """Write the raw inputs of one size under ``folder``/<domain>/ and return their counts."""
    rng = np.random.default_rng(seed)
    user_count = max(50, round(ML1M["users"] * size))
    user_taste = rng.integers(0, TASTES, user_count)
    membership = rng.random(user_count)
    members = {SOURCE: np.flatnonzero(membership >= 0.1), TARGET: np.flatnonzero(membership < 0.9)}
    counts = {}
    for domain, share in ((SOURCE, SOURCE_SHARE), (TARGET, 1 - SOURCE_SHARE)):
        item_count = max(40, round(ML1M["items"] * size * share))
        interactions, catalogue = _domain(rng, members[domain], user_taste, item_count,
                                          round(ML1M["interactions"] * size * share))
        prefix = domain[0]
        interactions["item_id"] = np.char.add(prefix, interactions["item_id"].astype(str))
        catalogue["item_id"] = np.char.add(prefix, catalogue["item_id"].astype(str))
        folder_of = os.path.join(folder, domain, "interactions")
        os.makedirs(folder_of, exist_ok=True)
        table = pa.table(interactions)
        for part, start in enumerate(range(0, table.num_rows, ROWS_PER_FILE)):
            pa_csv.write_csv(table.slice(start, ROWS_PER_FILE), os.path.join(folder_of, f"part-{part:04d}.csv"))
        pa_csv.write_csv(pa.table(catalogue), os.path.join(folder, domain, "items.csv"))
        counts[domain] = {"users": len(members[domain]), "items": item_count, "interactions": table.num_rows}
    return counts


def config_for(work: str, raw: str, size: float, train_steps: int) -> str:
    """Write the size's config (see the module doc) and return its path."""
    config = {
        "warehouse": os.path.join(work, "warehouse"),
        "data": {"name": f"scale-{size:g}x", "source_domain": SOURCE, "target_domain": TARGET,
                 "domains": {domain: {"interactions": os.path.join(raw, domain, "interactions"),
                                      "items": os.path.join(raw, domain, "items.csv")} for domain in (SOURCE, TARGET)}},
        "train": {"methods": ["joint"], "factor_models": ["popularity"], "blend": False, "source_epochs": 1,
                  "target_epochs": 1, "mlflow": False, "num_proc": 2, "max_steps_per_epoch": train_steps,
                  "table_update": "lazy",  # what tables of this size want: a step's cost follows the batch
                  "init": "random"},  # the loop's own cost; the start would add a Spark ALS fit to the stage
        "score": {"model": "joint"},
        "evaluate": {"baselines": ["popularity"], "bootstrap_samples": 100, "users_per_group": EVALUATED_USERS},
        "tune": {"enabled": False},
    }
    path = os.path.join(work, "scale.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle)
    return path


class PeakMemory(threading.Thread):
    """Peak RSS (MiB) by kind of process, sampled in the background: this driver, the Spark JVM, a Spark
    Python worker, any other Python process (Horovod's workers)."""

    def __init__(self, period: float = 0.2):
        super().__init__(daemon=True)
        self.period, self.running, self.peaks = period, True, {}

    def _kind(self, process: psutil.Process) -> str | None:
        command = " ".join(process.cmdline())
        if "java" in command.split(" ")[0]:
            return "spark_jvm"
        if "pyspark" in command:
            return "spark_python_worker"
        return "other_python" if "python" in command else None

    def run(self) -> None:
        me = psutil.Process()
        while self.running:
            sampled = [("driver_python", me)] + [(None, child) for child in me.children(recursive=True)]
            for kind, process in sampled:
                try:
                    kind = kind or self._kind(process)
                    if kind:
                        self.peaks[kind] = max(self.peaks.get(kind, 0), process.memory_info().rss)
                except psutil.Error:
                    continue
            time.sleep(self.period)

    def stop(self) -> dict[str, float]:
        self.running = False
        self.join()
        return {kind: round(rss / 2**20) for kind, rss in sorted(self.peaks.items())}


def run_size(spark, size: float, work: str, seed: int, train_steps: int, stages: list[str]) -> list[dict]:
    raw = os.path.join(work, "raw")
    started = time.perf_counter()
    counts = generate(raw, size, seed)
    interactions = sum(domain["interactions"] for domain in counts.values())
    print(f"\n== {size:g}x: {interactions:,} interactions, "
          + ", ".join(f"{domain} {c['users']:,} users x {c['items']:,} items" for domain, c in counts.items())
          + f" (generated in {time.perf_counter() - started:.0f}s)", flush=True)
    config = load_config(config_for(work, raw, size, train_steps))
    rows = []
    for stage in stages:
        sampler = PeakMemory()
        sampler.start()
        started = time.perf_counter()
        run_stage(spark, config, stage)
        seconds = time.perf_counter() - started
        memory = sampler.stop()
        rows.append({"size": size, "stage": stage, "interactions": interactions, "seconds": round(seconds, 1),
                     "rows_per_s": round(interactions / seconds), "peak_rss_mib": memory})
        print(f"{size:g}x {stage:<9} {seconds:8.1f}s {interactions / seconds:12,.0f} rows/s  peak MiB {memory}",
              flush=True)
    return rows


def stages_run(rows: list[dict]) -> list[str]:
    """The stages of ``rows``, in the pipeline's order."""
    return [stage for stage in STAGES if any(row["stage"] == stage for row in rows)]


def growth(rows: list[dict]) -> list[dict]:
    """Per stage and consecutive sizes: (time ratio) / (interactions ratio); 1.0 is a constant cost per row.
    Interactions, not the nominal size: the generator drops repeated picks, more of them in small catalogues."""
    out = []
    sizes = sorted({row["size"] for row in rows})
    for stage in stages_run(rows):
        by_size = {row["size"]: row for row in rows if row["stage"] == stage}
        for small, large in zip(sizes, sizes[1:]):
            time_ratio = by_size[large]["seconds"] / by_size[small]["seconds"]
            row_ratio = by_size[large]["interactions"] / by_size[small]["interactions"]
            out.append({"stage": stage, "from": small, "to": large, "time_ratio": round(time_ratio, 2),
                        "rows_ratio": round(row_ratio, 2), "per_row_growth": round(time_ratio / row_ratio, 2)})
    return out


def write_report(out: str, rows: list[dict], ratios: list[dict]) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "scale.json"), "w") as handle:
        json.dump({"rows": rows, "growth": ratios}, handle, indent=1)
    kinds = sorted({kind for row in rows for kind in row["peak_rss_mib"]})
    lines = ["| size | stage | interactions | seconds | rows/s | " + " | ".join(f"peak {k} MiB" for k in kinds) + " |",
             "|---" * (5 + len(kinds)) + "|"]
    lines += [f"| {row['size']:g}x | {row['stage']} | {row['interactions']:,} | {row['seconds']:.1f} | "
              f"{row['rows_per_s']:,} | " + " | ".join(str(row["peak_rss_mib"].get(k, "")) for k in kinds) + " |"
              for row in rows]
    if ratios:
        lines += ["", "| stage | sizes | rows ratio | time ratio | per-row growth |", "|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['from']:g}x → {r['to']:g}x | {r['rows_ratio']} | {r['time_ratio']} | "
                  f"{r['per_row_growth']} |" for r in ratios]
    with open(os.path.join(out, "scale.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in stages_run(rows):
        staged = [row for row in rows if row["stage"] == stage]
        sizes = [row["size"] for row in staged]
        time_axis.plot(sizes, [row["seconds"] for row in staged], marker="o", label=stage)
        memory_axis.plot(sizes, [max(row["peak_rss_mib"].values()) for row in staged], marker="o", label=stage)
    for axis, label in ((time_axis, "wall time (s)"), (memory_axis, "largest process peak RSS (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("size (x MovieLens-1M)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    time_axis.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(out, "scale.png"), dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,16,64", help="multiples of MovieLens-1M, comma-separated")
    parser.add_argument("--work", default="/tmp/xdrec-scale", help="raw inputs and warehouses, one folder per size")
    parser.add_argument("--out", default="docs/scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--train-steps", type=int, default=250,
                        help="steps per training epoch at every size; 0: one full pass over the pairs")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="the stages to run, in order; the first ones build a warehouse the others can read")
    args = parser.parse_args()
    stages = args.stages.split(",")
    if unknown := sorted(set(stages) - set(STAGES)):
        parser.error(f"--stages: unknown {', '.join(unknown)} (stages: {', '.join(STAGES)})")
    sizes = [float(size) for size in args.sizes.split(",")]
    works = {size: os.path.join(args.work, f"x{size:g}") for size in sizes}
    for work in works.values():
        if os.path.exists(work):
            sys.exit(f"bench_scale: {work} exists; remove it or pass another --work")
    spark = get_spark(SparkConfig(master="local[2]", driver_memory=args.driver_memory))
    rows = []
    for size in sizes:
        rows += run_size(spark, size, works[size], args.seed, args.train_steps, stages)
        write_report(args.out, rows, growth(rows))  # after every size, so a long run shows what it has
    print("\n" + open(os.path.join(args.out, "scale.md")).read())


if __name__ == "__main__":
    main()
