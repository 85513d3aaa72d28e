"""The scoring kernel, no Spark: exact top-K of a model over a fixed candidate set, in batches of users
(on the GPU when there is one), with deterministic ties (to the lower item index).

On the CPU a batch is scored a tile of items at a time (:func:`blocked_top_k`): a whole [users, items]
score matrix (400 MB for 1,024 users and 100k items) goes through memory twice, once written by the
matrix product and once read by ``topk``, which held the plain loop at 8% of the machine's GEMM rate
(docs/performance.md, "Scoring kernel").
"""
from __future__ import annotations

import numpy as np
import torch

from xdrec.errors import XdrecError
from xdrec.modeling.model import TwoTower


def resolve_device(device: str) -> torch.device:
    """``auto``: the GPU when this process sees one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise XdrecError("score.device=cuda but this executor has no GPU (torch.cuda.is_available() is False)")
    return torch.device(device)


class TopKScorer:
    """Exact top-k of one model over a fixed set of candidate items.

    The candidates' vectors and biases are computed once; :meth:`top_k` then scores batches of users
    with one ``addmm`` each. Scores are the model's logits. Ties go to the lower item index.
    """

    def __init__(self, model: TwoTower, candidate_items: np.ndarray, k: int, device: torch.device | str = "cpu"):
        self.candidates = np.unique(np.asarray(candidate_items, dtype=np.int64))  # sorted: position = item order
        if len(self.candidates) == 0:
            raise ValueError("TopKScorer needs at least one candidate item")
        self.k = min(k, len(self.candidates))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        with torch.inference_mode():
            items = torch.from_numpy(self.candidates).to(self.device)
            self.item_vectors_t = self.model.item_vectors(items).T.contiguous()
            self.item_bias = self.model.item_bias(items).squeeze(-1)

    def top_k(self, user_idx: np.ndarray, seen: list[np.ndarray | None] | None = None,
              batch_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best candidates of each user, best first: ``(items [n, k] int64, scores [n, k] float32)``.

        With ``seen`` (per user an array of item indices, or None), those items score ``-inf``: they sort
        last, so a user with fewer than ``k`` unseen candidates has ``-inf`` in the trailing slots.
        """
        user_idx = np.array(user_idx, dtype=np.int64)  # a writable copy: Arrow hands over read-only buffers
        items = np.empty((len(user_idx), self.k), dtype=np.int64)
        scores = np.empty((len(user_idx), self.k), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(user_idx), batch_size):
                stop = min(start + batch_size, len(user_idx))
                user_vectors = self.model.user_vectors(torch.from_numpy(user_idx[start:stop]).to(self.device))
                batch_seen = None if seen is None else seen_positions(seen[start:stop], self.candidates)
                if self.device.type == "cpu":
                    best_positions, best_scores = blocked_top_k(user_vectors, self.item_vectors_t, self.item_bias,
                                                                self.k, batch_seen)
                else:  # the GPU's memory bandwidth makes the whole matrix cheap, and topk is fast there
                    batch_scores = torch.addmm(self.item_bias, user_vectors, self.item_vectors_t)
                    if batch_seen is not None:
                        rows, positions = batch_seen
                        batch_scores[rows.to(self.device), positions.to(self.device)] = float("-inf")
                    best_positions, best_scores = stable_top_k(batch_scores, self.k)
                items[start:stop] = self.candidates[best_positions.cpu().numpy()]
                scores[start:stop] = best_scores.cpu().numpy()
        return items, scores


def seen_positions(seen: list[np.ndarray | None], candidates: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, candidate position) of every seen item that is a candidate; other seen items are ignored."""
    lengths = np.fromiter((0 if items is None else len(items) for items in seen), dtype=np.int64, count=len(seen))
    if lengths.sum() == 0:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    flat = np.concatenate([np.asarray(items, dtype=np.int64) for items in seen if items is not None and len(items)])
    rows = np.repeat(np.arange(len(seen)), lengths)
    found = np.searchsorted(candidates, flat).clip(max=len(candidates) - 1)
    is_candidate = candidates[found] == flat
    return torch.from_numpy(rows[is_candidate]), torch.from_numpy(found[is_candidate])


def blocked_top_k(user_vectors: torch.Tensor, item_vectors_t: torch.Tensor, item_bias: torch.Tensor, k: int,
                  seen: tuple[torch.Tensor, torch.Tensor] | None = None,
                  tile_items: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`stable_top_k` gives for ``addmm(item_bias, user_vectors, item_vectors_t)`` with the ``seen``
    (row, column) cells at ``-inf``, without that whole matrix.

    The items are scored ``tile_items`` columns at a time into one buffer that stays in cache. A row's
    running top k changes only through the tile's scores above its running k-th best (strictly above: an
    equal score in a later tile has a higher column, and loses the tie). One ``amax`` pass finds the rows
    that have any, and only those scores are merged. Over n items a row takes about k·ln(n/k) such scores
    in all, so a tile costs little beyond its product and that pass. ::

        positions, scores = blocked_top_k(users, items_t, bias, k=10)   # as stable_top_k(users @ items_t + bias, 10)
    """
    users, item_count = user_vectors.shape[0], item_vectors_t.shape[1]
    if seen is not None:
        seen_rows, seen_columns = seen
        order = torch.argsort(seen_columns)
        seen_rows, seen_columns = seen_rows[order], seen_columns[order]
    buffer = torch.empty(users, min(max(tile_items, k), item_count), dtype=user_vectors.dtype,
                         device=user_vectors.device)

    def score_tile(start: int, stop: int) -> torch.Tensor:
        out = buffer if stop - start == buffer.shape[1] else torch.empty_like(buffer[:, :stop - start])
        torch.addmm(item_bias[start:stop], user_vectors, item_vectors_t[:, start:stop], out=out)
        if seen is not None:
            low, high = torch.searchsorted(seen_columns, torch.tensor([start, stop], device=seen_columns.device)).tolist()
            out[seen_rows[low:high], seen_columns[low:high] - start] = float("-inf")
        return out

    first_stop = buffer.shape[1]  # the first tile holds at least k columns, so every row starts full
    best_positions, best_scores = stable_top_k(score_tile(0, first_stop), k)
    for start in range(first_stop, item_count, tile_items):
        scores = score_tile(start, min(start + tile_items, item_count))
        tile_best = scores.amax(dim=1)
        _raise_on_nan(tile_best)
        rows = (tile_best > best_scores[:, -1]).nonzero().squeeze(1)
        if len(rows):
            _merge(best_positions, best_scores, rows, scores[rows], start, k)
    return best_positions, best_scores


def _merge(best_positions: torch.Tensor, best_scores: torch.Tensor, rows: torch.Tensor, tile_scores: torch.Tensor,
           start: int, k: int) -> None:
    """Merge into ``rows``' running top k (in place) their scores in a tile (its first column ``start``)
    above their k-th best.

    Those scores are packed left in a ``-inf`` padded block, in ascending column order (``nonzero`` is
    row-major), after the running entries, which hold lower columns: so a stable sort's tie rule (the lower
    position) is the column order, and a pad never displaces a running entry.
    """
    row_of, column = (tile_scores > best_scores[rows, -1:]).nonzero(as_tuple=True)
    counts = torch.bincount(row_of, minlength=len(rows))
    slot = torch.arange(len(row_of), device=row_of.device) - (torch.cumsum(counts, 0) - counts)[row_of]
    new_scores = torch.full((len(rows), int(counts.max())), float("-inf"), dtype=tile_scores.dtype,
                            device=tile_scores.device)
    new_scores[row_of, slot] = tile_scores[row_of, column]
    new_positions = torch.zeros_like(new_scores, dtype=torch.long)
    new_positions[row_of, slot] = column + start
    # A handful of columns: one stable sort ranks them, ties to the lower position.
    merged_scores, merged_order = torch.sort(torch.cat([best_scores[rows], new_scores], dim=1), dim=1,
                                             descending=True, stable=True)
    best_positions[rows] = torch.cat([best_positions[rows], new_positions], dim=1).gather(1, merged_order[:, :k])
    best_scores[rows] = merged_scores[:, :k]


def stable_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions, scores)`` of each row's ``k`` best columns, best first, ties to the lower column.

    ``torch.topk`` chooses among equal scores arbitrarily. Taking k + 1 shows where that matters: a row
    whose k-th and (k+1)-th scores differ has a unique top-k set, which only needs ordering; the rare rows
    with a tie across that boundary (such as ``-inf`` padding) go through :func:`_exact_top_k`.
    """
    if k == scores.shape[1]:  # every column is kept: only the order is left to fix
        ordered_scores, positions = torch.sort(scores, dim=1, descending=True, stable=True)
        _raise_on_nan(ordered_scores)
        return positions, ordered_scores
    values, positions = torch.topk(scores, k + 1, dim=1)
    _raise_on_nan(values)  # topk ranks NaN above every number: a NaN anywhere in a row shows here
    boundary_tie = values[:, k - 1] == values[:, k]
    positions, order = positions[:, :k].sort(dim=1)  # ascending columns, then a stable sort by score
    values = values[:, :k].gather(1, order)
    by_score = torch.sort(values, dim=1, descending=True, stable=True).indices
    positions, values = positions.gather(1, by_score), values.gather(1, by_score)
    tied_rows = boundary_tie.nonzero().squeeze(1)
    if len(tied_rows):
        positions[tied_rows], values[tied_rows] = _exact_top_k(scores[tied_rows], k)
    return positions, values


def _exact_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top k with ties broken by lower column also at the k-th place, from whole rows.

    Keeps every score above the k-th best, fills the remaining places with the leftmost columns equal
    to it, then orders the k kept by score (stable).
    """
    kth_best = torch.topk(scores, k, dim=1).values[:, -1:]
    above = scores > kth_best
    tied = scores == kth_best
    places_left = k - above.sum(dim=1, keepdim=True)
    keep = above | (tied & (torch.cumsum(tied, dim=1) <= places_left))
    positions = keep.nonzero()[:, 1].view(scores.shape[0], k)  # row-major: ascending columns per row
    kept_scores = scores.gather(1, positions)
    order = torch.sort(kept_scores, dim=1, descending=True, stable=True).indices
    return positions.gather(1, order), kept_scores.gather(1, order)


def _raise_on_nan(scores: torch.Tensor) -> None:
    if torch.isnan(scores).any():
        raise XdrecError("the model scores NaN: its weights diverged, retrain it")
