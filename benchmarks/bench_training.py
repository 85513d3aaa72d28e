"""Training throughput: the distributed path (Horovod + Petastorm, or TorchDistributor) against a plain
single-process loop in memory.

Both train the same model (xdrec.modeling.model.TwoTower) with the same loop (xdrec.training.loop.train), the same
global batch and the same number of steps over the same examples:

- distributed: ``--num-proc`` processes inside a local Spark session started by ``--launcher`` (the train
  stage's own path, xdrec.training.distributed.run_spec, checkpoints included): Horovod, each process reading
  its shard of the staged Parquet examples through a Petastorm batch reader into memory once (``--reader
  memory``, the default of ``train.reader``) or streamed every epoch (``--reader stream``); or
  TorchDistributor, each reading its shard with pyarrow;
- in-memory: this process alone, the pairs read once from the same Parquet into torch tensors and batched
  as the processes batch them (the same negative rows: none under the default sampled softmax, which draws its own); once with torch's default intra-op threads (all cores) and once with one thread
  (each Horovod process runs one), and the ratio is taken against the faster of the two;
- side by side: ``--num-proc`` plain processes of one thread, each training its share of every global batch
  (the distributed path's steps) with no exchange at all: the most that splitting the batch over processes
  can give on this machine, since a step's fixed costs (the drawn negatives' towers, the optimizer, the
  operations' dispatch) do not shrink with the share.

Each is measured at every global batch of ``--batch-sizes`` with ``--users`` users, and at every user count of
``--user-counts`` with the batch ``--users-batch``: every step pays one gradient exchange (one gather of the
dense gradients and of the embedding rows the step touched), so the ratio grows with the batch and should
not fall as the tables grow. Throughput is examples (the batches' rows) per second over the epochs after the first
(the first pays for process start, imports and reading the shards; its seconds and the wall time
including it are kept too). Training pairs come from a config's
``training_examples`` table (``--conf``, target domain, after the features stage) or are generated: a fifth
of ``--rows`` (the rest of an epoch's examples are their four negatives each) of ``--users`` users and
``--items`` items shaped like implicit feedback (:func:`generated_pairs`: Zipf item popularity, log-normal
user activity, a taste per user), so the loss does not fall to zero.

Each distributed and side-by-side run also prints, per process, the CPU time of its main thread and of its
busiest other threads, with how often the main thread waited and was preempted (:class:`ThreadTimes`):
where the CPU goes on a machine whose every core trains.

    $VENV/bin/python benchmarks/bench_training.py                          # MovieLens-1M-sized, generated
    $VENV/bin/python benchmarks/bench_training.py --user-counts 100000,1000000   # and as the user table grows
    $VENV/bin/python benchmarks/bench_training.py --conf demo              # the demo's comedy examples
    $VENV/bin/python benchmarks/bench_training.py --rows 20000 --epochs 2 --batch-sizes 1024  # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import re
import threading
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
# What names a training process in its command line, by launcher (ThreadTimes, a regular expression):
# Horovod's Spark task, and the script that torchrun runs for TorchDistributor (not torchrun itself).
PROCESS_MARKERS = {"horovod": r"gloo_exec_fn", "torch_distributor": r"python -u \S+/train\.py\s*$",
                   "side_by_side": r"spawn_main"}


def generated_pairs(positives: int, users: int, items: int, seed: int, tastes: int = 20) -> pd.DataFrame:
    """(user_idx, item_idx) training pairs shaped like implicit feedback: each user's share drawn log-normal
    (a few heavy users, many light ones), the item from the user's taste (one of ``tastes`` groups of items)
    in 60% of cases and else from everywhere, by Zipf popularity (exponent 1) within the group."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, users)
    user_of_positive = rng.choice(users, positives, p=activity / activity.sum())
    popularity = 1.0 / np.arange(1, items + 1)
    by_popularity = rng.permutation(items)  # item by_popularity[r] is the r-th most popular
    rank = rng.choice(items, positives, p=popularity / popularity.sum())
    in_taste = rng.random(positives) < 0.6
    # Within the user's taste group: the same popularity rank, moved to an item of that group.
    group_rank = rank - rank % tastes + (user_of_positive % tastes)
    rank = np.where(in_taste, np.minimum(group_rank, items - 1), rank)
    pairs = pd.DataFrame({"user_idx": user_of_positive.astype(np.int32), "item_idx": by_popularity[rank].astype(np.int32)})
    return pairs.drop_duplicates(ignore_index=True)  # a pair trains once, as the train split holds it


def stage_generated(spark, examples: pd.DataFrame, folder: str, files: int) -> distributed.DomainData:
    """Write generated pairs as the train stage stages them: shuffled, one row group a file."""
    from xdrec.training.train import STAGED_BLOCK_BYTES, shuffled_for_training

    frame = shuffled_for_training(spark.createDataFrame(examples), seed=0, parts=files)
    frame.write.mode("overwrite").option("parquet.block.size", STAGED_BLOCK_BYTES).parquet(folder)
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


class ThreadTimes:
    """Within the block, sample from /proc (Linux) the CPU time of every thread of this process's descendants
    whose command line matches ``marker``: where a path's CPU goes, its main threads against the threads
    that Horovod and gloo start. ::

        with ThreadTimes(PROCESS_MARKERS["horovod"]) as times:
            distributed.run_spec(spec)
        times.by_process()   # [{"main": {"user": 17.2, "system": 1.0, ...}, "others": [...]}, ...]
    """

    def __init__(self, marker: str, interval: float = 0.2):
        self.marker, self.interval = marker, interval
        self.latest: dict[tuple[int, int], dict] = {}  # (pid, tid) -> the thread's counters when last seen
        self.stop = threading.Event()
        self.sampler = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self) -> "ThreadTimes":
        self.sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.sampler.join()

    def _sample_until_stopped(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self.stop.wait(self.interval):
            parents = {}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    parents[int(pid)] = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue  # the process ended while listed
            for pid in parents:
                ancestor = parents.get(pid)
                while ancestor not in (None, 0, 1, os.getpid()):
                    ancestor = parents.get(ancestor)
                if ancestor != os.getpid():
                    continue  # not this run's: its command line need not be read
                try:
                    if not re.search(self.marker, open(f"/proc/{pid}/cmdline").read().replace("\0", " ")):
                        continue
                    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                        fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
                        status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/task/{tid}/status") if ":" in line)
                        self.latest[(pid, tid)] = {
                            "user": int(fields[11]) / tick, "system": int(fields[12]) / tick,
                            "page_faults": int(fields[7]),  # minor: a fresh page the kernel zeroes
                            "voluntary": int(status["voluntary_ctxt_switches"]),
                            "involuntary": int(status["nonvoluntary_ctxt_switches"])}
                except (OSError, KeyError, IndexError, ValueError):
                    continue

    def by_process(self) -> list[dict]:
        """Per process: its main thread's counters, and each other thread's that used the CPU, busiest first."""
        processes = sorted({pid for pid, _ in self.latest})
        return [{"main": self.latest[(pid, pid)],
                 "others": sorted((times for (owner, tid), times in self.latest.items()
                                   if owner == pid and tid != pid and times["user"] + times["system"] >= 0.05),
                                  key=lambda times: -(times["user"] + times["system"]))}
                for pid in processes if (pid, pid) in self.latest and self._cpu(pid) >= 0.1]  # not launch wrappers

    def _cpu(self, pid: int) -> float:
        return sum(times["user"] + times["system"] for (owner, _), times in self.latest.items() if owner == pid)


def cpu_line(path: str, processes: list[dict]) -> str:
    """One line of :meth:`ThreadTimes.by_process`: per process, the main thread and the busiest others."""
    def threads(others: list[dict]) -> str:
        return ", ".join(f"{times['user'] + times['system']:.1f} s ({times['voluntary']:,} waits)" for times in others[:3])

    return f"[bench] CPU of each {path} process: " + "; ".join(
        f"main thread {p['main']['user']:.1f} s user + {p['main']['system']:.1f} s system "
        f"({p['main']['voluntary']:,} waits, {p['main']['involuntary']:,} preemptions, "
        f"{p['main']['page_faults']:,} page faults), other threads "
        f"{threads(p['others']) or 'none'}" for p in processes)


def steady_throughput(history: list[dict]) -> float:
    """Examples per second over the epochs after the first (all of them when there is only one)."""
    steady = history[1:] or history
    return sum(epoch["examples"] for epoch in steady) / sum(epoch["seconds"] for epoch in steady)


def in_memory_run(url: str, spec: distributed.TrainSpec, threads: int, share: int = 1,
                  start=None) -> tuple[list[dict], float]:
    """The same training in this process with ``threads`` intra-op threads, from tensors: (history, wall seconds).
    ``share``: take the batch of one of that many processes (the distributed path's steps), not the global one;
    ``start``: a barrier to wait at before training."""
    frame = pd.read_parquet(url.removeprefix("file://"))
    pairs = tuple(torch.from_numpy(frame[name].to_numpy(np.int64)) for name in distributed.SHARD_COLUMNS)
    known = distributed.known_positives([tuple(column.numpy() for column in pairs)], spec.model["num_users"])
    candidates = torch.from_numpy(spec.domain_items[DOMAIN])

    def batches(phase: Phase, epoch: int):
        seed = spec.train.seed + epoch
        return ((batch,) for batch in distributed.labelled_batches(
            distributed.memory_batches(pairs, spec.rank_positives(share), seed), candidates, known, spec.negatives(phase), seed))

    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(spec.train.seed)
    model = TwoTower(**spec.model)
    if start is not None:
        start.wait()
    started = time.perf_counter()
    try:
        history = loop.train(model, spec.phases, batches, lambda phase: spec.steps_per_epoch(phase, share),
                             config=spec.train, domain_items={domain: torch.from_numpy(items)
                                                             for domain, items in spec.domain_items.items()},
                             known_positives=known,
                             log=lambda message: print(f"[bench] in-memory ({threads} threads) {message}", flush=True))
    finally:
        torch.set_num_threads(default_threads)
    return [vars(epoch) for epoch in history], time.perf_counter() - started


def side_by_side_run(url: str, spec: distributed.TrainSpec, processes: int) -> list[dict]:
    """``processes`` plain processes of one thread each, side by side, each training its share of every global
    batch with no exchange between them: the most that splitting the batch over processes can give on this
    machine. Returns the combined history (examples summed, the slowest process's seconds)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=side_by_side_worker, args=(url, spec, processes, start, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    histories = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return [{"examples": sum(epoch["examples"] for epoch in epochs), "seconds": max(epoch["seconds"] for epoch in epochs)}
            for epochs in zip(*histories)]


def side_by_side_worker(url: str, spec: distributed.TrainSpec, processes: int, start, results) -> None:
    # Every process waits for the others before its first step, so their epochs run at the same time.
    distributed.keep_freed_memory()  # as the training processes do
    results.put(in_memory_run(url, spec, 1, processes, start)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", help="read the target domain's training examples of this config instead")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--items", type=int, default=3706)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--launcher", default="horovod", choices=("horovod", "torch_distributor"))
    parser.add_argument("--batch-sizes", default="2048,4096,8192", help="global batches to measure, comma-separated")
    parser.add_argument("--user-counts", default="", help="also measure with these many users (generated), comma-separated")
    parser.add_argument("--users-batch", type=int, default=4096, help="the global batch of the --user-counts runs")
    parser.add_argument("--reader", default="memory", choices=("memory", "stream"), help="train.reader of the distributed path")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--embedding-dim", type=int, default=32)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--workdir", default="/tmp/xdrec-bench-training")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args()
    distributed.keep_freed_memory()  # the in-memory loop runs here: as the training processes do

    spark = get_spark(SparkConfig(master=f"local[{args.num_proc}]", shuffle_partitions=4, driver_memory="4g"))
    files = args.num_proc * 4

    def generated(users: int) -> distributed.DomainData:
        return stage_generated(spark, generated_pairs(args.rows // (1 + TrainConfig().negatives), users, args.items, seed=0),
                               os.path.join(args.workdir, f"examples-{users}"), files)

    if args.conf:
        data, users, items = stage_from_config(spark, args.conf, files)
        source = f"config {args.conf}"
    else:
        data, users, items, source = generated(args.users), args.users, args.items, "generated"
    figures = {"pairs": data.rows, "source": source, "num_proc": args.num_proc, "launcher": args.launcher,
               "epochs": args.epochs, "reader": args.reader, "cpu_count": os.cpu_count(), "by_batch_size": {},
               "by_users": {}}
    for batch_size in [int(size) for size in args.batch_sizes.split(",") if size]:
        figures["by_batch_size"][batch_size] = measure(args, data, users, items, source, batch_size)
    for count in [int(count) for count in args.user_counts.split(",") if count]:
        figures["by_users"][count] = measure(args, generated(count), count, args.items, "generated", args.users_batch)
    for title, entries in ((f"{users:,} users, global batch", figures["by_batch_size"]),
                           (f"global batch {args.users_batch:,}, users", figures["by_users"])):
        for value, entry in entries.items():
            print(f"[bench] {title} {value:,}: {args.launcher}, {args.num_proc} processes "
                  f"{entry['distributed_examples_per_second']:,} examples/s; in memory "
                  + ", ".join(f"{threads} thread(s) {run['examples_per_second']:,}/s"
                              for threads, run in entry["in_memory_by_threads"].items())
                  + f"; ratio {entry['ratio']:.2f} (issue 13 asks for at least 0.8 at the demo's batch); "
                  f"{args.num_proc} processes side by side with no exchange {entry['side_by_side_examples_per_second']:,}/s, "
                  f"ratio {entry['side_by_side_ratio']:.2f} (the most that splitting the batch can give here)")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(figures, handle, indent=2)


def measure(args, data: distributed.DomainData, users: int, items: int, source: str, batch_size: int) -> dict:
    """Both paths at one global batch size: their throughputs and the ratio."""
    train = TrainConfig(batch_size=batch_size, seed=1234, reader=args.reader, launcher=args.launcher,
                        num_proc=args.num_proc, patience=0, table_update="lazy")  # a cost that follows the batch
    spec = distributed.TrainSpec(
        model=TwoTower(users, items, args.embedding_dim, args.hidden_dim).hyperparameters(),
        phases=[Phase("target", [DOMAIN], args.epochs, learning_rate=0.005)],
        data={DOMAIN: data}, source_domain=DOMAIN, train=train, domain_items={DOMAIN: np.arange(items, dtype=np.int64)},
        checkpoint_dir=os.path.join(args.workdir, f"checkpoints-{time.time_ns()}"))
    steps = spec.steps_per_epoch(spec.phases[0], args.num_proc)
    print(f"[bench] {data.rows:,} training pairs ({source}), {users:,} users, {items:,} items; dim {args.embedding_dim}; "
          f"global batch {batch_size}; {args.epochs} epochs of {steps} steps", flush=True)

    started = time.perf_counter()
    with ThreadTimes(PROCESS_MARKERS[args.launcher]) as sampled:
        distributed_history = distributed.run_spec(spec)
    distributed_wall = time.perf_counter() - started
    distributed_cpu = sampled.by_process()
    print(cpu_line(args.launcher, distributed_cpu), flush=True)
    in_memory = {}
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        history, wall = in_memory_run(data.url, spec, threads)
        in_memory[threads] = {"examples_per_second": round(steady_throughput(history)), "wall_seconds": round(wall, 1)}
    throughput = steady_throughput(distributed_history)
    best = max(entry["examples_per_second"] for entry in in_memory.values())
    with ThreadTimes(PROCESS_MARKERS["side_by_side"]) as sampled:
        ceiling = steady_throughput(side_by_side_run(data.url, spec, args.num_proc))
    side_by_side_cpu = sampled.by_process()
    print(cpu_line("side-by-side", side_by_side_cpu), flush=True)
    return {"distributed_examples_per_second": round(throughput), "distributed_first_epoch_seconds":
            round(distributed_history[0]["seconds"], 1), "distributed_wall_seconds": round(distributed_wall, 1),
            "final_loss": round(distributed_history[-1]["loss"], 4),
            "in_memory_by_threads": in_memory, "ratio": round(throughput / best, 3),
            "side_by_side_examples_per_second": round(ceiling), "side_by_side_ratio": round(ceiling / best, 3),
            "load_average": round(os.getloadavg()[0], 2),
            "cpu_by_process": {"distributed": distributed_cpu, "side_by_side": side_by_side_cpu}}


if __name__ == "__main__":
    main()
