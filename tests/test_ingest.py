"""Ingest: every quarantine reason, reruns that change nothing, incremental files, formats, bad-share limit."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from xdrec.data import contract, tables
from xdrec.data.ingest import parse_interactions, run_ingest
from xdrec.data.readers import list_sources, read_sources
from xdrec.errors import XdrecError

BOOK_INTERACTIONS = """user_id,item_id,rating,timestamp,weight
u1,b1,5,100,
u1,b1,5,100,
u1,b1,3,50,2
u1,b2,4,200,
,b1,3,10,
u2,,3,10,
"  ",b2,1,5,
u2,b9,4,10,
u2,b2,2,300,0.5
u3,b3,4,2021-01-01 00:00:00,
u3,b1,9,100,
u3,b2,good,100,
u4,b1,4,yesterday,
u4,b2,4,99999999999,
u4,b3,4,100,-1
u5,b1,4,100,,extra
u5,b2
"""
BOOK_ITEMS = '''item_id,title,category,author
b1,Book One,fiction,Ann
b2,,essay,Bob
b3,"Verse, ""collected""",poetry,Cy
b1,Book One,fiction,Ann
b1,Book One again,fiction,Ann
 ,No Id,fiction,Dee
'''
MOVIE_INTERACTIONS = """user_id,item_id,rating,timestamp,split
u1,m1,4,1000,
u4,m2,3.5,1001.0,Test
u4,m1,3,1002,later
"""
MOVIE_ITEMS = """item_id,title,category
m1,Movie One,
m2,Movie Two,drama
"""
LINKS = """domain_a,user_id_a,domain_b,user_id_b
books,u1,movies,u1
books,u2,music,u2
books,,movies,u3
books,u1,movies,u1
"""
EXPECTED_BOOK_REASONS = {"duplicate": 1, "missing_id": 3, "unknown_item": 1, "bad_rating": 2,
                         "bad_timestamp": 2, "bad_weight": 1, "malformed": 2}


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def _inputs_config(make_config, root, *overrides):
    """The synthetic config pointed at hand-written inputs: books' interactions are a folder of files."""
    return make_config(root, "data.fetch=none", "data.max_bad_share=1.0", "data.compact_files_per_partition=1",
                       "data.domains.books.interactions=\"{raw}/books/interactions\"", "data.user_links=\"{raw}/links.csv\"",
                       *overrides)


def _write_inputs(config, book_interactions=BOOK_INTERACTIONS):
    _write(os.path.join(config.domain_input("books").interactions, "part-1.csv"), book_interactions)
    _write(config.domain_input("books").items, BOOK_ITEMS)
    _write(config.domain_input("movies").interactions, MOVIE_INTERACTIONS)
    _write(config.domain_input("movies").items, MOVIE_ITEMS)
    _write(config.expand(config.data.user_links), LINKS)


def _table(spark, config, name):
    frame = tables.read(spark, config.warehouse, name).toPandas()
    return frame.sort_values(sorted(column for column in frame.columns
                                    if frame[column].map(lambda value: not isinstance(value, dict)).all())
                             ).reset_index(drop=True)


def _versions(spark, config):
    return {name: tables.version(spark, config.warehouse, name)
            for name in (tables.INTERACTIONS, tables.ITEMS, tables.USER_LINKS, tables.QUARANTINE, tables.INGESTED_FILES)}


def _file_count(spark, config, name):
    path = tables.table_path(config.warehouse, name)
    return spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()["numFiles"]


@pytest.fixture(scope="module")
def runs(spark, make_config, tmp_path_factory):
    """First ingest, an unchanged rerun, a new file and a changed catalogue, in order."""
    config = _inputs_config(make_config, tmp_path_factory.mktemp("ingest"))
    _write_inputs(config)
    folder = config.domain_input("books").interactions
    steps = {"first": run_ingest(spark, config)}
    snapshot = {name: _table(spark, config, name) for name in (tables.INTERACTIONS, tables.ITEMS, tables.QUARANTINE)}
    steps["rerun"] = run_ingest(spark, config)
    steps["rerun_tables"] = {name: _table(spark, config, name) for name in snapshot}
    # A new file: one new interaction, one copy of a row of part-1 and one of part-1's duplicate rows.
    _write(os.path.join(folder, "part-2.csv"), "user_id,item_id,rating,timestamp,weight\n"
           "u6,b1,4,400,\nu1,b2,4,200,\nu1,b1,5,100,\n")
    steps["new_file"] = run_ingest(spark, config)
    steps["file_count"] = _file_count(spark, config, tables.INTERACTIONS)
    _write(config.domain_input("books").items, BOOK_ITEMS.replace("b2,,essay,Bob", "b2,Essays,essay,Bob"))
    steps["changed_items"] = run_ingest(spark, config)
    steps["changed_items_versions"] = _versions(spark, config)
    return config, steps, snapshot


def test_every_quarantine_reason_is_counted_and_kept_with_its_source(spark, runs):
    config, steps, snapshot = runs
    first = steps["first"]
    assert first["quarantined"]["interactions"]["books"] == EXPECTED_BOOK_REASONS
    assert first["quarantined"]["items"]["books"] == {"duplicate": 1, "conflicting_item": 1, "missing_id": 1}
    assert first["quarantined"]["user_links"][None] == {"unknown_domain": 1, "missing_id": 1, "duplicate": 1}
    assert first["quarantined"]["interactions"]["movies"] == {"bad_split": 1}
    assert first["added"]["interactions"] == {"books": 5, "movies": 2}
    assert first["read"]["interactions"]["books"] == 17

    quarantine = snapshot[tables.QUARANTINE]
    books = quarantine[(quarantine["kind"] == "interactions") & (quarantine["domain"] == "books")]
    assert books["reason"].value_counts().to_dict() == EXPECTED_BOOK_REASONS
    assert books["source_file"].str.endswith("books/interactions/part-1.csv").all()
    assert set(books.loc[books["reason"] == "malformed", "record"]) == {"u5,b1,4,100,,extra", "u5,b2"}
    assert '"rating":"9"' in books.loc[books["reason"] == "bad_rating", "record"].str.cat()
    assert quarantine["quarantine_id"].is_unique


def test_good_rows_are_typed_and_repeat_interactions_are_kept(runs):
    _, _, snapshot = runs
    interactions = snapshot[tables.INTERACTIONS]
    rows = {(r.domain, r.user_id, r.item_id, r.rating, r.timestamp, r.weight) for r in interactions.itertuples()}
    assert dict(zip(interactions["item_id"], interactions["split"]))["m2"] == "test"  # a given split, lower case
    assert rows == {
        ("books", "u1", "b1", 5.0, 100, 1.0), ("books", "u1", "b1", 3.0, 50, 2.0),  # two events of one pair
        ("books", "u1", "b2", 4.0, 200, 1.0), ("books", "u2", "b2", 2.0, 300, 0.5),
        ("books", "u3", "b3", 4.0, 1609459200, 1.0),  # a date-time string read as epoch seconds (UTC)
        ("movies", "u1", "m1", 4.0, 1000, 1.0), ("movies", "u4", "m2", 3.5, 1001, 1.0),
    }
    assert interactions["interaction_id"].is_unique
    items = {(r.domain, r.item_id): (r.title, r.category, r.text, r.attributes) for r in snapshot[tables.ITEMS].itertuples()}
    assert items[("books", "b1")] == ("Book One", "fiction", "Book One | fiction", {"author": "Ann"})
    assert items[("books", "b2")][:3] == ("", "essay", "essay")
    assert items[("books", "b3")][2] == 'Verse, "collected" | poetry'
    assert items[("movies", "m1")] == ("Movie One", "", "Movie One", {})
    assert len(items) == 5


def test_rerun_on_the_same_input_changes_no_table(spark, runs):
    config, steps, snapshot = runs
    assert steps["rerun"]["sources"] == 0
    assert steps["rerun"]["versions"] == steps["first"]["versions"]
    for name, frame in snapshot.items():
        pd.testing.assert_frame_equal(frame, steps["rerun_tables"][name], obj=name)


def test_a_new_file_is_merged_and_its_copies_quarantined(runs):
    _, steps, _ = runs
    added = steps["new_file"]
    assert added["sources"] == 1
    assert added["added"]["interactions"] == {"books": 1}
    assert added["quarantined"]["interactions"]["books"] == {"duplicate": 2}
    [(path, counts)] = added["files"]["interactions"].items()
    assert path.endswith("part-2.csv")
    assert counts == {"read": 3, "added": 1, "present": 0, "merged": 0, "duplicate": 2}
    # The interactions file was not read again, so the interactions table was not touched.
    assert steps["changed_items"]["versions"][tables.INTERACTIONS] == added["versions"][tables.INTERACTIONS]


def test_a_changed_catalogue_updates_only_its_changed_item(spark, runs):
    config, steps, _ = runs
    changed = steps["changed_items"]
    assert changed["read"]["items"] == {"books": 6}
    assert changed["added"]["items"] == {"books": 1} and changed["present"]["items"] == {"books": 2}
    items = tables.read(spark, config.warehouse, tables.ITEMS).where("domain = 'books'").toPandas()
    assert items.set_index("item_id")["text"].to_dict() == {
        "b1": "Book One | fiction", "b2": "Essays | essay", "b3": 'Verse, "collected" | poetry'}


def test_incremental_runs_keep_the_file_count_down(spark, runs):
    config, steps, _ = runs
    # Two partitions (books, movies) and at most one file each (compact_files_per_partition=1): the
    # merge's new file was compacted into the old one.
    assert steps["file_count"] == 2
    assert tables.read(spark, config.warehouse, tables.INTERACTIONS).count() == 7 + 1
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{tables.table_path(config.warehouse, tables.INTERACTIONS)}`").first()
    assert detail["partitionColumns"] == ["domain"]
    assert detail["properties"]["delta.logRetentionDuration"] == f"interval {config.data.retention_days} days"
    # Compacting narrowed VACUUM's listing for itself only: the session's setting is Spark's again.
    assert spark.conf.get("spark.sql.sources.parallelPartitionDiscovery.parallelism") == "10000"


def test_every_run_is_recorded_in_runs(spark, runs):
    config, _, _ = runs
    recorded = tables.read(spark, config.warehouse, tables.RUNS).where("stage = 'ingest'").toPandas()
    assert len(recorded) == 4 and (recorded["status"] == "ok").all()
    assert recorded["writes"].map(lambda writes: tables.INTERACTIONS in writes).all()


def test_too_many_bad_rows_fail_the_run_but_keep_the_quarantine(spark, tmp_path, make_config):
    config = _inputs_config(make_config, tmp_path, "data.max_bad_share=0.4")
    _write_inputs(config)
    with pytest.raises(XdrecError) as error:
        run_ingest(spark, config)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("too many bad rows, above data.max_bad_share=0.4: ")
    assert "interactions of books: 70.6% of 17 rows (missing_id 3, " in message
    # 1 bad row of 3 in movies' interactions (33.3%) stays under the threshold and is not named.
    assert "items of books: 50.0% of 6 rows" in message and "interactions of movies" not in message
    assert not tables.exists(spark, config.warehouse, tables.INTERACTIONS)
    assert tables.read(spark, config.warehouse, tables.QUARANTINE).count() == 12 + 1 + 3 + 3
    assert tables.read(spark, config.warehouse, tables.RUNS).first()["status"] == "failed"


def test_missing_input_is_a_one_line_error(spark, tmp_path, make_config):
    config = make_config(tmp_path, "data.fetch=none")
    with pytest.raises(XdrecError) as error:
        run_ingest(spark, config)
    assert str(error.value) == f"input file not found: {config.domain_input('books').interactions}"


def test_missing_column_is_named(spark, tmp_path):
    path = str(tmp_path / "interactions.csv")
    _write(path, "user_id,rating\nu1,5\n")
    sources = list_sources(spark, path, "csv")
    with pytest.raises(XdrecError, match=r"interactions.csv: missing column\(s\) item_id \(required: user_id, item_id"):
        read_sources(spark, sources, "csv", contract.INTERACTIONS, path)


FORMAT_ROWS = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["b1", "b2"], "rating": [4, 5],
                            "timestamp": [100, 200]})


def _read_as(spark, tmp_path, file_format):
    path = str(tmp_path / f"interactions.{file_format}")
    if file_format == "tsv":
        FORMAT_ROWS.to_csv(path, sep="\t", index=False)
    elif file_format == "json":
        FORMAT_ROWS.to_json(path, orient="records", lines=True)
    elif file_format == "parquet":
        FORMAT_ROWS.to_parquet(path)
    elif file_format == "delta":
        spark.createDataFrame(FORMAT_ROWS).write.format("delta").save(path)
    else:
        spark.createDataFrame(FORMAT_ROWS).createOrReplaceTempView("interactions_view")
        path = "interactions_view"
    raw = read_sources(spark, list_sources(spark, path, file_format), file_format, contract.INTERACTIONS, path)
    return raw


@pytest.mark.parametrize("file_format", ["tsv", "json", "parquet", "delta", "table"])
def test_every_input_format_reads_the_same(spark, tmp_path, make_config, file_format):
    spec = make_config(tmp_path).domain_input("books")
    parsed = parse_interactions(_read_as(spark, tmp_path, file_format), "books", spec, make_config(tmp_path).data)
    rows = parsed.collect()
    assert sorted((r.user_id, r.item_id, r.rating, r.timestamp, r.weight, r.reason) for r in rows) == [
        ("u1", "b1", 4.0, 100, 1.0, None), ("u2", "b2", 5.0, 200, 1.0, None)]
    assert all(row.source_file for row in rows)


def test_headerless_ids_only_input_with_a_column_map(spark, tmp_path):
    path = str(tmp_path / "train.txt")
    _write(path, "7\t0\n7\t3\n8\t0\n")
    raw = read_sources(spark, list_sources(spark, path, "tsv"), "tsv", contract.INTERACTIONS, path, header=False,
                       columns={"user_id": "_c0", "item_id": "_c1"})
    assert sorted((r.user_id, r.item_id, r.rating, r.timestamp) for r in raw.collect()) == [
        ("7", "0", None, None), ("7", "3", None, None), ("8", "0", None, None)]


def test_broken_json_lines_are_malformed(spark, tmp_path, make_config):
    path = str(tmp_path / "interactions.json")
    _write(path, '{"user_id": "u1", "item_id": 7, "timestamp": 100}\n{"user_id": "u2", "item_id"\n')
    config = make_config(tmp_path)
    raw = read_sources(spark, list_sources(spark, path, "json"), "json", contract.INTERACTIONS, path)
    rows = sorted(parse_interactions(raw, "books", config.domain_input("books"), config.data).collect(),
                  key=lambda row: row.reason is None)
    assert [(row.item_id, row.reason) for row in rows] == [(None, "malformed"), ("7", None)]
    assert rows[0].record == '{"user_id": "u2", "item_id"'


def test_a_misspelt_optional_column_is_an_error_naming_both(spark, tmp_path):
    path = str(tmp_path / "interactions.csv")
    _write(path, "user_id,item_id,ratng\nu1,b1,5\n")
    with pytest.raises(XdrecError, match=r"interactions.csv: column 'ratng' looks like a misspelling of the "
                                         r"optional column 'rating'"):
        read_sources(spark, list_sources(spark, path, "csv"), "csv", contract.INTERACTIONS, path)


def test_an_empty_file_in_a_folder_is_skipped_with_a_warning(spark, tmp_path, capsys):
    folder = tmp_path / "interactions"
    _write(str(folder / "part-1.csv"), "user_id,item_id\nu1,b1\n")
    _write(str(folder / "part-2.csv"), "")
    sources = list_sources(spark, str(folder), "csv")
    assert [os.path.basename(source.path) for source in sources] == ["part-1.csv"]
    assert "skipping the empty file" in capsys.readouterr().out
    assert read_sources(spark, sources, "csv", contract.INTERACTIONS, str(folder)).count() == 1
    _write(str(folder / "part-1.csv"), "")
    with pytest.raises(XdrecError, match="every input file is empty"):
        list_sources(spark, str(folder), "csv")


def test_a_file_whose_header_differs_from_its_siblings_is_rejected_by_name(spark, tmp_path):
    folder = tmp_path / "interactions"
    _write(str(folder / "part-1.csv"), "user_id,item_id,rating\nu1,b1,5\n")
    _write(str(folder / "part-2.csv"), "item_id,user_id,rating\nb2,u2,4\n")  # two columns swapped
    with pytest.raises(XdrecError, match=r"part-2.csv: header item_id,user_id,rating differs from "
                                         r"user_id,item_id,rating of .*part-1.csv"):
        read_sources(spark, list_sources(spark, str(folder), "csv"), "csv", contract.INTERACTIONS, str(folder))


def test_ids_that_are_not_utf8_are_quarantined_not_merged(spark, tmp_path, make_config):
    """Two different ids with a bad byte would both read as "u\ufffd1": one user made of two."""
    path = tmp_path / "interactions.csv"
    path.write_bytes(b"user_id,item_id\nu\xff1,b1\nu\xfe1,b2\nu2,b\xc3\n" + "u3,caf\u00e9\n".encode())
    config = make_config(tmp_path)
    raw = read_sources(spark, list_sources(spark, str(path), "csv"), "csv", contract.INTERACTIONS, str(path))
    rows = parse_interactions(raw, "books", config.domain_input("books"), config.data).collect()
    assert sorted((row.user_id, row.item_id, row.reason) for row in rows if row.reason) == [
        ("u2", "b\ufffd", "bad_encoding"), ("u\ufffd1", "b1", "bad_encoding"), ("u\ufffd1", "b2", "bad_encoding")]
    assert [(row.user_id, row.item_id) for row in rows if not row.reason] == [("u3", "caf\u00e9")]


@pytest.mark.parametrize("repeats", ["merge", "quarantine"])
def test_repeated_events_without_timestamps_are_merged_into_one_weighted_row(spark, tmp_path, make_config, repeats):
    """A user buying an item three times (no timestamps) is signal: one row of weight 3, not two duplicates."""
    config = _inputs_config(make_config, tmp_path, f"data.repeats={repeats}")
    _write_inputs(config, book_interactions="user_id,item_id,weight\nu1,b1,\nu1,b1,\nu1,b1,2\nu2,b1,\nu1,b2,\n")
    first = run_ingest(spark, config)
    rows = tables.read(spark, config.warehouse, tables.INTERACTIONS).where("domain = 'books'").toPandas()
    pairs = sorted(zip(rows["user_id"], rows["item_id"], rows["weight"]))
    if repeats == "merge":
        assert pairs == [("u1", "b1", 4.0), ("u1", "b2", 1.0), ("u2", "b1", 1.0)]
        assert first["merged"]["interactions"]["books"] == 2 and first["read"]["interactions"]["books"] == 5
        assert "duplicate" not in first["quarantined"]["interactions"]["books"]
    else:
        assert pairs == [("u1", "b1", 1.0), ("u1", "b1", 2.0), ("u1", "b2", 1.0), ("u2", "b1", 1.0)]
        assert first["quarantined"]["interactions"]["books"] == {"duplicate": 1}
    # The file grows by a line, so it is read again: its old rows merge to the same rows, already present.
    path = os.path.join(config.domain_input("books").interactions, "part-1.csv")
    with open(path, "a") as handle:
        handle.write("u3,b1,\n")
    again = run_ingest(spark, config)
    assert again["sources"] == 1 and again["added"]["interactions"]["books"] == 1
    assert again["present"]["interactions"]["books"] == len(pairs)


def test_a_file_delivered_again_under_another_name_is_skipped_as_already_present(spark, tmp_path, make_config):
    config = _inputs_config(make_config, tmp_path)
    _write_inputs(config)
    run_ingest(spark, config)
    before = {name: tables.version(spark, config.warehouse, name) for name in (tables.INTERACTIONS, tables.QUARANTINE)}
    folder = config.domain_input("books").interactions
    _write(os.path.join(folder, "part-1-resent.csv"), BOOK_INTERACTIONS)  # the same bytes, a new name

    again = run_ingest(spark, config)

    assert again["sources"] == 0
    assert [(os.path.basename(copy), os.path.basename(original))
            for copy, original in again["repeated"]["interactions/books"]] == [("part-1-resent.csv", "part-1.csv")]
    assert {name: tables.version(spark, config.warehouse, name) for name in before} == before  # nothing added
    assert run_ingest(spark, config)["repeated"] == {}  # remembered: not hashed again
