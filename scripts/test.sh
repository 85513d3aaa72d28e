#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Extra arguments go to pytest, e.g.
#   scripts/test.sh -m "not e2e"      # skip the end-to-end runs
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv=$(bash "$here/scripts/setup.sh" | tail -1)
cd "$here"
exec "$venv/bin/python" -m pytest "$@"
