"""The training loop: phases of epochs over batches of (user, item, label), with validation and checkpoints.

It knows nothing of Spark or Delta, and of Horovod only through the small :class:`Collective` interface,
so the same loop runs single-process (the base ``Collective``) for development and under Horovod
(``xdrec.training.distributed.HorovodCollective``) for real training. Every method is a list of phases, each with
an objective from :mod:`xdrec.modeling.methods`; this loop is the only one.
"""
from __future__ import annotations

import copy
import hashlib
import io
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from xdrec import files
from xdrec.config import TrainConfig
from xdrec.modeling.methods import (Batch, OBJECTIVES, Phase, StepContext, pseudo_labels,
                                    users_without_target_history)
from xdrec.modeling.model import TwoTower


class Collective:
    """What the loop needs from a distributed runtime. This base class is the single-process one."""

    rank = 0
    size = 1

    def average_gradients(self, parameters: list[nn.Parameter], tables: list[nn.Parameter] = ()) -> None:
        """Average the gradients of ``parameters`` and of the embedding ``tables`` over all ranks (a no-op
        for one process). A table's gradient is sparse (:func:`sparse_tables`): only the rows this rank's
        step touched, which is all a runtime needs to exchange."""

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
    # Validation figures after this epoch, "<group>/<metric>@<k>" -> value; None when not validated.
    validation: dict[str, float] | None = None

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Best:
    """The best validated epoch of the current phase so far, and its weights."""

    key: str
    value: float
    epoch: int
    state: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return f"epoch {self.epoch + 1}" if self.epoch >= 0 else "the weights it started from"


def selecting_key(train: TrainConfig, validation: dict[str, float], group: str | None = None) -> str:
    """The validation figure that selects epochs and models, ``<group>/<metric>@<k>``; the "all" users'
    figure when the group (``train.validation_group`` unless ``group`` is given) has no users."""
    suffix = f"{train.validation_metric}@{train.validation_k}"
    key = f"{group or train.validation_group}/{suffix}"
    return key if key in validation else f"all/{suffix}"


def below_median(figures: Sequence[float], medians: Sequence[float], after: int) -> bool:
    """The median stopping rule: whether a run whose validated figures so far are ``figures`` is hopeless,
    its best below ``medians`` (earlier runs' median figure at each epoch) at its latest epoch, once it
    has validated more than ``after`` epochs. ``after`` 0: never."""
    latest = len(figures) - 1
    return after > 0 and after <= latest < len(medians) and max(figures) < medians[latest]


CHECKPOINT, PREVIOUS = "checkpoint.pt", "previous.pt"  # the latest checkpoint, and the one before it


def _checksum_path(path: str) -> str:
    return f"{path}.sha256"


def load_checkpoint(checkpoint_dir: str | None, name: str = CHECKPOINT) -> dict | None:
    """The checkpoint ``name`` in ``checkpoint_dir``, or None when there is none. Raises when its bytes do not
    match the checksum recorded when it was saved (a file cut or changed since)."""
    if not checkpoint_dir or not files.is_file(path := files.join(checkpoint_dir, name)):
        return None
    data = files.read_bytes(path)
    try:
        recorded = files.read_text(_checksum_path(path)).strip()
    except FileNotFoundError:
        raise ValueError("no checksum was recorded for it") from None
    if hashlib.sha256(data).hexdigest() != recorded:
        raise ValueError("its bytes do not match the checksum recorded when it was saved")
    # Tensors and plain values only: a checkpoint on shared storage must never hand us code to run.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def restore_checkpoint(checkpoint_dir: str | None, model: nn.Module, set_aside: bool,
                       log: Callable[[str], None]) -> dict | None:
    """The newest good checkpoint in ``checkpoint_dir`` with its weights loaded into ``model``, or None.

    A checkpoint that cannot be read, fails its checksum or does not fit the model (a run killed by a full
    disk, a file from elsewhere, one holding more than tensors and plain values) must not block every later
    run: it is logged with its path and cause and moved aside (by the rank that ``set_aside``), and the
    previous checkpoint is tried; when none is good, training starts over.
    """
    unreadable = False
    for name in (CHECKPOINT, PREVIOUS):
        path = files.join(checkpoint_dir, name) if checkpoint_dir else name
        try:
            checkpoint = load_checkpoint(checkpoint_dir, name)
            if checkpoint is None:
                continue
            expected = {key: tensor.shape for key, tensor in model.state_dict().items()}
            if {key: tensor.shape for key, tensor in checkpoint["model"].items()} != expected:
                raise ValueError("its weights do not fit this model")
            model.load_state_dict(checkpoint["model"])
            if unreadable:
                log(f"resuming from the previous checkpoint {path}")
            return checkpoint
        except Exception as error:  # noqa: BLE001 - any bad checkpoint means: try the one before
            unreadable = True
            cause = str(error).strip().splitlines()[0] if str(error).strip() else ""
            message = f"checkpoint {path} is unreadable ({type(error).__name__}: {cause})"
            if set_aside:
                aside = f"{path}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}"
                try:
                    files.move(path, aside)
                    message += f"; moved to {aside}"
                except FileNotFoundError:
                    pass
            log(message)
    if unreadable:
        log("no good checkpoint left: training from the start")
    return None


def save_checkpoint(checkpoint_dir: str, state: dict) -> None:
    """Write the checkpoint with its checksum and keep the one before it as the previous checkpoint. Every
    file is replaced whole, so a run killed at any point leaves at least one good checkpoint."""
    path, previous = files.join(checkpoint_dir, CHECKPOINT), files.join(checkpoint_dir, PREVIOUS)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    if files.is_file(path):
        for source, destination in ((path, previous), (_checksum_path(path), _checksum_path(previous))):
            if files.is_file(source):
                files.move(source, destination)
    for target, content in ((_checksum_path(path), hashlib.sha256(data).hexdigest().encode()), (path, data)):
        files.write_bytes(target, content)


def sparse_tables(model: nn.Module) -> set[int]:
    """Switch ``model``'s embedding tables to sparse gradients and return their weights' ids.

    A step touches a few thousand rows of tables that can hold millions: with sparse gradients the
    backward pass, the exchange between ranks and the optimizer's update cost what the batch touched,
    not what the tables hold. The flag only changes how gradients are built; scoring is unaffected.
    """
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.sparse = True
    return {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}


def no_rows(table: nn.Parameter) -> torch.Tensor:
    """A sparse gradient of ``table`` that touches no row."""
    return torch.sparse_coo_tensor(torch.empty((1, 0), dtype=torch.long, device=table.device),
                                   table.new_empty((0, *table.shape[1:])), table.shape,
                                   check_invariants=False)


class TableAdam:
    """Adam, with the embedding tables' rows updated lazily (``lazy``) or densely.

    Lazily, a table row's moments and weights change only on the steps that touch it
    (``torch.optim.SparseAdam``, as TensorFlow's LazyAdam), at a cost that follows the batch. Densely, the
    tables' sparse gradients are made dense and every row takes an Adam step on every step, untouched rows
    moving on their momentum: rarely seen rows travel further per touch, at a cost that grows with the
    number of users and items. Every other parameter is updated by ``torch.optim.Adam`` either way.

        optimizer = TableAdam(parameter_groups(model, 0.01, {}), sparse_tables(model), lazy=True)
    """

    def __init__(self, groups: list[dict], table_ids: set[int], lazy: bool):
        def split(tables: bool) -> list[dict]:
            parts = [{**group, "params": [parameter for parameter in group["params"]
                                          if (id(parameter) in table_ids) == tables]} for group in groups]
            return [part for part in parts if part["params"]]

        self.dense_tables = [] if lazy else [parameter for group in split(True) for parameter in group["params"]]
        rules = ((torch.optim.Adam, split(False)), (torch.optim.SparseAdam, split(True))) if lazy else \
            ((torch.optim.Adam, groups),)
        self.optimizers = [optimizer(groups) for optimizer, groups in rules if groups]

    def step(self) -> None:
        for table in self.dense_tables:
            if table.grad is not None and table.grad.is_sparse:
                table.grad = table.grad.to_dense()
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def scale_learning_rates(self, factor: float) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= factor

    def state_dict(self) -> list[dict]:
        return [optimizer.state_dict() for optimizer in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for optimizer, state in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(state)


def parameter_groups(model: nn.Module, learning_rate: float, part_learning_rates: dict[str, float]) -> list[dict]:
    """Optimizer groups of the trainable parameters: a named part's own rate, the base rate for the rest.

    A more specific part (``user_tower.mlp.0``) wins over the part containing it (``user_tower``).
    """
    rate_of: dict[int, float] = {}
    for part in sorted(part_learning_rates, key=len):
        if model.has_part(part):
            for parameter in model.get_submodule(part).parameters():
                rate_of[id(parameter)] = part_learning_rates[part]
    groups: dict[float, list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if parameter.requires_grad:
            groups.setdefault(rate_of.get(id(parameter), learning_rate), []).append(parameter)
    return [{"params": parameters, "lr": rate} for rate, parameters in groups.items()]


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def train(
    model: TwoTower,
    phases: list[Phase],
    batches: Callable[[Phase, int], Iterable[tuple[Batch, ...]]],
    steps_per_epoch: Callable[[Phase], int],
    config: TrainConfig | None = None,
    domain_items: dict[str, torch.Tensor] | None = None,
    validate: Callable[[TwoTower], dict[str, float]] | None = None,
    collective: Collective = Collective(),
    checkpoint_dir: str | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    log: Callable[[str], None] = print,
    prune: Callable[[list[float]], bool] | None = None,
    known_positives: tuple[torch.Tensor, torch.Tensor] | None = None,
    pause_after: int = 0,
) -> list[EpochResult]:
    """Train ``model`` through ``phases``; return one result per epoch (of this run and resumed ones).

    ``batches(phase, epoch)`` yields this rank's steps for one epoch, each a tuple with one batch per
    domain of the phase; the loop takes exactly ``steps_per_epoch(phase)`` of them, the same on every
    rank, so uneven shards cannot hang a collective. ``domain_items`` (domain -> item indices) is what the
    sampled softmax (``config.loss``) draws negatives from, and ``known_positives`` (every user's training
    items, CSR) what it leaves out of them (``config.mask_known_positives``) and which users a self-training
    phase labels (those with none in its target domain). ``validate(model)`` returns validation figures
    (already combined over ranks); validated phases stop after ``config.patience`` epochs without improvement
    and end with their best epoch's weights (with ``config.plateau_decay`` below 1, an epoch below the best
    sends the weights back to it and scales the learning rates). After every epoch rank 0 checkpoints the model,
    the optimizer, the position, the best epoch, a student's teacher and a self-training phase's labels; a
    restarted run with the same ``checkpoint_dir`` continues from there and ends where an uninterrupted one
    does. ``prune`` (a tune trial's stopping rule, such as :func:`below_median`) is asked after every validated
    epoch of the last validated phase with that phase's figures so far; when it says stop, the run returns
    with the phase's best epoch, its checkpoint left where an uninterrupted run would be (so the train stage
    goes on from the tune's best trial).
    ``pause_after`` > 0 returns once the history holds that many epochs, checkpointed for a later run to go on
    from.
    """
    config = config or TrainConfig()
    last_validated = max((number for number, phase in enumerate(phases) if phase.validate), default=-1)
    model.to(device)
    table_ids = sparse_tables(model)
    if known_positives is not None:
        known_positives = tuple(tensor.to(device) for tensor in known_positives)
    mask = known_positives if config.mask_known_positives else None
    history: list[EpochResult] = []
    start_phase, start_epoch = 0, 0
    checkpoint = restore_checkpoint(checkpoint_dir, model, set_aside=collective.rank == 0, log=log)
    if checkpoint is not None:
        start_phase, start_epoch = checkpoint["phase"], checkpoint["epoch"]
        history = [EpochResult(**result) for result in checkpoint["history"]]
        log(f"resuming from checkpoint: phase {start_phase}, epoch {start_epoch}")
    collective.broadcast_model(model)
    teacher: TwoTower | None = None

    for phase_number, phase in enumerate(phases):
        if phase_number < start_phase:
            continue
        resumed_mid_phase = checkpoint is not None and phase_number == start_phase and start_epoch > 0
        if phase.student:
            teacher = copy.deepcopy(model).eval()
            if resumed_mid_phase:
                teacher.load_state_dict(checkpoint["teacher"])
            else:
                torch.manual_seed(seed + 7919 * (phase_number + 1))
                model.reset_parameters()
                collective.broadcast_model(model)
            teacher.requires_grad_(False)
        labels = None
        if phase.objective == "self_training":  # labels from the model as the phase finds it: the teacher
            if resumed_mid_phase:
                labels = checkpoint["pseudo_labels"].to(device)
            else:
                target_items = domain_items[phase.domains[1]].to(device)
                unlabelled = users_without_target_history(known_positives, target_items, model.num_items)
                labels = pseudo_labels(model.eval(), unlabelled, target_items, config.pseudo_label_share)
                if collective.rank == 0:
                    log(f"{phase.name}: pseudo-labels for {int((labels >= 0).sum()):,} of the {len(unlabelled):,} "
                        "users without target history")
        model.requires_grad_(True)
        model.freeze(phase.freeze)
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        tables = [parameter for parameter in trainable if id(parameter) in table_ids]
        dense = [parameter for parameter in trainable if id(parameter) not in table_ids]
        optimizer = TableAdam(parameter_groups(model, phase.learning_rate, phase.part_learning_rates), table_ids,
                              lazy=config.table_update == "lazy")
        best: Best | None = None
        first_epoch = 0
        if resumed_mid_phase:
            optimizer.load_state_dict(checkpoint["optimizer"])
            best = Best(**checkpoint["best"]) if checkpoint["best"] else None
            first_epoch = start_epoch
        elif phase.keeps_start_if_best and validate is not None:
            model.eval()
            figures = validate(model)
            selecting = selecting_key(config, figures, phase.validation_group)
            best = Best(selecting, figures[selecting], -1, _cpu_state(model))
            if collective.rank == 0:
                log(f"{phase.name}: starts from {selecting} {best.value:.4f}")
        objective = OBJECTIVES[phase.objective]
        candidates = tuple(domain_items[domain].to(device) for domain in phase.domains) if domain_items else ()
        steps = steps_per_epoch(phase)
        total_steps = steps * phase.epochs
        for epoch in range(first_epoch, phase.epochs):
            if 0 < pause_after <= len(history):
                return history
            model.train()
            started = time.perf_counter()
            total_loss, examples = 0.0, 0
            # Seeded per (phase, epoch, rank): a resumed epoch draws what an uninterrupted one would.
            generator = torch.Generator(device=device).manual_seed(
                seed + 1000 * phase_number + 10 * epoch + collective.rank)
            iterator: Iterator[tuple[Batch, ...]] = iter(batches(phase, epoch))
            for step in range(steps):
                step_batches = tuple(tuple(tensor.to(device) for tensor in batch) for batch in next(iterator))
                context = StepContext(progress=(epoch * steps + step) / total_steps, teacher=teacher,
                                      generator=generator, candidates=candidates, known_positives=mask,
                                      pseudo_labels=labels)
                optimizer.zero_grad()
                loss = objective(model, step_batches, config, context)
                loss.backward()
                for parameter in trainable:  # a part unused on this rank's batch still joins the exchange
                    if parameter.grad is None:
                        parameter.grad = (no_rows(parameter) if id(parameter) in table_ids
                                          else torch.zeros_like(parameter))
                collective.average_gradients(dense, tables)
                optimizer.step()
                size = sum(len(batch[2]) for batch in step_batches)
                total_loss += loss.item() * size
                examples += size
            if hasattr(iterator, "close"):  # stop the readers behind a generator now, not at GC
                iterator.close()
            seconds = time.perf_counter() - started
            validation = None
            if phase.validate and validate is not None:
                model.eval()
                validation = validate(model)
            result = EpochResult(
                phase=phase.name,
                epoch=epoch,
                loss=collective.average(total_loss / max(examples, 1), f"{phase.name}.{epoch}.loss"),
                examples=int(round(collective.average(examples, f"{phase.name}.{epoch}.n") * collective.size)),
                seconds=seconds,
                validation=validation,
            )
            history.append(result)
            stop = pruned = False
            if validation is not None:
                selecting = selecting_key(config, validation, phase.validation_group)
                value = validation[selecting]
                if best is None or value > best.value:
                    best = Best(selecting, value, epoch, _cpu_state(model))
                stop = config.patience > 0 and epoch - best.epoch >= config.patience
                if prune is not None and phase_number == last_validated and not stop:
                    figures = [item.validation[selecting] for item in history
                               if item.phase == phase.name and item.validation]
                    # Any rank's yes stops them all: a rule that reads the clock may differ between ranks.
                    pruned = collective.average(float(prune(figures)), f"{phase.name}.{epoch}.prune") > 0
                    if pruned and collective.rank == 0:
                        log(f"{phase.name}: stopped after epoch {epoch + 1} by the trial's rule (below the "
                            "earlier trials' median, or past the tune budget)")
            last = stop or epoch + 1 == phase.epochs
            below_best = best is not None and best.epoch != epoch
            # Past the best epoch the steps overshoot: smaller ones from the best weights (saved with the
            # optimizer's rates in the checkpoint, so a resumed run goes on from the same point).
            back_to_best = below_best and not last and config.plateau_decay < 1
            if below_best and (last or back_to_best):
                model.load_state_dict(best.state)
            if back_to_best:
                optimizer.scale_learning_rates(config.plateau_decay)
            if collective.rank == 0:
                figures = "".join(f", {name} {figure:.4f}" for name, figure in (validation or {}).items()
                                  if name.endswith(f"{config.validation_metric}@{config.validation_k}"))
                log(f"{phase.name} epoch {epoch + 1}/{phase.epochs}: loss {result.loss:.4f}{figures}, "
                    f"{result.examples:,} examples in {seconds:.1f}s ({result.examples_per_second:,.0f}/s)")
                if back_to_best:
                    log(f"{phase.name}: back to {best.name}, every learning rate x {config.plateau_decay:g}")
            if last and below_best and collective.rank == 0:
                log(f"{phase.name}: {'stopped early, ' if stop else ''}keeping {best.name} "
                    f"({best.key} {best.value:.4f})")
            if collective.rank == 0 and checkpoint_dir:
                save_checkpoint(checkpoint_dir, {
                    "model": model.state_dict(),
                    "optimizer": None if last else optimizer.state_dict(),
                    "phase": phase_number + 1 if last else phase_number,
                    "epoch": 0 if last else epoch + 1,
                    "history": [vars(item) for item in history],
                    "best": None if last or best is None else vars(best),
                    "teacher": teacher.state_dict() if teacher is not None and not last else None,
                    "pseudo_labels": labels.cpu() if labels is not None and not last else None,
                })
            collective.barrier()
            if pruned:  # checkpointed as an uninterrupted run would be: a later run goes on from this epoch
                if below_best:
                    model.load_state_dict(best.state)
                return history
            if last:
                break
        teacher = None
    return history
