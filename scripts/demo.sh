#!/usr/bin/env bash
# Set up (if needed) and run the whole pipeline on the default config: MovieLens-1M in two genre
# domains, local Spark, Delta tables under ./warehouse. Extra arguments go to the job, e.g.
#   scripts/demo.sh --set train.num_proc=2
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv=$(bash "$here/scripts/setup.sh" | tail -1)
cd "$here"
exec "$venv/bin/python" jobs/pipeline.py --conf demo "$@"
