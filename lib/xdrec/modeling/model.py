"""The transfer model: a plain ``torch.nn.Module`` that knows nothing of Spark, Delta or Horovod.

Users and items are integer indices (``user_index`` / ``item_index`` tables). Items of all domains share
one table, indexed globally. By default one user embedding table is shared by every domain, which is
what lets knowledge learned on the source domain reach users of the target domain.

score(user, item) = <user_vector(user), item_vector(item)> + item_bias[item], where

- item_vector = item_tower(item_embedding[item] + text_projection(item_text[item])): the text term only
  when the model was built with item text (``text_dim > 0``), for items that have text; the id term
  for every item unless ``item_ids_with_text`` is off, then only for items without text;
- user_vector = user_tower(user_embedding[user]), or, for a bridge model (``bridge`` "emcdr" or
  "ptupcdr"), user_tower(target_user_embedding[user]) for users with target history and
  user_tower(bridge(source embedding, source history)) for the cold ones: users with source history only;
  with the history encoder (``user_encoder`` "history") user_tower(sum of history_embedding[j] over the
  user's training items j, both domains, / sqrt(their number)), leaving out the item being scored when
  the model scores (user, item) pairs, as in training: a user's vector never holds the answer;
- with a ``temperature`` t > 0 both vectors are scaled to length 1/sqrt(t), so their product is their
  cosine similarity / t (bounded scores, one learned sharpness: see docs/methods.md, "Training").

Everything a model needs at scoring time (item text, which users are cold, their histories) is
in its state dict, so ``TwoTower(**hyperparameters()).load_state_dict(...)`` restores a working model and
a scorer can call :meth:`TwoTower.user_vectors` / :meth:`TwoTower.score_matrix` without knowing the method.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from xdrec.modeling.parts import BRIDGES, PARTS, USER_ENCODERS

# Views of a user: what the target domain sees (with the bridge for cold users), the source domain's
# own embedding, or the bridge forced for everyone (to train it).
TARGET_VIEW, SOURCE_VIEW, BRIDGED_VIEW = "target", "source", "bridged"


def csr_entries(offsets: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The entries of ``rows`` in a CSR structure (row r's values at ``offsets[r]:offsets[r + 1]``): each
    entry's owner (a position in ``rows``), its index into the values, and each row's length::

        csr_entries(torch.tensor([0, 2, 3]), torch.tensor([1, 0]))   # owners [0, 1, 1], indices [2, 0, 1], lengths [1, 2]
    """
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    owners = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths)
    # Each entry's index: its owner's start plus its place within the owner's run.
    first_of_owner = torch.cumsum(lengths, 0) - lengths
    return owners, starts[owners] + torch.arange(len(owners), device=rows.device) - first_of_owner[owners], lengths


def csr_contains(offsets: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Whether ``queries[j]`` is among row ``rows[j]``'s values in a CSR structure whose rows are sorted (as
    :func:`csr` builds them): a binary search per query, all of them at once::

        offsets, values = torch.tensor([0, 2, 3]), torch.tensor([1, 3, 0])   # row 0: 1, 3; row 1: 0
        csr_contains(offsets, values, torch.tensor([0, 0, 1]), torch.tensor([3, 0, 0]))   # tensor([True, False, True])
    """
    if len(values) == 0:
        return torch.zeros(len(queries), dtype=torch.bool, device=queries.device)
    low, end = offsets[rows], offsets[rows + 1]
    high = end.clone()
    while bool((low < high).any()):  # as many rounds as the longest row has bits
        middle = (low + high) // 2
        below = values[middle.clamp(max=len(values) - 1)] < queries
        searching = low < high
        low = torch.where(searching & below, middle + 1, low)
        high = torch.where(searching & ~below, middle, high)
    return (low < end) & (values[low.clamp(max=len(values) - 1)] == queries)


def csr(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [num_users + 1], items sorted by user then item): user u's items are items[offsets[u]:offsets[u + 1]]::

        csr(np.array([1, 0, 1]), np.array([7, 5, 3]), num_users=3)   # (array([0, 1, 3, 3]), array([5, 3, 7]))
    """
    order = np.lexsort((items, users))
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=offsets[1:])
    return offsets, items[order].astype(np.int64)


class Tower(nn.Module):
    """A residual MLP: starts close to the identity so embeddings keep their meaning early on."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class PersonalisedBridge(nn.Module):
    """PTUPCDR's meta-network: a user's source history -> that user's own ``dim x dim`` bridge matrix.

    The characteristic encoder attends over the embeddings of the user's source items; a meta MLP turns
    the pooled vector into the matrix, initialised so that every bridge starts as the identity.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.dim = dim
        self.attention = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1, bias=False))
        self.meta = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim * dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (*self.attention, *self.meta):
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        nn.init.zeros_(self.meta[2].weight)
        with torch.no_grad():
            self.meta[2].bias.copy_(torch.eye(self.dim).flatten())

    def forward(self, source_vectors: torch.Tensor, history_vectors: torch.Tensor,
                owners: torch.Tensor) -> torch.Tensor:
        """Bridged vectors ``[B, dim]``: ``history_vectors[j]`` belongs to row ``owners[j]`` of the batch."""
        logits = self.attention(history_vectors).squeeze(-1)
        # A softmax within each user's history: subtract the per-user maximum, exponentiate, normalise.
        batch = len(source_vectors)
        maximum = torch.full((batch,), float("-inf"), device=logits.device).scatter_reduce(
            0, owners, logits, reduce="amax", include_self=True)
        weights = torch.exp(logits - maximum[owners])
        totals = torch.zeros(batch, device=logits.device).index_add(0, owners, weights)
        weights = weights / totals[owners]
        pooled = torch.zeros_like(source_vectors).index_add(0, owners, weights.unsqueeze(-1) * history_vectors)
        matrices = self.meta(pooled).view(batch, self.dim, self.dim)
        return torch.bmm(source_vectors.unsqueeze(1), matrices).squeeze(1)


class TwoTower(nn.Module):
    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 32, hidden_dim: int = 64,
                 text_dim: int = 0, item_ids_with_text: bool = True, bridge: str = "none",
                 history_size: int = 0, domain_classifier: bool = False, temperature: float = 0.0,
                 user_encoder: str = "embedding"):
        super().__init__()
        if bridge not in BRIDGES:
            raise ValueError(f"unknown bridge {bridge!r}; known: {', '.join(BRIDGES)}")
        if user_encoder not in USER_ENCODERS:
            raise ValueError(f"unknown user encoder {user_encoder!r}; known: {', '.join(USER_ENCODERS)}")
        if user_encoder == "history" and bridge != "none":
            raise ValueError(f"the {bridge} bridge maps per-user embeddings: it needs user_encoder 'embedding'")
        self.num_users, self.num_items = num_users, num_items
        self.embedding_dim, self.hidden_dim = embedding_dim, hidden_dim
        self.text_dim, self.item_ids_with_text = text_dim, item_ids_with_text
        self.bridge_kind, self.history_size = bridge, history_size
        self.has_domain_classifier = domain_classifier
        self.temperature = temperature
        self.user_encoder = user_encoder
        if user_encoder == "embedding":
            self.user_embedding = nn.Embedding(num_users, embedding_dim)
        else:
            self.history_embedding = nn.Embedding(num_items, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        self.item_bias = nn.Embedding(num_items, 1)
        self.user_tower = Tower(embedding_dim, hidden_dim)
        self.item_tower = Tower(embedding_dim, hidden_dim)
        if text_dim:
            self.text_projection = nn.Linear(text_dim, embedding_dim)
            self.register_buffer("item_text", torch.zeros(num_items, text_dim))
            self.register_buffer("item_has_text", torch.zeros(num_items, dtype=torch.bool))
        if bridge != "none":
            self.target_user_embedding = nn.Embedding(num_users, embedding_dim)
            self.register_buffer("has_source_history", torch.zeros(num_users, dtype=torch.bool))
            self.register_buffer("has_target_history", torch.zeros(num_users, dtype=torch.bool))
            if bridge == "emcdr":
                self.bridge = Tower(embedding_dim, hidden_dim)
            else:
                self.bridge = PersonalisedBridge(embedding_dim, hidden_dim)
        if bridge == "ptupcdr" or user_encoder == "history":
            # The histories the model reads as CSR, user u's items at history_items[history_offsets[u]:...[u + 1]]:
            # the source items for the personalised bridge, every training item for the history encoder.
            self.register_buffer("history_offsets", torch.zeros(num_users + 1, dtype=torch.long))
            self.register_buffer("history_items", torch.zeros(history_size, dtype=torch.long))
        if domain_classifier:
            self.domain_classifier = nn.Sequential(nn.Linear(embedding_dim, hidden_dim), nn.ReLU(),
                                                   nn.Linear(hidden_dim, 1))
        self.reset_parameters()

    def hyperparameters(self) -> dict:
        """The constructor's arguments: enough to rebuild the model before loading its state dict."""
        return {"num_users": self.num_users, "num_items": self.num_items,
                "embedding_dim": self.embedding_dim, "hidden_dim": self.hidden_dim,
                "text_dim": self.text_dim, "item_ids_with_text": self.item_ids_with_text,
                "bridge": self.bridge_kind, "history_size": self.history_size,
                "domain_classifier": self.has_domain_classifier, "temperature": self.temperature,
                "user_encoder": self.user_encoder}

    def reset_parameters(self) -> None:
        """Fresh weights for every trainable part; buffers (text, histories) are kept."""
        for name in ("user_embedding", "history_embedding", "item_embedding", "target_user_embedding"):
            if (embedding := getattr(self, name, None)) is not None:
                nn.init.normal_(embedding.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        if isinstance(getattr(self, "bridge", None), PersonalisedBridge):
            self.bridge.reset_parameters()

    def start_from_factors(self, user_factors: np.ndarray, item_factors: np.ndarray, regularization: float) -> None:
        """Start the id embeddings from a matrix factorisation (ALS on both domains merged): item rows from
        ``item_factors``; user rows from ``user_factors``, or with the history encoder history rows
        h_j = y_j (Y'Y + regularization I)^-1, whose sum over a user's items is the user's factor as one ALS
        step would fold it in (unit confidences). Factors wider than ``embedding_dim`` keep their top
        principal directions, narrower ones get zero columns. Rows are scaled to the random start's norm;
        rows the factorisation left at zero (no training interaction) keep their random start::

            model.start_from_factors(als_user_factors, als_item_factors, regularization=0.1)
        """
        items = torch.as_tensor(item_factors, dtype=torch.float32)
        if self.user_encoder == "history":
            gram = items.T @ items + regularization * torch.eye(items.shape[1])
            users = torch.linalg.solve(gram, items.T).T  # Y G^-1, G symmetric
        else:
            users = torch.as_tensor(user_factors, dtype=torch.float32)
        rank, dim = items.shape[1], self.embedding_dim
        if rank > dim:
            projection = torch.linalg.svd(items, full_matrices=False).Vh[:dim].T
            users, items = users @ projection, items @ projection
        elif rank < dim:
            users, items = (nn.functional.pad(rows, (0, dim - rank)) for rows in (users, items))
        random_norm = 0.1 * dim ** 0.5  # reset_parameters' rows: N(0, 0.1^2) in every dimension
        with torch.no_grad():
            for names, rows in ((("user_embedding", "target_user_embedding", "history_embedding"), users),
                                (("item_embedding",), items)):
                norms = rows.norm(dim=1)
                present = norms > 0
                if not present.any():
                    continue
                scaled = rows * (random_norm / norms[present].mean())
                for name in names:
                    if hasattr(self, name):
                        getattr(self, name).weight[present] = scaled[present]

    # ----- the data a model carries -------------------------------------------------------------------

    def set_item_text(self, embeddings: np.ndarray, has_text: np.ndarray) -> None:
        """Item text embeddings ``[num_items, text_dim]`` and which items have text."""
        self.item_text.copy_(torch.as_tensor(embeddings, dtype=torch.float32))
        self.item_has_text.copy_(torch.as_tensor(has_text, dtype=torch.bool))

    def set_histories(self, has_source: np.ndarray, has_target: np.ndarray) -> None:
        """Which users have training history in the source and target domains (bridge models)."""
        self.has_source_history.copy_(torch.as_tensor(has_source, dtype=torch.bool))
        self.has_target_history.copy_(torch.as_tensor(has_target, dtype=torch.bool))

    def set_history(self, history_offsets: np.ndarray | torch.Tensor, history_items: np.ndarray | torch.Tensor) -> None:
        """The users' items as CSR (``offsets [num_users + 1]``, ``items``): the source items for the
        personalised bridge, every training item for the history encoder. Its size may differ from the
        constructor's ``history_size`` (a training process reads the history itself): ``hyperparameters``
        then reports the new size, and ``load_state_dict`` takes a saved history of any size."""
        self.history_offsets.copy_(torch.as_tensor(history_offsets, dtype=torch.long))
        self.history_items = torch.as_tensor(history_items, dtype=torch.long).to(self.history_offsets.device)
        self.history_size = len(self.history_items)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A history's size is known only once read (a training process reads its own), so loading takes
        # the saved one rather than failing on the constructor's.
        if (saved := state_dict.get(prefix + "history_items")) is not None and hasattr(self, "history_items"):
            self.history_items = torch.empty_like(saved, device=self.history_items.device)
            self.history_size = len(saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----- representations ---------------------------------------------------------------------------

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        embedded = self.item_embedding(items)
        if self.text_dim:
            has_text = self.item_has_text[items].unsqueeze(-1)
            text = self.text_projection(self.item_text[items]) * has_text
            ids = embedded if self.item_ids_with_text else embedded * ~has_text
            embedded = ids + text
        return self.scaled(self.item_tower(embedded))

    def scaled(self, vectors: torch.Tensor) -> torch.Tensor:
        """With a temperature, unit vectors over sqrt(temperature), so a dot product is cosine / temperature."""
        if not self.temperature:
            return vectors
        return nn.functional.normalize(vectors, dim=-1) / self.temperature ** 0.5

    def bridged_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        """The bridge's estimate of the users' target embeddings from what they did in the source domain."""
        source = self.user_embedding(users)
        if self.bridge_kind == "emcdr":
            return self.bridge(source)
        owners, positions, lengths = csr_entries(self.history_offsets, users)
        history = self.item_embedding(self.history_items[positions])
        bridged = self.bridge(source, history, owners)
        # A user without source history has no bridge: keep the source embedding.
        return torch.where((lengths > 0).unsqueeze(-1), bridged, source)

    def pooled_history(self, users: torch.Tensor, leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """The sum of the users' history item embeddings over the square root of their number; with
        ``leave_out`` (an item per user), without that item. A user with no history gets zeros."""
        owners, positions, _ = csr_entries(self.history_offsets, users)
        items = self.history_items[positions]
        if leave_out is not None:
            kept = items != leave_out[owners]
            owners, items = owners[kept], items[kept]
        pooled = torch.zeros(len(users), self.embedding_dim, device=users.device)
        pooled = pooled.index_add(0, owners, self.history_embedding(items))
        counts = torch.bincount(owners, minlength=len(users)).clamp(min=1)
        return pooled / counts.sqrt().unsqueeze(-1)

    def user_embeddings(self, users: torch.Tensor, view: str = TARGET_VIEW,
                        leave_out: torch.Tensor | None = None) -> torch.Tensor:
        if self.user_encoder == "history":
            return self.pooled_history(users, leave_out)
        if self.bridge_kind == "none" or view == SOURCE_VIEW:
            return self.user_embedding(users)
        if view == BRIDGED_VIEW:
            return self.bridged_embeddings(users)
        own = self.target_user_embedding(users)
        cold = ~self.has_target_history[users] & self.has_source_history[users]
        if not bool(cold.any()):
            return own
        bridged = self.bridged_embeddings(users[cold])
        return own.index_put((cold.nonzero().squeeze(-1),), bridged)

    def user_vectors(self, users: torch.Tensor, view: str = TARGET_VIEW,
                     leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """User vectors; the default target view applies the bridge to cold users of a bridge model.
        ``leave_out``: an item per user that the history encoder leaves out of that user's history."""
        return self.scaled(self.user_tower(self.user_embeddings(users, view, leave_out)))

    def forward(self, users: torch.Tensor, items: torch.Tensor, view: str = TARGET_VIEW) -> torch.Tensor:
        """Logits for (user, item) pairs, shape ``[batch]``; a history-encoded user's vector leaves the
        pair's item out of the history."""
        user_vectors = self.user_vectors(users, view, leave_out=items)
        item_vectors = self.item_vectors(items)
        return (user_vectors * item_vectors).sum(-1) + self.item_bias(items).squeeze(-1)

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of every user against every item, shape ``[len(users), len(items)]``."""
        item_vectors = self.item_vectors(items)
        bias = self.item_bias(items).squeeze(-1)
        return self.user_vectors(users) @ item_vectors.T + bias

    # ----- training controls -------------------------------------------------------------------------

    def has_part(self, part: str) -> bool:
        try:
            self.get_submodule(part)
        except AttributeError:
            return False
        return True

    def freeze(self, parts: list[str] | tuple[str, ...]) -> None:
        """Stop gradient updates of the named parts (see PARTS); parts this model lacks are skipped."""
        for part in parts:
            if part not in PARTS:
                raise ValueError(f"unknown model part {part!r}; known: {', '.join(PARTS)}")
            if self.has_part(part):
                for parameter in self.get_submodule(part).parameters():
                    parameter.requires_grad_(False)


class FactorModel(nn.Module):
    """Matrix factorisation: score(u, i) = <user_factors[u], item_factors[i]> + item_bias[i].

    How factors learned outside xdrec's training loop (Spark ALS, EMCDR over ALS, popularity as a bias
    alone) are ranked, validated and served through the same artifact, kernels and UDF as a
    :class:`TwoTower`: it answers the same ``user_vectors``, ``item_vectors``, ``item_bias`` and
    ``score_matrix`` calls. Rows a model has no factors for hold zeros::

        model = FactorModel(np.eye(2), np.eye(3)[:, :2], item_bias=np.array([0.0, 0.0, 0.5]))
        model.score_matrix(torch.tensor([0]), torch.tensor([0, 1, 2]))  # tensor([[1.0, 0.0, 0.5]])
    """

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray, item_bias: np.ndarray | None = None):
        super().__init__()
        item_factors = np.asarray(item_factors, dtype=np.float32)
        bias = np.zeros(len(item_factors), dtype=np.float32) if item_bias is None else item_bias
        self.user_embedding = nn.Embedding.from_pretrained(torch.as_tensor(np.asarray(user_factors, dtype=np.float32)))
        self.item_embedding = nn.Embedding.from_pretrained(torch.as_tensor(item_factors))
        self.item_bias = nn.Embedding.from_pretrained(torch.as_tensor(np.asarray(bias, dtype=np.float32))[:, None])

    @classmethod
    def of_size(cls, num_users: int, num_items: int, embedding_dim: int) -> "FactorModel":
        """Zero factors of the given shape, to load a state dict into."""
        return cls(np.zeros((num_users, embedding_dim)), np.zeros((num_items, embedding_dim)))

    def hyperparameters(self) -> dict:
        """The arguments of :meth:`of_size`."""
        num_users, embedding_dim = self.user_embedding.weight.shape
        return {"num_users": num_users, "num_items": len(self.item_embedding.weight), "embedding_dim": embedding_dim}

    def user_vectors(self, users: torch.Tensor, view: str = TARGET_VIEW) -> torch.Tensor:
        return self.user_embedding(users)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_embedding(items)

    def forward(self, users: torch.Tensor, items: torch.Tensor, view: str = TARGET_VIEW) -> torch.Tensor:
        return (self.user_vectors(users) * self.item_vectors(items)).sum(-1) + self.item_bias(items).squeeze(-1)

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.user_vectors(users) @ self.item_vectors(items).T + self.item_bias(items).squeeze(-1)


class ScoreSum(nn.Module):
    """The score ``sum(weight * model score)`` over ``models``, computed only for the users and items asked
    for: what :func:`blended` holds for every user, to validate a weight without building it. Each model's
    item side is kept for the items last asked for, since a ranking asks for the same candidates with every
    batch of users (and with every weight: set ``weights`` again to try another)::

        first, second = FactorModel(np.eye(2), np.eye(2)), FactorModel(np.ones((2, 1)), np.array([[0.0], [1.0]]))
        ScoreSum((first, second), (0.5, 1.0)).score_matrix(torch.tensor([0]), torch.tensor([0, 1]))
        # tensor([[0.5, 1.0]]), as blended((first, second), (0.5, 1.0), 2, 2) scores
    """

    def __init__(self, models: tuple[nn.Module, ...], weights: tuple[float, ...]):
        super().__init__()
        self.models, self.weights = nn.ModuleList(models), weights
        self._items: torch.Tensor | None = None
        self._item_sides: list[tuple[torch.Tensor, torch.Tensor]] = []

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if self._items is None or not torch.equal(self._items, items):
            self._items = items
            self._item_sides = [(model.item_vectors(items), model.item_bias(items).squeeze(-1)) for model in self.models]
        # Each model's score_matrix, with its item side computed once.
        return sum(weight * (model.user_vectors(users) @ vectors.T + bias)
                   for model, weight, (vectors, bias) in zip(self.models, self.weights, self._item_sides))


@torch.no_grad()
def blended(models: tuple[nn.Module, ...], weights: tuple[float, ...], num_users: int, num_items: int,
            chunk: int = 65536) -> FactorModel:
    """One :class:`FactorModel` whose score is ``sum(weight * model score)`` over ``models`` (any with
    ``user_vectors``, ``item_vectors`` and ``item_bias``): each model's user vectors times its weight and its
    item vectors, side by side, and the weighted sum of the item biases. So a blend of a trained model and
    ALS is ranked, validated and served like either, through the same artifact and UDF::

        first = FactorModel(np.eye(2), np.eye(2))
        second = FactorModel(np.ones((2, 1)), np.array([[0.0], [1.0]]))
        blended((first, second), (0.5, 1.0), 2, 2).score_matrix(torch.tensor([0]), torch.tensor([0, 1]))
        # tensor([[0.5, 1.0]])
    """
    def rows(vectors, count: int) -> np.ndarray:
        return np.concatenate([vectors(torch.arange(start, min(start + chunk, count))).numpy()
                               for start in range(0, count, chunk)])

    user_factors = np.hstack([weight * rows(model.user_vectors, num_users) for model, weight in zip(models, weights)])
    item_factors = np.hstack([rows(model.item_vectors, num_items) for model in models])
    item_bias = sum(weight * model.item_bias.weight[:num_items, 0].numpy() for model, weight in zip(models, weights))
    return FactorModel(user_factors, item_factors, item_bias)
