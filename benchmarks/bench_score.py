"""Scoring throughput: the Spark UDF path against a plain single-process torch loop over the same artifact.

    $VENV/bin/python benchmarks/bench_score.py                       # both cases, full size (~5-8 min on 2 cores)
    $VENV/bin/python benchmarks/bench_score.py --cases synthetic --synthetic-users 20000 --synthetic-items 10000

Cases:
- ``movielens``: the trained model at ``<warehouse>/models/<method>/LATEST`` (run ``scripts/demo.sh``
  first) and every user it knows with interactions in ``<warehouse>``, seen items excluded as in the
  score stage;
- ``synthetic``: a TwoTower artifact with random weights over a catalogue of ``--synthetic-items`` items
  and ``--synthetic-users`` users (``--seen-per-user`` hashed seen items each).

For each case both paths compute the top ``score.k`` of every user from the same inputs:
- **spark**: :func:`xdrec.serving.score.recommend_top_k` (``mapInPandas``, one artifact load per task) from a Delta
  table of users to a Delta table of recommendations, after a warm-up on 200 users (Python workers
  import torch, the JVM loads the Delta write path, as on a long-running executor); timed from the read
  to the Delta commit. The fixed costs are timed apart: the warm-up itself (a cold start) and the same 200
  users once more (one job's own: a task, an artifact load, a Delta commit);
- **plain**: one separate Python process (torch's default threads) that loads the artifact and runs
  :class:`xdrec.modeling.topk.TopKScorer` over all users held in memory; timed from the artifact load to the
  last batch, the load also alone.

The two results must agree: same items in the same order for every user, scores within 1e-5. Peak
memory: RSS sampled every 0.1 s of the Spark JVM and of each Python worker (local mode: the driver JVM
is the executor), and the plain process's ru_maxrss. Figures are printed and written as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np
import pandas as pd
import psutil
import torch
from pyspark.sql import functions as F

from xdrec.config import load_config
from xdrec.data import tables
from xdrec.modeling.model import TwoTower
from xdrec.serving.score import arrow_batch_size, recommend_top_k, users_to_score
from xdrec.modeling.topk import TopKScorer, resolve_device
from xdrec.spark import get_spark
from xdrec.training import artifact as artifacts

warnings.filterwarnings("ignore", category=FutureWarning)
INPUTS, OUTPUTS = "bench_score_users", "bench_recommendations"
WARM_UP_USERS = 200
SYNTHETIC_DOMAIN = "synthetic"


class MemorySampler(threading.Thread):
    """Peak memory of this process's Spark JVM and Python workers, sampled in the background.

    Per process the peak RSS; for the executor as a whole the peak sum of PSS (forked Python workers share
    pages with their daemon, which a sum of RSS would count more than once).
    """

    def __init__(self, period: float = 0.1):
        super().__init__(daemon=True)
        self.period, self.running = period, True
        self.peaks: dict[int, tuple[str, int]] = {}
        self.peak_total = 0

    def run(self) -> None:
        while self.running:
            total = 0
            for process in psutil.Process().children(recursive=True):
                try:
                    command = " ".join(process.cmdline())
                    if "java" in command.split(" ")[0]:
                        kind = "jvm"
                    elif "pyspark" in command:
                        kind = "python_worker"
                    else:
                        continue
                    memory = process.memory_full_info()
                except psutil.Error:
                    continue
                total += memory.pss
                self.peaks[process.pid] = (kind, max(memory.rss, self.peaks.get(process.pid, (kind, 0))[1]))
            self.peak_total = max(self.peak_total, total)
            time.sleep(self.period)

    def stop(self) -> dict[str, float]:
        self.running = False
        self.join()
        def mib(value: int) -> float:
            return round(value / 2**20, 1)

        workers = [rss for kind, rss in self.peaks.values() if kind == "python_worker"]
        return {"jvm_peak_rss_mib": mib(max((rss for kind, rss in self.peaks.values() if kind == "jvm"), default=0)),
                "python_worker_peak_rss_mib": mib(max(workers, default=0)), "python_workers": len(workers),
                "executor_peak_pss_mib": mib(self.peak_total)}


def plain_worker(inputs_path: str, artifact_path: str, domain: str, k: int, users_per_batch: int,
                 exclude_seen: bool, device: str, result_path: str) -> None:
    """The plain path, in its own process: artifact load + TopKScorer over every user; writes .npz + .json."""
    inputs = pd.read_parquet(inputs_path)
    users = inputs["user_idx"].to_numpy(dtype=np.int64)
    seen = list(inputs["seen"]) if exclude_seen else None
    started = time.perf_counter()
    loaded = artifacts.load(artifact_path)
    scorer = TopKScorer(loaded.model, loaded.domain_items(domain), k, resolve_device(device))
    load_seconds = time.perf_counter() - started
    items, scores = scorer.top_k(users, seen, users_per_batch)
    seconds = time.perf_counter() - started
    np.savez(result_path + ".npz", users=users, items=items, scores=scores)
    with open(result_path + ".json", "w") as handle:
        json.dump({"seconds": seconds, "load_seconds": load_seconds, "torch_threads": torch.get_num_threads(), "device": str(scorer.device),
                   "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}, handle)


def synthetic_artifact(folder: str, num_users: int, num_items: int, seed: int) -> str:
    """A real TwoTower artifact with random weights (and a random item bias, zero at init)."""
    torch.manual_seed(seed)
    model = TwoTower(num_users, num_items, embedding_dim=32, hidden_dim=64)
    torch.nn.init.normal_(model.item_bias.weight, std=0.1)
    user_index = pd.DataFrame({"user_id": [f"user{u}" for u in range(num_users)],
                               "user_idx": np.arange(num_users, dtype=np.int32)})
    item_index = pd.DataFrame({"domain": SYNTHETIC_DOMAIN, "item_id": [f"item{i}" for i in range(num_items)],
                               "item_idx": np.arange(num_items, dtype=np.int32)})
    meta = {"method": "synthetic", "model_version": f"random-{num_users}x{num_items}-seed{seed}",
            "source_domain": "none", "target_domain": SYNTHETIC_DOMAIN}
    return artifacts.save(os.path.join(folder, "models", "synthetic", "random"), model, meta, user_index, item_index)


def movielens_inputs(spark, warehouse: str, method: str):
    """(artifact path, target domain, users) of the trained model: its known users with interactions."""
    path = artifacts.latest_path(warehouse, method)
    target = artifacts.load(path).meta["target_domain"]
    users = users_to_score(tables.read(spark, warehouse, tables.USER_INDEX),
                           tables.read(spark, warehouse, tables.INDEXED_INTERACTIONS), target)
    model_users = spark.read.parquet(os.path.join(path, "user_index.parquet"))
    return path, target, users.join(model_users.select("user_id", F.col("user_idx").cast("int")),
                                    ["user_id", "user_idx"], "left_semi")


def synthetic_inputs(spark, folder: str, num_users: int, num_items: int, seen_per_user: int, seed: int):
    path = synthetic_artifact(folder, num_users, num_items, seed)
    draws = F.sequence(F.lit(0), F.lit(seen_per_user - 1))
    users = spark.range(num_users).select(
        F.col("id").cast("int").alias("user_idx"), F.concat(F.lit("user"), F.col("id")).alias("user_id"),
        F.array_sort(F.array_distinct(F.transform(draws, lambda j: F.pmod(F.xxhash64("id", j, F.lit(seed)),
                                                                          F.lit(num_items))))).alias("seen"),
        F.lit("warm").alias("route"))
    return path, SYNTHETIC_DOMAIN, users


def compare(spark_rows: pd.DataFrame, plain: dict[str, np.ndarray]) -> dict[str, float]:
    """Same items in the same order for every user, and the largest score difference."""
    spark_rows = spark_rows.sort_values(["user_idx", "rank"])
    filled = np.isfinite(plain["scores"])  # -inf slots: the Spark path writes no row for them
    order = np.argsort(plain["users"], kind="stable")
    users = np.repeat(plain["users"][order], plain["items"].shape[1])[filled[order].ravel()]
    items = plain["items"][order][filled[order]]
    scores = plain["scores"][order][filled[order]]
    same = (len(spark_rows) == len(items) and np.array_equal(spark_rows["user_idx"].to_numpy(), users)
            and np.array_equal(spark_rows["item_idx"].to_numpy(), items))
    difference = float(np.abs(spark_rows["score"].to_numpy() - scores).max()) if same else float("nan")
    return {"identical_items_and_order": bool(same), "max_score_difference": difference}


def run_case(spark, config, name: str, path: str, domain: str, users, folder: str) -> dict:
    settings = config.score
    print(f"[bench] {name}: staging the users to score", flush=True)
    tables.overwrite(users, folder, INPUTS)
    inputs = tables.read(spark, folder, INPUTS)
    count = inputs.count()
    inputs_file = os.path.join(folder, f"{name}_users.parquet")
    inputs.select("user_idx", "seen").toPandas().to_parquet(inputs_file)

    # Warm-up on a few users: Python workers import torch, the JVM loads the Delta write path, as on a
    # long-running executor; the timed run then replaces this output. The warm-up, and the same few users
    # again, time the fixed costs: a cold start, then a job's own (a task, an artifact load, a Delta commit).
    with arrow_batch_size(spark, settings.arrow_batch_size):
        fixed_seconds = []
        for _ in range(2):
            started = time.perf_counter()
            tables.overwrite(recommend_top_k(inputs.limit(WARM_UP_USERS), path, domain, settings), folder, OUTPUTS)
            fixed_seconds.append(time.perf_counter() - started)
        print(f"[bench] {name}: spark path, {count:,} users", flush=True)
        sampler = MemorySampler()
        sampler.start()
        started = time.perf_counter()
        tables.overwrite(recommend_top_k(tables.read(spark, folder, INPUTS), path, domain, settings), folder, OUTPUTS)
        spark_seconds = time.perf_counter() - started
        memory = sampler.stop()

    print(f"[bench] {name}: plain path, {count:,} users", flush=True)
    result_path = os.path.join(folder, f"{name}_plain")
    subprocess.run([sys.executable, __file__, "--plain-worker", inputs_file, path, domain, str(settings.k),
                    str(settings.users_per_batch), str(settings.exclude_seen), settings.device, result_path],
                   check=True)
    with open(result_path + ".json") as handle:
        plain = json.load(handle)
    with np.load(result_path + ".npz") as arrays:
        agreement = compare(tables.read(spark, folder, OUTPUTS).select("user_idx", "rank", "item_idx", "score")
                            .toPandas(), dict(arrays))
    items = artifacts.load(path).domain_items(domain)
    result = {
        "users": count, "items": len(items), "k": settings.k,
        "spark": {"seconds": round(spark_seconds, 2), "users_per_second": round(count / spark_seconds, 1), **memory,
                  "tasks": inputs.rdd.getNumPartitions(), "cold_start_seconds": round(fixed_seconds[0], 2),
                  "fixed_seconds": round(fixed_seconds[1], 2),
                  "users_per_second_past_fixed": round(count / max(spark_seconds - fixed_seconds[1], 1e-9), 1)},
        "plain": {"seconds": round(plain["seconds"], 2), "users_per_second": round(count / plain["seconds"], 1),
                  "artifact_load_seconds": round(plain["load_seconds"], 2),
                  "peak_rss_mib": plain["peak_rss_mib"], "torch_threads": plain["torch_threads"],
                  "device": plain["device"]},
        **agreement,
    }
    result["ratio_spark_to_plain"] = round(result["spark"]["users_per_second"] / result["plain"]["users_per_second"], 3)
    print(f"[bench] {name}: {count:,} users x {len(items):,} items, k={settings.k}: spark "
          f"{result['spark']['users_per_second']:,.0f} users/s, plain {result['plain']['users_per_second']:,.0f} "
          f"users/s, ratio {result['ratio_spark_to_plain']:.2f}; identical={agreement['identical_items_and_order']}, "
          f"max |score diff|={agreement['max_score_difference']:.2e}; executor peak PSS "
          f"{memory['executor_peak_pss_mib']:,.0f} MiB (JVM {memory['jvm_peak_rss_mib']:,.0f}, Python worker "
          f"{memory['python_worker_peak_rss_mib']:,.0f} each at most), plain process {plain['peak_rss_mib']:,.0f} MiB",
          flush=True)
    print(f"[bench] {name}: fixed costs: a cold start on {WARM_UP_USERS} users {fixed_seconds[0]:.2f}s, the same warm "
          f"{fixed_seconds[1]:.2f}s (a job, a task, an artifact load, a Delta commit); the artifact load alone "
          f"{plain['load_seconds']:.2f}s (plain process); the UDF's {result['spark']['tasks']} tasks past the warm fixed "
          f"cost: {result['spark']['users_per_second_past_fixed']:,.0f} users/s", flush=True)
    return result


def task_threads(spark) -> int:
    """Torch's intra-op threads inside a Spark task (PySpark sets OMP_NUM_THREADS to spark.task.cpus)."""
    def threads(batches):
        for _ in batches:
            yield pd.DataFrame({"threads": [torch.get_num_threads()]})
    return spark.range(1).mapInPandas(threads, "threads int").first()["threads"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default="demo", help="config for the score and spark sections (default: demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--warehouse", default=None, help="warehouse of the trained model (default: the config's)")
    parser.add_argument("--method", default="finetune")
    parser.add_argument("--cases", default="movielens,synthetic")
    parser.add_argument("--synthetic-users", type=int, default=200_000)
    parser.add_argument("--synthetic-items", type=int, default=100_000)
    parser.add_argument("--seen-per-user", type=int, default=10)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--out", default=None, help="JSON results (default: <workdir>/bench_score.json)")
    args = parser.parse_args()

    config = load_config(args.conf, args.overrides)
    warehouse = args.warehouse or config.warehouse
    folder = args.workdir or tempfile.mkdtemp(prefix="bench_score_")
    spark = get_spark(config.spark)
    results = {"cores": os.cpu_count(), "spark_master": spark.sparkContext.master,
               "default_parallelism": spark.sparkContext.defaultParallelism,
               "torch_threads_per_task": task_threads(spark), "settings": config.to_dict()["score"], "cases": {}}
    for case in args.cases.split(","):
        case_folder = os.path.join(folder, case)
        if case == "movielens":
            path, domain, users = movielens_inputs(spark, warehouse, args.method)
        elif case == "synthetic":
            path, domain, users = synthetic_inputs(spark, case_folder, args.synthetic_users, args.synthetic_items,
                                                   args.seen_per_user, args.seed)
        else:
            parser.error(f"unknown case {case!r} (known: movielens, synthetic)")
        results["cases"][case] = run_case(spark, config, case, path, domain, users, case_folder)
    out = args.out or os.path.join(folder, "bench_score.json")
    with open(out, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"[bench] results in {out}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--plain-worker"]:
        inputs_path, artifact_path, domain, k, users_per_batch, exclude_seen, device, result_path = sys.argv[2:]
        plain_worker(inputs_path, artifact_path, domain, int(k), int(users_per_batch), exclude_seen == "True",
                     device, result_path)
    else:
        main()
