"""A tiny two-domain world with a planted taste, for the training tests (no Spark).

Every user and item belongs to one of ``GROUPS`` taste groups (index modulo ``GROUPS``); a user likes
exactly the items of its own group, in both domains. Cold-start users have source examples only, so
only a method that carries the source domain over can rank their target items above chance.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xdrec.modeling.model import csr
from xdrec.training.distributed import ModelData, user_histories
from xdrec.training.validation import ValidationSet

GROUPS = 4
NUM_USERS = 96
SOURCE_ITEMS = np.arange(0, 32)
TARGET_ITEMS = np.arange(32, 64)
NUM_ITEMS = 64
COLD_USERS = np.arange(0, 16)  # no target history
SOURCE, TARGET = "source", "target"


@dataclass
class World:
    examples: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    validation: ValidationSet
    histories: ModelData  # what a bridge model's process reads of its users
    target_train: dict[int, np.ndarray]  # warm user -> target training positives
    training_history: tuple[np.ndarray, np.ndarray]  # every user's training positives, both domains (CSR)


def _examples(rng: np.random.Generator, users: np.ndarray, items: np.ndarray, positives: int,
              exclude: dict[int, set] | None = None) -> tuple[list, list, list, dict[int, np.ndarray]]:
    """``positives`` liked items per user and as many disliked ones."""
    rows_u, rows_i, rows_y, liked = [], [], [], {}
    for user in users:
        own = [item for item in items if item % GROUPS == user % GROUPS and item not in (exclude or {}).get(user, ())]
        other = [item for item in items if item % GROUPS != user % GROUPS]
        chosen = rng.choice(own, size=positives, replace=False)
        negatives = rng.choice(other, size=positives, replace=False)
        liked[int(user)] = np.sort(chosen)
        rows_u += [user] * 2 * positives
        rows_i += [*chosen, *negatives]
        rows_y += [1.0] * positives + [0.0] * positives
    return rows_u, rows_i, rows_y, liked


def make_world(seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    users = np.arange(NUM_USERS)
    warm = np.setdiff1d(users, COLD_USERS)
    source = _examples(rng, users, SOURCE_ITEMS, 5)
    target = _examples(rng, warm, TARGET_ITEMS, 3)
    target_train = target[3]
    # Held out: two more liked target items per warm user, three per cold user.
    held_out = _examples(rng, users, TARGET_ITEMS, 2, exclude={u: set(items) for u, items in target_train.items()})[3]
    validation_users = np.concatenate([COLD_USERS, warm[::3]])
    validation = ValidationSet(
        users=validation_users.astype(np.int64),
        cold=np.isin(validation_users, COLD_USERS),
        relevant=[held_out[int(u)].astype(np.int64) for u in validation_users],
        seen=[target_train.get(int(u), np.empty(0, dtype=np.int64)).astype(np.int64) for u in validation_users],
        candidates=TARGET_ITEMS.astype(np.int64),
    )

    def tensors(rows):
        return (torch.tensor(rows[0], dtype=torch.long), torch.tensor(rows[1], dtype=torch.long),
                torch.tensor(rows[2], dtype=torch.float32))

    liked = [(np.asarray(rows[0])[np.asarray(rows[2]) > 0.5], np.asarray(rows[1])[np.asarray(rows[2]) > 0.5])
             for rows in (source, target)]
    return World(
        examples={SOURCE: tensors(source), TARGET: tensors(target)},
        validation=validation,
        histories=user_histories(*liked, NUM_USERS),
        target_train=target_train,
        training_history=csr(np.concatenate([u for u, _ in liked]), np.concatenate([i for _, i in liked]), NUM_USERS),
    )


def in_memory_batches(examples: dict[str, tuple[torch.Tensor, ...]], batch_size: int):
    """``batches(phase, epoch)`` for the trainer: each domain reshuffled per epoch, shorter ones cycled."""

    def batches(phase, epoch):
        streams = []
        for number, domain in enumerate(phase.domains):
            users, items, labels = examples[domain]
            order = torch.randperm(len(users), generator=torch.Generator().manual_seed(100 * epoch + number))
            streams.append([(users[index], items[index], labels[index])
                            for index in order.split(batch_size) if len(index) == batch_size])
        steps = max(len(stream) for stream in streams)
        for step in range(steps):
            yield tuple(stream[step % len(stream)] for stream in streams)

    def steps_per_epoch(phase):
        return max(len(examples[domain][0]) // batch_size for domain in phase.domains)

    return batches, steps_per_epoch


def write_tables(spark, warehouse: str, world: World) -> None:
    """The world as the feature tables the train stage reads (user_index, item_index,
    indexed_interactions, training_examples, item_embeddings), written to Delta under ``warehouse``.

    Only target items have text, whose embedding says the item's group: the source domain has none."""
    import pandas as pd

    from xdrec.data import tables

    users = pd.DataFrame({"user_id": [f"u{user}" for user in range(NUM_USERS)], "user_idx": np.arange(NUM_USERS)})
    items = pd.DataFrame({"domain": [SOURCE] * len(SOURCE_ITEMS) + [TARGET] * len(TARGET_ITEMS),
                          "item_id": [f"i{item}" for item in range(NUM_ITEMS)], "item_idx": np.arange(NUM_ITEMS)})
    examples = pd.concat([pd.DataFrame({"domain": domain, "user_idx": users_.numpy(), "item_idx": items_.numpy(),
                                        "label": labels.numpy()})
                          for domain, (users_, items_, labels) in world.examples.items()])
    positives = examples[examples["label"] == 1.0].assign(split="train", cold=False)
    held_out = pd.DataFrame([(TARGET, int(user), int(item), "valid", bool(cold))
                             for user, cold, relevant in zip(world.validation.users, world.validation.cold,
                                                             world.validation.relevant) for item in relevant],
                            columns=["domain", "user_idx", "item_idx", "split", "cold"])
    cold_users = set(COLD_USERS.tolist())
    positives["cold"] = positives["user_idx"].isin(cold_users)
    interactions = pd.concat([positives[["domain", "user_idx", "item_idx", "split", "cold"]], held_out])
    rng = np.random.default_rng(0)
    text = pd.DataFrame({"domain": TARGET, "item_idx": TARGET_ITEMS, "item_id": [f"i{item}" for item in TARGET_ITEMS],
                         "embedding": [(np.eye(GROUPS)[item % GROUPS] + rng.normal(0, 0.1, GROUPS)).tolist()
                                       for item in TARGET_ITEMS]})
    for name, frame, partitions in ((tables.USER_INDEX, users, None), (tables.ITEM_INDEX, items, None),
                                    (tables.INDEXED_INTERACTIONS, interactions, ["domain"]),
                                    (tables.TRAINING_EXAMPLES, positives[["domain", "user_idx", "item_idx"]], ["domain"]),
                                    (tables.ITEM_EMBEDDINGS, text, None)):
        tables.overwrite(spark.createDataFrame(frame), warehouse, name, partitions)
