#!/usr/bin/env bash
# Set up vpnedu from a fresh clone and run the demo: the seed's two-VM demo on one machine,
# in network namespaces (needs root). Extra arguments go to 'vpnedu lab demo'.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
vpnedu_setup ""     # vpnedu alone: the demo needs none of the tests' packages (scripts/test.sh adds them)
if [ "$(id -u)" != 0 ]; then
  echo "The lab demo creates network namespaces and TUN devices, so it needs root:"
  echo "    sudo bash scripts/demo.sh"
  echo "Meanwhile, the no-root demo of the same protocol on an in-memory network:"
  echo
  exec .venv/bin/vpnedu handshake-demo
fi
exec .venv/bin/vpnedu lab demo "$@"
