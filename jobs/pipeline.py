"""xdrec pipeline: run every stage in order: fetch, ingest, features, train, score, evaluate.

    spark-submit jobs/pipeline.py [--conf demo] [--set section.key=value ...]
"""
import sys

from xdrec.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("pipeline"))
