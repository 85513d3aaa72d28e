"""The tune stage's search loop: seeded, robust to a failed trial, clear when every trial fails, and its
median stopping rule; the ALS fit it chooses is the one the train stage serves, and the train stage goes on
from its best training trial.
(The whole stage also runs in tests/test_pipeline_e2e.py.)"""
from __future__ import annotations

import datetime
import os
import time

import pytest
import torch

from xdrec import files
from xdrec.config import load_config
from xdrec.errors import XdrecError
from xdrec.training import artifact, factors
from xdrec.training.loop import below_median, load_checkpoint
from xdrec.training.train import (checkpoints_of, fit_factor_model, model_version, read_inputs, train_method,
                                  training_rows)
from xdrec.training.tune import (METHOD_SPACE, epoch_medians, first_method_points, inside, method_space, run_search,
                                 run_tune, seeded_study, suggest, trial_deadline, tuned, tuned_method, tuning_path)


def quadratic(trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    return -(x - 0.5) ** 2


def test_the_search_is_reproducible_for_a_seed():
    first = run_search(seeded_study(3), quadratic, "als", trials=8, seconds=60)
    again = run_search(seeded_study(3), quadratic, "als", trials=8, seconds=60)
    other = run_search(seeded_study(4), quadratic, "als", trials=8, seconds=60)
    assert [t.params for t in first.trials] == [t.params for t in again.trials]
    assert [t.params for t in first.trials] != [t.params for t in other.trials]


def test_a_failed_trial_is_recorded_and_the_search_goes_on():
    calls = []

    def first_fails(trial) -> float:
        calls.append(trial.number)
        if trial.number == 0:
            raise RuntimeError("a worker was lost")
        return quadratic(trial)

    study = run_search(seeded_study(0), first_fails, "finetune", trials=3, seconds=60)
    assert [trial.state.name for trial in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]


def test_a_search_whose_every_trial_failed_names_the_cause():
    def diverges(trial) -> float:
        trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
        raise ValueError("the loss is NaN\nat epoch 2")

    with pytest.raises(XdrecError, match="every finetune trial failed; the first: ValueError: at epoch 2"):
        run_search(seeded_study(0), diverges, "finetune", trials=2, seconds=60)


def test_whole_trials_start_only_while_the_slowest_so_far_would_end_within_the_budget():
    def fit(trial) -> float:  # a fit of a quarter of a second that cannot stop midway, such as an ALS fit
        time.sleep(0.25)
        return quadratic(trial)

    # Optuna alone starts a trial whenever the budget is not spent: the second, 0.25 s in, ends at 0.5 s.
    assert len(run_search(seeded_study(0), fit, "als", trials=5, seconds=0.4).trials) == 2
    # With whole trials, 0.15 s are left after the first: less than it took, so no second one starts.
    assert len(run_search(seeded_study(0), fit, "als", trials=5, seconds=0.4, whole_trials=True).trials) == 1
    study = run_search(seeded_study(0), fit, "als", trials=20, seconds=1.4, whole_trials=True)
    assert 2 <= len(study.trials) <= 5
    assert study.trials[-1].datetime_complete - study.trials[0].datetime_start <= datetime.timedelta(seconds=1.4)


def test_the_configs_own_settings_are_tried_first():
    own = inside(METHOD_SPACE, {"learning_rate": 0.5, "embedding_dim": 48, "loss": "bce", "table_update": "lazy",
                                "user_encoder": "history", "init": "random"})
    # A rate above the range is clamped to it; a dimension that is not a choice is left to the sampler.
    assert own == {"learning_rate": 3e-2, "loss": "bce", "table_update": "lazy", "user_encoder": "history",
                   "init": "random"}
    tried = []

    def objective(trial) -> float:
        tried.append(suggest(trial, METHOD_SPACE))
        return 0.0

    run_search(seeded_study(0), objective, "finetune", trials=3, seconds=60, first=(own,))
    assert {key: tried[0][key] for key in own} == own and len(tried) == 3


def test_the_other_user_encoder_and_item_text_setting_are_tried_next():
    own = {"learning_rate": 0.01, "embedding_dim": 128, "loss": "sampled_softmax", "table_update": "dense",
           "user_encoder": "history", "init": "als_merged", "item_text": "auto"}
    assert "item_text" not in method_space(has_text=False)
    without_text = first_method_points(method_space(has_text=False), own)
    assert [point["user_encoder"] for point in without_text] == ["history", "embedding"]
    assert all("item_text" not in point for point in without_text)
    with_text = first_method_points(method_space(has_text=True), own)
    assert [(point["user_encoder"], point["item_text"]) for point in with_text] == [
        ("history", "auto"), ("embedding", "auto"), ("history", "off")]
    assert all({key: point[key] for key in ("learning_rate", "loss", "init")} == {
        key: own[key] for key in ("learning_rate", "loss", "init")} for point in with_text)


def test_the_median_rule_stops_a_run_below_the_finished_runs_once_past_its_grace_epochs():
    medians = epoch_medians([[0.1, 0.2, 0.3, 0.4], [0.1, 0.4, 0.5], [0.0, 0.1]])
    assert medians == pytest.approx([0.1, 0.2, 0.4, 0.4])
    assert not below_median([0.0, 0.0], medians, after=2)  # within its grace epochs
    assert below_median([0.0, 0.0, 0.39], medians, after=2)  # third epoch: best 0.39 < 0.4
    assert not below_median([0.0, 0.5, 0.39], medians, after=2)  # its best so far counts
    assert not below_median([0.0] * 6, medians, after=2)  # past every finished run's length
    assert not below_median([0.0, 0.0, 0.0], medians, after=0)  # 0: never


def test_the_seeded_trials_share_the_time_left_and_drawn_trials_keep_the_searchs_deadline():
    # Two seeded trials, 600 s left: the first may use half. However long it took, the second gets the rest.
    assert trial_deadline(0, 2, now=1000.0, deadline=1600.0) == 1300.0
    assert trial_deadline(1, 2, now=1290.0, deadline=1600.0) == 1600.0
    assert trial_deadline(1, 2, now=1310.0, deadline=1600.0) == 1600.0  # the first ran past its share
    assert trial_deadline(0, 3, now=0.0, deadline=900.0) == 300.0
    assert trial_deadline(2, 2, now=1400.0, deadline=1600.0) == 1600.0  # a drawn trial


def test_the_chosen_settings_are_laid_over_the_config_as_a_config_file_would_set_them(tmp_path):
    """A record from before ``train.temperature`` became a list (one number) reads as a list of one."""
    config = load_config("synthetic", [f"warehouse={tmp_path}"])
    files.write_json(tuning_path(config.warehouse), {"als": {"rank": 64}, "train": {"temperature": 0.2,
                                                                                     "learning_rate": 0.003}})
    chosen = tuned(config)
    assert chosen.train.temperature == [0.2] and chosen.train.learning_rate == 0.003 and chosen.als.rank == 64
    assert chosen.train.methods == config.train.methods and chosen.warehouse == config.warehouse


def test_the_train_stage_reuses_the_als_fit_the_search_chose(spark, make_config, featured_copy, tmp_path):
    """Without training trials (the demo's search), the best ALS trial's fit is kept as the als_merged artifact
    of the chosen settings: the train stage reuses it, and it is the model a fit of its own would give."""
    config = make_config(featured_copy(tmp_path), "tune.als_trials=3", "tune.method_trials=0")
    run_tune(spark, config)
    chosen = tuned(config)
    inputs = read_inputs(spark, chosen)
    rows = training_rows(spark, chosen, inputs.versions)
    meta = fit_factor_model(chosen, "als_merged", inputs, rows)
    assert meta.get("reused") and meta["config"]["als"] == chosen.to_dict()["als"]
    kept = artifact.load(artifact.latest_path(chosen.warehouse, "als_merged")).model
    fitted = factors.fit_factor_model("als_merged", rows, chosen.data.source_domain, chosen.data.target_domain,
                                      inputs.num_users, inputs.num_items, chosen.als)
    for part in ("user_embedding", "item_embedding"):
        torch.testing.assert_close(getattr(kept, part).weight, getattr(fitted, part).weight)


def test_the_train_stage_goes_on_from_the_best_training_trials_checkpoints(spark, make_config, featured_copy, tmp_path):
    """Of the training trials' checkpoints only the best trial's are kept, where the train stage checkpoints the
    chosen settings; the train stage goes on from them: its model's first epochs are the trial's own, wall
    times included, not trained again."""
    config = make_config(featured_copy(tmp_path), "tune.als_trials=0", "tune.method_trials=2")
    record = run_tune(spark, config)
    assert len(record["searches"][tuned_method(config)]["trials"]) == 2
    chosen, method = tuned(config), tuned_method(config)
    inputs = read_inputs(spark, chosen)
    version = model_version(method, chosen, inputs.versions)
    folder = checkpoints_of(chosen, method, version)
    assert os.listdir(os.path.dirname(folder)) == [version]
    trial_epochs = load_checkpoint(folder)["history"]
    meta = train_method(spark, chosen, method, inputs)
    assert meta["model_version"] == version and trial_epochs
    assert meta["history"][:len(trial_epochs)] == trial_epochs
