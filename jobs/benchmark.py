"""xdrec benchmark: every method and baseline on each dataset config, over several seeds, in one report.

    spark-submit jobs/benchmark.py --conf demo [--conf OTHER ...] [--seeds 1,2,3] [--out reports/benchmark]
        [--docs docs/benchmark.md] [--set section.key=value ...]
"""
import sys

from xdrec.cli import run_benchmark_job

if __name__ == "__main__":
    sys.exit(run_benchmark_job())
