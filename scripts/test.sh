#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Extra arguments go to pytest, e.g.
#   scripts/test.sh -m "not e2e"      # skip the end-to-end runs
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv=$(bash "$here/scripts/setup.sh" | tail -1)
# The second stack (Python 3.12, numpy 2, no Horovod), which tests/test_torch_distributor_stack.py runs.
XDREC_TORCH_DISTRIBUTOR_ENV=$(bash "$here/scripts/setup.sh" torch_distributor | tail -1)
export XDREC_TORCH_DISTRIBUTOR_ENV
# The object-store tests' S3 server and Spark's s3a jars.
XDREC_WEED=$(bash "$here/scripts/setup_store.sh" | tail -1)
export XDREC_WEED
cd "$here"
exec "$venv/bin/python" -m pytest "$@"
