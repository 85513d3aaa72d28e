"""Model selection's blend at scale: the peak memory and time of ``selection.fit_blend`` in a fresh process.

    $VENV/bin/python benchmarks/bench_blend.py                     # bench_scale's 64x shapes, ~1 min
    $VENV/bin/python benchmarks/bench_blend.py --users 86911 --items 59296 --candidates 23718   # its 16x

The train stage blends two models where it validates better (the finalists of two temperatures, and a
trained method with a factor model): it validates each weight of the blend, then builds the chosen one for
every user, in the driver's process. Two factor models of random vectors stand in for the two models (the
blend sees their user and item vectors only), or with ``--towers`` two untrained two-tower models with item
text (the finalists), ranked on a validation set of the train stage's size.
Peak RSS is the process's own (``ru_maxrss``), after building the two models and after the blend.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from xdrec.config import TrainConfig
from xdrec.modeling.model import FactorModel, TwoTower
from xdrec.training.selection import fit_blend
from xdrec.training.validation import ValidationSet


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=386_560)
    parser.add_argument("--items", type=int, default=237_184)
    parser.add_argument("--candidates", type=int, default=94_874, help="target items validation ranks over")
    parser.add_argument("--validation-users", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--towers", action="store_true", help="two-tower models with 384-dimensional item text")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.towers:
        models = [TwoTower(args.users, args.items, args.dim, text_dim=384, temperature=temperature).eval()
                  for temperature in (0.4, 0.8)]
    else:
        models = [FactorModel(rng.normal(size=(args.users, args.dim)).astype(np.float32),
                              rng.normal(size=(args.items, args.dim)).astype(np.float32)) for _ in range(2)]
    candidates = np.arange(args.items - args.candidates, args.items, dtype=np.int64)
    users = rng.choice(args.users, size=args.validation_users, replace=False).astype(np.int64)
    validation = ValidationSet(users=users, cold=rng.random(len(users)) < 0.5,
                               relevant=[rng.choice(candidates, size=2) for _ in users],
                               seen=[rng.choice(candidates, size=5) for _ in users], candidates=candidates)
    models_mib = peak_mib()
    started = time.perf_counter()
    _, chosen = fit_blend(*models, validation, TrainConfig(), args.users, args.items)
    result = {"models": "two-tower" if args.towers else "factor", "users": args.users, "items": args.items,
              "candidates": args.candidates, "dim": args.dim, "validation_users": args.validation_users,
              "weights": len(chosen["validation"]),
              "seconds": round(time.perf_counter() - started, 1),
              "peak_mib_with_the_models": round(models_mib), "peak_mib_after_the_blend": round(peak_mib())}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
