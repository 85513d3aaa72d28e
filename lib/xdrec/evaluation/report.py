"""The evaluation report: a Markdown summary, the JSON behind it, and PNG plots, in one folder."""
from __future__ import annotations

import json
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and executors
import matplotlib.pyplot as plt  # noqa: E402

from xdrec import files  # noqa: E402
from xdrec.data.contract import USER_GROUPS  # noqa: E402


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def summary_rows(results: dict[str, Any], headline: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per model, full-ranking NDCG/HR by group, sampled cold figures, coverage."""
    hit_rate = headline.replace("NDCG", "HR")
    full, sampled = results["metrics"]["full"], results["metrics"].get("sampled", {})
    header = ["model"] + [f"{metric} {group}" for metric in (headline, hit_rate) for group in USER_GROUPS] + \
             ["MRR all", "AUC all"] + [f"sampled {metric} cold" for metric in ("MRR", hit_rate, headline)] + ["coverage"]
    rows = []
    ordered = sorted(full, key=lambda model: -full[model]["all"].get(headline, 0.0))
    for model in ordered:
        row = [model]
        row += [_cell(full[model].get(group, {}).get(metric)) for metric in (headline, hit_rate) for group in USER_GROUPS]
        row += [_cell(full[model]["all"].get("MRR")), _cell(full[model]["all"].get("AUC"))]
        row += [_cell(sampled.get(model, {}).get("cold", {}).get(metric)) for metric in ("MRR", hit_rate, headline)]
        coverage = results.get("coverage", {}).get(model)
        row.append("" if coverage is None else f"{coverage:.3f}")
        rows.append(row)
    return header, rows


def summary_table(results: dict[str, Any], headline: str) -> str:
    """An aligned plain-text table for the console."""
    header, rows = summary_rows(results, headline)
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in [header, *rows]]
    counts = results["counts"]["full"][rows[0][0]] if rows else {}
    users = ", ".join(f"{group} {counts.get(group, 0):,}" for group in USER_GROUPS)
    return "\n".join([f"full ranking over all unseen target items; users: {users}", *lines])


def sampled_users(test_users: dict[str, dict[str, int]]) -> list[str]:
    """The line saying which groups' test users were sampled (``evaluate.users_per_group``), if any was."""
    if all(counts["evaluated"] == counts["all"] for counts in test_users.values()):
        return []
    return ["Test users evaluated, a seeded sample (`evaluate.users_per_group`): " + ", ".join(
        f"{group} {counts['evaluated']:,} of {counts['all']:,}" for group, counts in sorted(test_users.items())) + "."]


def markdown(results: dict[str, Any], headline: str) -> str:
    header, rows = summary_rows(results, headline)
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    counts = results["counts"]
    any_model = next(iter(counts["full"]))
    lines = [
        f"# xdrec evaluation: target domain `{results['target_domain']}`",
        "",
        f"Full ranking: each test user's held-out items ranked among {results['protocols']['full']}; "
        f"users: " + ", ".join(f"{g} {counts['full'][any_model].get(g, 0):,}" for g in USER_GROUPS) + ".",
        f"Sampled protocol (literature, for comparison only): each test line ranked among "
        f"{results['protocols']['sampled']}; averaged over lines: "
        + ", ".join(f"{g} {counts['sampled'][any_model].get(g, 0):,}" for g in USER_GROUPS if 'sampled' in counts) + ".",
        "Coverage: share of the target catalogue in anybody's top-K recommendations (models scored by the "
        "score stage only).",
        *sampled_users(results.get("test_users", {})),
        "",
        *table,
        "",
    ]
    selected = results.get("selected")
    if selected:
        lines += [f"Served model: `{selected['method']}` ({selected['model_version']}), {selected['reason']}", ""]
    for bootstrap in (results.get("bootstrap") or {}, results.get("bootstrap_blend") or {}):
        if not bootstrap:
            continue
        lines += [f"Paired bootstrap over users, {bootstrap['metric']} (full ranking), "
                  f"`{bootstrap['transfer']}` minus `{bootstrap['baseline']}`, 95% interval:", ""]
        for group in USER_GROUPS:
            if group in bootstrap:
                b = bootstrap[group]
                lines.append(f"- {group}: {b['difference']:+.4f} [{b['low']:+.4f}, {b['high']:+.4f}] over "
                             f"{b['users']:,} users{' (significant)' if b['significant'] else ''}")
        group = bootstrap["picked_on"]
        lines += ["", f"`{bootstrap['transfer']}` minus each yardstick, {group} users, 95% interval:", ""]
        for yardstick, groups in bootstrap.get("versus", {}).items():
            if group in groups:
                b = groups[group]
                lines.append(f"- {yardstick}: {b['difference']:+.4f} [{b['low']:+.4f}, {b['high']:+.4f}]"
                             f"{' (significant)' if b['significant'] else ''}")
        lines.append("")
    rating = results["metrics"].get("rating", {})
    if rating:
        lines += ["Rating prediction baselines, over the rated test pairs (xdrec's models rank implicit feedback and "
                  "predict no ratings):", "",
                  "| model | " + " | ".join(f"{m} {g}" for m in ("MAE", "RMSE") for g in USER_GROUPS) + " |",
                  "|" + "---|" * 7]
        for model, groups in sorted(rating.items()):
            cells = [_cell(groups.get(group, {}).get(metric)) for metric in ("MAE", "RMSE") for group in USER_GROUPS]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Input Delta versions: " + ", ".join(f"{name} v{v}" for name, v in results["inputs"].items()), ""]
    return "\n".join(lines)


def warm_cold_bars(axis, models: list[str], values: dict[str, list[float]], title: str,
                   errors: dict[str, list[float]] | None = None) -> None:
    """Side-by-side bars of each model's figure for warm and cold-start users (``values[group]``)."""
    width = 0.4
    for offset, group in ((-width / 2, "warm"), (width / 2, "cold")):
        axis.bar([i + offset for i in range(len(models))], values[group], width,
                 yerr=None if errors is None else errors[group], label=f"{group} users")
    axis.set_xticks(range(len(models)), models, rotation=30, ha="right")
    axis.set_title(title)
    axis.legend()


def plot_groups(results: dict[str, Any], metrics: list[str], path: str) -> None:
    """Bars of each metric for warm vs cold-start users, per model (full ranking)."""
    full = results["metrics"]["full"]
    models = sorted(full)
    figure, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        values = {group: [full[model].get(group, {}).get(metric, 0.0) for model in models] for group in ("warm", "cold")}
        warm_cold_bars(axis, models, values, f"{metric} (full ranking)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_training(histories: dict[str, list[dict]], path: str) -> None:
    """Training loss per epoch of each method, phases one after the other."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for method, history in sorted(histories.items()):
        if history:
            axis.plot(range(1, len(history) + 1), [epoch["loss"] for epoch in history], marker="o", label=method)
    axis.set_xlabel("epoch (all phases)")
    axis.set_ylabel("training loss")
    axis.set_title("Training curves")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def read(folder: str) -> dict[str, Any] | None:
    """The results of the report in ``folder`` (its metrics.json), or None when there is none to read."""
    try:
        return files.read_json(files.join(folder, "metrics.json"))
    except (OSError, ValueError):
        return None


def write(folder: str, results: dict[str, Any], headline: str) -> str:
    """Write summary.md, metrics.json and the plots to ``folder``, replacing it whole."""
    with files.staged_folder(folder) as staging:
        with open(os.path.join(staging, "metrics.json"), "w") as handle:
            json.dump(results, handle, indent=2, sort_keys=True, default=str)
        with open(os.path.join(staging, "summary.md"), "w") as handle:
            handle.write(markdown(results, headline))
        plot_groups(results, [headline, headline.replace("NDCG", "HR")], os.path.join(staging, "warm_vs_cold.png"))
        plot_training(results.get("histories", {}), os.path.join(staging, "training_curves.png"))
    return folder
