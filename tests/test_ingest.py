"""Ingest: cleaning rules, drop counts, table schemas, and one-line errors for bad inputs."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from xdrec import tables
from xdrec.errors import XdrecError
from xdrec.ingest import INTERACTION_COLUMNS, normalize_interactions, read_input, run_ingest

BOOK_INTERACTIONS = """user_id,item_id,rating,timestamp
u1,b1,5,100
u1,b1,5,100
u1,b1,3,50
u1,b2,4,200
,b1,3,10
u2,,3,10
"  ",b2,1,5
u2,b9,4,10
u2,b2,2,300
u3,b3,4,2021-01-01 00:00:00
"""
BOOK_ITEMS = '''item_id,title,category
b1,Book One,fiction
b2,,essay
b3,"Verse, ""collected""",poetry
b1,Book One again,fiction
'''
MOVIE_INTERACTIONS = """user_id,item_id,rating,timestamp
u1,m1,4,1000
u4,m2,3.5,1001.0
"""
MOVIE_ITEMS = """item_id,title,category
m1,Movie One,
m2,Movie Two,drama
"""


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def _write_inputs(config, files):
    for (domain, kind), text in files.items():
        spec = config.domain_input(domain)
        _write(spec.interactions if kind == "interactions" else spec.items, text)


@pytest.fixture
def small_inputs():
    return {
        ("books", "interactions"): BOOK_INTERACTIONS, ("books", "items"): BOOK_ITEMS,
        ("movies", "interactions"): MOVIE_INTERACTIONS, ("movies", "items"): MOVIE_ITEMS,
    }


def test_ingest_cleans_and_counts_drops(spark, tmp_path, make_config, small_inputs):
    config = make_config(tmp_path, "data.fetch=none")
    _write_inputs(config, small_inputs)
    summary = run_ingest(spark, config)

    assert summary["dropped"]["interactions"]["books"] == {
        "duplicate": 1, "missing_id": 3, "superseded": 1, "unknown_item": 1,
    }
    assert summary["dropped"]["items"]["books"] == {"duplicate": 1}
    assert summary["rows"] == {"interactions": {"books": 4, "movies": 2}, "items": {"books": 3, "movies": 2}}
    assert summary["versions"] == {"items": 0, "interactions": 0}

    interactions = tables.read(spark, config.warehouse, tables.INTERACTIONS)
    assert dict(interactions.dtypes) == {
        "domain": "string", "user_id": "string", "item_id": "string", "rating": "double", "timestamp": "bigint",
    }
    rows = {(r.domain, r.user_id, r.item_id): (r.rating, r.timestamp) for r in interactions.collect()}
    assert rows == {
        ("books", "u1", "b1"): (5.0, 100),  # the latest of the pair, once
        ("books", "u1", "b2"): (4.0, 200),
        ("books", "u2", "b2"): (2.0, 300),
        ("books", "u3", "b3"): (4.0, 1609459200),  # a date-time string read as epoch seconds (UTC)
        ("movies", "u1", "m1"): (4.0, 1000),
        ("movies", "u4", "m2"): (3.5, 1001),
    }

    items = {(r.domain, r.item_id): (r.title, r.category, r.text)
             for r in tables.read(spark, config.warehouse, tables.ITEMS).collect()}
    assert items[("books", "b1")] == ("Book One", "fiction", "Book One | fiction")  # first by title
    assert items[("books", "b2")] == ("", "essay", " | essay")
    assert items[("books", "b3")] == ('Verse, "collected"', "poetry", 'Verse, "collected" | poetry')
    assert items[("movies", "m1")] == ("Movie One", "", "Movie One | ")
    assert len(items) == 5


def test_optional_columns_and_catalogue_may_be_absent(spark, tmp_path, make_config, small_inputs):
    config = make_config(tmp_path, "data.fetch=none", "data.domains.movies.items=null")
    del small_inputs[("movies", "items")]
    small_inputs[("movies", "interactions")] = "user_id,item_id,timestamp\nu1,m1,1000\nu5,m-unlisted,1002\n"
    small_inputs[("books", "items")] = "item_id,title\nb1,Book One\nb2,Book Two\nb3,Book Three\n"
    _write_inputs(config, small_inputs)
    summary = run_ingest(spark, config)
    assert summary["rows"]["interactions"]["movies"] == 2  # no catalogue: no item is unknown
    assert "movies" not in summary["rows"]["items"]
    movies = tables.read(spark, config.warehouse, tables.INTERACTIONS).where("domain = 'movies'").collect()
    assert {row.rating for row in movies} == {None}
    items = tables.read(spark, config.warehouse, tables.ITEMS).collect()
    assert {(row.category, row.text) for row in items if row.item_id == "b2"} == {("", "Book Two | ")}


def test_missing_input_file_is_a_one_line_error(spark, tmp_path, make_config, small_inputs):
    config = make_config(tmp_path, "data.fetch=none")
    del small_inputs[("movies", "items")]
    _write_inputs(config, small_inputs)
    with pytest.raises(XdrecError) as error:
        run_ingest(spark, config)
    message = str(error.value)
    assert message == f"input file not found: {config.domain_input('movies').items}"


def test_missing_column_is_named(spark, tmp_path, make_config, small_inputs):
    config = make_config(tmp_path, "data.fetch=none")
    small_inputs[("books", "interactions")] = "user_id,item_id,rating\nu1,b1,5\n"
    _write_inputs(config, small_inputs)
    with pytest.raises(XdrecError, match=r"books/interactions.csv: missing column\(s\) timestamp"):
        run_ingest(spark, config)


@pytest.mark.parametrize("file_format", ["tsv", "json", "parquet"])
def test_every_input_format_reads_the_same(spark, tmp_path, file_format):
    frame = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["b1", "b2"], "rating": [4, 5],
                          "timestamp": [100, 200]})
    path = str(tmp_path / f"interactions.{file_format}")
    {"tsv": lambda: frame.to_csv(path, sep="\t", index=False),
     "json": lambda: frame.to_json(path, orient="records", lines=True),
     "parquet": lambda: frame.to_parquet(path)}[file_format]()
    rows = normalize_interactions(read_input(spark, path, file_format, INTERACTION_COLUMNS), "books").collect()
    assert sorted((r.user_id, r.item_id, r.rating, r.timestamp) for r in rows) == [
        ("u1", "b1", 4.0, 100), ("u2", "b2", 5.0, 200)]
