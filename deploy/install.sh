#!/usr/bin/env bash
# Installs the hostflow probe or collector as a systemd service (Raspberry Pi OS / Debian 12).
#   deploy/install.sh probe|collector
# Variables: DESTDIR (staging root, e.g. for packaging or tests; no user is created, nothing is
# started), PREFIX (/opt/hostflow), SYSCONFDIR (/etc/hostflow), STATEDIR (/var/lib/hostflow),
# UNITDIR (/etc/systemd/system), SYSUSERSDIR (/usr/lib/sysusers.d), PYTHON (python3),
# PIP_ARGS (extra pip arguments), SKIP_PIP=1 (create the venv but install no packages).
set -euo pipefail
role=${1:-}
case "$role" in probe|collector) ;; *) echo "usage: $0 probe|collector" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/hostflow}
SYSCONFDIR=${SYSCONFDIR:-/etc/hostflow}
STATEDIR=${STATEDIR:-/var/lib/hostflow}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-/usr/lib/sysusers.d}
PYTHON=${PYTHON:-python3}
SKIP_PIP=${SKIP_PIP:-0}
PIP_ARGS=${PIP_ARGS:-}
say() { echo "install-$role: $*" >&2; }

if ! "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "needs Python >= 3.11 with venv (Debian: apt install python3-venv)"; exit 1
fi

home="$PREFIX/$role"
lib="$DESTDIR$home/lib"
venv="$DESTDIR$home/venv"
if [ "$role" = probe ]; then
  packages=(probe)
  hostflow_modules=(__init__.py records.py fileio.py)
  requirements=probe/requirements.txt
else
  packages=(collector hostflow)
  hostflow_modules=()
  requirements=requirements.txt
fi

say "code into $lib"
rm -rf "$lib.new"
mkdir -p "$lib.new"
for package in "${packages[@]}"; do
  find "$package" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '*.so' | while read -r file; do
    install -D -m 0644 "$file" "$lib.new/$file"
  done
done
for module in "${hostflow_modules[@]}"; do
  install -D -m 0644 "hostflow/$module" "$lib.new/hostflow/$module"
done
install -D -m 0644 "$requirements" "$lib.new/requirements.txt"
rm -rf "$lib"
mv "$lib.new" "$lib"

if [ ! -x "$venv/bin/python" ]; then
  say "venv $venv"
  if [ "$SKIP_PIP" = 1 ]; then "$PYTHON" -m venv --without-pip "$venv"; else "$PYTHON" -m venv "$venv"; fi
fi
if [ "$SKIP_PIP" != 1 ]; then
  say "Python packages from $requirements"
  # binary wheels only: a Pi must not need a compiler (see tests/test_deploy.py)
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: $PIP_ARGS -r "$lib/requirements.txt"
fi

if [ "$role" = probe ]; then
  # the C parts (probe/cmeter.py: record walk, decoder, flow table) make metering 2.5-3.5x as
  # fast; without a compiler the probe meters with numpy, same flows
  if command -v "${CC:-cc}" >/dev/null 2>&1 && [ -x "$venv/bin/python" ]; then
    say "building the C flow table"
    (cd "$lib" && "$venv/bin/python" -m probe.cmeter build >/dev/null) ||
      say "the C flow table did not build: the probe meters in Python"
  else
    say "no C compiler: the probe meters in Python (apt install gcc libc6-dev, then reinstall, for the C flow table)"
  fi
fi

substitute() {
  sed -e "s#/opt/hostflow#$PREFIX#g" -e "s#/etc/hostflow#$SYSCONFDIR#g" -e "s#/var/lib/hostflow#$STATEDIR#g" "$1"
}
mkdir -p "$DESTDIR$UNITDIR" "$DESTDIR$SYSUSERSDIR" "$DESTDIR$SYSCONFDIR" "$DESTDIR$STATEDIR" "$DESTDIR$PREFIX/share/doc"
substitute "deploy/hostflow-$role.service" > "$DESTDIR$UNITDIR/hostflow-$role.service"
chmod 0644 "$DESTDIR$UNITDIR/hostflow-$role.service"
substitute deploy/hostflow.sysusers > "$DESTDIR$SYSUSERSDIR/hostflow.conf"
install -m 0644 docs/deploy.md "$DESTDIR$PREFIX/share/doc/deploy.md"

config="$DESTDIR$SYSCONFDIR/$role.toml"
if [ -e "$config" ]; then
  say "keeping the existing $config"
else
  substitute "deploy/$role.toml" > "$config"
  chmod 0640 "$config"  # holds tokens
fi

if [ -z "$DESTDIR" ]; then
  if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers "$SYSUSERSDIR/hostflow.conf"
  elif ! id hostflow >/dev/null 2>&1; then
    useradd --system --home-dir "$STATEDIR" --shell /usr/sbin/nologin hostflow
  fi
  chgrp hostflow "$config"
  chown hostflow:hostflow "$STATEDIR"
  chmod 0750 "$STATEDIR"
  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
  say "done. Edit $config, then: systemctl enable --now hostflow-$role"
else
  chmod 0750 "$DESTDIR$STATEDIR"
  say "done (staged in $DESTDIR; no user created, nothing enabled)"
fi
