"""Training throughput: the Horovod + Petastorm path against a plain single-process loop in memory.

Both train the same model (xdrec.modeling.model.TwoTower) with the same loop (xdrec.training.loop.train), the same
global batch and the same number of steps over the same examples:

- horovod: ``--num-proc`` Horovod processes inside a local Spark session, each reading its shard of the
  staged Parquet examples through a Petastorm batch reader (xdrec.training.distributed.launch, the train stage's
  own path, checkpoints included), into memory once (``--reader memory``, the default of
  ``train.reader``) or streamed every epoch (``--reader stream``);
- in-memory: this process alone, the examples read once from the same Parquet into torch tensors and
  batched by index; once with torch's default intra-op threads (all cores) and once with one thread
  (each Horovod process runs one), and the ratio is taken against the faster of the two.

Each is measured at every global batch of ``--batch-sizes``: every step pays one gradient allreduce,
so the ratio grows with the batch. Throughput is examples per second over the epochs after the first
(the first pays for process start, imports and reading the shards; its seconds and the wall time
including it are kept too). Examples come from a config's
``training_examples`` table (``--conf``, target domain, after the features stage) or are generated:
``--rows`` examples of ``--users`` users and ``--items`` items with a planted taste, a quarter positive.

    $VENV/bin/python benchmarks/bench_training.py                          # MovieLens-1M-sized, generated
    $VENV/bin/python benchmarks/bench_training.py --conf demo              # the demo's comedy examples
    $VENV/bin/python benchmarks/bench_training.py --rows 20000 --epochs 2 --batch-sizes 1024  # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd
import torch

from xdrec.config import SparkConfig, TrainConfig, load_config
from xdrec.modeling.methods import Phase
from xdrec.modeling.model import TwoTower
from xdrec.spark import get_spark
from xdrec.training import distributed, loop

DOMAIN = "bench"


def generated_examples(rows: int, users: int, items: int, seed: int) -> pd.DataFrame:
    """(user_idx, item_idx, label): users like items of their own taste group (index modulo 8)."""
    rng = np.random.default_rng(seed)
    user_idx = rng.integers(0, users, rows).astype(np.int32)
    same_group = rng.random(rows) < 0.25
    item_idx = rng.integers(0, items, rows).astype(np.int32)
    item_idx[same_group] = (item_idx[same_group] - item_idx[same_group] % 8 + user_idx[same_group] % 8) % items
    label = (item_idx % 8 == user_idx % 8).astype(np.float32)
    return pd.DataFrame({"user_idx": user_idx, "item_idx": item_idx, "label": label})


def stage_generated(spark, examples: pd.DataFrame, folder: str, files: int) -> distributed.DomainData:
    """Write generated examples as the train stage stages them: shuffled, small row groups."""
    from xdrec.training.train import shuffled_for_training

    frame = shuffled_for_training(spark.createDataFrame(examples), seed=0)
    frame.repartition(files).write.mode("overwrite").option("parquet.block.size", 256 * 1024).parquet(folder)
    return distributed.DomainData(url="file://" + folder, rows=len(examples))


def stage_from_config(spark, conf: str, files: int) -> tuple[distributed.DomainData, int, int]:
    """A config's target-domain training examples, staged by the train stage itself."""
    from xdrec.data import tables
    from xdrec.training.train import stage_examples

    config = load_config(conf)
    version = tables.version(spark, config.warehouse, tables.TRAINING_EXAMPLES)
    data = stage_examples(spark, config, config.data.target_domain, version, files)
    indices = [tables.read(spark, config.warehouse, name).agg({column: "max"}).first()[0] + 1
               for name, column in ((tables.USER_INDEX, "user_idx"), (tables.ITEM_INDEX, "item_idx"))]
    return data, indices[0], indices[1]


def steady_throughput(history: list[dict]) -> float:
    """Examples per second over the epochs after the first (all of them when there is only one)."""
    steady = history[1:] or history
    return sum(epoch["examples"] for epoch in steady) / sum(epoch["seconds"] for epoch in steady)


def in_memory_run(url: str, spec: distributed.TrainSpec, threads: int) -> tuple[list[dict], float]:
    """The same training in this process with ``threads`` intra-op threads, from tensors: (history, wall seconds)."""
    frame = pd.read_parquet(url.removeprefix("file://"))
    users = torch.from_numpy(frame["user_idx"].to_numpy(np.int64))
    items = torch.from_numpy(frame["item_idx"].to_numpy(np.int64))
    labels = torch.from_numpy(frame["label"].to_numpy(np.float32))
    batch = spec.rank_batch_size(1)

    def batches(phase: Phase, epoch: int):
        order = torch.randperm(len(users), generator=torch.Generator().manual_seed(spec.train.seed + epoch))
        for index in order.split(batch):
            yield ((users[index], items[index], labels[index]),)

    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(spec.train.seed)
    model = TwoTower(**spec.model)
    started = time.perf_counter()
    try:
        history = loop.train(model, spec.phases, batches, lambda phase: spec.steps_per_epoch(phase, 1),
                             config=spec.train, log=lambda message: print(f"[bench] in-memory ({threads} threads) {message}", flush=True))
    finally:
        torch.set_num_threads(default_threads)
    return [vars(epoch) for epoch in history], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", help="read the target domain's training examples of this config instead")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--items", type=int, default=3706)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--batch-sizes", default="2048,4096,8192", help="global batches to measure, comma-separated")
    parser.add_argument("--reader", default="memory", choices=("memory", "stream"), help="train.reader of the Horovod path")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--embedding-dim", type=int, default=32)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--workdir", default="/tmp/xdrec-bench-training")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args()

    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    spark = get_spark(SparkConfig(master=f"local[{args.num_proc}]", shuffle_partitions=4, driver_memory="4g"))
    files = args.num_proc * 4
    if args.conf:
        data, users, items = stage_from_config(spark, args.conf, files)
        source = f"config {args.conf}"
    else:
        data = stage_generated(spark, generated_examples(args.rows, args.users, args.items, seed=0),
                               os.path.join(args.workdir, "examples"), files)
        users, items, source = args.users, args.items, "generated"
    figures = {"examples": data.rows, "source": source, "num_proc": args.num_proc, "epochs": args.epochs,
               "reader": args.reader, "cpu_count": os.cpu_count(), "by_batch_size": {}}
    for batch_size in batch_sizes:
        figures["by_batch_size"][batch_size] = measure(args, data, users, items, source, batch_size)
    for batch_size, entry in figures["by_batch_size"].items():
        print(f"[bench] global batch {batch_size:,}: horovod + petastorm ({args.reader} reader), {args.num_proc} "
              f"processes {entry['horovod_examples_per_second']:,} examples/s; in memory "
              + ", ".join(f"{threads} thread(s) {run['examples_per_second']:,}/s"
                          for threads, run in entry["in_memory_by_threads"].items())
              + f"; ratio {entry['ratio']:.2f} (issue 4 asks for at least 0.6)")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(figures, handle, indent=2)


def measure(args, data: distributed.DomainData, users: int, items: int, source: str, batch_size: int) -> dict:
    """Both paths at one global batch size: their throughputs and the ratio."""
    spec = distributed.TrainSpec(
        model=TwoTower(users, items, args.embedding_dim, args.hidden_dim).hyperparameters(),
        phases=[Phase("target", [DOMAIN], args.epochs, learning_rate=0.005)],
        data={DOMAIN: data}, train=TrainConfig(batch_size=batch_size, seed=1234, reader=args.reader),
        checkpoint_dir=os.path.join(args.workdir, f"checkpoints-{time.time_ns()}"))
    steps = spec.steps_per_epoch(spec.phases[0], args.num_proc)
    print(f"[bench] {data.rows:,} examples ({source}), {users:,} users, {items:,} items; dim {args.embedding_dim}; "
          f"global batch {batch_size}; {args.epochs} epochs of {steps} steps", flush=True)

    started = time.perf_counter()
    horovod_history = distributed.launch(spec, args.num_proc, start_timeout=120)
    horovod_wall = time.perf_counter() - started
    in_memory = {}
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        history, wall = in_memory_run(data.url, spec, threads)
        in_memory[threads] = {"examples_per_second": round(steady_throughput(history)), "wall_seconds": round(wall, 1)}
    horovod = steady_throughput(horovod_history)
    best = max(entry["examples_per_second"] for entry in in_memory.values())
    return {"horovod_examples_per_second": round(horovod), "horovod_first_epoch_seconds":
            round(horovod_history[0]["seconds"], 1), "horovod_wall_seconds": round(horovod_wall, 1),
            "in_memory_by_threads": in_memory, "ratio": round(horovod / best, 3),
            "load_average": round(os.getloadavg()[0], 2)}


if __name__ == "__main__":
    main()
