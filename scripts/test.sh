#!/usr/bin/env bash
# Run the whole test suite from a fresh clone: installs what it needs, then runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k handshake).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
vpnedu_setup test
# Two workers (pytest-xdist): the tests that share the host's network stack run in order on one,
# everything else on the other meanwhile (tests/conftest.py puts them in the "host" group).
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
