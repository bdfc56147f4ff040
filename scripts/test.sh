#!/usr/bin/env bash
# Run the whole test suite from a fresh clone: installs what it needs, then runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k handshake).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
vpnedu_setup test
exec .venv/bin/python -m pytest "$@"
