"""The transfer methods: each is a list of training phases, each phase an objective over batches.

Pure torch, no Spark or Horovod: :mod:`xdrec.training.loop` runs the phases, one loop for every method,
and every method yields the same artifact (a :class:`~xdrec.modeling.model.TwoTower`). See
``docs/methods.md`` for what each method does and why.

An objective takes the model, one batch per domain of its phase (in the phase's order), the ``train``
section of the config (:class:`xdrec.config.TrainConfig`, the knobs such as ``loss`` and ``joint_weight``)
and the step's context, and returns the loss of that step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from xdrec.modeling.model import BRIDGED_VIEW, SOURCE_VIEW, TARGET_VIEW, TwoTower, csr_entries

if TYPE_CHECKING:  # read as plain objects: modeling imports no configuration machinery
    from xdrec.config import Config, TrainConfig

# One batch: user indices, item indices, labels in {0, 1}.
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Phase:
    """A run of epochs with one objective over the training examples of one or more domains.

    Every step takes one batch of each domain in ``domains``, in that order. A ``student`` phase first
    keeps the model as it is as the teacher, then trains freshly initialised weights (distillation).
    ``validate`` evaluates the ranking metric after every epoch, stops early and keeps the best epoch's
    weights; ``validation_group`` overrides which user group selects it. ``keeps_start_if_best`` also
    validates the weights the phase starts from and ends with them when no epoch validates higher.
    """

    name: str
    domains: list[str]
    epochs: int
    learning_rate: float
    objective: str = "bce"
    freeze: list[str] = field(default_factory=list)
    part_learning_rates: dict[str, float] = field(default_factory=dict)
    validate: bool = False
    validation_group: str | None = None
    student: bool = False
    keeps_start_if_best: bool = False


@dataclass
class StepContext:
    progress: float  # share of the phase's steps done before this one, in [0, 1)
    teacher: TwoTower | None  # the frozen teacher of a student phase
    generator: torch.Generator  # seeded per (phase, epoch, rank), for draws that must replay on resume
    # Item indices of each batch's domain, in the phase's domain order (the sampled softmax draws from them).
    candidates: tuple[torch.Tensor, ...] = ()
    # Every user's training items as CSR (offsets [num_users + 1], items): negatives the sampled softmax leaves out.
    known_positives: tuple[torch.Tensor, torch.Tensor] | None = None
    # [num_users]: a self-training phase's pseudo-label of each user (a target item index), -1 for none.
    pseudo_labels: torch.Tensor | None = None


def known_positive_mask(users: torch.Tensor, drawn: torch.Tensor, offsets: torch.Tensor, items: torch.Tensor,
                        num_items: int) -> torch.Tensor:
    """``[len(users), len(drawn)]``: whether drawn item j is one of user i's items (``items[offsets[u]:
    offsets[u + 1]]``). Costs the batch users' history lengths, not users x draws lookups::

        offsets, items = torch.tensor([0, 2, 3]), torch.tensor([1, 3, 0])   # user 0: items 1, 3; user 1: item 0
        known_positive_mask(torch.tensor([0, 1]), torch.tensor([3, 0, 3]), offsets, items, num_items=4)
        # tensor([[True, False, True], [False, True, False]])
    """
    distinct, position = torch.unique(drawn, return_inverse=True)
    slot = torch.full((num_items,), -1, dtype=torch.long, device=drawn.device)
    slot[distinct] = torch.arange(len(distinct), device=drawn.device)
    owners, entries, _ = csr_entries(offsets, users)
    hits = slot[items[entries]]
    found = hits >= 0
    mask = torch.zeros(len(users), len(distinct), dtype=torch.bool, device=drawn.device)
    mask[owners[found], hits[found]] = True
    return mask[:, position]


def batch_softmax_loss(model: TwoTower, batch: Batch, view: str = TARGET_VIEW) -> torch.Tensor:
    """Cross-entropy of each positive row's item against every distinct item of the batch.

    The candidates are the batch's own items, so popular items are drawn as negatives more often than
    rare ones; subtracting log q(item), the item's share of the batch, removes that bias (Yi et al.,
    "Sampling-bias-corrected neural modeling", RecSys 2019), so the logits still rank the whole catalogue.
    """
    users, items, labels = batch
    positive = labels > 0.5
    if not bool(positive.any()):
        return _no_loss(model)
    candidates, position, counts = torch.unique(items, return_inverse=True, return_counts=True)
    logits = model.user_vectors(users[positive], view, leave_out=items[positive]) @ model.item_vectors(candidates).T
    logits = logits + model.item_bias(candidates).squeeze(-1) - torch.log(counts / len(items))
    return F.cross_entropy(logits, position[positive])


def sampled_softmax_loss(model: TwoTower, batch: Batch, candidates: torch.Tensor, negatives: int,
                         generator: torch.Generator, view: str = TARGET_VIEW,
                         known_positives: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Cross-entropy of each positive row's item against ``negatives`` items drawn uniformly from the
    domain's ``candidates`` and shared by the batch: a uniform sample needs no popularity correction, so
    the logits rank the whole catalogue as a full softmax over it would. A draw of the row's own item is
    masked (an accidental hit: on a catalogue of a few thousand items, 1,024 draws hit it often), and so,
    given ``known_positives`` (CSR of every user's training items), is a draw of any item the user has:
    pushing those down would teach the model against its own training data."""
    users, items, labels = batch
    positive = labels > 0.5
    if not bool(positive.any()):
        return _no_loss(model)
    users, items = users[positive], items[positive]
    drawn = candidates[torch.randint(len(candidates), (negatives,), generator=generator, device=candidates.device)]
    user_vectors = model.user_vectors(users, view, leave_out=items)
    own = (user_vectors * model.item_vectors(items)).sum(-1) + model.item_bias(items).squeeze(-1)
    others = user_vectors @ model.item_vectors(drawn).T + model.item_bias(drawn).squeeze(-1)
    others = others.masked_fill(drawn.unsqueeze(0) == items.unsqueeze(1), float("-inf"))
    if known_positives is not None:
        others = others.masked_fill(known_positive_mask(users, drawn, *known_positives, model.num_items), float("-inf"))
    logits = torch.cat([own.unsqueeze(1), others], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(users), dtype=torch.long, device=logits.device))


def labelled_loss(model: TwoTower, batch: Batch, train: "TrainConfig", context: StepContext, domain: int = 0,
                  view: str = TARGET_VIEW, logits: torch.Tensor | None = None) -> torch.Tensor:
    """The configured loss (``train.loss``) of the examples of the phase's ``domain``-th domain; ``logits``:
    the batch's pairwise logits when the caller has them already (bce reuses them)."""
    if train.loss == "softmax":
        return batch_softmax_loss(model, batch, view)
    if train.loss == "sampled_softmax":
        return sampled_softmax_loss(model, batch, context.candidates[domain], train.sampled_negatives,
                                    context.generator, view, context.known_positives)
    users, items, labels = batch
    return F.binary_cross_entropy_with_logits(model(users, items, view) if logits is None else logits, labels)


def reads_negative_rows(objective: str, loss: str) -> bool:
    """Whether ``objective`` under ``loss`` reads a batch's negative rows: every loss but the sampled softmax,
    which draws its own, does; so does distillation's soft term, which scores them with the teacher. (The
    adversarial classifier's users are the pairs' users, each as often with or without them.)"""
    return loss != "sampled_softmax" or objective == "distill"


def target_loss(model, batches, train, context) -> torch.Tensor:
    """The labelled loss of one domain's examples, users as the target domain sees them."""
    return labelled_loss(model, batches[0], train, context)


def source_loss(model, batches, train, context) -> torch.Tensor:
    """The labelled loss with the source domain's own user embeddings (bridge models' pretraining)."""
    return labelled_loss(model, batches[0], train, context, view=SOURCE_VIEW)


def joint_loss(model, batches, train, context) -> torch.Tensor:
    """L = L_source + lambda * L_target over a source and a target batch; users share one representation."""
    source, target = batches
    return (labelled_loss(model, source, train, context, 0)
            + train.joint_weight * labelled_loss(model, target, train, context, 1))


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-weight`` (Ganin & Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return features.view_as(features)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        return -ctx.weight * gradient, None


def adversarial_schedule(kind: str, progress: float) -> float:
    """The reversal weight's share of its maximum at ``progress``: DANN's 2 / (1 + exp(-10 p)) - 1 rises
    from 0 to almost 1, so the domain classifier learns before the users are pushed to fool it."""
    if kind == "dann":
        return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0
    if kind == "linear":
        return progress
    return 1.0


def adversarial_loss(model, batches, train, context) -> torch.Tensor:
    """The joint loss plus a domain classifier on user vectors behind a gradient reversal layer.

    The classifier learns to tell source batches' users from target batches' users; the reversed
    gradient moves the user representation so that it cannot, aligning the two domains' users.
    """
    source, target = batches
    weight = train.adversarial_weight * adversarial_schedule(train.adversarial_schedule, context.progress)
    users = torch.cat([source[0], target[0]])
    domains = torch.cat([torch.zeros(len(source[0])), torch.ones(len(target[0]))]).to(users.device)
    features = GradientReversal.apply(model.user_vectors(users), weight)
    domain_loss = F.binary_cross_entropy_with_logits(model.domain_classifier(features).squeeze(-1), domains)
    return joint_loss(model, batches, train, context) + domain_loss


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy to the teacher's tempered probabilities, times T^2 so gradients keep their scale."""
    soft_targets = torch.sigmoid(teacher_logits / temperature)
    return temperature ** 2 * F.binary_cross_entropy_with_logits(student_logits / temperature, soft_targets)


def distill_loss(model, batches, train, context) -> torch.Tensor:
    """(1 - a) * labels + a * teacher, on the target batch and on transfer pairs that only the teacher knows.

    Transfer pairs put the source batch's users (cold-start users among them) with target items drawn
    from the target batch, so the student learns the teacher's view of users without target labels.
    """
    target, source = batches
    users, items, _ = target
    temperature, weight = train.distill_temperature, train.distill_weight
    transfer_users = source[0]
    transfer_items = items[torch.randint(len(items), (len(transfer_users),), generator=context.generator,
                                         device=items.device)]
    with torch.no_grad():
        teacher_target = context.teacher(users, items)
        teacher_transfer = context.teacher(transfer_users, transfer_items)
    student_target = model(users, items)
    hard = labelled_loss(model, target, train, context, logits=student_target)
    soft = (soft_loss(student_target, teacher_target, temperature)
            + soft_loss(model(transfer_users, transfer_items), teacher_transfer, temperature))
    return (1.0 - weight) * hard + weight * soft


def users_without_target_history(known_positives: tuple[torch.Tensor, torch.Tensor],
                                 target_items: torch.Tensor, num_items: int) -> torch.Tensor:
    """The users with training items, none of them in the target domain (``target_items``): the users
    target labels never reach, cold-start users among them. ``known_positives``: every user's training
    items as CSR (offsets, items)::

        offsets, items = torch.tensor([0, 2, 3, 3]), torch.tensor([0, 1, 2])   # user 0: items 0, 1; user 1: item 2
        users_without_target_history((offsets, items), torch.tensor([2]), num_items=3)   # tensor([0])
    """
    offsets, items = known_positives
    users = torch.arange(len(offsets) - 1, device=items.device)
    owners, entries, lengths = csr_entries(offsets, users)
    in_target = torch.zeros(num_items, dtype=torch.bool, device=items.device)
    in_target[target_items] = True
    has_target = torch.zeros(len(users), dtype=torch.bool, device=items.device)
    has_target[owners[in_target[items[entries]]]] = True
    return users[(lengths > 0) & ~has_target]


@torch.no_grad()
def pseudo_labels(model: TwoTower, users: torch.Tensor, candidates: torch.Tensor, share: float,
                  users_per_batch: int = 1024) -> torch.Tensor:
    """``[model.num_users]``: for the ``share`` of ``users`` the model is most confident about, the
    candidate it ranks first; -1 for every other user. Confidence is the first candidate's softmax
    probability over all ``candidates``, so a user whose top items are close gets no label."""
    labels = torch.full((model.num_users,), -1, dtype=torch.long, device=candidates.device)
    keep = int(round(share * len(users)))
    if keep == 0:
        return labels
    best, confidence = [], []
    for start in range(0, len(users), users_per_batch):
        probabilities = torch.softmax(model.score_matrix(users[start:start + users_per_batch], candidates), dim=1)
        top_probability, top = probabilities.max(dim=1)
        best.append(candidates[top])
        confidence.append(top_probability)
    best, confidence = torch.cat(best), torch.cat(confidence)
    # A stable sort keeps the order of equal confidences, so every rank labels the same users.
    chosen = torch.sort(confidence, descending=True, stable=True).indices[:keep]
    labels[users[chosen]] = best[chosen]
    return labels


def self_training_loss(model, batches, train, context) -> torch.Tensor:
    """The joint loss, plus the target loss of pseudo-labelled pairs: each of the source batch's users that
    holds a pseudo-label (``context.pseudo_labels``, the teacher's confident first choice among the target
    items for a user with no target history) with that item, weighted by ``train.self_training_weight``.
    The pairs' loss is the sampled softmax whatever ``train.loss``: they come without negative rows."""
    loss = joint_loss(model, batches, train, context)
    users = torch.unique(batches[0][0])
    items = context.pseudo_labels[users]
    labelled = items >= 0
    if not bool(labelled.any()):
        return loss
    pairs = (users[labelled], items[labelled], torch.ones(int(labelled.sum()), device=users.device))
    return loss + train.self_training_weight * sampled_softmax_loss(
        model, pairs, context.candidates[1], train.sampled_negatives, context.generator,
        known_positives=context.known_positives)


def _overlapping(model: TwoTower, users: torch.Tensor) -> torch.Tensor:
    """Which of ``users`` have training history in both domains: the ones a bridge can learn from."""
    return model.has_source_history[users] & model.has_target_history[users]


def _no_loss(model: TwoTower) -> torch.Tensor:
    """A zero loss for a batch without overlapping users (every rank still takes its step)."""
    return torch.zeros((), device=model.item_embedding.weight.device, requires_grad=True)


def mapping_loss(model, batches, train, context) -> torch.Tensor:
    """EMCDR: the mapping from source to target user embeddings, fitted by squared error on the batch's
    overlapping users (both embeddings fixed, learned in the earlier phases)."""
    users = torch.unique(batches[0][0])
    users = users[_overlapping(model, users)]
    if len(users) == 0:
        return _no_loss(model)
    mapped = model.bridged_embeddings(users)
    return F.mse_loss(mapped, model.target_user_embedding(users).detach(), reduction="sum") / len(users)


def bridge_task_loss(model, batches, train, context) -> torch.Tensor:
    """PTUPCDR's task-oriented objective: the overlapping users' target examples scored with their
    personalised bridged embeddings, so the bridge learns what ranks well rather than what is near."""
    users, items, labels = batches[0]
    keep = _overlapping(model, users)
    if not bool(keep.any()):
        return _no_loss(model)
    return labelled_loss(model, (users[keep], items[keep], labels[keep]), train, context, view=BRIDGED_VIEW)


Objective = Callable[[TwoTower, tuple, "TrainConfig", StepContext], torch.Tensor]
OBJECTIVES: dict[str, Objective] = {
    "bce": target_loss,
    "source_bce": source_loss,
    "joint": joint_loss,
    "adversarial": adversarial_loss,
    "distill": distill_loss,
    "self_training": self_training_loss,
    "emcdr": mapping_loss,
    "ptupcdr": bridge_task_loss,
}

# What the source phase of a bridge method keeps fixed: the target model's towers and users.
_SHARED_WITH_TARGET = ["user_tower", "item_tower", "text_projection", "target_user_embedding"]
# Everything but the bridge: what the bridge phase keeps fixed.
_ALL_BUT_BRIDGE = ["user_embedding", "target_user_embedding", "user_tower", "item_embedding", "item_tower",
                   "item_bias", "text_projection"]


def model_options(method: str, user_encoder: str = "embedding") -> dict:
    """The model's method-specific constructor arguments (see :class:`xdrec.modeling.model.TwoTower`).
    The bridges map per-user embeddings, and target_only is the yardstick that learns nothing from the
    source domain (a history holds source items), so both keep the embedding encoder whatever
    ``user_encoder`` says."""
    bridge = method.removeprefix("bridge_") if method.startswith("bridge_") else "none"
    keeps_embedding = bridge != "none" or method == "target_only"
    return {"bridge": bridge, "domain_classifier": method == "adversarial",
            "user_encoder": "embedding" if keeps_embedding else user_encoder}


def phases_for(method: str, config: "Config") -> list[Phase]:
    """The training phases of a method (see docs/methods.md)."""
    train, source_domain, target_domain = config.train, config.data.source_domain, config.data.target_domain
    source_rate = train.source_learning_rate or train.learning_rate
    pretrain = [Phase("source", [source_domain], train.source_epochs, source_rate)] if train.source_epochs else []
    target = Phase("target", [target_domain], train.target_epochs, train.learning_rate, validate=True)
    if method == "target_only":
        return [target]
    if method == "finetune":
        target.freeze, target.part_learning_rates = list(train.freeze), dict(train.part_learning_rates)
        return [*pretrain, target]
    if method in ("joint", "adversarial"):
        return [Phase(method, [source_domain, target_domain], train.target_epochs, train.learning_rate,
                      objective=method, validate=True)]
    if method == "distill":
        if train.distill_teacher == "joint":
            teacher = [Phase("teacher", [source_domain, target_domain], train.target_epochs, train.learning_rate,
                             objective="joint")]
        else:
            teacher = [*pretrain, Phase("teacher", [target_domain], train.target_epochs, train.learning_rate,
                                        freeze=list(train.freeze), part_learning_rates=dict(train.part_learning_rates))]
        student = Phase("student", [target_domain, source_domain], train.target_epochs, train.learning_rate,
                        objective="distill", validate=True, student=True)
        return [*teacher, student]
    if method == "self_training":
        # The joint model first; then joint training goes on with its confident picks for the users
        # without target history as labels, and keeps the joint model if that never validates higher.
        teacher = Phase("teacher", [source_domain, target_domain], train.target_epochs, train.learning_rate,
                        objective="joint", validate=True)
        return [teacher, Phase("self_training", [source_domain, target_domain], train.target_epochs,
                               train.learning_rate, objective="self_training", validate=True,
                               keeps_start_if_best=True)]
    if method in ("bridge_emcdr", "bridge_ptupcdr"):
        # The target model first, as target_only trains it; then source embeddings through its fixed
        # towers, so both live in one input space; then the bridge between them.
        target.validation_group = "warm"  # cold users' vectors come from the bridge, trained last
        for phase in pretrain:
            phase.objective, phase.freeze = "source_bce", list(_SHARED_WITH_TARGET)
        bridge = Phase("bridge", [target_domain], train.bridge_epochs, train.learning_rate,
                       objective=model_options(method)["bridge"], freeze=list(_ALL_BUT_BRIDGE), validate=True,
                       validation_group="cold")
        return [target, *pretrain, bridge]
    raise ValueError(f"unknown method {method!r}")
