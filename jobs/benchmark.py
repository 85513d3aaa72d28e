"""xdrec benchmark: every method and baseline on each dataset config, over several seeds, in one report.

    spark-submit jobs/benchmark.py --conf demo [--conf OTHER ...] [--seeds 1,2,3] [--out reports/benchmark]
        [--docs docs/benchmark.md] [--set section.key=value ...]
"""
import sys

from xdrec.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
