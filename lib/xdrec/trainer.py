"""The training loop: phases of epochs over batches of (user, item, label), with checkpoints.

It knows nothing of Spark or Delta, and of Horovod only through the small :class:`Collective` interface,
so the same loop runs single-process (the base ``Collective``) for development and under Horovod
(``xdrec.distributed.HorovodCollective``) for real training.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from xdrec.model import TwoTower

# One batch: user indices, item indices, labels in {0, 1}.
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Phase:
    """A run of epochs over one domain's training examples."""

    name: str
    domain: str
    epochs: int
    learning_rate: float
    freeze: list[str] = field(default_factory=list)


class Collective:
    """What the loop needs from a distributed runtime. This base class is the single-process one."""

    rank = 0
    size = 1

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        """Average the gradients of ``parameters`` over all ranks (a no-op for one process)."""

    def broadcast_model(self, model: nn.Module) -> None:
        """Make every rank start from rank 0's weights."""

    def average(self, value: float, name: str) -> float:
        return value

    def barrier(self) -> None:
        """Wait for every rank (after rank 0 wrote a checkpoint)."""


@dataclass
class EpochResult:
    phase: str
    epoch: int
    loss: float
    examples: int
    seconds: float

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0


def _checkpoint_file(checkpoint_dir: str) -> str:
    return os.path.join(checkpoint_dir, "checkpoint.pt")


def load_checkpoint(checkpoint_dir: str | None) -> dict | None:
    if not checkpoint_dir or not os.path.isfile(_checkpoint_file(checkpoint_dir)):
        return None
    return torch.load(_checkpoint_file(checkpoint_dir), map_location="cpu", weights_only=False)


def save_checkpoint(checkpoint_dir: str, state: dict) -> None:
    """Write atomically: a run killed mid-write leaves the previous checkpoint intact."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    path = _checkpoint_file(checkpoint_dir)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def train(
    model: TwoTower,
    phases: list[Phase],
    batches: Callable[[Phase, int], Iterable[Batch]],
    steps_per_epoch: Callable[[Phase], int],
    collective: Collective = Collective(),
    checkpoint_dir: str | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> list[EpochResult]:
    """Train ``model`` through ``phases``; return one result per epoch (of this run and resumed ones).

    ``batches(phase, epoch)`` yields this rank's batches for one epoch; the loop takes exactly
    ``steps_per_epoch(phase)`` of them, the same on every rank, so uneven shards cannot hang an allreduce.
    After every epoch rank 0 checkpoints the model, the optimizer and the position; a restarted run with
    the same ``checkpoint_dir`` continues from there.
    """
    model.to(device)
    history: list[EpochResult] = []
    start_phase, start_epoch, optimizer_state = 0, 0, None
    checkpoint = load_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        start_phase, start_epoch = checkpoint["phase"], checkpoint["epoch"]
        optimizer_state = checkpoint["optimizer"]
        history = [EpochResult(**result) for result in checkpoint["history"]]
        log(f"resuming from checkpoint: phase {start_phase}, epoch {start_epoch}")
    collective.broadcast_model(model)
    loss_fn = nn.BCEWithLogitsLoss()

    for phase_number, phase in enumerate(phases):
        if phase_number < start_phase:
            continue
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        model.freeze(phase.freeze)
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=phase.learning_rate)
        first_epoch = start_epoch if phase_number == start_phase else 0
        if optimizer_state is not None and phase_number == start_phase:
            optimizer.load_state_dict(optimizer_state)
        steps = steps_per_epoch(phase)
        for epoch in range(first_epoch, phase.epochs):
            model.train()
            started = time.perf_counter()
            total_loss, examples = 0.0, 0
            iterator: Iterator[Batch] = iter(batches(phase, epoch))
            for _ in range(steps):
                users, items, labels = (tensor.to(device) for tensor in next(iterator))
                optimizer.zero_grad()
                loss = loss_fn(model(users, items), labels)
                loss.backward()
                collective.average_gradients(trainable)
                optimizer.step()
                total_loss += loss.item() * len(labels)
                examples += len(labels)
            if hasattr(iterator, "close"):  # stop the reader behind a generator now, not at GC
                iterator.close()
            seconds = time.perf_counter() - started
            result = EpochResult(
                phase=phase.name,
                epoch=epoch,
                loss=collective.average(total_loss / max(examples, 1), f"{phase.name}.{epoch}.loss"),
                examples=int(collective.average(examples, f"{phase.name}.{epoch}.n") * collective.size),
                seconds=seconds,
            )
            history.append(result)
            if collective.rank == 0:
                log(f"{phase.name} epoch {epoch + 1}/{phase.epochs}: loss {result.loss:.4f}, "
                    f"{result.examples:,} examples in {seconds:.1f}s ({result.examples_per_second:,.0f}/s)")
                if checkpoint_dir:
                    next_phase, next_epoch = (phase_number, epoch + 1)
                    if next_epoch == phase.epochs:
                        next_phase, next_epoch = phase_number + 1, 0
                    save_checkpoint(checkpoint_dir, {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict() if next_epoch else None,
                        "phase": next_phase,
                        "epoch": next_epoch,
                        "history": [vars(item) for item in history],
                    })
            collective.barrier()
        optimizer_state = None
    return history
