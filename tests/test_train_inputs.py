"""The train stage's pure helpers: users' histories as CSR, the item text matrix, model and code versions."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd

import xdrec
from xdrec.config import load_config
from xdrec.modeling.model import csr
from xdrec.training import train
from xdrec.training.distributed import user_histories
from xdrec.training.train import code_version, item_text_matrix, model_version, starts_from_als


def test_csr_lists_each_users_items_in_order():
    offsets, items = csr(np.array([2, 0, 2, 2, 0]), np.array([9, 4, 1, 5, 3]), num_users=4)
    assert offsets.tolist() == [0, 2, 2, 5, 5]
    assert items[offsets[0]:offsets[1]].tolist() == [3, 4] and items[offsets[2]:offsets[3]].tolist() == [1, 5, 9]


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
