"""The benchmark's aggregation over seeds and its summary table."""
from __future__ import annotations

import pytest

from xdrec.evaluation.benchmark import aggregate, bootstrap_lines, dataset_label, dataset_table, verdict


def evaluation(ndcg_cold: float, mrr_sampled: float) -> dict:
    return {"metrics": {"full": {"m": {"cold": {"NDCG@10": ndcg_cold}, "warm": {"NDCG@10": 0.5}}},
                        "sampled": {"m": {"cold": {"MRR": mrr_sampled}}}}}


def test_aggregate_gives_mean_and_population_std_over_seeds():
    summary = aggregate([evaluation(0.2, 0.1), evaluation(0.4, 0.3), evaluation(0.3, 0.2)])
    cold = summary["full"]["m"]["cold"]["NDCG@10"]
    assert cold["mean"] == pytest.approx(0.3) and cold["seeds"] == 3
    assert cold["std"] == pytest.approx(((0.01 + 0.01 + 0) / 3) ** 0.5)
    assert summary["sampled"]["m"]["cold"]["MRR"]["mean"] == pytest.approx(0.2)
    assert summary["full"]["m"]["warm"]["NDCG@10"]["std"] == 0


def test_dataset_table_labels_protocols_and_shows_mean_and_std():
    lines = dataset_table("demo", aggregate([evaluation(0.2, 0.1), evaluation(0.4, 0.3)]), [5, 10])
    assert lines[0] == "### demo"
    assert "full NDCG@10 cold" in lines[2] and "sampled MRR cold" in lines[2]
    assert "0.3000 ± 0.1000" in lines[4] and "0.2000 ± 0.1000" in lines[4]
    with_coverage = dataset_table("demo", aggregate([evaluation(0.2, 0.1)]), [10], {"m": 0.25})
    assert with_coverage[2].endswith("| coverage |") and with_coverage[4].endswith("| 0.250 |")


def _cold_ndcg(**models: float) -> dict:
    return {"metrics": {"full": {model: {"cold": {"NDCG@10": value}} for model, value in models.items()}}}


def test_verdict_names_the_best_transfer_method_against_every_yardstick():
    beats = aggregate([_cold_ndcg(finetune=0.5, joint=0.6, target_only=0.3, popularity=0.4, emcdr=0.7)])
    assert verdict(beats, 10) == ("Cold-start users, full-ranking NDCG@10: the best transfer model, joint (0.6000), "
                                  "beats target_only (0.3000) and popularity (0.4000) but NOT emcdr (0.7000); "
                                  "the best baseline is emcdr (0.7000).")
    above_all = aggregate([_cold_ndcg(joint=0.8, target_only=0.3, popularity=0.4, als_merged=0.5, emcdr=0.7)])
    assert "joint (0.8000), beats target_only (0.3000), popularity (0.4000), als_merged (0.5000) and emcdr (0.7000);" \
        in verdict(above_all, 10)
    between = aggregate([_cold_ndcg(finetune=0.35, target_only=0.3, popularity=0.4)])
    assert "finetune (0.3500), beats target_only (0.3000) but NOT popularity (0.4000)" in verdict(between, 10)
    loses = aggregate([_cold_ndcg(finetune=0.25, target_only=0.3, popularity=0.4)])
    assert "finetune (0.2500), does NOT beat target_only (0.3000) or popularity (0.4000)" in verdict(loses, 10)


def test_the_ensemble_of_transfer_methods_is_a_transfer_model_not_a_baseline():
    ensembled = aggregate([_cold_ndcg(joint=0.6, finetune=0.55, ensemble=0.65, als_merged=0.62, blend=0.7)])
    assert verdict(ensembled, 10) == (
        "Cold-start users, full-ranking NDCG@10: the best transfer model, ensemble (0.6500), beats als_merged "
        "(0.6200); the best baseline is als_merged (0.6200); the blend of the best trained and factor models "
        "scores 0.7000.")


@pytest.mark.parametrize("name, label", [("demo", "demo"), ("conf/cdrib_game_video.yaml", "cdrib_game_video"),
                                         ("/data/configs/mine.yml", "mine")])
def test_a_config_given_by_path_gets_the_label_of_one_given_by_name(name, label):
    assert dataset_label(name) == label


def test_bootstrap_lines_give_each_seeds_interval_against_the_yardsticks():
    interval = {"difference": 0.02, "low": 0.01, "high": 0.03}
    bootstrap = {"metric": "NDCG@10", "picked_on": "cold", "transfer": "joint",
                 "versus": {"als_merged": {"cold": interval}, "emcdr": {"cold": interval}, "other": {"cold": interval}}}
    lines = bootstrap_lines([bootstrap, {}], ["seed 1", "seed 2"])
    assert lines == ["- seed 1, `joint` minus, NDCG@10 cold users (paired bootstrap, 95%): "
                     "als_merged +0.0200 [+0.0100, +0.0300]; emcdr +0.0200 [+0.0100, +0.0300]", ""]


def test_the_blends_intervals_name_target_only_once_though_it_is_a_yardstick_and_a_method():
    interval = {"difference": 0.02, "low": 0.01, "high": 0.03}
    bootstrap = {"metric": "NDCG@10", "picked_on": "cold", "transfer": "blend",
                 "versus": {"target_only": {"cold": interval}, "joint": {"cold": interval}}}
    line, _ = bootstrap_lines([bootstrap], ["seed 1"])
    assert line.count("target_only") == 1 and line.endswith("joint +0.0200 [+0.0100, +0.0300]")
