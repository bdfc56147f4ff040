#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh, sourced by both:
# Debian packages (installed when root, else listed), then a virtualenv in .venv with vpnedu.
set -euo pipefail

# System tools the tests and the lab drive for real.
VPNEDU_DEB_PACKAGES=(python3-venv wireguard-tools wireguard-go iproute2 nftables iputils-ping tcpdump tshark iperf3
  openvpn chromium ncat iptables zbar-tools dnsmasq-base bind9-dnsutils gcc python3-dev libssl-dev)  # openvpn: vpnedu bench; chromium:
  # the course's browser test (JupyterLab via Playwright); ncat, iptables: WireGuard's conformance script
  # (tests/node/test_conformance_root.py); zbar-tools: zbarimg reads back the QR codes of client configs
  # (tests/cli/test_qr.py); dnsmasq-base (the binary only, no system service), bind9-dnsutils (dig): the
  # DNS test's resolver and lookups (tests/node/test_dns_root.py); gcc, python3-dev, libssl-dev: the install
  # compiles vpnedu/protocol/openssl_aead.c (without them it goes on, and encrypts through cryptography)

vpnedu_setup() {
  # $1: the extras to install with vpnedu ("test" for the tests; "" for vpnedu alone, as the demo needs).
  local extras="${1-test}" missing=() p spec
  spec="." && [ -n "$extras" ] && spec=".[${extras}]"
  for p in "${VPNEDU_DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "setup: installing Debian packages: ${missing[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "setup: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    fi
  fi
  # The interpreter: $PYTHON if set, else the distribution's /usr/bin/python3 (when it is 3.11 or
  # newer), else the first python3 on PATH.  Debian's is built with profile-guided and link-time
  # optimisation and runs vpnedu's per-packet Python faster than a plain --enable-shared build
  # (pyenv's default): measured side by side, 1.2-1.4x on the engine's receive loop, coalescing and
  # TSO split, and through a tunnel 1.07-1.12x the throughput, 12 % less CPU per GB and an idle RTT of
  # 0.88 against 1.06 ms (BENCHMARKS.md).  It is also the one a student's account can run.
  _vpnedu_py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
  local py="${PYTHON:-}"
  if [ -z "$py" ]; then
    py=python3
    [ -x /usr/bin/python3 ] && _vpnedu_py_ok /usr/bin/python3 && py=/usr/bin/python3
  fi
  if ! _vpnedu_py_ok "$py"; then
    echo "setup: vpnedu needs Python 3.11 or newer; $("$py" --version 2>&1) found" >&2
    exit 1
  fi
  # pip is silent with -q, and the first install takes a minute or more: say what is going on.
  if [ ! -x .venv/bin/python ]; then
    echo "setup: creating the virtualenv .venv ($("$py" --version 2>&1))"
    "$py" -m venv .venv
    echo "setup: installing vpnedu and the Python packages it needs into .venv (pip install -e '${spec}';"
    echo "       up to a minute the first time, with nothing printed until it is done) ..."
  else
    echo "setup: checking vpnedu's Python packages in .venv (pip install -e '${spec}') ..."
    local made_from
    made_from="$(sed -n 's/^home = //p' .venv/pyvenv.cfg 2>/dev/null)"
    if [ -n "$made_from" ] && [ "$(readlink -f "$made_from/python3")" != \
         "$("$py" -c 'import os, sys; print(os.path.realpath(sys.executable))' 2>/dev/null)" ]; then
      echo "setup: note: .venv was made from $made_from/python3, not $py; remove .venv to make it again from $py"
    fi
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e "${spec}"
  echo "setup: done; the command is .venv/bin/vpnedu"
}
