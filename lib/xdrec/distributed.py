"""Distributed training: Horovod processes launched inside Spark, each reading its shard with Petastorm.

``launch`` starts ``horovod.spark.run`` on the active SparkSession; every process runs ``train_worker``,
which builds the model, reads its own shard of the staged Parquet training examples through a
Petastorm batch reader, and runs the shared loop in :mod:`xdrec.trainer` with gradients averaged by
Horovod (gloo on CPU). Rank 0 logs, checkpoints and writes the final weights.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
from torch import nn

from xdrec.trainer import Batch, Collective, Phase

FINAL_WEIGHTS = "final.pt"


@dataclass
class DomainData:
    """A domain's staged training examples: a Parquet folder readable by Petastorm."""

    url: str
    rows: int


@dataclass
class TrainSpec:
    """Everything a worker needs, picklable and free of Spark objects."""

    model: dict[str, int]
    phases: list[Phase]
    data: dict[str, DomainData]
    batch_size: int
    seed: int
    checkpoint_dir: str

    def steps_per_epoch(self, phase: Phase) -> int:
        """Steps every rank takes in an epoch: the global batch is split evenly over the ranks."""
        return max(1, self.data[phase.domain].rows // self.batch_size)


class HorovodCollective(Collective):
    def __init__(self, hvd):
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
        averaged = self.hvd.grouped_allreduce(gradients, op=self.hvd.Average, name="gradients")
        for gradient, average in zip(gradients, averaged):
            gradient.copy_(average)

    def broadcast_model(self, model: nn.Module) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def average(self, value: float, name: str) -> float:
        return self.hvd.allreduce(torch.tensor(float(value)), name=name, op=self.hvd.Average).item()

    def barrier(self) -> None:
        self.hvd.barrier()


def petastorm_batches(url: str, rank: int, size: int, batch_size: int, seed: int) -> Iterator[Batch]:
    """This rank's shard of a Parquet folder as an endless stream of shuffled batches.

    Endless (``num_epochs=None``) because shards are only roughly even: the loop decides how many steps
    an epoch has, the same on every rank. One reader thread keeps the order reproducible for a seed.
    """
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    torch.manual_seed(seed)
    reader = make_batch_reader(url, cur_shard=rank, shard_count=size, num_epochs=None, seed=seed,
                               shuffle_row_groups=True, workers_count=1, reader_pool_type="thread")
    try:
        loader = BatchedDataLoader(reader, batch_size=batch_size, shuffling_queue_capacity=batch_size * 8)
        for batch in loader:
            yield batch["user_idx"].long(), batch["item_idx"].long(), batch["label"].float()
    finally:
        # Not the context manager: its exit prints "Cache cleanup complete." every epoch (no cache here).
        reader.stop()
        reader.join()


def quiet_warnings() -> None:
    """Petastorm on pyarrow 14 warns about deprecated pyarrow APIs on every read."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pyarrow.*")


def train_worker(spec: TrainSpec) -> list[dict]:
    """The body of one Horovod process. Returns the epoch history (rank 0 also saves the weights)."""
    import horovod.torch as hvd

    from xdrec import trainer
    from xdrec.model import TwoTower

    quiet_warnings()
    hvd.init()
    collective = HorovodCollective(hvd)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // hvd.local_size()))
    device = torch.device(f"cuda:{hvd.local_rank()}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(spec.seed)
    model = TwoTower(**spec.model)
    per_rank_batch = max(1, spec.batch_size // collective.size)

    def batches(phase: Phase, epoch: int) -> Iterator[Batch]:
        # A seed per (phase, epoch, rank) makes a resumed run read what an uninterrupted one would.
        seed = spec.seed + 1000 * spec.phases.index(phase) + 10 * epoch + collective.rank
        return petastorm_batches(spec.data[phase.domain].url, collective.rank, collective.size,
                                 per_rank_batch, seed)

    history = trainer.train(
        model,
        spec.phases,
        batches,
        spec.steps_per_epoch,
        collective=collective,
        checkpoint_dir=spec.checkpoint_dir,
        device=device,
        log=lambda message: print(f"[train] {message}", flush=True),
    )
    if collective.rank == 0:
        weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
        torch.save(weights, os.path.join(spec.checkpoint_dir, FINAL_WEIGHTS + ".tmp"))
        os.replace(os.path.join(spec.checkpoint_dir, FINAL_WEIGHTS + ".tmp"),
                   os.path.join(spec.checkpoint_dir, FINAL_WEIGHTS))
    hvd.shutdown()
    return [asdict(result) for result in history]


def launch(spec: TrainSpec, num_proc: int, start_timeout: int) -> list[dict]:
    """Run ``train_worker`` in ``num_proc`` Horovod processes on the active SparkSession."""
    import horovod.spark

    os.makedirs(spec.checkpoint_dir, exist_ok=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    results = horovod.spark.run(train_worker, args=(spec,), num_proc=num_proc, use_gloo=True,
                                start_timeout=start_timeout, env=env, verbose=0)
    return results[0]
