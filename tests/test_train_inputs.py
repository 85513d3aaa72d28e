"""The train stage's pure helpers: users' histories as CSR, the batches' negatives, the item text matrix, model
and code versions, the order temperatures are tried in."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import torch

import xdrec
from xdrec.config import load_config
from xdrec.modeling.methods import phases_for
from xdrec.modeling.model import csr, csr_contains
from xdrec.training import train
from xdrec.training.distributed import known_positives, labelled_batches, memory_batches, user_histories
from xdrec.training.train import code_version, item_text_matrix, model_version, next_temperature, starts_from_als


def test_csr_lists_each_users_items_in_order():
    offsets, items = csr(np.array([2, 0, 2, 2, 0]), np.array([9, 4, 1, 5, 3]), num_users=4)
    assert offsets.tolist() == [0, 2, 2, 5, 5]
    assert items[offsets[0]:offsets[1]].tolist() == [3, 4] and items[offsets[2]:offsets[3]].tolist() == [1, 5, 9]


def test_csr_contains_finds_exactly_each_rows_values():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 50, 2_000), rng.integers(0, 300, 2_000)
    offsets, values = map(torch.from_numpy, csr(users, items, num_users=60))  # users 50-59 have no items
    rows, queries = rng.integers(0, 60, 5_000), rng.integers(0, 300, 5_000)
    pairs = set(zip(users.tolist(), items.tolist()))
    expected = [(row, query) in pairs for row, query in zip(rows.tolist(), queries.tolist())]
    assert csr_contains(offsets, values, torch.from_numpy(rows), torch.from_numpy(queries)).tolist() == expected
    assert sum(expected) > 100  # both answers are well represented
    assert not csr_contains(torch.zeros(3, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                            torch.tensor([0, 1]), torch.tensor([4, 5])).any()


def test_labelled_batches_draw_fresh_seeded_negatives_among_items_the_user_has_not():
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 40, 600), rng.integers(10, 60, 600)  # items 10-59: one domain's
    known = known_positives([(users, items)], num_users=40)
    pairs = set(zip(users.tolist(), items.tolist()))
    shard = (torch.from_numpy(users), torch.from_numpy(items))

    def batches(seed: int, steps: int = 20) -> list[tuple[torch.Tensor, ...]]:
        stream = labelled_batches(memory_batches(shard, 50, seed), torch.arange(10, 60), known, 4, seed)
        return [next(stream) for _ in range(steps)]

    drawn = batches(seed=3)
    for batch_users, batch_items, labels in drawn:
        assert labels[:50].eq(1).all() and labels[50:].eq(0).all()
        # a user with most of the domain's items could lose a few negatives; none here has a third of them
        assert len(labels) == 50 * 5
        assert batch_users[50:].tolist() == batch_users[:50].repeat_interleave(4).tolist()
        assert all((user, item) not in pairs for user, item in zip(batch_users[50:].tolist(), batch_items[50:].tolist()))
        assert set(batch_items[50:].tolist()) <= set(range(10, 60))
    assert all(torch.equal(a, b) for first, again in zip(drawn, batches(seed=3)) for a, b in zip(first, again))
    assert not torch.equal(drawn[0][1], batches(seed=4, steps=1)[0][1])
    # fresh every step: a positive seen again gets other negatives
    negatives_of = {}
    for batch_users, batch_items, _ in drawn:
        for row in range(50):
            key = (int(batch_users[row]), int(batch_items[row]))
            negatives_of.setdefault(key, []).append(tuple(batch_items[50 + 4 * row:54 + 4 * row].tolist()))
    repeated = [draws for draws in negatives_of.values() if len(draws) > 1]
    assert repeated and all(len(set(draws)) > 1 for draws in repeated)


def test_labelled_batches_leave_out_what_cannot_be_a_negative():
    """A user who has every item but one gets that one as each negative; one who has them all gets none."""
    known = known_positives([(np.array([0, 0, 0, 1, 1, 1, 1]), np.array([10, 11, 12, 10, 11, 12, 13]))], num_users=2)
    pairs = iter([(torch.tensor([0, 1]), torch.tensor([10, 10]))])
    users, items, labels = next(labelled_batches(pairs, torch.arange(10, 14), known, 3, seed=0))
    assert users.tolist() == [0, 1, 0, 0, 0] and items.tolist() == [10, 10, 13, 13, 13]
    assert labels.tolist() == [1, 1, 0, 0, 0]


def test_user_histories_flag_domains_and_keep_source_items():
    books, movies = (np.array([0, 1]), np.array([10, 11])), (np.array([1, 2]), np.array([20, 21]))
    histories = user_histories(books, movies, num_users=5)
    assert histories.has_source_history.tolist() == [True, True, False, False, False]
    assert histories.has_target_history.tolist() == [False, True, True, False, False]
    assert histories.history_offsets.tolist() == [0, 1, 2, 2, 2, 2] and histories.history_items.tolist() == [10, 11]


def test_item_text_matrix_places_vectors_by_item_and_flags_the_rest():
    rows = pd.DataFrame({"item_idx": [3, 0], "embedding": [np.array([1.0, 2.0]), np.array([3.0, 4.0])]})
    matrix, has_text = item_text_matrix(rows, num_items=5)
    assert matrix.dtype == np.float32 and matrix.shape == (5, 2)
    assert matrix[3].tolist() == [1.0, 2.0] and matrix[0].tolist() == [3.0, 4.0] and not matrix[1].any()
    assert has_text.tolist() == [True, False, False, True, False]


def test_a_model_reads_the_item_text_unless_its_config_turns_it_off():
    # The tune stage's trials share one read of the inputs and may each turn the text off.
    inputs = train.TrainingInputs(versions={}, user_index=pd.DataFrame({"user_idx": [0, 1]}),
                                  item_index=pd.DataFrame({"domain": ["movies"] * 3, "item_idx": [0, 1, 2]}),
                                  validation=None, item_text=item_text_matrix(
                                      pd.DataFrame({"item_idx": [1], "embedding": [np.ones(4)]}), num_items=3))
    for setting, text_dim in (("auto", 4), ("off", 0)):
        config = load_config("synthetic", [f"train.item_text={setting}"])
        spec = train.train_spec(config, "target_only", inputs, data={}, checkpoint_dir="")
        assert spec.model["text_dim"] == text_dim
        assert (spec.model_data.item_text is None) == (text_dim == 0)


def test_model_version_follows_the_model_not_how_it_is_watched():
    versions = {"training_examples": 3}
    base = load_config("synthetic")
    same = load_config("synthetic", ["train.mlflow=false", "train.start_timeout=600", "train.methods=[finetune]"])
    other = load_config("synthetic", ["train.learning_rate=0.02"])
    assert model_version("finetune", base, versions) == model_version("finetune", same, versions)
    assert model_version("finetune", base, versions) != model_version("finetune", other, versions)
    assert model_version("finetune", base, versions) != model_version("finetune", base, {"training_examples": 4})
    assert model_version("finetune", base, versions) != model_version("joint", base, versions)
    # A method starting from ALS follows the ALS settings too; one starting at random does not, and
    # target_only, which knows nothing of the source domain, always starts at random.
    for method, start, follows in (("joint", "random", False), ("joint", "als_merged", True),
                                   ("target_only", "als_merged", False)):
        started = load_config("synthetic", [f"train.init={start}"])
        other_als = load_config("synthetic", [f"train.init={start}", "als.rank=16"])
        assert (model_version(method, started, versions) != model_version(method, other_als, versions)) == follows
        assert starts_from_als(started, method) == follows


def test_a_change_to_the_training_code_gives_models_a_new_version(tmp_path, monkeypatch):
    package = tmp_path / "xdrec"
    shutil.copytree(os.path.dirname(xdrec.__file__), package, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_version(str(package))
    assert code_version(str(package / "..") + "/xdrec") == before  # the same files, the same version
    loop = package / "training" / "loop.py"
    loop.write_text(loop.read_text() + "\n# a fix\n")
    code_version.cache_clear()
    assert code_version(str(package)) != before

    config, versions = load_config("synthetic"), {"training_examples": 3}
    current = model_version("finetune", config, versions)
    monkeypatch.setattr(train, "code_version", lambda: "another")
    assert model_version("finetune", config, versions) != current


def test_the_curve_of_a_phase_that_keeps_its_start_begins_with_the_best_epoch_before_it():
    config = load_config("synthetic", ["data.source_domain=source", "data.target_domain=target",
                                       "data.domains={source: {interactions: s.csv}, target: {interactions: t.csv}}"])
    phases = phases_for("self_training", config)

    def epoch(phase: str, figure: float) -> dict:
        return {"phase": phase, "validation": {"all/NDCG@10": figure, "cold/NDCG@10": figure / 2}}

    history = [epoch("teacher", 0.3), epoch("teacher", 0.5), epoch("teacher", 0.4), epoch("self_training", 0.45)]
    assert train.last_phase_curve(config.train, history, phases) == ("all/NDCG@10", [0.5, 0.45])
    joint = [epoch("joint", 0.3), epoch("joint", 0.5)]
    assert train.last_phase_curve(config.train, joint, phases_for("joint", config)) == ("all/NDCG@10", [0.3, 0.5])


def searched(listed: list[float], figure) -> list[float]:
    """The temperatures next_temperature tries, in order, when ``figure(t)`` is the figure after one epoch."""
    after_one_epoch: dict[float, float] = {}
    while (temperature := next_temperature(listed, after_one_epoch)) is not None:
        after_one_epoch[temperature] = figure(temperature)
    return list(after_one_epoch)


def test_temperatures_are_tried_from_the_middle_outwards_while_they_validate_better():
    listed = [0.05, 0.1, 0.2, 0.4]

    def peaked(best: float, lean: float = 0.0):
        # The figure after one epoch rises to one best temperature and falls past it, as every probe recorded
        # so far did (MovieLens-1M and -100K, the four Amazon directions); ``lean`` tilts its two sides.
        return lambda t: -abs(np.log2(t / best)) + lean * np.log2(t)

    assert searched(listed, peaked(0.2)) == [0.1, 0.2, 0.4]  # 0.05 lies past 0.1, which validated lower
    assert searched(listed, peaked(0.1)) == [0.1, 0.2, 0.05]
    assert searched(listed, peaked(0.025)) == [0.1, 0.2, 0.05, 0.025, 0.0125]  # past the list while better
    assert searched(listed, lambda t: t) == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]  # at most 3 past the list
    assert searched([0.0, 0.1, 0.4], lambda t: t) == [0.0, 0.1, 0.4, 0.8, 1.6, 3.2]  # 0, dot products: off the scale
    assert searched([0.0, 0.3], lambda t: t) == [0.0, 0.3]
    # With the best inside the list, the two best tried (the finalists) are the two best of the whole list.
    for best in (0.1, 0.2):
        for lean in (-0.5, 0.5):
            figure = peaked(best, lean)
            assert sorted(searched(listed, figure), key=figure)[-2:] == sorted(listed, key=figure)[-2:]
