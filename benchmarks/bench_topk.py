"""The scoring kernel against the machine: exact top-k of users × items, the whole score matrix at once
(``addmm`` then :func:`xdrec.modeling.topk.stable_top_k`) against :func:`xdrec.modeling.topk.blocked_top_k`,
both as fractions of this machine's fp32 GEMM rate.

    $VENV/bin/python benchmarks/bench_topk.py                      # 4,096 users × 100k items, dim 32, k 10 (~3 min)
    $VENV/bin/python benchmarks/bench_topk.py --users 1024 --batches 1024 --out /tmp/topk.json

- **GEMM peak**: the best of 3 ``4096³`` fp32 matmuls, in GFLOP/s.
- **Each kernel**: the best of ``--repeats`` passes over all ``--users`` users in batches, timed from the user
  vectors to the top-k; effective GFLOP/s counts the product only (2 × users × items × dim), so its
  fraction of the GEMM peak is how close the kernel gets to the product alone.

Random normal vectors, so ties are rare; both kernels' top-k must name the same items for every user (a
different score rounding between a tile's product and the whole matrix's could only swap near-equal
scores: the check allows that and reports the count). Threads: torch's default (``--threads`` to set).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from xdrec.modeling.topk import blocked_top_k, stable_top_k


def gemm_peak(size: int = 4096, repeats: int = 3) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def whole_matrix(users, items_t, bias, k):
    return stable_top_k(torch.addmm(bias, users, items_t), k)


def run_kernel(kernel, users, items_t, bias, k, batch, repeats):
    """(best seconds for all users, the positions of the last pass)."""
    results = []

    def one_pass():
        results.clear()
        for start in range(0, users.shape[0], batch):
            results.append(kernel(users[start:start + batch], items_t, bias, k)[0])

    best = min(_timed(one_pass) for _ in range(repeats))
    return best, torch.cat(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=4096)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--tiles", default="256,512,1024,2048", help="blocked kernel: items per tile")
    parser.add_argument("--batches", default="1024,2048,4096", help="users per batch (both kernels)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0: torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    users, items_t = torch.randn(args.users, args.dim), torch.randn(args.dim, args.items)
    bias = torch.randn(args.items) * 0.1
    flops = 2 * args.users * args.items * args.dim
    peak = gemm_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GEMM peak (4096^3 fp32): {peak:.0f} GFLOP/s")
    print(f"{args.users:,} users x {args.items:,} items, dim {args.dim}, k {args.k}")
    print(f"{'kernel':<28}{'users/s':>10}{'GFLOP/s':>10}{'of peak':>9}{'differ':>8}")
    rows, reference = [], {}
    for batch in map(int, args.batches.split(",")):
        kernels = [(f"whole matrix, batch {batch}", None, whole_matrix)]
        kernels += [(f"blocked {tile}, batch {batch}", tile,
                     lambda u, v, b, k, tile=tile: blocked_top_k(u, v, b, k, tile_items=tile))
                    for tile in map(int, args.tiles.split(","))]
        for name, tile, kernel in kernels:
            seconds, positions = run_kernel(kernel, users, items_t, bias, args.k, batch, args.repeats)
            if "positions" not in reference:
                reference["positions"] = positions
            differ = int((torch.sort(positions, dim=1).values
                          != torch.sort(reference["positions"], dim=1).values).any(dim=1).sum())
            gflops = flops / seconds / 1e9
            rows.append({"kernel": "whole" if tile is None else "blocked", "tile_items": tile, "batch": batch,
                         "seconds": seconds, "users_per_s": args.users / seconds, "gflops": gflops,
                         "fraction_of_peak": gflops / peak, "users_differing": differ})
            print(f"{name:<28}{args.users / seconds:>10,.0f}{gflops:>10.1f}{gflops / peak:>9.1%}{differ:>8}")
    best = max(rows, key=lambda row: row["gflops"])
    whole = max((row for row in rows if row["kernel"] == "whole"), key=lambda row: row["gflops"])
    print(f"best: {best['kernel']} (tile {best['tile_items']}, batch {best['batch']}) at {best['fraction_of_peak']:.1%} "
          f"of the GEMM peak, {best['gflops'] / whole['gflops']:.1f}x the whole-matrix kernel")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"gemm_peak_gflops": peak, "threads": torch.get_num_threads(), "users": args.users,
                       "items": args.items, "dim": args.dim, "k": args.k, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
