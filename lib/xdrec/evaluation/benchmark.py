"""The benchmark: every method and baseline on each configured dataset, over several seeds, in one report.

For each dataset config the data stages and tuning run once (fetch, ingest, features, tune); then for
each seed the model stages run with ``train.seed``, ``evaluate.seed`` and ``als.seed`` set to it (train,
score, evaluate), and the seed's evaluation report is kept. The summary averages every figure over the
seeds (mean ± std) and is written as Markdown, JSON and PNG to the output folder, and the Markdown is
copied to ``docs/`` when asked. Each seed's paired bootstrap intervals are listed, and with several seeds
one more over the seeds together: each test user's mean over the seeds' models
(:func:`~xdrec.evaluation.evaluate.seed_pooled`), for the best transfer model and for the served one.

    python jobs/benchmark.py --conf demo --conf cdrib_game_video --seeds 1,2,3 --out reports/benchmark

Each config's own ``train.methods`` are trained unless ``--methods`` names others (``all``: every method
of :data:`xdrec.config.METHODS`). A config given by path is named in the report by its file name.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

from xdrec import files
from xdrec.config import Config, METHODS, load_config
from xdrec.data import tables
from xdrec.data.contract import USER_GROUPS
from xdrec.evaluation.evaluate import SERVED, compare_best, headline_k, headline_metric, seed_pooled
from xdrec.locks import warehouse_lock
from xdrec.logs import get_logger
from xdrec.training.selection import BLEND, COMBINED, ENSEMBLE, transfer_methods

log = get_logger("benchmark")

# Once per dataset: the data, and the settings tuned on its validation split (shared by every seed).
PREPARE_STAGES = ("fetch", "ingest", "features", "tune")
MODEL_STAGES = ("train", "score", "evaluate")
PROTOCOLS = ("full", "sampled")


def dataset_label(config_name: str) -> str:
    """A config's name in the report and its folder: ``demo``, or a file's name without ``.yaml`` for a path."""
    return Path(config_name).stem


def seeded(config_name: str, overrides: list[str], seed: int) -> Config:
    """The config of one seed's run; every model is scored, so each one's catalogue coverage is reported."""
    return load_config(config_name, ["score.models=trained", *overrides, f"train.seed={seed}",
                                     f"evaluate.seed={seed}", f"als.seed={seed}"])


def aggregate(per_seed: list[dict[str, Any]]) -> dict:
    """{protocol: {model: {group: {metric: {"mean", "std", "seeds"}}}}} over the seeds' evaluations."""
    collected: dict = {}
    for results in per_seed:
        for protocol, models in results["metrics"].items():
            for model, groups in models.items():
                for group, metrics in groups.items():
                    for metric, value in metrics.items():
                        (collected.setdefault(protocol, {}).setdefault(model, {}).setdefault(group, {})
                         .setdefault(metric, []).append(value))
    return {protocol: {model: {group: {metric: {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                                "seeds": len(values)}
                                       for metric, values in metrics.items()}
                               for group, metrics in groups.items()}
                       for model, groups in models.items()}
            for protocol, models in collected.items()}


def dataset_table(name: str, summary: dict, ks: list[int], coverage: dict[str, float] | None = None) -> list[str]:
    """Markdown rows: per model, full-ranking NDCG@10/HR@10 warm and cold, sampled cold MRR/NDCG@10/HR@10,
    and the catalogue coverage of its top-K lists (mean over seeds) when given."""
    k = headline_k(ks)
    columns = [("full", group, f"{metric}@{k}") for metric in ("NDCG", "HR")
               for group in USER_GROUPS if group != "all"]
    columns += [("sampled", "cold", metric) for metric in ("MRR", f"NDCG@{k}", f"HR@{k}")]
    header = ["model"] + [f"{protocol} {metric} {group}" for protocol, group, metric in columns]
    header += ["coverage"] if coverage else []
    lines = [f"### {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    full = summary["full"]
    for model in sorted(full, key=lambda m: -full[m].get("cold", {}).get(f"NDCG@{k}", {}).get("mean", 0.0)):
        cells = [model]
        for protocol, group, metric in columns:
            figure = summary.get(protocol, {}).get(model, {}).get(group, {}).get(metric)
            cells.append("" if figure is None else f"{figure['mean']:.4f} ± {figure['std']:.4f}")
        if coverage:
            cells.append(f"{coverage[model]:.3f}" if model in coverage else "")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", verdict(summary, k), ""]


# What the best transfer method must beat on cold-start users: the target domain alone, the most popular
# items, and Spark ALS on both domains merged and EMCDR over it (issue 10's bar).
YARDSTICKS = ("target_only", "popularity", "als_merged", "emcdr")


def _listing(texts: list[str], word: str) -> str:
    return texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} {word} {texts[-1]}"


def verdict(summary: dict, k: int) -> str:
    """Whether the best transfer model (a method or their ensemble) beats each of :data:`YARDSTICKS` that ran
    on cold-start users (full-ranking NDCG@k, mean over seeds), and where it stands against the best
    baseline."""
    full, metric = summary["full"], f"NDCG@{k}"

    def cold(model: str) -> float:
        return full.get(model, {}).get("cold", {}).get(metric, {}).get("mean", float("nan"))

    transfer = transfer_methods([model for model in (*METHODS, ENSEMBLE) if model in full])
    baselines = [model for model in full if model not in METHODS and model not in COMBINED]
    if not transfer:
        return "No transfer method was trained."
    best = max(transfer, key=cold)
    yardsticks = {model: f"{model} ({cold(model):.4f})" for model in YARDSTICKS if model in full}
    beaten = [text for model, text in yardsticks.items() if cold(best) > cold(model)]
    not_beaten = [text for model, text in yardsticks.items() if not cold(best) > cold(model)]
    if not not_beaten:
        standing = f"beats {_listing(beaten, 'and')}"
    elif not beaten:
        standing = f"does NOT beat {_listing(not_beaten, 'or')}"
    else:
        standing = f"beats {_listing(beaten, 'and')} but NOT {_listing(not_beaten, 'or')}"
    line = f"Cold-start users, full-ranking {metric}: the best transfer model, {best} ({cold(best):.4f}), {standing}"
    if baselines:
        best_baseline = max(baselines, key=cold)
        line += f"; the best baseline is {best_baseline} ({cold(best_baseline):.4f})"
    if BLEND in full:
        line += f"; the blend of the best trained and factor models scores {cold(BLEND):.4f}"
    return line + "."


def bootstrap_lines(bootstraps: list[dict], labels: list[str]) -> list[str]:
    """Markdown lines: per run (``labels``: "seed 1", ...), the paired bootstrap 95% interval of the best
    transfer method (or the blend, or the served model) minus each of :data:`YARDSTICKS` and, for the blend
    and the served model, each trained method and the ensemble (full ranking, the users it was picked on)."""
    lines = []
    for label, bootstrap in zip(labels, bootstraps):
        versus = bootstrap.get("versus", {})
        group = bootstrap.get("picked_on")
        # target_only is a yardstick and a method: dict.fromkeys lists it once
        against_methods = bootstrap.get("transfer") in (BLEND, SERVED)
        others = dict.fromkeys(YARDSTICKS + ((*METHODS, ENSEMBLE) if against_methods else ()))
        cells = [f"{yardstick} {b['difference']:+.4f} [{b['low']:+.4f}, {b['high']:+.4f}]"
                 for yardstick in others if group in versus.get(yardstick, {})
                 for b in [versus[yardstick][group]]]
        if cells:
            lines.append(f"- {label}, `{bootstrap['transfer']}` minus, {bootstrap['metric']} {group} users "
                         f"(paired bootstrap, 95%): " + "; ".join(cells))
    return [*lines, ""] if lines else []


def together_label(runs: str) -> str:
    """How the summary names the seeds-together comparison of ``runs`` ("seeds 1, 2, 3")."""
    return f"{runs} together (each test user's mean over them)"


def pooled_bootstraps(spark: SparkSession, config: Config, per_seed: list[dict], summary: dict) -> dict[str, dict]:
    """The seeds' evaluations (``per_seed``, of ``config``'s warehouse; ``summary``, their :func:`aggregate`)
    together, each test user's values read at the version its seed's evaluation wrote and pooled by
    :func:`~xdrec.evaluation.evaluate.seed_pooled`: the best transfer model on the seeds' mean against every
    other model (``best``), and each seed's served model against them (``served``), as
    :func:`~xdrec.evaluation.evaluate.compare_best` gives them."""
    per_user = seed_pooled([tables.read(spark, config.warehouse, tables.USER_METRICS,
                                        results["written"][tables.USER_METRICS]) for results in per_seed],
                           [results["selected"]["method"] for results in per_seed]).cache()  # read by both
    metric, samples, seed = headline_metric(per_seed[0]["ks"]), config.evaluate.bootstrap_samples, config.evaluate.seed
    full = summary["full"]
    means = {model: {group: {name: figure["mean"] for name, figure in metrics.items()}
                     for group, metrics in groups.items()}
             for model, groups in full.items()}
    served = [results["metrics"]["full"][results["selected"]["method"]] for results in per_seed]
    means[SERVED] = {group: {metric: float(np.mean([groups[group][metric] for groups in served]))}
                     for group in USER_GROUPS if all(metric in groups.get(group, {}) for groups in served)}
    methods = [model for model in full if model in METHODS or model == ENSEMBLE]
    baselines = [model for model in full if model not in METHODS and model not in COMBINED]
    pooled = {"best": compare_best(per_user, methods, baselines, metric, samples, seed, means),
              "served": compare_best(per_user, [SERVED], [*baselines, *methods], metric, samples, seed, means)}
    per_user.unpersist()
    return pooled


def plot(datasets: dict[str, dict], path: str) -> None:
    """Full-ranking NDCG@10 of each model, warm vs cold users, one panel per dataset (mean over seeds)."""
    from xdrec.evaluation.report import plt, warm_cold_bars

    figure, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4), squeeze=False)
    for axis, (name, entry) in zip(axes[0], datasets.items()):
        full = entry["summary"]["full"]
        metric = headline_metric(entry["ks"])
        models = sorted(full)
        figures = {group: [full[m].get(group, {}).get(metric, {}) for m in models] for group in ("warm", "cold")}
        warm_cold_bars(axis, models, {g: [f.get("mean", 0.0) for f in fs] for g, fs in figures.items()},
                       f"{name}: {metric} (full ranking)",
                       errors={g: [f.get("std", 0.0) for f in fs] for g, fs in figures.items()})
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_benchmark(config_names: list[str], overrides: list[str], seeds: list[int], out: str,
                  docs: str | None) -> dict:
    """Run the benchmark and write the report folder ``out``; return the per-dataset summaries."""
    from xdrec.pipeline import run_stage
    from xdrec.spark import get_spark

    datasets: dict[str, dict] = {}
    os.makedirs(out, exist_ok=True)
    for name in config_names:
        label = dataset_label(name)
        base = load_config(name, overrides)
        spark = get_spark(base.spark)
        started = time.perf_counter()
        log.info(f"=== {label}: {base.data.name}, seeds {seeds} ===")
        with warehouse_lock(base.warehouse, "benchmark"):  # every seed's stages, as one pipeline run
            # At the first seed's seeds: the ALS fit the tune saves is then the one that seed's train stage needs.
            prepared = seeded(name, overrides, seeds[0])
            for stage in PREPARE_STAGES:
                run_stage(spark, prepared, stage)
            per_seed, training_seconds, reused = [], 0.0, 0
            for seed in seeds:
                config = seeded(name, overrides, seed)
                results = {stage: run_stage(spark, config, stage) for stage in MODEL_STAGES}
                per_seed.append(results["evaluate"])
                # A reused model (saved by an earlier run, or earlier in this train stage, as ALS-merged is when
                # the methods start from it) took no time here: count the time it took to train then.
                models = results["train"]["models"].values()
                training_seconds += sum(meta["train_seconds"] for meta in models)
                reused += sum(bool(meta.get("reused")) for meta in models)
                seed_folder = os.path.join(out, label, f"seed{seed}")
                shutil.rmtree(seed_folder, ignore_errors=True)
                with files.local_copy(files.join(config.warehouse, "reports", "latest")) as report:
                    shutil.copytree(report, seed_folder)
            means = aggregate(per_seed)
            pooled = pooled_bootstraps(spark, base, per_seed, means) if len(seeds) > 1 else {}
        datasets[label] = {
            "dataset": base.data.name, "source_domain": base.data.source_domain,
            "target_domain": base.data.target_domain, "seeds": seeds, "ks": per_seed[0]["ks"],
            "summary": means, "bootstrap": [results.get("bootstrap") or {} for results in per_seed],
            "bootstrap_blend": [results.get("bootstrap_blend") or {} for results in per_seed],
            "bootstrap_pooled": pooled,
            "coverage": {model: float(np.mean([results["coverage"][model] for results in per_seed]))
                         for model in per_seed[0].get("coverage", {})
                         if all(model in results.get("coverage", {}) for results in per_seed)},
            "seconds": round(time.perf_counter() - started, 1),
            "training_seconds": round(training_seconds, 1), "reused_models": reused,
            "config": base.to_dict(), "inputs": per_seed[0]["inputs"],
        }
        log.info(f"=== {label} done in {datasets[label]['seconds'] / 60:.1f} min ===")
        # Written after every dataset, so a long benchmark cut short keeps what it finished.
        summary = write_report(datasets, out, docs)
    log.info("summary:\n" + summary)
    return datasets


def write_report(datasets: dict[str, dict], out: str, docs: str | None) -> str:
    """Write ``benchmark.json``, ``summary.md`` and the plot into ``out`` (the summary also to ``docs``)."""
    with open(os.path.join(out, "benchmark.json"), "w") as handle:
        json.dump(datasets, handle, indent=2, sort_keys=True)
    plot(datasets, os.path.join(out, "ndcg_warm_vs_cold.png"))
    lines = ["# xdrec benchmark", "",
             "Mean ± std over each dataset's seeds (train and sampled-negative seeds). Full "
             "ranking: each test user's held-out items among all target items the user has not trained on, "
             "averaged over users. Sampled (labelled): each test line among 999 sampled negatives, averaged "
             "over lines, as in the cold-start literature.", ""]
    for name, entry in datasets.items():
        timing = f"{entry['seconds'] / 60:.1f} min wall on this machine"
        if entry.get("reused_models"):
            timing += (f" ({entry['reused_models']} reused rather than trained again; training all models took "
                       f"{entry['training_seconds'] / 60:.1f} min)")
        lines.append(f"{entry['dataset']} ({entry['source_domain']} -> {entry['target_domain']}), seeds "
                     f"{', '.join(map(str, entry['seeds']))}, {timing}, "
                     f"input versions {entry['inputs']}:")
        lines.append("")
        lines += dataset_table(name, entry["summary"], entry["ks"], entry.get("coverage"))
        labels = [f"seed {seed}" for seed in entry["seeds"]]
        lines += bootstrap_lines(entry.get("bootstrap", []), labels)
        lines += bootstrap_lines(entry.get("bootstrap_blend", []), labels)
        pooled = entry.get("bootstrap_pooled") or {}
        label = together_label(f"seeds {', '.join(map(str, entry['seeds']))}")
        lines += bootstrap_lines([pooled.get("best", {}), pooled.get("served", {})], [label, label])
    summary = "\n".join(lines)
    with open(os.path.join(out, "summary.md"), "w") as handle:
        handle.write(summary)
    if docs:
        os.makedirs(os.path.dirname(os.path.abspath(docs)), exist_ok=True)
        shutil.copyfile(os.path.join(out, "summary.md"), docs)
    return summary
