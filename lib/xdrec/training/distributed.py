"""Distributed training: processes launched inside Spark, each reading its own shard of the training examples.

Two launchers (``train.launcher``), one worker body (:func:`run_training`) and one loop
(:mod:`xdrec.training.loop`):

- ``horovod``: :func:`launch` starts ``horovod.spark.run`` on the active SparkSession; every process runs
  :func:`train_worker`, reads its shard of the staged Parquet examples through Petastorm readers (one per
  domain of a phase) and averages gradients and metrics through Horovod (gloo on CPU, a GPU per process
  when there is one);
- ``torch_distributor``: :func:`launch_torch_distributor` starts Spark's ``TorchDistributor`` (what
  Databricks Runtime ML offers from 16.0 on, where Horovod is gone); every process runs
  :func:`torch_distributor_worker`, reads its shard with pyarrow (:func:`read_parquet_shard`) and averages
  through ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Rank 0 logs, checkpoints and writes the final weights. ``run_local`` runs the same code in this process
alone, for development; :func:`run_spec` runs a spec with the configured launcher.
"""
from __future__ import annotations

import abc
import ctypes
import io
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from xdrec import files
from xdrec.config import TrainConfig
from xdrec.logs import get_logger
from xdrec.modeling.methods import Batch, Phase, reads_negative_rows
from xdrec.modeling.model import csr, csr_contains
from xdrec.training.loop import Collective, load_checkpoint
from xdrec.training.validation import ValidationSet

log = get_logger("train")

FINAL_WEIGHTS = "final.pt"
SHARD_COLUMNS = ("user_idx", "item_idx")  # what a process reads of the staged training pairs
REDRAWS = 8  # rounds of drawing again the negatives that hit one of the user's items
POLL_SECONDS = 0.0002  # between looks at a Horovod exchange in flight
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)


@dataclass
class DomainData:
    """A domain's staged training pairs (its positives): a Parquet folder readable by Petastorm."""

    url: str
    rows: int


@dataclass
class ModelData:
    """What a model carries besides weights (see :class:`xdrec.modeling.model.TwoTower`); None where unused.
    The driver gives the item text; a process reads the users' histories from the staged examples."""

    item_text: np.ndarray | None = None  # float32 [num_items, text_dim]
    item_has_text: np.ndarray | None = None  # bool [num_items]
    has_source_history: np.ndarray | None = None  # bool [num_users]
    has_target_history: np.ndarray | None = None  # bool [num_users]
    history_offsets: np.ndarray | None = None  # int64 [num_users + 1], CSR of source items (the personalised bridge)
    history_items: np.ndarray | None = None  # int64 [history_size]

    def apply(self, model: nn.Module) -> None:
        """Give ``model`` the parts this holds that it uses (the personalised bridge alone reads source items)."""
        if self.item_text is not None:
            model.set_item_text(self.item_text, self.item_has_text)
        if self.has_source_history is not None:
            model.set_histories(self.has_source_history, self.has_target_history)
        if self.history_offsets is not None and model.bridge_kind == "ptupcdr":
            model.set_history(self.history_offsets, self.history_items)


Pairs = tuple[np.ndarray, np.ndarray]  # (user_idx, item_idx), int64


def user_histories(source: Pairs, target: Pairs, num_users: int) -> ModelData:
    """What a bridge model carries of its users, from the training pairs of each domain: which users have
    history in the source and in the target domain, and every user's source items (CSR)."""
    has_source, has_target = np.zeros(num_users, dtype=bool), np.zeros(num_users, dtype=bool)
    has_source[source[0]] = True
    has_target[target[0]] = True
    offsets, source_items = csr(*source, num_users)
    return ModelData(has_source_history=has_source, has_target_history=has_target,
                     history_offsets=offsets, history_items=source_items)


@dataclass
class TrainSpec:
    """Everything a worker needs, picklable and free of Spark objects. ``train`` is the config's train
    section: batch size and scope, seed, reader, learning-rate scaling, loss and early stopping."""

    model: dict
    phases: list[Phase]
    data: dict[str, DomainData]
    source_domain: str  # which domain of ``data`` is the source: a bridge model's histories tell them apart
    train: TrainConfig
    checkpoint_dir: str
    model_data: ModelData = field(default_factory=ModelData)
    validation: ValidationSet | None = None
    # Each domain's item indices: what negatives are drawn from (the batches' and the sampled softmax's).
    domain_items: dict[str, np.ndarray] = field(default_factory=dict)
    # train.init "als_merged": (user factors, item factors, ALS regularization) the embeddings start from.
    start_factors: tuple[np.ndarray, np.ndarray, float] | None = None
    # A tune trial's median stopping rule (loop.below_median): earlier trials' median figure per epoch of
    # the last validated phase, and the epochs validated before it may stop the run (0: never).
    prune_below: list[float] = field(default_factory=list)
    prune_after: int = 0
    # A tune trial's deadline (time.time()): its last validated phase stops after the epoch that passes it.
    deadline: float = 0.0
    # Return after this many epochs in all (0: never), checkpointed: a temperature's probe, which the
    # finalist's run then goes on from.
    pause_after: int = 0

    def rank_batch_size(self, size: int) -> int:
        batch_size = self.train.batch_size
        return max(1, batch_size // size) if self.train.batch_scope == "global" else batch_size

    def rank_positives(self, size: int) -> int:
        """Positive rows of a rank's batch: the rest of it are their ``train.negatives`` negatives each."""
        return max(1, self.rank_batch_size(size) // (1 + self.train.negatives))

    def negatives(self, phase: Phase) -> int:
        """Negative rows drawn per pair in ``phase``'s batches: none where nothing reads them (the batch keeps
        its pairs, so the steps are the same)."""
        return self.train.negatives if reads_negative_rows(phase.objective, self.train.loss) else 0

    def steps_per_epoch(self, phase: Phase, size: int) -> int:
        """Steps every rank takes in an epoch: one pass over the phase's largest domain's pairs, or
        ``train.max_steps_per_epoch`` where that is fewer."""
        global_positives = self.rank_positives(size) * size
        steps = max(1, max(self.data[domain].rows for domain in phase.domains) // global_positives)
        return min(steps, self.train.max_steps_per_epoch or steps)

    def learning_rate_factor(self, size: int) -> float:
        return {"none": 1.0, "linear": float(size), "sqrt": math.sqrt(size)}[self.train.lr_scaling]

    def scaled_phases(self, size: int) -> list[Phase]:
        factor = self.learning_rate_factor(size)
        return [replace(phase, learning_rate=phase.learning_rate * factor,
                        part_learning_rates={part: rate * factor for part, rate in phase.part_learning_rates.items()})
                for phase in self.phases]


def table_gradient(table: nn.Parameter, rows: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    """The average over ``size`` ranks of a table's gradient from every rank's touched ``rows`` and their
    ``values``, as a sparse gradient (a row touched by several ranks is summed by the optimizer)."""
    # The rows come from each rank's own gradient: valid by construction, so no invariant checks per step.
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values.div(size), table.shape, check_invariants=False)


class GatheringCollective(Collective, abc.ABC):
    """A collective that averages a step's gradients through one gather across ranks (:meth:`gather`): the
    dense gradients as one flat tensor, then each table's touched rows, then their values.

    One collective a step, because each one costs a round of negotiation between the processes, and at these
    sizes those rounds, not the bytes, are what a step waits for (performance.md, "Training"). The dense
    gradients are the towers' few thousand weights, so gathering them costs no more than reducing them; of
    the tables only the rows a rank touched travel, at a cost that follows the batch, not the tables.
    """

    @abc.abstractmethod
    def gather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every rank's ``tensors`` (each of any length along its first dimension), each concatenated in rank
        order."""

    def average_gradients(self, parameters: list[nn.Parameter], tables: list[nn.Parameter] = ()) -> None:
        gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
        touched = [(table, table.grad.coalesce()) for table in tables if table.grad is not None]
        dense = [torch.cat([gradient.reshape(-1) for gradient in gradients])] if gradients else []
        sent = dense + [gradient.indices()[0] for _, gradient in touched] + [gradient.values() for _, gradient in touched]
        if not sent:
            return
        gathered = list(self.gather(sent))
        if gradients:
            average = gathered.pop(0).view(self.size, -1).mean(0)
            for gradient, part in zip(gradients, average.split([gradient.numel() for gradient in gradients])):
                gradient.copy_(part.view_as(gradient))
        for (table, _), rows, values in zip(touched, gathered[:len(touched)], gathered[len(touched):]):
            table.grad = table_gradient(table, rows, values, self.size)


class HorovodCollective(GatheringCollective):
    def __init__(self, hvd):
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()

    def gather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        # Horovod's own wait keeps this thread on its core until the result is in. With no core to spare
        # (a process a core), the background thread that does the exchange then waits for the scheduler to
        # preempt a spinning thread; polling with short sleeps frees the core for it (performance.md, "Training").
        handle = self.hvd.grouped_allgather_async(tensors, name="gradients")
        while not self.hvd.poll(handle):
            time.sleep(POLL_SECONDS)
        return self.hvd.synchronize(handle)

    def broadcast_model(self, model: nn.Module) -> None:
        # Parameters only: buffers (item text, histories) are the same on every rank, from the spec or read
        # by each rank from the staged examples.
        self.hvd.broadcast_parameters(dict(model.named_parameters()), root_rank=0)

    def average(self, value: float, name: str) -> float:
        return self.hvd.allreduce(torch.tensor(float(value)), name=name, op=self.hvd.Average).item()

    def barrier(self) -> None:
        self.hvd.barrier()


class TorchCollective(GatheringCollective):
    """The loop's collective over ``torch.distributed``, as TorchDistributor starts it."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist, self.device = dist, device
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def gather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        # Two collectives: the lengths, then every tensor flattened into one float64 buffer (exact for float32
        # values and for indices below 2**53), padded to the longest rank's.
        lengths = torch.tensor([len(tensor) for tensor in tensors], device=self.device)
        every_length = [torch.zeros_like(lengths) for _ in range(self.size)]
        self.dist.all_gather(every_length, lengths)
        widths = [math.prod(tensor.shape[1:]) for tensor in tensors]  # elements per row
        sizes = [[int(count) * width for count, width in zip(rank_lengths.tolist(), widths)] for rank_lengths in every_length]
        longest = max(sum(rank_sizes) for rank_sizes in sizes)
        flat = torch.zeros(longest, dtype=torch.float64, device=self.device)
        flat[:sum(sizes[self.rank])] = torch.cat([tensor.reshape(-1).double() for tensor in tensors])
        parts = [torch.empty_like(flat) for _ in range(self.size)]
        self.dist.all_gather(parts, flat)
        pieces = [part[:sum(rank_sizes)].split(rank_sizes) for part, rank_sizes in zip(parts, sizes)]
        return [torch.cat([rank_pieces[number] for rank_pieces in pieces]).to(tensor.dtype).view(-1, *tensor.shape[1:])
                for number, tensor in enumerate(tensors)]

    def broadcast_model(self, model: nn.Module) -> None:
        for parameter in model.parameters():  # parameters only, as HorovodCollective
            self.dist.broadcast(parameter.data, src=0)

    def average(self, value: float, name: str) -> float:
        total = torch.tensor([float(value)], device=self.device)
        self.dist.all_reduce(total)
        return total.item() / self.size

    def barrier(self) -> None:
        self.dist.barrier()


def petastorm_reader(url: str, **options):
    """Petastorm's batch reader of the Parquet folder ``url``. Petastorm 0.13 opens datasets with pyarrow's
    legacy ParquetDataset, which takes only legacy filesystems: a store's fsspec filesystem goes in
    pyarrow's legacy wrapper (a local folder needs none)."""
    from petastorm import make_batch_reader

    if files.is_local(url):
        return make_batch_reader(url, **options)
    from pyarrow.filesystem import DaskFileSystem

    class LegacyStore(DaskFileSystem):
        """pyarrow's legacy wrapper of an fsspec filesystem, with the calls ParquetDataset makes."""

        def isdir(self, path: str) -> bool:
            return self.fs.isdir(path)

        def isfile(self, path: str) -> bool:
            return self.fs.isfile(path)

        def walk(self, top_path: str):
            return self.fs.walk(top_path)

    return make_batch_reader(url, filesystem=LegacyStore(files.filesystem(url)[0]), **options)


def petastorm_batches(url: str, rank: int, size: int, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """This rank's shard of a Parquet folder as an endless stream of shuffled batches of (users, items).

    Endless (``num_epochs=None``) because shards are only roughly even: the loop decides how many steps
    an epoch has, the same on every rank. One reader thread keeps the order reproducible for a seed.
    """
    from petastorm.pytorch import BatchedDataLoader

    torch.manual_seed(seed)
    reader = petastorm_reader(url, cur_shard=rank, shard_count=size, num_epochs=None, seed=seed,
                               shuffle_row_groups=True, workers_count=1, reader_pool_type="thread")
    try:
        loader = BatchedDataLoader(reader, batch_size=batch_size, shuffling_queue_capacity=batch_size * 8)
        for batch in loader:
            yield batch["user_idx"].long(), batch["item_idx"].long()
    finally:
        # Not the context manager: its exit prints "Cache cleanup complete." every epoch (no cache here).
        reader.stop()
        reader.join()


def read_shard(url: str, rank: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of a Parquet folder, read once through a Petastorm batch reader: (users, items).

    Read with Petastorm's synchronous ("dummy") pool, in row-group order, so a shard holds the same rows in
    the same order on every run (the per-epoch shuffle in :func:`memory_batches` is what varies, by seed).
    Its one-thread pool is not safe here: with ``num_epochs=1`` it ended the read after half the row groups
    in 7 of 15 reads of an 8-file folder.
    """
    reader = petastorm_reader(url, cur_shard=rank, shard_count=size, num_epochs=1, shuffle_row_groups=False,
                               reader_pool_type="dummy")
    try:
        parts = list(reader)
    finally:
        reader.stop()
        reader.join()

    return shard_tensors({name: [np.asarray(getattr(part, name)) for part in parts] for name in SHARD_COLUMNS},
                         url, rank, size)


def shard_tensors(columns: dict[str, list[np.ndarray]], url: str, rank: int, size: int) -> tuple[torch.Tensor, ...]:
    """(users, items) from each column's parts; an empty shard is an error naming it."""
    if sum(len(part) for part in columns["user_idx"]) == 0:
        raise ValueError(f"{url}: shard {rank} of {size} holds no examples (fewer Parquet row groups than processes)")
    return tuple(torch.from_numpy(np.concatenate(columns[name]).astype(np.int64)) for name in SHARD_COLUMNS)


def parquet_row_groups(url: str, columns: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
    """Every row group of a Parquet folder (a local path or any URI of :mod:`xdrec.files`), its files in
    name order, as ``{column: values}``, read with pyarrow alone."""
    import pyarrow.parquet as pq

    parts = [name for name in files.listdir(url) if name.endswith(".parquet") and not name.startswith((".", "_"))]
    for part in parts:
        with files.open_file(files.join(url, part)) as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=list(columns))
                yield {name: table.column(name).to_numpy() for name in columns}


def read_parquet_shard(url: str, rank: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of a Parquet folder with pyarrow alone, no Petastorm: every ``size``-th row group
    of its files in name order, from the ``rank``-th on, as Petastorm shards them."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in SHARD_COLUMNS}
    for number, group in enumerate(parquet_row_groups(url, SHARD_COLUMNS)):
        if number % size == rank:
            for name in SHARD_COLUMNS:
                columns[name].append(group[name])
    return shard_tensors(columns, url, rank, size)


def read_positives(url: str) -> Pairs:
    """The (user, item) pairs of one domain's staged pairs, all shards: that domain's training split. Each
    process reads them itself, in the same order, so no training pair passes through the driver."""
    groups = list(parquet_row_groups(url, SHARD_COLUMNS))
    return tuple(np.concatenate([group[name] for group in groups]).astype(np.int64) for name in SHARD_COLUMNS)


def known_positives(positives: list[Pairs], num_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every user's positive items of the given domains as CSR (offsets ``[num_users + 1]``, items): what
    a user's negatives leave out, the staged ones and the sampled softmax's (a domain's candidates are its
    own items, so the domains a method stages are all it needs), and the history encoder's histories."""
    offsets, items = csr(np.concatenate([users for users, _ in positives]),
                         np.concatenate([items for _, items in positives]), num_users)
    return torch.from_numpy(offsets), torch.from_numpy(items)


def memory_batches(shard: tuple[torch.Tensor, ...], batch_size: int, seed: int) -> Iterator[Batch]:
    """An endless stream of full batches from a shard in memory: a fresh seeded permutation of its rows
    each time one runs out, so a shard smaller than an epoch's steps wraps around instead of ending."""
    generator = torch.Generator().manual_seed(seed)
    rows = len(shard[0])
    if rows == 0:
        raise ValueError("an empty shard has no batches")
    order = torch.empty(0, dtype=torch.long)
    while True:
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(rows, generator=generator)])
        index, order = order[:batch_size], order[batch_size:]
        yield tuple(column[index] for column in shard)


def labelled_batches(pairs: Iterator[tuple[torch.Tensor, ...]], candidates: torch.Tensor,
                     known: tuple[torch.Tensor, torch.Tensor], negatives: int, seed: int) -> Iterator[Batch]:
    """Each batch of positive ``pairs`` as labelled examples (users, items, labels): the pairs as 1.0, then
    ``negatives`` per pair as 0.0, items drawn uniformly (seeded) from the domain's ``candidates`` and
    fresh every step. A draw of one of the user's training items (``known``, CSR) is drawn again, up to
    ``REDRAWS`` times; what still hits one (a user with most of the domain's items) is left out::

        batches = labelled_batches(iter([(torch.tensor([0]), torch.tensor([5]))]), torch.arange(4, 9),
                                   known_positives([(np.array([0]), np.array([5]))], 1), negatives=2, seed=0)
        next(batches)   # (tensor([0, 0, 0]), tensor([5, 8, 8]), tensor([1., 0., 0.])): never 5 among the negatives
    """
    generator = torch.Generator().manual_seed(seed)

    def draw(count: int) -> torch.Tensor:
        return candidates[torch.randint(len(candidates), (count,), generator=generator)]

    try:
        for users, items in pairs:
            negative_users = users.repeat_interleave(negatives)
            drawn = draw(len(negative_users))
            for _ in range(REDRAWS):
                hits = csr_contains(*known, negative_users, drawn)
                if not bool(hits.any()):
                    break
                drawn[hits] = draw(int(hits.sum()))
            else:
                kept = ~csr_contains(*known, negative_users, drawn)
                negative_users, drawn = negative_users[kept], drawn[kept]
            yield (torch.cat([users, negative_users]), torch.cat([items, drawn]),
                   torch.cat([torch.ones(len(users)), torch.zeros(len(drawn))]))
    finally:
        if hasattr(pairs, "close"):  # stop a Petastorm reader behind the pairs now, not at GC
            pairs.close()


def zipped_batches(streams: list[Iterator[Batch]]) -> Iterator[tuple[Batch, ...]]:
    """One batch of every stream per step; closing this closes every stream (and stops its reader)."""
    try:
        yield from zip(*streams)
    finally:
        for stream in streams:
            stream.close()


def quiet_warnings() -> None:
    """Petastorm warns on every read: deprecated pyarrow APIs (pyarrow 14), read-only buffers."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pyarrow.*")
    # Petastorm's loader hands torch read-only Arrow buffers; batches are only read, never written.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def keep_freed_memory() -> None:
    """Have glibc's malloc keep what a training step frees for the next step, in this process.

    By default it hands freed memory at the top of its heap back to the kernel, and serves large blocks
    from fresh mappings, so a step's large tensors (the sampled softmax's logits and their gradients)
    land on new pages that the kernel faults in and zeroes every step. Keeping them took a Horovod
    process of the training benchmark from 210,000-220,000 page faults to 123,000-126,000 and its
    throughput up 20% in the median of five pairs of runs; the demo's epochs, 6% in two pairs, within
    the noise (docs/performance.md, "Training"). A training process's memory then stays at its peak,
    which it reaches in its first steps anyway. Where the C library is not glibc, nothing changes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # blocks up to 32 MiB from the heap; fixed, not adaptive
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    libc.mallopt(M_TOP_PAD, 256 << 20)  # address space only: pages cost when first touched


def run_training(spec: TrainSpec, collective: Collective, device: torch.device,
                 read: Callable[[str, int, int], tuple[torch.Tensor, ...]] = read_shard) -> tuple[nn.Module, list]:
    """Build the model and train it through the spec's phases on this rank; return (model, history).
    ``read(url, rank, size)`` reads this rank's shard of a domain into memory (``train.reader`` memory)."""
    from xdrec.modeling.model import TwoTower
    from xdrec.training import loop
    from xdrec.training.validation import ranking_figures

    quiet_warnings()
    torch.manual_seed(spec.train.seed)
    model = TwoTower(**spec.model)
    spec.model_data.apply(model)
    if spec.start_factors is not None:
        model.start_from_factors(*spec.start_factors)
    # domain -> its training pairs, read here: none passes through the driver
    positives = {domain: read_positives(data.url) for domain, data in spec.data.items()}
    known = known_positives(list(positives.values()), model.num_users)
    if model.user_encoder == "history":
        model.set_history(*known)  # every user's training items, both domains
    if model.bridge_kind != "none":
        target_domain, = set(spec.data) - {spec.source_domain}
        user_histories(positives[spec.source_domain], positives[target_domain], model.num_users).apply(model)
    rank_positives = spec.rank_positives(collective.size)
    phases = spec.scaled_phases(collective.size)
    shards: dict[str, tuple[torch.Tensor, ...]] = {}  # domain -> this rank's shard, when read into memory

    def domain_batches(domain: str, seed: int, negatives: int) -> Iterator[Batch]:
        url = spec.data[domain].url
        if spec.train.reader == "stream":
            pairs = petastorm_batches(url, collective.rank, collective.size, rank_positives, seed)
        else:
            if domain not in shards:
                shards[domain] = read(url, collective.rank, collective.size)
            pairs = memory_batches(shards[domain], rank_positives, seed)
        return labelled_batches(pairs, torch.from_numpy(spec.domain_items[domain]), known, negatives, seed)

    def batches(phase: Phase, epoch: int) -> Iterator[tuple[Batch, ...]]:
        # A seed per (phase, epoch, rank, domain) makes a resumed run read what an uninterrupted one would.
        seed = spec.train.seed + 1000 * phases.index(phase) + 10 * epoch + collective.rank
        return zipped_batches([domain_batches(domain, seed + 100_003 * number, spec.negatives(phase))
                               for number, domain in enumerate(phase.domains)])

    def validate(model: nn.Module) -> dict[str, float]:
        return ranking_figures(model, spec.validation, spec.train.validation_k, collective)

    history = loop.train(
        model,
        phases,
        batches,
        lambda phase: spec.steps_per_epoch(phase, collective.size),
        config=spec.train,
        domain_items={domain: torch.from_numpy(items) for domain, items in spec.domain_items.items()},
        validate=validate if spec.validation is not None and len(spec.validation) else None,
        collective=collective,
        checkpoint_dir=spec.checkpoint_dir,
        device=device,
        seed=spec.train.seed,
        log=lambda message: log.info(f"rank {collective.rank}: {message}"),
        prune=(lambda figures: loop.below_median(figures, spec.prune_below, spec.prune_after)
               or 0 < spec.deadline < time.time()) if spec.prune_after or spec.deadline else None,
        known_positives=known,
        pause_after=spec.pause_after,
    )
    return model, history


def save_final_weights(weights: dict[str, torch.Tensor], checkpoint_dir: str) -> None:
    buffer = io.BytesIO()
    torch.save({name: tensor.cpu() for name, tensor in weights.items()}, buffer)
    files.write_bytes(files.join(checkpoint_dir, FINAL_WEIGHTS), buffer.getvalue())


def train_worker(spec: TrainSpec) -> list[dict]:
    """The body of one Horovod process. Returns the epoch history (rank 0 also saves the weights)."""
    import horovod.torch as hvd

    keep_freed_memory()
    hvd.init()
    collective = HorovodCollective(hvd)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // hvd.local_size()))
    device = torch.device(f"cuda:{hvd.local_rank()}" if torch.cuda.is_available() else "cpu")
    model, history = run_training(spec, collective, device)
    if collective.rank == 0:
        save_final_weights(model.state_dict(), spec.checkpoint_dir)
    hvd.shutdown()
    return [asdict(result) for result in history]


def launch(spec: TrainSpec, num_proc: int, start_timeout: int) -> list[dict]:
    """Run ``train_worker`` in ``num_proc`` Horovod processes on the active SparkSession."""
    import horovod.spark

    # Half Horovod's default cycle (1 ms): a step waits for the next cycle to start its one exchange.
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               HOROVOD_CYCLE_TIME=os.environ.get("HOROVOD_CYCLE_TIME", "0.5"))
    results = horovod.spark.run(train_worker, args=(spec,), num_proc=num_proc, use_gloo=True,
                                start_timeout=start_timeout, env=env, verbose=0)
    return results[0]


def torch_distributor_worker(spec: TrainSpec, threads: int) -> list[dict]:
    """The body of one TorchDistributor process (``torch.distributed`` set up from the environment that
    TorchDistributor gives it). Returns the epoch history (rank 0 also saves the weights)."""
    import torch.distributed as dist

    keep_freed_memory()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda else "cpu")
        collective = TorchCollective(device)
        torch.set_num_threads(threads)
        model, history = run_training(spec, collective, device, read=read_parquet_shard)
        if collective.rank == 0:
            save_final_weights(model.state_dict(), spec.checkpoint_dir)
    finally:
        dist.destroy_process_group()
    return [asdict(result) for result in history]


def launch_torch_distributor(spec: TrainSpec, num_proc: int) -> list[dict]:
    """Run ``torch_distributor_worker`` in ``num_proc`` processes, Spark barrier tasks started by
    TorchDistributor on the active SparkSession; a GPU each when Spark schedules GPUs to tasks. Each
    process takes ``spark.task.cpus`` threads, the cores Spark gives a task."""
    from pyspark.ml.torch.distributor import TorchDistributor
    from pyspark.sql import SparkSession

    conf = SparkSession.getActiveSession().conf
    distributor = TorchDistributor(num_processes=num_proc, local_mode=False,
                                   use_gpu=bool(conf.get("spark.task.resource.gpu.amount", "")))
    return distributor.run(torch_distributor_worker, spec, int(conf.get("spark.task.cpus", "1")))


def trained_already(spec: TrainSpec) -> list[dict] | None:
    """The history of ``spec``'s run when its checkpoint leaves nothing to train (the run ended, or it
    pauses after ``spec.pause_after`` epochs and has them), with the final weights written from that
    checkpoint as the run's processes would write them; else None. A rerun, or the train stage at a tune
    trial's settings, then starts no processes for it (about 10 s each)."""
    try:
        checkpoint = load_checkpoint(spec.checkpoint_dir)
    except Exception:  # noqa: BLE001 - the launched run sets a bad checkpoint aside and logs its cause
        return None
    if checkpoint is None or not (checkpoint["phase"] >= len(spec.phases)
                                  or 0 < spec.pause_after <= len(checkpoint["history"])):
        return None
    save_final_weights(checkpoint["model"], spec.checkpoint_dir)
    log.info(f"{spec.checkpoint_dir}: trained already ({len(checkpoint['history'])} epochs), not started again")
    return checkpoint["history"]


def run_spec(spec: TrainSpec) -> list[dict]:
    """Train ``spec`` with its launcher (``train.launcher``); returns rank 0's epoch history."""
    if (history := trained_already(spec)) is not None:
        return history
    train = spec.train
    if train.launcher == "horovod":
        return launch(spec, train.num_proc, train.start_timeout)
    if train.launcher == "torch_distributor":
        return launch_torch_distributor(spec, train.num_proc)
    return run_local(spec)


def run_local(spec: TrainSpec) -> list[dict]:
    """The same training in this process alone, without Horovod (for development and debugging)."""
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model, history = run_training(spec, Collective(), device)
    save_final_weights(model.state_dict(), spec.checkpoint_dir)
    return [asdict(result) for result in history]
