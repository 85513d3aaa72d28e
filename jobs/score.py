"""xdrec score: write top-K recommendations for every user with the pandas UDF into recommendations.

    spark-submit jobs/score.py [--conf demo] [--set section.key=value ...]
"""
import sys

from xdrec.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("score"))
