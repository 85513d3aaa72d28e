"""xdrec fetch: materialise the configured raw input files (MovieLens-1M or synthetic) when missing.

    spark-submit jobs/fetch.py [--conf demo] [--set section.key=value ...]
"""
import sys

from xdrec.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("fetch"))
