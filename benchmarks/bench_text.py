"""Benchmark: the features stage's text-embedding UDF against in-process ``SentenceTransformer.encode``.

    $VENV/bin/python benchmarks/bench_text.py --conf demo          # after the demo's ingest (jobs/ingest.py)
    $VENV/bin/python benchmarks/bench_text.py --conf demo --limit 500   # a quick check of the script

Both embed the same item texts (the distinct texts of the config's ``items`` table, up to ``--limit``) with
``features.text_encoder`` at ``features.text_batch_size``:

- in process: one ``encode`` call, torch on every core (the encoder loaded and warmed up beforehand);
- the UDF: ``xdrec.data.text.embed_texts`` over as many tasks as the features stage gives these texts,
  into Spark's ``noop`` sink. Its first run includes each Python worker loading the encoder; the second
  reuses the workers (Spark keeps them), which is the stage's steady state on a large catalogue.

Prints titles/s for each and the UDF's share of the in-process rate, and writes them as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from xdrec.config import load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default="demo")
    parser.add_argument("--limit", type=int, default=6000, help="texts embedded (at most)")
    parser.add_argument("--out", default="reports/bench_text.json")
    args = parser.parse_args()

    import torch
    from pyspark.sql import functions as F

    from xdrec.data import tables, text
    from xdrec.spark import get_spark

    config = load_config(args.conf)
    spark = get_spark(config.spark)
    encoder, batch_size = config.features.text_encoder, config.features.text_batch_size
    texts = text.with_text_hash(tables.read(spark, config.warehouse, tables.ITEMS)).dropDuplicates(["text_hash"])
    texts = texts.select("text_hash", "text").orderBy("text_hash").limit(args.limit).cache()
    count = texts.count()
    titles = [row["text"] for row in texts.collect()]

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    text.encode(titles[:batch_size], encoder, batch_size)  # load and warm up
    started = time.perf_counter()
    text.encode(titles, encoder, batch_size)
    in_process = count / (time.perf_counter() - started)
    print(f"in process ({cores} threads): {count:,} texts at {in_process:,.0f}/s", flush=True)

    partitions = text.embedding_tasks(count, spark.sparkContext.defaultParallelism)
    udf_rates = []
    for run in ("first (workers load the encoder)", "second (workers reused)"):
        started = time.perf_counter()
        (text.embed_texts(texts, encoder, batch_size, partitions)
         .select(F.size("embedding")).write.format("noop").mode("overwrite").save())
        udf_rates.append(count / (time.perf_counter() - started))
        print(f"UDF over {partitions} tasks, {run}: {udf_rates[-1]:,.0f}/s "
              f"({udf_rates[-1] / in_process:.2f} of in process)", flush=True)

    result = {"conf": args.conf, "encoder": encoder, "texts": count, "batch_size": batch_size, "cores": cores,
              "in_process_per_second": round(in_process, 1), "udf_tasks": partitions,
              "udf_first_per_second": round(udf_rates[0], 1), "udf_reused_per_second": round(udf_rates[1], 1),
              "udf_share": round(udf_rates[1] / in_process, 3)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
