"""The training loop on its own, single-process: learning, freezing, checkpoint and resume."""
from __future__ import annotations

import pytest
import torch

from xdrec import trainer
from xdrec.model import TwoTower
from xdrec.trainer import Phase

NUM_USERS, NUM_ITEMS, BATCH = 40, 30, 64


def planted_examples(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Users like the items of their own group (user % 3 == item % 3): learnable structure."""
    generator = torch.Generator().manual_seed(seed)
    users = torch.randint(0, NUM_USERS, (2000,), generator=generator)
    items = torch.randint(0, NUM_ITEMS, (2000,), generator=generator)
    labels = (users % 3 == items % 3).float()
    return users, items, labels


def in_memory_batches(examples):
    users, items, labels = examples

    def batches(phase: Phase, epoch: int):
        order = torch.randperm(len(users), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(order), BATCH):
            index = order[start:start + BATCH]
            yield users[index], items[index], labels[index]

    return batches


def fresh_model() -> TwoTower:
    torch.manual_seed(0)
    return TwoTower(NUM_USERS, NUM_ITEMS, embedding_dim=8, hidden_dim=16)


def run(phases, checkpoint_dir=None, model=None):
    model = model or fresh_model()
    history = trainer.train(model, phases, in_memory_batches(planted_examples()), lambda phase: 2000 // BATCH,
                            checkpoint_dir=checkpoint_dir, log=lambda message: None)
    return model, history


def test_loss_falls_on_learnable_data():
    _, history = run([Phase("target", "b", epochs=6, learning_rate=0.05)])
    assert history[-1].loss < 0.5 * history[0].loss
    assert [result.epoch for result in history] == list(range(6))
    assert all(result.examples == (2000 // BATCH) * BATCH for result in history)


def test_frozen_parts_do_not_move():
    model = fresh_model()
    before = model.user_embedding.weight.detach().clone()
    item_before = model.item_embedding.weight.detach().clone()
    run([Phase("target", "b", epochs=1, learning_rate=0.05, freeze=["user_embedding", "user_tower"])], model=model)
    assert torch.equal(model.user_embedding.weight, before)
    assert not torch.equal(model.item_embedding.weight, item_before)


def test_run_killed_mid_training_resumes_to_the_same_weights(tmp_path):
    phases = [Phase("source", "a", epochs=2, learning_rate=0.05), Phase("target", "b", epochs=3, learning_rate=0.02)]
    uninterrupted, full_history = run(phases, checkpoint_dir=str(tmp_path / "full"))

    class Killed(Exception):
        pass

    calls = {"epochs": 0}
    base_batches = in_memory_batches(planted_examples())

    def dying_batches(phase, epoch):
        calls["epochs"] += 1
        if calls["epochs"] == 4:  # dies at the start of the second target epoch
            raise Killed()
        return base_batches(phase, epoch)

    with pytest.raises(Killed):
        trainer.train(fresh_model(), phases, dying_batches, lambda phase: 2000 // BATCH,
                      checkpoint_dir=str(tmp_path / "killed"), log=lambda message: None)
    resumed, resumed_history = run(phases, checkpoint_dir=str(tmp_path / "killed"))

    assert [(r.phase, r.epoch) for r in resumed_history] == [(r.phase, r.epoch) for r in full_history]
    for name, tensor in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)
