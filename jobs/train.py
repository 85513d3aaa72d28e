"""xdrec train: train each configured method with Horovod from Petastorm readers; save model artifacts.

    spark-submit jobs/train.py [--conf demo] [--set section.key=value ...]
"""
import sys

from xdrec.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("train"))
