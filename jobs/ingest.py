"""xdrec ingest: read raw interactions and catalogues into the Delta tables interactions and items.

    spark-submit jobs/ingest.py [--conf demo] [--set section.key=value ...]
"""
import sys

from xdrec.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("ingest"))
