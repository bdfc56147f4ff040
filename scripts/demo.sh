#!/usr/bin/env bash
# Set up vpnedu from a fresh clone and run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
vpnedu_setup test
exec .venv/bin/vpnedu lab demo "$@"
