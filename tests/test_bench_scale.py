"""benchmarks/bench_scale.py keeps working: its generator's shape, its config, its memory sampler and its report.
Its run through every stage is the pipeline's, which tests/test_pipeline_e2e.py runs; the benchmark itself
runs it at the sizes docs/performance.md gives."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pandas as pd

from xdrec.config import load_config

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


def test_its_config_loads_with_the_generated_domains_and_no_tuning(tmp_path):
    counts = bench_scale.generate(str(tmp_path / "raw"), 0.02, seed=0)
    config = load_config(bench_scale.config_for(str(tmp_path), str(tmp_path / "raw"), 0.02, train_steps=250))
    assert set(config.data.domains) == set(counts) and not config.tune.enabled
    assert config.train.max_steps_per_epoch == 250
    assert config.train.methods == ["joint"] and config.score.model == "joint"
    assert config.evaluate.users_per_group == bench_scale.EVALUATED_USERS


def test_the_sampler_sees_a_child_python_process_at_its_peak():
    sampler = bench_scale.PeakMemory(period=0.05)
    sampler.start()
    # 300 MiB written, so resident, for a second.
    subprocess.run([sys.executable, "-c", "import time; block = b'x' * (300 << 20); time.sleep(1)"], check=True)
    peaks = sampler.stop()
    assert peaks["other_python"] >= 300 and peaks["driver_python"] > 0


def test_growth_and_the_report_from_two_sizes(tmp_path):
    memory = {"driver_python": 600, "spark_jvm": 1200}
    rows = [{"size": 0.02, "stage": stage, "interactions": 3000, "seconds": 10.0 + number, "rows_per_s": 300,
             "peak_rss_mib": memory} for number, stage in enumerate(bench_scale.STAGES)]
    # A second size with twice the rows in twice the time: a constant cost per row.
    doubled = [dict(row, size=0.04, interactions=row["interactions"] * 2, seconds=row["seconds"] * 2) for row in rows]
    ratios = bench_scale.growth(rows + doubled)
    assert [ratio["per_row_growth"] for ratio in ratios] == [1.0] * len(bench_scale.STAGES)
    bench_scale.write_report(str(tmp_path / "out"), rows + doubled, ratios)
    assert {"scale.json", "scale.md", "scale.png"} <= set(os.listdir(tmp_path / "out"))


def test_growth_and_the_report_of_the_first_stages_only(tmp_path):
    """--stages ingest,features: the report covers the stages that ran and no others."""
    rows = [{"size": size, "stage": stage, "interactions": 3000 * size, "seconds": 10.0 * size, "rows_per_s": 300,
             "peak_rss_mib": {"driver_python": 600}} for size in (1, 4) for stage in ("ingest", "features")]
    ratios = bench_scale.growth(rows)
    assert [ratio["stage"] for ratio in ratios] == ["ingest", "features"]
    bench_scale.write_report(str(tmp_path / "out"), rows, ratios)
    assert "| features | 1x → 4x |" in (tmp_path / "out" / "scale.md").read_text()
