"""The transfer methods: their building blocks against hand computations, the model's bridge and text
item tower, the artifact round trip, and every method trained through the one loop on a planted world."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from planted_world import (COLD_USERS, NUM_ITEMS, NUM_USERS, SOURCE, SOURCE_ITEMS, TARGET, TARGET_ITEMS,
                           in_memory_batches, make_world)
from xdrec.config import METHODS, TrainConfig, load_config
from xdrec.errors import XdrecError
from xdrec.training import artifact, loop
from xdrec.modeling.methods import (OBJECTIVES, GradientReversal, StepContext, adversarial_schedule,
                                    batch_softmax_loss, distill_loss, known_positive_mask, labelled_loss,
                                    model_options, phases_for, pseudo_labels, reads_negative_rows,
                                    sampled_softmax_loss, soft_loss, users_without_target_history)
from xdrec.modeling.model import BRIDGED_VIEW, TwoTower, csr
from xdrec.training.loop import Collective
from xdrec.training.validation import ranking_figures


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gradient_reversal_is_identity_forward_and_negated_scaled_backward():
    features = torch.randn(5, 3, requires_grad=True)
    reversed_features = GradientReversal.apply(features, 0.3)
    assert torch.equal(reversed_features, features)
    (reversed_features * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(features.grad, -0.3 * torch.arange(3.0).expand(5, 3))


def test_adversarial_schedules_rise_from_zero():
    dann = [adversarial_schedule("dann", progress) for progress in (0.0, 0.1, 0.5, 1.0)]
    assert dann[0] == 0.0 and dann == sorted(dann) and dann[-1] == pytest.approx(1.0, abs=1e-4)
    assert dann[1] == pytest.approx(2 / (1 + np.exp(-1.0)) - 1)
    assert adversarial_schedule("linear", 0.25) == 0.25 and adversarial_schedule("constant", 0.0) == 1.0


def test_distill_loss_mixes_labels_and_tempered_teacher_scores():
    torch.manual_seed(0)
    student, teacher = TwoTower(10, 8, 4, 8), TwoTower(10, 8, 4, 8)
    target = (torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7]), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    source = (torch.tensor([8, 9, 8, 9]), torch.tensor([0, 1, 2, 3]), torch.ones(4))
    context = StepContext(progress=0.0, teacher=teacher, generator=torch.Generator().manual_seed(3))
    labels_only = distill_loss(student, (target, source), TrainConfig(loss="bce", distill_weight=0.0), context)
    assert labels_only.item() == pytest.approx(
        F.binary_cross_entropy_with_logits(student(target[0], target[1]), target[2]).item())

    temperature = 3.0
    context.generator.manual_seed(3)
    teacher_only = distill_loss(student, (target, source),
                                TrainConfig(loss="bce", distill_weight=1.0, distill_temperature=temperature), context)
    # Transfer pairs: the source batch's users with target items drawn from the target batch.
    drawn = target[1][torch.randint(4, (4,), generator=torch.Generator().manual_seed(3))]
    with torch.no_grad():
        expected = (soft_loss(student(target[0], target[1]), teacher(target[0], target[1]), temperature)
                    + soft_loss(student(source[0], drawn), teacher(source[0], drawn), temperature))
    assert teacher_only.item() == pytest.approx(expected.item())
    # A student equal to its teacher is at the minimum of the soft term: its gradient vanishes.
    logits = torch.tensor([0.3, -1.2], requires_grad=True)
    soft_loss(logits, logits.detach(), 2.0).backward()
    torch.testing.assert_close(logits.grad, torch.zeros(2), atol=1e-7, rtol=0)


def test_batch_softmax_ranks_each_positive_against_the_batch_items_with_the_log_q_correction():
    torch.manual_seed(0)
    model = TwoTower(6, 5, 4, 8)
    # Item 2 is in the batch three times, so its share is 3/6 and its logits drop by log(1/2).
    users, items = torch.tensor([0, 0, 1, 2, 3, 4]), torch.tensor([2, 3, 2, 4, 2, 1])
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    loss = batch_softmax_loss(model, (users, items, labels))

    with torch.no_grad():
        candidates = torch.tensor([1, 2, 3, 4])
        share = torch.tensor([1 / 6, 3 / 6, 1 / 6, 1 / 6])
        expected = []
        for user, item in [(0, 2), (1, 2), (2, 4)]:
            logits = model(torch.full((4,), user), candidates) - torch.log(share)
            expected.append(-torch.log_softmax(logits, 0)[candidates.tolist().index(item)])
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    context = StepContext(progress=0.0, teacher=None, generator=torch.Generator())
    assert labelled_loss(model, (users, items, labels), TrainConfig(loss="softmax"), context).item() == loss.item()
    # A batch without positives has nothing to rank: a zero loss, so every rank still takes its step.
    assert batch_softmax_loss(model, (users, items, torch.zeros(6))).item() == 0.0


def test_sampled_softmax_ranks_each_positive_against_shared_uniform_draws_of_its_domain():
    torch.manual_seed(0)
    model = TwoTower(6, 9, 4, 8, temperature=0.1)
    domain_items = torch.tensor([4, 5, 6, 7, 8])  # the batch's domain: other items are never drawn
    users, items, labels = torch.tensor([0, 1, 2]), torch.tensor([5, 7, 4]), torch.tensor([1.0, 0.0, 1.0])
    train = TrainConfig(loss="sampled_softmax", sampled_negatives=3)
    context = StepContext(progress=0.0, teacher=None, generator=torch.Generator().manual_seed(7),
                          candidates=(domain_items,))
    loss = labelled_loss(model, (users, items, labels), train, context)

    drawn = domain_items[torch.randint(5, (3,), generator=torch.Generator().manual_seed(7))]
    assert set(drawn.tolist()) & {5, 4}  # a draw hits a row's own item: masked, not counted as a negative
    with torch.no_grad():
        expected = []
        for user, item in [(0, 5), (2, 4)]:
            negatives = drawn[drawn != item]
            scores = model(torch.full((1 + len(negatives),), user), torch.cat([torch.tensor([item]), negatives]))
            expected.append(-torch.log_softmax(scores, 0)[0])
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    # Cosine over temperature: every logit without its bias lies within [-1/t, 1/t].
    vectors = model.user_vectors(torch.arange(6)) @ model.item_vectors(torch.arange(9)).T
    assert vectors.abs().max().item() <= 1 / 0.1 + 1e-4


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce"])
@pytest.mark.parametrize("objective", ["joint", "adversarial", "distill"])
def test_only_objectives_said_to_read_negative_rows_change_with_them(objective, loss):
    """The trainer leaves out the negative rows that ``reads_negative_rows`` says nothing reads: there the
    loss must be the same without them (the same draws of the sampled softmax, the same transfer items)."""
    torch.manual_seed(0)
    model = TwoTower(6, 9, 4, 8, domain_classifier=True)
    teacher = TwoTower(6, 9, 4, 8)
    pairs = [(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3])), (torch.tensor([3, 4, 5]), torch.tensor([5, 6, 7]))]
    negatives = [(users.repeat_interleave(2), torch.tensor([3, 4, 1, 4, 2, 1])) for users, _ in pairs]
    with_negatives = tuple((torch.cat([users, negative_users]), torch.cat([items, negative_items]),
                            torch.cat([torch.ones(3), torch.zeros(6)]))
                           for (users, items), (negative_users, negative_items) in zip(pairs, negatives))
    without = tuple((users, items, torch.ones(3)) for users, items in pairs)
    train = TrainConfig(loss=loss, sampled_negatives=4)

    def value(batches) -> float:
        context = StepContext(progress=0.5, teacher=teacher, generator=torch.Generator().manual_seed(3),
                              candidates=(torch.arange(9), torch.arange(9)))
        return OBJECTIVES[objective](model, batches, train, context).item()

    same = value(with_negatives) == pytest.approx(value(without), rel=1e-6)
    assert same == (not reads_negative_rows(objective, loss))


def test_known_positive_mask_matches_a_brute_force_lookup():
    rng = np.random.default_rng(0)
    num_users, num_items = 50, 40
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, num_users - 1, 400), rng.integers(0, num_items, 400))}
    offsets, items = csr(*map(np.array, zip(*pairs)), num_users)  # the last user has no items
    users, drawn = torch.as_tensor(rng.integers(0, num_users, 64)), torch.as_tensor(rng.integers(0, num_items, 100))
    mask = known_positive_mask(users, drawn, torch.from_numpy(offsets), torch.from_numpy(items), num_items)
    assert mask.tolist() == [[(int(user), int(item)) in pairs for item in drawn] for user in users]
    assert mask.any() and not mask.all()


def test_sampled_softmax_leaves_out_draws_the_user_already_has():
    torch.manual_seed(0)
    model = TwoTower(6, 9, 4, 8, temperature=0.1)
    domain_items = torch.arange(4, 9)
    users, items = torch.tensor([0, 1]), torch.tensor([5, 7])
    generator = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    drawn = domain_items[torch.randint(5, (6,), generator=generator())]
    known = sorted({(0, 5), (1, 7), (0, int(drawn[0]))} | {(1, int(item)) for item in drawn[:2]})
    offsets, known_items = csr(*map(np.array, zip(*known)), 6)
    loss = sampled_softmax_loss(model, (users, items, torch.ones(2)), domain_items, 6, generator(),
                                known_positives=(torch.from_numpy(offsets), torch.from_numpy(known_items)))
    with torch.no_grad():
        expected = []
        for user, item in zip(users.tolist(), items.tolist()):
            negatives = torch.tensor([draw for draw in drawn.tolist() if (user, draw) not in known])
            scores = model(torch.full((1 + len(negatives),), user), torch.cat([torch.tensor([item]), negatives]))
            expected.append(-torch.log_softmax(scores, 0)[0])
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_pseudo_labels_go_to_the_users_without_target_history_the_model_is_surest_of():
    world = make_world(0)
    offsets, items = map(torch.from_numpy, world.training_history)
    unlabelled = users_without_target_history((offsets, items), torch.from_numpy(TARGET_ITEMS), NUM_ITEMS)
    target = set(TARGET_ITEMS.tolist())
    has = [set(items[offsets[user]:offsets[user + 1]].tolist()) for user in range(NUM_USERS)]
    assert unlabelled.tolist() == [user for user in range(NUM_USERS) if has[user] and not has[user] & target]
    assert set(COLD_USERS) <= set(unlabelled.tolist())

    torch.manual_seed(0)
    model = TwoTower(NUM_USERS, NUM_ITEMS, 4, 8).eval()
    candidates = torch.from_numpy(TARGET_ITEMS)
    labels = pseudo_labels(model, unlabelled, candidates, share=0.5, users_per_batch=3)
    with torch.no_grad():
        probabilities = torch.softmax(model.score_matrix(unlabelled, candidates), dim=1)
    confidence, first = probabilities.max(dim=1)
    surest = set(unlabelled[confidence.argsort(descending=True)[:round(len(unlabelled) / 2)]].tolist())
    for position, user in enumerate(unlabelled.tolist()):
        assert labels[user] == (candidates[first[position]] if user in surest else -1), user
    assert int((labels >= 0).sum()) == len(surest) > 0
    assert set((labels >= 0).nonzero().squeeze(-1).tolist()) <= set(unlabelled.tolist())


def bridge_model(kind: str) -> TwoTower:
    world = make_world(0)
    torch.manual_seed(1)
    model = TwoTower(NUM_USERS, NUM_ITEMS, 6, 12, bridge=kind)
    world.histories.apply(model)
    return model


@pytest.mark.parametrize("kind", ["emcdr", "ptupcdr"])
def test_bridge_applies_to_cold_users_only(kind):
    model = bridge_model(kind)
    warm_user, cold_user = NUM_USERS - 1, int(COLD_USERS[0])
    users = torch.tensor([warm_user, cold_user])
    with torch.no_grad():
        vectors = model.user_vectors(users)
        torch.testing.assert_close(vectors[0], model.user_tower(model.target_user_embedding.weight[warm_user]))
        torch.testing.assert_close(vectors[1], model.user_vectors(torch.tensor([cold_user]), BRIDGED_VIEW)[0])
        assert not torch.allclose(vectors[1], model.user_tower(model.target_user_embedding.weight[cold_user]))


def test_personalised_bridge_pools_each_users_own_history():
    model = bridge_model("ptupcdr")
    with torch.no_grad():
        torch.nn.init.normal_(model.bridge.meta[2].weight, std=0.1)  # leave the identity start
        users = torch.tensor([5, 0, 17, 5])
        got = model.bridged_embeddings(users)
        for row, user in enumerate(users.tolist()):
            start, stop = model.history_offsets[user].item(), model.history_offsets[user + 1].item()
            history = model.item_embedding(model.history_items[start:stop])
            weights = torch.softmax(model.bridge.attention(history).squeeze(-1), 0)
            pooled = (weights.unsqueeze(-1) * history).sum(0)
            matrix = model.bridge.meta(pooled).view(6, 6)
            torch.testing.assert_close(got[row], model.user_embedding.weight[user] @ matrix)


def test_history_encoder_pools_the_users_items_and_leaves_the_scored_item_out(tmp_path):
    torch.manual_seed(3)
    model = TwoTower(3, 5, 4, 8, user_encoder="history")
    offsets, items = csr(np.array([0, 0, 0, 2]), np.array([1, 3, 4, 0]), num_users=3)  # user 1 has no history
    model.set_history(offsets, items)  # a history of a size the constructor was not told: a process reads its own
    assert model.hyperparameters()["history_size"] == 4
    table = model.history_embedding.weight
    with torch.no_grad():
        pooled = model.user_embeddings(torch.tensor([0, 1, 2]))
        torch.testing.assert_close(pooled[0], table[[1, 3, 4]].sum(0) / 3 ** 0.5)
        torch.testing.assert_close(pooled[1], torch.zeros(4))
        torch.testing.assert_close(pooled[2], table[0])
        # Scoring (user 0, item 3) reads the history without item 3; an item outside it changes nothing.
        users, pair_items = torch.tensor([0, 0]), torch.tensor([3, 2])
        without_3 = model.scaled(model.user_tower(table[[1, 4]].sum(0) / 2 ** 0.5))
        full = model.user_vectors(torch.tensor([0]))[0]
        expected = torch.stack([without_3 @ model.item_vectors(torch.tensor([3]))[0],
                                full @ model.item_vectors(torch.tensor([2]))[0]]) + model.item_bias(pair_items).squeeze(-1)
        torch.testing.assert_close(model(users, pair_items), expected)
    user_index = pd.DataFrame({"user_id": ["u0", "u1", "u2"], "user_idx": [0, 1, 2]})
    item_index = pd.DataFrame({"domain": [TARGET] * 5, "item_id": list("abcde"), "item_idx": np.arange(5)})
    path = artifact.save(os.path.join(tmp_path, "joint", "v1"), model, {"method": "joint", "model_version": "v1"},
                         user_index, item_index)
    with torch.no_grad():
        torch.testing.assert_close(artifact.load(path).model.score_matrix(torch.arange(3), torch.arange(5)),
                                   model.eval().score_matrix(torch.arange(3), torch.arange(5)))
        # What the driver does with a process's weights: a model built without the history's size loads them.
        restored = TwoTower(3, 5, 4, 8, user_encoder="history")
        restored.load_state_dict(model.state_dict())
        torch.testing.assert_close(restored.eval().score_matrix(torch.arange(3), torch.arange(5)),
                                   model.score_matrix(torch.arange(3), torch.arange(5)))
    with pytest.raises(ValueError, match="needs user_encoder 'embedding'"):
        TwoTower(3, 5, 4, 8, bridge="emcdr", user_encoder="history")


def test_a_model_started_from_factors_scores_as_they_do():
    """train.init "als_merged": the embeddings' products are the factors' (one scale), the history
    encoder pools to the factors folded in, and factors wider than the model keep their products when
    their rank fits."""
    generator = torch.Generator().manual_seed(0)
    users, items = torch.randn(6, 4, generator=generator), torch.randn(5, 4, generator=generator)
    users[2], items[4] = 0.0, 0.0  # no training interaction: no factors
    torch.manual_seed(1)
    model = TwoTower(6, 5, 4, 8)
    random_start = model.user_embedding.weight.detach().clone()
    model.start_from_factors(users.numpy(), items.numpy(), regularization=0.5)
    started = model.user_embedding.weight.detach() @ model.item_embedding.weight.detach()[:4].T
    expected = users @ items[:4].T
    scale = started[0, 0] / expected[0, 0]
    torch.testing.assert_close(started[[0, 1, 3, 4, 5]], scale * expected[[0, 1, 3, 4, 5]])
    torch.testing.assert_close(model.user_embedding.weight[2].detach(), random_start[2])
    # The rows take the random start's norm (N(0, 0.1^2) in 4 dimensions): 0.2 on average.
    assert model.item_embedding.weight[:4].detach().norm(dim=1).mean().item() == pytest.approx(0.2)

    history = TwoTower(6, 5, 4, 8, user_encoder="history")
    history.start_from_factors(users.numpy(), items.numpy(), regularization=0.5)
    folded = items[[0, 3]].sum(0) @ torch.linalg.inv(items.T @ items + 0.5 * torch.eye(4))
    pooled = history.history_embedding.weight.detach()[[0, 3]].sum(0)
    torch.testing.assert_close(pooled / pooled.norm(), folded / folded.norm())

    # Rank-2 factors written in 4 columns, for a model of dimension 2: the top principal directions keep them.
    basis = torch.linalg.qr(torch.randn(4, 4, generator=generator)).Q[:2]
    low_users, low_items = users[:, :2] @ basis, items[:, :2] @ basis
    narrow = TwoTower(6, 5, 2, 8)
    narrow.start_from_factors(low_users.numpy(), low_items.numpy(), regularization=0.5)
    products = narrow.user_embedding.weight.detach()[[0, 1]] @ narrow.item_embedding.weight.detach()[:4].T
    expected = low_users[[0, 1]] @ low_items[:4].T
    torch.testing.assert_close(products, products[0, 0] / expected[0, 0] * expected)


def test_the_yardstick_and_the_bridges_keep_per_user_embeddings():
    # target_only must learn nothing from the source domain, and a history holds source items.
    assert model_options("joint", "history")["user_encoder"] == "history"
    for method in ("target_only", "bridge_emcdr", "bridge_ptupcdr"):
        assert model_options(method, "history")["user_encoder"] == "embedding", method


def text_model(item_ids_with_text: bool) -> TwoTower:
    torch.manual_seed(2)
    model = TwoTower(10, 6, 4, 8, text_dim=5, item_ids_with_text=item_ids_with_text)
    text = torch.randn(6, 5).numpy()
    model.set_item_text(text, np.array([True, True, True, True, False, False]))
    return model


def test_text_items_get_vectors_from_their_text_and_the_others_from_ids():
    model = text_model(item_ids_with_text=False)
    with torch.no_grad():
        before = model.item_vectors(torch.arange(6))
        model.item_embedding.weight.add_(1.0)  # ids matter only for items without text
        after = model.item_vectors(torch.arange(6))
        torch.testing.assert_close(after[:4], before[:4])
        assert not torch.allclose(after[4:], before[4:])
        model.text_projection.weight.add_(1.0)  # text matters only for items with text
        moved = model.item_vectors(torch.arange(6))
        assert not torch.allclose(moved[:4], after[:4])
        torch.testing.assert_close(moved[4:], after[4:])
    with_ids = text_model(item_ids_with_text=True)
    with torch.no_grad():
        expected = with_ids.item_tower(with_ids.item_embedding.weight[0]
                                       + with_ids.text_projection(with_ids.item_text[0]))
        torch.testing.assert_close(with_ids.item_vectors(torch.tensor([0]))[0], expected)
    # Without text the model is the id-only two-tower model: no text parameters or buffers at all.
    assert not any("text" in name for name in TwoTower(10, 6, 4, 8).state_dict())


def test_unseen_text_item_is_recommended_through_its_text():
    """An item nobody interacted with, whose text matches a liked item's, scores like that item."""
    torch.manual_seed(0)
    model = TwoTower(4, 3, 4, 8, text_dim=3, item_ids_with_text=False)
    model.set_item_text(np.eye(3, dtype=np.float32)[[0, 1, 0]], np.ones(3, dtype=bool))  # item 2 reads like item 0
    users, items = torch.tensor([0, 0, 1, 1] * 20), torch.tensor([0, 1, 1, 0] * 20)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0] * 20)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model(users, items), labels).backward()
        optimizer.step()
    with torch.no_grad():
        scores = model.score_matrix(torch.tensor([0, 1]), torch.arange(3))
    assert scores[0, 2] > scores[0, 1] and scores[1, 2] < scores[1, 1]


def test_artifact_round_trip_keeps_bridge_text_and_scores(tmp_path):
    world = make_world(0)
    torch.manual_seed(4)
    model = TwoTower(NUM_USERS, NUM_ITEMS, 6, 12, text_dim=5, bridge="ptupcdr")
    world.histories.apply(model)
    has_text = np.arange(NUM_ITEMS) % 2 == 0
    model.set_item_text(np.random.default_rng(0).normal(size=(NUM_ITEMS, 5)).astype(np.float32), has_text)
    user_index = pd.DataFrame({"user_id": [f"u{u}" for u in range(NUM_USERS)], "user_idx": np.arange(NUM_USERS)})
    item_index = pd.DataFrame({"domain": [SOURCE] * 32 + [TARGET] * 32,
                               "item_id": [f"i{i}" for i in range(NUM_ITEMS)], "item_idx": np.arange(NUM_ITEMS)})
    path = artifact.save(os.path.join(tmp_path, "ptupcdr", "v1"), model,
                         {"method": "ptupcdr", "model_version": "v1"}, user_index, item_index)
    loaded = artifact.load(path).model
    users, items = torch.arange(NUM_USERS), torch.arange(32, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.score_matrix(users, items), model.eval().score_matrix(users, items))


@pytest.mark.parametrize("name, damage", [
    ("model.pt", "cut"), ("model.pt", "random"), ("artifact.json", "cut"), ("user_index.parquet", "cut"),
])
def test_a_damaged_artifact_fails_with_one_line_naming_the_file(tmp_path, name, damage):
    torch.manual_seed(0)
    user_index = pd.DataFrame({"user_id": ["u0", "u1"], "user_idx": [0, 1]})
    item_index = pd.DataFrame({"domain": [TARGET] * 3, "item_id": ["a", "b", "c"], "item_idx": [0, 1, 2]})
    path = artifact.save(os.path.join(tmp_path, "target_only", "v1"), TwoTower(2, 3, 4, 8),
                         {"method": "target_only", "model_version": "v1"}, user_index, item_index)
    damaged = os.path.join(path, name)
    with open(damaged, "rb") as handle:
        content = handle.read()
    with open(damaged, "wb") as handle:
        handle.write(content[: len(content) // 2] if damage == "cut" else np.random.default_rng(0).bytes(len(content)))

    with pytest.raises(XdrecError) as raised:
        artifact.load(path)

    message = str(raised.value)
    assert damaged in message and "unreadable model artifact file" in message and "\n" not in message


CONFIG_OVERRIDES = ["data.source_domain=source", "data.target_domain=target",
                    "data.domains={source: {interactions: s.csv}, target: {interactions: t.csv}}",
                    "train.source_epochs=4", "train.target_epochs=6", "train.bridge_epochs=6",
                    "train.learning_rate=0.03", "train.patience=0"]


HISTORY_JOINT = "joint, history encoder"


def train_method(method: str, world, loss: str, user_encoder: str = "embedding") -> dict[str, float]:
    config = load_config("synthetic", [*CONFIG_OVERRIDES, f"train.loss={loss}"])
    options = model_options(method, user_encoder)
    torch.manual_seed(0)
    model = TwoTower(NUM_USERS, NUM_ITEMS, 8, 16, **options)
    if options["bridge"] != "none":
        world.histories.apply(model)
    if options["user_encoder"] == "history":
        model.set_history(*world.training_history)
    batches, steps = in_memory_batches(world.examples, 32)
    history = loop.train(model, phases_for(method, config), batches, steps,
                         config=config.train.model_copy(update={"patience": 0, "sampled_negatives": 16}),
                         domain_items={domain: torch.from_numpy(items)
                                       for domain, items in ((SOURCE, SOURCE_ITEMS), (TARGET, TARGET_ITEMS))},
                         validate=lambda m: ranking_figures(m, world.validation, 10, Collective()),
                         known_positives=tuple(map(torch.from_numpy, world.training_history)),
                         log=lambda message: None)
    return history[-1].validation


@pytest.fixture(scope="module", params=["bce", "softmax", "sampled_softmax"])
def method_figures(request):
    world = make_world(0)
    return {**{method: train_method(method, world, request.param) for method in METHODS},
            HISTORY_JOINT: train_method("joint", world, request.param, user_encoder="history")}


def test_every_method_learns_the_warm_users(method_figures):
    # Chance: 2 relevant of the 29 unseen target items gives NDCG@10 about 0.2.
    for method, figures in method_figures.items():
        assert figures["warm/NDCG@10"] > 0.5, (method, figures)


@pytest.mark.parametrize("method", [*[method for method in METHODS if method != "target_only"], HISTORY_JOINT])
def test_transfer_methods_beat_target_only_on_cold_users(method_figures, method):
    # Cold users have no target examples: target_only ranks their items by chance, a transfer method by
    # the taste their source examples show.
    cold = {name: figures["cold/NDCG@10"] for name, figures in method_figures.items()}
    assert cold["target_only"] < 0.3, cold
    assert cold[method] > cold["target_only"] + 0.2, cold


def test_every_method_has_phases_and_a_validated_last_phase():
    config = load_config("synthetic", CONFIG_OVERRIDES)
    for method in METHODS:
        phases = phases_for(method, config)
        assert phases[-1].validate, method
        assert TARGET in phases[-1].domains, method
    assert [phase.name for phase in phases_for("bridge_emcdr", config)] == ["target", "source", "bridge"]
    assert [phase.objective for phase in phases_for("distill", config)] == ["joint", "distill"]
    assert [(phase.objective, phase.keeps_start_if_best) for phase in phases_for("self_training", config)] == [
        ("joint", False), ("self_training", True)]
    finetune_teacher = load_config("synthetic", [*CONFIG_OVERRIDES, "train.distill_teacher=finetune"])
    assert [phase.name for phase in phases_for("distill", finetune_teacher)] == ["source", "teacher", "student"]


@pytest.mark.parametrize("override, named", [
    ("train.methods=[finetune,dann]", "train.methods"),
    ("train.freeze=[user_tower.mlp.5]", "train.freeze"),
    ("train.part_learning_rates={item_towr: 0.1}", "train.part_learning_rates"),
    ("train.part_learning_rates={item_tower: -1}", "train.part_learning_rates.item_tower"),
    ("train.distill_weight=1.5", "train.distill_weight"),
    ("train.adversarial_schedule=cosine", "train.adversarial_schedule"),
    ("train.batch_scope=node", "train.batch_scope"),
    ("train.reader=disk", "train.reader"),
    ("train.loss=hinge", "train.loss"),
    ("train.validation_group=cold_users", "train.validation_group"),
    ("train.launcher=local", "train.num_proc"),  # the local launcher is one process
])
def test_bad_train_settings_name_their_key(override, named):
    with pytest.raises(XdrecError, match=named.replace(".", r"\.")):
        load_config("synthetic", [override])


def test_the_torch_distributor_launcher_reads_shards_into_memory():
    with pytest.raises(XdrecError, match=r"train\.reader: the stream reader is Petastorm's"):
        load_config("synthetic", ["train.launcher=torch_distributor", "train.reader=stream"])
