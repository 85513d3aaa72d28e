"""xdrec evaluate: compute HR@K / NDCG@K for warm and cold-start users against baselines.

    spark-submit jobs/evaluate.py [--conf demo] [--set section.key=value ...]
"""
import sys

from xdrec.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("evaluate"))
