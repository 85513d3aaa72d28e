"""benchmarks/bench_scale.py keeps working: its generator's shape, and a small run of every stage (the CI smoke)."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pandas as pd

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_scale.py")
_SPEC = importlib.util.spec_from_file_location("bench_scale", _PATH)
bench_scale = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_scale)


def _read(folder, domain):
    interactions = pd.concat(pd.read_csv(os.path.join(folder, domain, "interactions", name))
                             for name in sorted(os.listdir(os.path.join(folder, domain, "interactions"))))
    return interactions, pd.read_csv(os.path.join(folder, domain, "items.csv"))


def test_the_generator_has_a_long_tail_partial_overlap_and_titles(tmp_path):
    counts = bench_scale.generate(str(tmp_path), 0.5, seed=3)
    source, source_items = _read(str(tmp_path), bench_scale.SOURCE)
    target, _ = _read(str(tmp_path), bench_scale.TARGET)
    assert counts[bench_scale.SOURCE]["interactions"] == len(source)
    assert not source.duplicated(["user_id", "item_id"]).any()
    popularity = source["item_id"].value_counts().to_numpy()
    assert popularity[: len(source_items) // 100].sum() / len(source) > 0.05  # the top 1% of items: over 5%
    activity = source["user_id"].value_counts().to_numpy()
    assert activity.max() > 4 * np.median(activity)
    shared = set(source["user_id"]) & set(target["user_id"])
    assert 0.7 < len(shared) / len(set(source["user_id"]) | set(target["user_id"])) < 0.9
    assert source_items["title"].str.split().str.len().eq(4).all() and source_items["title"].is_unique
    assert bench_scale.generate(str(tmp_path / "again"), 0.5, seed=3) == counts


def test_a_small_run_measures_every_stage_and_writes_its_report(spark, tmp_path):
    rows = bench_scale.run_size(spark, 0.02, str(tmp_path / "x0.02"), seed=0)
    assert [row["stage"] for row in rows] == list(bench_scale.STAGES)
    assert all(row["seconds"] > 0 and row["peak_rss_mib"]["spark_jvm"] > 0 for row in rows)
    train = next(row for row in rows if row["stage"] == "train")
    assert train["peak_rss_mib"]["other_python"] > 0  # Horovod's training processes were seen
    # A second size with twice the rows in twice the time: a constant cost per row.
    doubled = [dict(row, size=0.04, interactions=row["interactions"] * 2, seconds=row["seconds"] * 2) for row in rows]
    ratios = bench_scale.growth(rows + doubled)
    assert [ratio["per_row_growth"] for ratio in ratios] == [1.0] * len(bench_scale.STAGES)
    bench_scale.write_report(str(tmp_path / "out"), rows + doubled, ratios)
    assert {"scale.json", "scale.md", "scale.png"} <= set(os.listdir(tmp_path / "out"))
