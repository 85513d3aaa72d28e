"""Factor models fitted by Spark MLlib, outside xdrec's training loop: the ALS family that the train stage
offers to model selection (``train.factor_models``) and that evaluation fits as baselines.

- ``popularity``: target items ranked by their count of training interactions (a bias alone);
- ALS (implicit feedback) on one domain's or on both domains' training interactions merged into one
  matrix (``als_merged``: users shared across domains carry source behaviour to the target);
- ``emcdr``: EMCDR (Man et al., IJCAI 2017) over matrix factorisation: ALS factors per domain, and an
  MLP mapping source user factors to target user factors, fitted on users warm in both domains; cold
  users are scored with their mapped factors;
- ``ease``: EASE (Steck, WWW 2019) on both domains' interactions merged: item-to-item weights in closed
  form, so a cold-start user's source items score the target items. The train stage fits it alone,
  since it chooses its regularisation on the validation users.

Each is a :class:`~xdrec.modeling.model.FactorModel`, so it is ranked and served like a trained model.
"""
from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import scipy.sparse
import torch
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from torch import nn

from xdrec import files
from xdrec.config import AlsConfig, EaseConfig
from xdrec.logs import get_logger
from xdrec.modeling.model import FactorModel
from xdrec.spark import spread_by_user

log = get_logger("train")


def item_counts(rows: DataFrame, num_items: int) -> np.ndarray:
    """Each item's number of ``rows`` (with an item_idx), indexed by item_idx."""
    counts = np.zeros(num_items, dtype=np.int64)
    for row in rows.groupBy("item_idx").count().collect():
        counts[row["item_idx"]] = row["count"]
    return counts


def popularity(train: DataFrame, num_users: int, num_items: int) -> FactorModel:
    """Bias-only scorer: an item's score is its number of training interactions."""
    counts = item_counts(train, num_items).astype(np.float32)
    return FactorModel(np.zeros((num_users, 1)), np.zeros((num_items, 1)), counts)


def als_factors(train: DataFrame, num_users: int, num_items: int, rank: int, iterations: int,
                regularization: float, alpha: float, seed: int,
                blocks: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Implicit-feedback ALS on (user_idx, item_idx) rows; dense factor matrices indexed by idx.

    Users and items go into ``blocks`` blocks each, by default as many as Spark's default parallelism
    rather than MLlib's 10. With 10 the factors differed in their last bit between fresh sessions, enough to
    move joint, which starts from them, by its seed spread; with 2 every session fitted the same factors
    (``benchmarks/bench_als_repeat.py``). The likely cause: implicit ALS sums the blocks' Gram matrices in
    the order their tasks end, and a sum of two does not depend on the order."""
    ratings = train.select("user_idx", "item_idx").distinct().withColumn("rating", F.lit(1.0))
    blocks = blocks or train.sparkSession.sparkContext.defaultParallelism
    model = ALS(rank=rank, maxIter=iterations, regParam=regularization, alpha=alpha, implicitPrefs=True,
                userCol="user_idx", itemCol="item_idx", ratingCol="rating", seed=seed, numUserBlocks=blocks,
                numItemBlocks=blocks, coldStartStrategy="nan").fit(ratings)
    user_factors = np.zeros((num_users, rank), dtype=np.float32)
    item_factors = np.zeros((num_items, rank), dtype=np.float32)
    for row in model.userFactors.collect():
        user_factors[row["id"]] = row["features"]
    for row in model.itemFactors.collect():
        item_factors[row["id"]] = row["features"]
    return user_factors, item_factors


def fit_mapping(source_vectors: np.ndarray, target_vectors: np.ndarray, hidden_dim: int, epochs: int,
                seed: int) -> nn.Module:
    """EMCDR's mapping: an MLP from source to target user factors, trained by mean squared error."""
    torch.manual_seed(seed)
    dim_in, dim_out = source_vectors.shape[1], target_vectors.shape[1]
    mapping = nn.Sequential(nn.Linear(dim_in, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, dim_out))
    optimizer = torch.optim.Adam(mapping.parameters(), lr=0.01, weight_decay=1e-4)
    inputs, outputs = torch.from_numpy(source_vectors), torch.from_numpy(target_vectors)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(mapping(inputs), outputs)
        loss.backward()
        optimizer.step()
    return mapping.eval()


def emcdr(source_train: DataFrame, target_train: DataFrame, num_users: int, num_items: int, rank: int,
          iterations: int, regularization: float, alpha: float, seed: int) -> FactorModel:
    """EMCDR over ALS factors: warm target users keep their own factors, others get mapped ones."""
    source_users, _ = als_factors(source_train, num_users, num_items, rank, iterations, regularization, alpha, seed)
    target_users, target_items = als_factors(target_train, num_users, num_items, rank, iterations,
                                             regularization, alpha, seed)
    has_source = np.abs(source_users).sum(axis=1) > 0
    has_target = np.abs(target_users).sum(axis=1) > 0
    overlap = has_source & has_target
    mapping = fit_mapping(source_users[overlap], target_users[overlap], hidden_dim=2 * rank, epochs=300, seed=seed)
    with torch.no_grad():
        mapped = mapping(torch.from_numpy(source_users)).numpy()
    user_factors = np.where(has_target[:, None], target_users, np.where(has_source[:, None], mapped, 0.0))
    return FactorModel(user_factors, target_items)


def fit_factor_model(name: str, train: DataFrame, source_domain: str, target_domain: str, num_users: int,
                     num_items: int, als: AlsConfig) -> FactorModel:
    """Fit factor model ``name`` (one of ``xdrec.config.BASELINES``) on training rows (domain, user_idx,
    item_idx) of every domain; ``als_merged`` uses them all, the others the source and target's."""
    target_train = train.where(F.col("domain") == target_domain)
    settings = dict(rank=als.rank, iterations=als.iterations, regularization=als.regularization, alpha=als.alpha,
                    seed=als.seed)
    if name == "popularity":
        return popularity(target_train, num_users, num_items)
    if name == "als_target":
        return FactorModel(*als_factors(target_train, num_users, num_items, **settings))
    if name == "als_merged":
        return FactorModel(*als_factors(train, num_users, num_items, **settings))
    if name == "emcdr":
        return emcdr(train.where(F.col("domain") == source_domain), target_train, num_users, num_items, **settings)
    raise ValueError(f"unknown factor model {name!r}")


class ScoreTable(nn.Module):
    """Scores computed beforehand for some users over some items, answering ``score_matrix`` like a model:
    how a candidate is validated without building the vectors of every user."""

    def __init__(self, users: np.ndarray, items: np.ndarray, scores: np.ndarray, num_users: int, num_items: int):
        super().__init__()
        self.scores = nn.Parameter(torch.as_tensor(scores, dtype=torch.float32), requires_grad=False)
        self.register_buffer("row", torch.full((num_users,), -1, dtype=torch.long))
        self.row[torch.as_tensor(users)] = torch.arange(len(users))
        self.register_buffer("column", torch.full((num_items,), -1, dtype=torch.long))
        self.column[torch.as_tensor(items)] = torch.arange(len(items))

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.scores[self.row[users]][:, self.column[items]]


def ease_factor(gram: torch.Tensor, regularization: float) -> torch.Tensor:
    """The lower Cholesky factor L of G + λI, from which EASE's weights and scores are solved."""
    factor = gram.clone()
    factor.diagonal().add_(regularization)
    return torch.linalg.cholesky(factor)


def _last_inverse_columns(factor: torch.Tensor, targets: int) -> torch.Tensor:
    """L⁻¹'s last ``targets`` columns below its first ones, where they are nonzero: L is lower triangular,
    so these are the inverse of its last block, a solve over that block alone."""
    block = factor[len(factor) - targets:, len(factor) - targets:]
    return torch.linalg.solve_triangular(block, torch.eye(targets, dtype=block.dtype), upper=False)


def ease_weights(factor: torch.Tensor, targets: int) -> torch.Tensor:
    """EASE's closed form at the last ``targets`` items, from ``factor`` (:func:`ease_factor`): the columns
    of B = I - P diag(1/diag(P)) with P = (G + λI)⁻¹, how much each item's interaction adds to each of
    those items' scores (zero for itself).

    >>> ease_weights(ease_factor(torch.tensor([[2.0, 1.0], [1.0, 2.0]]), 1.0), 1)  # P = [[3, -1], [-1, 3]] / 8
    tensor([[0.3333],
            [0.0000]])
    """
    first = len(factor) - targets
    inverse_columns = torch.zeros(len(factor), targets, dtype=factor.dtype)
    inverse_columns[first:] = _last_inverse_columns(factor, targets)
    columns = torch.linalg.solve_triangular(factor.mT, inverse_columns, upper=True)  # P's: L⁻ᵀ L⁻¹ E
    weights = columns / -columns[first:].diagonal()
    weights[first:].diagonal().fill_(0.0)
    return weights


def ease_scores(factor: torch.Tensor, targets: int, rows: torch.Tensor) -> torch.Tensor:
    """X B at the last ``targets`` items (as :func:`ease_weights` gives B) for the users of the 0/1 ``rows``
    X (users x items), solved for those users alone: X - X P diag(1/diag(P)) there, where X P = (P Xᵀ)ᵀ
    takes two triangular solves with a column per user rather than P's columns of every target item, and
    P_jj is the squared norm of L⁻¹'s column j.

    >>> factor, rows = ease_factor(torch.tensor([[2.0, 1.0], [1.0, 2.0]]), 1.0), torch.tensor([[1.0, 1.0]])
    >>> ease_scores(factor, 1, rows)  # (X B)[0] = 1 x 1/3 + 1 x 0
    tensor([[0.3333]])
    """
    first = len(factor) - targets
    solved = torch.cholesky_solve(rows.T.contiguous(), factor)[first:].T
    return rows[:, first:] - solved / _last_inverse_columns(factor, targets).square().sum(0)


BLOCK_VALUES = 1 << 24
"""Values of a block at most (64 MiB of 4-byte counts or floats): what a task computes and writes, and the
driver reads, at once (:func:`item_gram`, :func:`user_vectors`)."""


def _write_block(folder: str, **arrays: np.ndarray) -> str:
    """Write ``arrays`` as one ``.npz`` file of a new name in ``folder``; return its path. A task's blocks go
    through files rather than through Spark, whose driver would hold a task's whole output at once."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = files.join(folder, f"{uuid.uuid4().hex}.npz")  # a retried task's blocks go beside, unread
    files.write_bytes(path, buffer.getvalue())
    return path


@contextmanager
def _block_folder(folder: str) -> Iterator[str]:
    """A new subfolder of ``folder`` for one computation's blocks, removed when it ends, however it ends."""
    blocks = files.join(folder, uuid.uuid4().hex)
    try:
        yield blocks
    finally:
        files.remove(blocks)


def _read_blocks(written: DataFrame) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
    """Each (row, its block's arrays) of ``written``'s rows, which name their block's file in a column "path",
    read one at a time (no pickles)."""
    for row in written.collect():
        with np.load(io.BytesIO(files.read_bytes(row["path"]))) as block:
            yield row.asDict(), {name: block[name] for name in block.files}


def _user_matrix(frames: list[pd.DataFrame], size: int, dtype: type) -> tuple[np.ndarray, scipy.sparse.csr_matrix]:
    """A task's (user_idx, column) rows: its users, sorted, and their 0/1 matrix of ``size`` columns."""
    frame = pd.concat(frames, ignore_index=True)
    users, rows = np.unique(frame["user_idx"].to_numpy(np.int64), return_inverse=True)
    matrix = scipy.sparse.csr_matrix((np.ones(len(frame), dtype=dtype), (rows, frame["column"].to_numpy(np.int64))),
                                     shape=(len(users), size))
    return users, matrix


def item_gram(pairs: DataFrame, size: int, folder: str, block_values: int = BLOCK_VALUES) -> np.ndarray:
    """The Gram matrix XᵀX (float32, ``size`` x ``size``) of the 0/1 users x items matrix X of ``pairs``
    (user_idx, column; distinct rows): how many users have both items. Each task computes its own users'
    part a block of rows at a time (``block_values`` nonzeros at most, or one row) and writes each block to
    a new subfolder of ``folder`` (a path or URI that the executors and the driver share) when it is done;
    the driver then reads and adds the blocks one at a time, and removes that subfolder. So a task holds its
    rows and one block, and the driver the matrix and one block: never a task's whole part (on dense data
    nearly ``size`` x ``size``, which Spark would hold whole in the driver's JVM to pass it on), nor the pairs.

    >>> item_gram(spark.createDataFrame([(0, 0), (0, 1), (1, 1)], "user_idx int, column int"), 2, "/tmp/gram")
    array([[1., 1.],
           [1., 2.]], dtype=float32)
    """
    rows_per_block = max(1, block_values // size)

    def write_blocks(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # ``blocks``, the subfolder made below, is set before Spark ships this function to its tasks.
        frames = list(frames)
        if not frames:
            return
        _, matrix = _user_matrix(frames, size, np.int32)
        by_column = matrix.tocsc()
        written = []
        for start in range(0, size, rows_per_block):
            block = (by_column[:, start:start + rows_per_block].T @ matrix).tocsr()
            if block.nnz:
                written.append((start, _write_block(blocks, indptr=block.indptr.astype(np.int64),
                                                    indices=block.indices.astype(np.int32),
                                                    counts=block.data.astype(np.int32))))
        yield pd.DataFrame(written, columns=["start", "path"])

    gram = np.zeros((size, size), dtype=np.float32)
    with _block_folder(folder) as blocks:
        written = spread_by_user(pairs).mapInPandas(write_blocks, "start int, path string")
        for row, block in _read_blocks(written):
            rows = row["start"] + np.repeat(np.arange(len(block["indptr"]) - 1), np.diff(block["indptr"]))
            gram[rows, block["indices"]] += block["counts"]
    return gram


def user_vectors(pairs: DataFrame, weights: np.ndarray, num_users: int, folder: str,
                 block_values: int = BLOCK_VALUES) -> np.ndarray:
    """Every user's row of X·``weights`` ([num_users, weights' columns] float32, zero for users with no row), for
    the 0/1 matrix X of ``pairs`` (user_idx, column; distinct rows): each task multiplies its own users' rows
    a block of users at a time (``block_values`` floats at most, or one user) and writes each block to a new
    subfolder of ``folder``, as :func:`item_gram` does; the driver reads them one at a time, and removes it.

    >>> user_vectors(spark.createDataFrame([(0, 0), (0, 1), (2, 1)], "user_idx int, column int"),
    ...              np.array([[1.0], [2.0]], dtype=np.float32), 3, "/tmp/vectors")
    array([[3.],
           [0.],
           [2.]], dtype=float32)
    """
    size, width = weights.shape
    users_per_block = max(1, block_values // width)

    def write_blocks(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # ``blocks``, the subfolder made below, is set before Spark ships this function to its tasks.
        frames = list(frames)
        if not frames:
            return
        users, matrix = _user_matrix(frames, size, np.float32)
        paths = [_write_block(blocks, users=users[start:start + users_per_block],
                              vectors=matrix[start:start + users_per_block] @ weights)
                 for start in range(0, len(users), users_per_block)]
        yield pd.DataFrame({"path": paths})

    vectors = np.zeros((num_users, width), dtype=np.float32)
    with _block_folder(folder) as blocks:
        for _, block in _read_blocks(spread_by_user(pairs).mapInPandas(write_blocks, "path string")):
            vectors[block["users"]] = block["vectors"]
    return vectors


def ease(train: DataFrame, num_users: int, num_items: int, target_items: np.ndarray, settings: EaseConfig,
         validation_users: np.ndarray, validate: Callable[[nn.Module], float],
         folder: str) -> tuple[FactorModel, dict]:
    """EASE on the training rows (user_idx, item_idx) of both domains, scoring ``target_items``: the
    ``settings.max_items`` most interacted-with items, each weight of ``settings.regularization`` (times the
    mean number of users per item), and up to ``settings.extend`` more past an end of them while the best
    one is there, solved in closed form and scored by ``validate`` on the ``validation_users``, the best one
    kept. A user's vector is the sum of the weights' rows of the user's items: exact over at most
    ``settings.rank`` target items, else in the top ``settings.rank`` singular directions. Returns the model
    and ``{"regularization", "multiple", "validation": {multiple: figure}, "items", "rank"}``.

    The interactions stay on the executors (:func:`item_gram`, :func:`user_vectors`, which pass their
    blocks through files in a new subfolder of ``folder`` each, removed after): the driver collects the
    items' counts, the Gram matrix, the validation users' rows and the users' vectors."""
    spark = train.sparkSession
    rows = train.select("user_idx", "item_idx").distinct()
    counts = item_counts(rows, num_items)
    # The most interacted-with items, on a tie the lower index.
    kept = np.sort(np.lexsort((np.arange(num_items), -counts))[:min(settings.max_items, int((counts > 0).sum()))])
    # The target items last: the fit solves for the last columns alone (ease_weights, ease_scores).
    is_target = np.isin(kept, target_items)
    kept, targets = np.concatenate([kept[~is_target], kept[is_target]]), int(is_target.sum())
    scored = kept[len(kept) - targets:]
    columns_of_kept = spark.createDataFrame(pd.DataFrame({"item_idx": kept, "column": np.arange(len(kept))}))
    pairs = rows.join(F.broadcast(columns_of_kept), "item_idx").select("user_idx", "column").persist()
    try:
        gram = torch.from_numpy(item_gram(pairs, len(kept), folder))
        validation_pairs = pairs.join(spark.createDataFrame(pd.DataFrame({"user_idx": validation_users})),
                                      "user_idx").toPandas()
        row_of_user = pd.Series(np.arange(len(validation_users)), index=validation_users)
        validation_rows = torch.zeros(len(validation_users), len(kept))
        validation_rows[row_of_user.loc[validation_pairs["user_idx"]].to_numpy(),
                        validation_pairs["column"].to_numpy(np.int64)] = 1.0
        mean_users = float(gram.diagonal().mean())
        grid = sorted(set(settings.regularization))
        ratio = grid[-1] / grid[-2] if len(grid) > 1 else 4.0
        figures, best, pending, extensions = {}, None, grid, settings.extend
        while pending:
            multiple, *pending = pending
            scores = ease_scores(ease_factor(gram, multiple * mean_users), targets, validation_rows).numpy()
            figures[multiple] = validate(ScoreTable(validation_users, scored, scores, num_users, num_items))
            log.info(f"ease: regularization {multiple:g} x {mean_users:.1f} users an item, "
                     f"validation {figures[multiple]:.4f}")
            if best is None or figures[multiple] > figures[best]:
                best = multiple
            # While the best weight is at an end of those tried, the search goes on past that end: the list's
            # spacing need not bracket a new dataset's optimum.
            if not pending and extensions > 0 and best in (min(figures), max(figures)):
                extensions -= 1
                pending = [best * ratio if best == max(figures) else best / ratio]
        # Factorised again rather than kept from the search: a kept factor would be a fourth copy held.
        factor = ease_factor(gram, best * mean_users)
        del gram
        best_weights = ease_weights(factor, targets)
        del factor
        if len(scored) <= settings.rank:
            user_side, item_side = best_weights.numpy(), np.eye(len(scored), dtype=np.float32)
        else:
            rank = settings.rank
            with torch.random.fork_rng():
                torch.manual_seed(settings.seed)
                # A few directions more than kept, as randomized decompositions need them to find the top ones.
                left, singular, right = torch.svd_lowrank(best_weights, q=min(rank + 16, len(scored)), niter=4)
            user_side, item_side = (left[:, :rank] * singular[:rank]).numpy(), right[:, :rank].numpy()
        user_factors = user_vectors(pairs, user_side, num_users, folder)
    finally:
        pairs.unpersist()
    item_factors = np.zeros((num_items, item_side.shape[1]), dtype=np.float32)
    item_factors[scored] = item_side
    chosen = {"regularization": best * mean_users, "multiple": best, "validation": figures, "items": len(kept),
              "rank": item_side.shape[1]}
    return FactorModel(user_factors, item_factors), chosen
