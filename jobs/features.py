"""xdrec features: build id indexes, the target-domain split with cold-start users, and training examples.

    spark-submit jobs/features.py [--conf demo] [--set section.key=value ...]
"""
import sys

from xdrec.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("features"))
