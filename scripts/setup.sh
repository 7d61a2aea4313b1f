#!/usr/bin/env bash
# Sets the project up for `make run` (mode "run") or `make test` (mode "test"):
# Debian packages first (as root, or through sudo), then .venv with pinned Python packages.
# Idempotent: a second call with nothing changed returns in well under a second.
set -euo pipefail
mode=${1:-run}
cd "$(dirname "$0")/.."

run_pkgs=(libpcap0.8 iproute2)
# gcc + libc6-dev build the probe's C flow table (probe/cmeter.py); the tests need it, `make run`
# builds it when a compiler is there and otherwise meters in Python.
test_pkgs=(tcpdump tshark softflowd nfdump fprobe chromium clickhouse-server systemd openssl tcpreplay gcc
  libc6-dev)
# Binary each package provides, to see what is missing without asking dpkg for everything.
declare -A provides=([tcpdump]=tcpdump [tshark]=tshark [softflowd]=softflowd [nfdump]=nfdump
  [fprobe]=fprobe [chromium]=chromium [clickhouse-server]=clickhouse-server [iproute2]=ip
  [systemd]=systemd-analyze [openssl]=openssl [tcpreplay]=tcpreplay [gcc]=gcc)

missing=()
want=("${run_pkgs[@]}")
[ "$mode" = test ] && want+=("${test_pkgs[@]}")
for pkg in "${want[@]}"; do
  bin=${provides[$pkg]:-}
  if [ -n "$bin" ]; then
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$pkg")
  else
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  fi
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then missing+=(python3-venv); fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

req=requirements.txt
[ "$mode" = test ] && req=requirements-dev.txt
stamp=".venv/.stamp-$mode"
digest=$(cat requirements.txt requirements-dev.txt probe/requirements.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  echo "setup: installing Python packages from $req" >&2
  .venv/bin/python -m pip install -q -r "$req"
  echo "$digest" > "$stamp"
fi

# The probe's C flow table, named after its source's hash (probe.cmeter.library_path): built once
# per change of probe/_cmeter.c.
cmeter="probe/_cmeter-$(sha256sum probe/_cmeter.c | cut -c1-12)-$(uname -m).so"
if [ ! -e "$cmeter" ]; then
  if [ "$mode" = test ] || command -v "${CC:-cc}" >/dev/null 2>&1; then
    echo "setup: building the probe's C flow table" >&2
    .venv/bin/python -m probe.cmeter build >/dev/null
  else
    echo "setup: no C compiler: the probe meters in Python (apt install gcc libc6-dev for the C flow table)" >&2
  fi
fi
