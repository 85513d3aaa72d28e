"""A LightGCN user and item encoder over both domains' training graph, in plain torch, on a CDRIB direction's
validation split: the evidence behind not building it into xdrec (docs/methods.md, "A graph encoder").

LightGCN (He et al., SIGIR 2020): every user and item has a free embedding; ``--layers`` rounds of
propagation over the symmetric-normalised user-item graph of both domains, and a node's vector is the mean
of its layers. ``--layers 0`` is the free-embedding model (matrix factorisation). It trains as xdrec's
default does: cosine scores at a temperature, each positive against ``--negatives`` items drawn uniformly
from its own domain (a draw of the positive masked), Adam, the whole graph propagated every step. After
every epoch the target domain's cold-start validation users (common users with source history only) are
ranked over every target item, full-ranking NDCG@10, the figure xdrec's train stage selects by. The test
split is never read.

    python benchmarks/lightgcn_prototype.py --source video_game --target game_video --layers 2   # Video -> Game
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

CDRIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "cdrib")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cdrib", default=CDRIB, help="the CDRIB folder (../shared/data/cdrib)")
    parser.add_argument("--source", default="video_game", help="folder whose train.txt is the source domain")
    parser.add_argument("--target", default="game_video", help="folder of the target's train.txt and valid.txt")
    parser.add_argument("--common-users", type=int, default=2179, help="ids below this name one user in both")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.005)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--negatives", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--als-start", action="store_true",
                        help="start the embeddings from implicit ALS on both domains (as train.init: als_merged)")
    parser.add_argument("--als-rank", type=int, default=128)
    parser.add_argument("--als-regularization", type=float, default=3.02)
    parser.add_argument("--als-alpha", type=float, default=89.3)
    parser.add_argument("--als-iterations", type=int, default=10)
    return parser.parse_args()


def implicit_als(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, rank: int,
                 regularization: float, alpha: float, iterations: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit-feedback ALS (Hu, Koren and Volinsky, 2008) with Spark's scaling of the regularisation by a
    row's number of interactions: (user factors, item factors)."""
    def solve(rows: np.ndarray, columns: np.ndarray, count: int, fixed: torch.Tensor) -> torch.Tensor:
        order = np.argsort(rows, kind="stable")
        rows, columns = torch.tensor(rows[order]), torch.tensor(columns[order])
        degree = torch.bincount(rows, minlength=count)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), degree.cumsum(0)])
        gram = fixed.T @ fixed
        solved = torch.zeros(count, fixed.shape[1])
        for first in range(0, count, chunk):
            last = min(first + chunk, count)
            edges = slice(int(offsets[first]), int(offsets[last]))
            owner, vectors = rows[edges] - first, fixed[columns[edges]]
            outer = torch.zeros(last - first, rank, rank).index_add_(0, owner, vectors[:, :, None] * vectors[:, None, :])
            right = torch.zeros(last - first, rank).index_add_(0, owner, (1 + alpha) * vectors)
            lam = regularization * degree[first:last].clamp(min=1).float()
            left = gram + alpha * outer + lam[:, None, None] * torch.eye(rank)
            solved[first:last] = torch.linalg.solve(left, right)
        return solved * (degree > 0).float()[:, None]

    generator = torch.Generator().manual_seed(0)
    item_factors = torch.randn(num_items, rank, generator=generator) * 0.01
    for _ in range(iterations):
        user_factors = solve(users, items, num_users, item_factors)
        item_factors = solve(items, users, num_items, user_factors)
    return user_factors, item_factors


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    read = lambda folder, split: np.loadtxt(os.path.join(args.cdrib, folder, f"{split}.txt"), dtype=np.int64)
    source, target, valid = read(args.source, "train"), read(args.target, "train"), read(args.target, "valid")
    # Ids below the common-user count name one person in both domains; the others are per domain.
    common = args.common_users
    raw_users = np.concatenate([np.where(source[:, 0] < common, source[:, 0], common + 2 * source[:, 0]),
                                np.where(target[:, 0] < common, target[:, 0], common + 2 * target[:, 0] + 1),
                                valid[:, 0]])
    ids, users = np.unique(raw_users, return_inverse=True)
    num_users, source_items = len(ids), int(source[:, 1].max()) + 1
    num_items = source_items + int(max(target[:, 1].max(), valid[:, 1].max())) + 1
    edge_users = users[:len(source) + len(target)]
    edge_items = np.concatenate([source[:, 1], source_items + target[:, 1]])
    edge_domains = np.repeat([0, 1], [len(source), len(target)])
    valid_users = users[len(source) + len(target):]

    nodes = num_users + num_items
    user_degree = np.bincount(edge_users, minlength=num_users)
    item_degree = np.bincount(edge_items, minlength=num_items)
    weights = torch.tensor(1 / np.sqrt(user_degree[edge_users] * item_degree[edge_items]), dtype=torch.float32)
    rows = torch.tensor(np.concatenate([edge_users, num_users + edge_items]))
    columns = torch.tensor(np.concatenate([num_users + edge_items, edge_users]))
    graph = torch.sparse_coo_tensor(torch.stack([rows, columns]), torch.cat([weights, weights]),
                                    (nodes, nodes), check_invariants=False).coalesce().to_sparse_csr()
    relevant: dict[int, set[int]] = {}
    for user, item in zip(valid_users, valid[:, 1]):
        relevant.setdefault(int(user), set()).add(source_items + int(item))
    ranked_users = torch.tensor(sorted(relevant))
    discounts = 1 / np.log2(np.arange(2, 12))

    def ranked_ndcg(user_vectors: torch.Tensor, target_item_vectors: torch.Tensor) -> float:
        """Mean NDCG@10 of the cold-start validation users, ranked over every target item."""
        top = (user_vectors[ranked_users] @ target_item_vectors.T).topk(10, dim=1).indices.numpy() + source_items
        figures = [sum(discounts[rank] for rank, item in enumerate(items) if item in relevant[int(user)])
                   / discounts[:min(len(relevant[int(user)]), 10)].sum() for user, items in zip(ranked_users, top)]
        return float(np.mean(figures))

    embedding = torch.nn.Parameter(torch.randn(nodes, args.dim) * 0.1)
    if args.als_start:
        assert args.als_rank == args.dim, "the prototype starts from factors of the embeddings' width"
        started = time.time()
        user_factors, item_factors = implicit_als(edge_users, edge_items, num_users, num_items, args.als_rank,
                                                  args.als_regularization, args.als_alpha, args.als_iterations)
        factors = torch.cat([user_factors, item_factors])
        norms = factors.norm(dim=1)
        print(f"ALS in {time.time() - started:.0f} s; its own validation cold NDCG@10: "
              f"{ranked_ndcg(user_factors, item_factors[source_items:]):.4f}")
        with torch.no_grad():  # rows scaled to the random start's mean norm, as TwoTower.start_from_factors does
            embedding[norms > 0] = factors[norms > 0] * (0.1 * args.dim ** 0.5 / norms[norms > 0].mean())
    optimizer = torch.optim.Adam([embedding], lr=args.learning_rate)
    print(f"{num_users} users, {num_items} items, {len(edge_users)} training edges, "
          f"{len(np.unique(valid_users))} cold-start validation users")

    def propagated() -> torch.Tensor:
        layers = [embedding]
        for _ in range(args.layers):
            layers.append(graph @ layers[-1])
        return torch.stack(layers).mean(0)

    def scaled(vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(vectors, dim=-1) / math.sqrt(args.temperature)

    def validation_ndcg() -> float:
        with torch.no_grad():
            vectors = scaled(propagated())
            return ranked_ndcg(vectors[:num_users], vectors[num_users + source_items:])

    edge_users_t, edge_items_t = torch.tensor(edge_users), torch.tensor(edge_items)
    edge_domains_t = torch.tensor(edge_domains)
    domain_items = ((0, source_items), (source_items, num_items))
    best = (0.0, 0)
    for epoch in range(1, args.epochs + 1):
        started, total = time.time(), 0.0
        for batch in torch.randperm(len(edge_users)).split(args.batch_size):
            vectors = propagated()
            user_vectors = scaled(vectors[edge_users_t[batch]])
            item_vectors = scaled(vectors[num_users + edge_items_t[batch]])
            loss = torch.zeros(())
            for domain, (first, end) in enumerate(domain_items):
                rows_of_domain = edge_domains_t[batch] == domain
                if not rows_of_domain.any():
                    continue
                negatives = torch.randint(first, end, (args.negatives,))
                positive = (user_vectors[rows_of_domain] * item_vectors[rows_of_domain]).sum(-1, keepdim=True)
                negative = user_vectors[rows_of_domain] @ scaled(vectors[num_users + negatives]).T
                negative = negative.masked_fill(negatives[None, :] == edge_items_t[batch][rows_of_domain][:, None],
                                                -1e9)
                logits = torch.cat([positive, negative], dim=1)
                loss = loss + F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long), reduction="sum")
            loss = loss / len(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        figure = validation_ndcg()
        best = max(best, (figure, epoch))
        print(f"epoch {epoch}: loss {total:.1f}, validation cold NDCG@10 {figure:.4f} ({time.time() - started:.0f} s)",
              flush=True)
    print(f"best: {best[0]:.4f} at epoch {best[1]} (layers {args.layers}, seed {args.seed})")


if __name__ == "__main__":
    main()
