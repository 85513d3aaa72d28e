"""Benchmark: the training defaults, one change at a time, on a dataset's validation split.

    $VENV/bin/python benchmarks/bench_ablation.py --conf cdrib_game_video       # the table in docs/methods.md
    $VENV/bin/python benchmarks/bench_ablation.py --conf synthetic --epochs 2    # a quick check of the script
    $VENV/bin/python benchmarks/bench_ablation.py --conf ml100k_drama --rows 8 --seeds 0,1,2,3   # the defaults' seed spread

Each row trains one method (``--method``, default joint) through the train stage's launcher (Horovod, the
config's processes) with the settings of the row laid over the config, or reuses that exact model, and
reports the validation figure that model selection and early stopping use (``train.validation_metric``@``validation_k`` on
``validation_group``), the epoch kept and the wall time. The rows walk from the old defaults (pointwise
bce, dot products, dimension 32, every drawn negative kept, a random start) to the current ones (row 8:
the embeddings started from ALS-merged's factors, the temperature chosen on validation); rows 5 and 6 try row 4 with one thing changed: the lazy
Adam for the embedding tables or the history encoder for the users. Validation only, never test. The data
stages must have run on the config's warehouse (``jobs/features.py --conf ...``). Prints a Markdown table
and writes it, with every figure, as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from xdrec.config import load_config  # noqa: E402

RANDOM_START = ["train.init=random"]
ONE_TEMPERATURE = ["train.temperature=0.1"]
OLD = ["train.loss=bce", "train.temperature=0", "train.embedding_dim=32", "train.learning_rate=0.005",
       "train.mask_known_positives=false", *RANDOM_START]
# (label, overrides): each row changes one thing of the row before it, but rows 5 and 6 change one thing of
# row 4 (they were measured before the start from ALS became the default, and keep their numbers).
ROWS = [
    ("old defaults: bce, dot, dim 32, lr 0.005", OLD),
    ("+ sampled softmax (1,024 uniform negatives)", [*OLD, "train.loss=sampled_softmax"]),
    ("+ cosine / temperature 0.1", [*OLD, "train.loss=sampled_softmax", *ONE_TEMPERATURE]),
    ("+ dim 128, lr 0.01", [*OLD[-2:], *ONE_TEMPERATURE]),
    ("+ the user's training items left out of the negatives", [*RANDOM_START, *ONE_TEMPERATURE]),
    ("row 4 with the lazy Adam for the tables", [*RANDOM_START, *ONE_TEMPERATURE, "train.table_update=lazy"]),
    ("row 4 with the history encoder for the users", [*RANDOM_START, *ONE_TEMPERATURE, "train.user_encoder=history"]),
    ("+ the embeddings started from ALS-merged", ONE_TEMPERATURE),
    ("+ the temperature chosen on validation (the current defaults)", []),
]


def run_row(spark, conf: str, method: str, overrides: list[str]) -> dict:
    """Train ``method`` with ``overrides`` (or reuse that exact model) and rank the validation users with it."""
    from xdrec.training import artifact
    from xdrec.training.loop import Collective, selecting_key
    from xdrec.training.train import read_inputs, train_method
    from xdrec.training.validation import ranking_figures

    config = load_config(conf, [*overrides, "train.mlflow=false"])
    inputs = read_inputs(spark, config)
    started = time.perf_counter()
    meta = train_method(spark, config, method, inputs)
    seconds = time.perf_counter() - started
    saved = artifact.load(os.path.join(artifact.models_dir(config.warehouse, method), meta["model_version"]))
    figures = ranking_figures(saved.model, inputs.validation, config.train.validation_k, Collective())
    key = selecting_key(config.train, figures)
    return {"validation": figures[key], "selected_on": key, "seconds": round(seconds, 1),
            "model_version": meta["model_version"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default="cdrib_game_video")
    parser.add_argument("--method", default="joint")
    parser.add_argument("--epochs", type=int, default=0, help="cap train.target_epochs (0: the config's)")
    parser.add_argument("--rows", default="", help="indices into the rows, comma-separated (4: the defaults "
                        "with the random start, 5: them with the lazy Adam for the tables, 6: with the history "
                        "encoder, 7: started from ALS-merged, 8: the current defaults, the temperature chosen on validation); "
                        "empty: every row")
    parser.add_argument("--seeds", default="", help="train.seed values, comma-separated; empty: the config's")
    parser.add_argument("--out", default="reports/ablation.json")
    args = parser.parse_args()
    rows = [ROWS[int(index)] for index in args.rows.split(",")] if args.rows else ROWS
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [None]

    from xdrec.spark import get_spark

    spark = get_spark(load_config(args.conf).spark)
    cap = [f"train.target_epochs={args.epochs}"] if args.epochs else []
    results = []
    for label, overrides in rows:
        for seed in seeds:
            seeded = [f"train.seed={seed}"] if seed is not None else []
            print(f"== {label} {' '.join(seeded)} ==", flush=True)
            results.append({"row": label, "overrides": overrides, "seed": seed,
                            **run_row(spark, args.conf, args.method, [*overrides, *seeded, *cap])})
    key = results[0]["selected_on"]
    lines = [f"{args.conf}, {args.method}, validation {key}:", "", f"| settings | {key} | train s |", "|---|---|---|"]
    lines += [f"| {row['row']}{'' if row['seed'] is None else ', seed ' + str(row['seed'])} | "
              f"{row['validation']:.4f} | {row['seconds']:.0f} |" for row in results]
    print("\n".join(lines), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"conf": args.conf, "method": args.method, "rows": results, "table": lines}, handle, indent=2)


if __name__ == "__main__":
    main()
