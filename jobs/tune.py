"""xdrec tune: choose the ALS and training settings on the validation split (Optuna), for the stages after it.

    spark-submit jobs/tune.py [--conf demo] [--set tune.minutes=10 ...]
"""
import sys

from xdrec.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("tune"))
