#!/usr/bin/env bash
# The whole test suite, from a fresh clone: the README's second command.
# Makes what the tests need exist (virtualenv, the project with its test extras,
# PostgreSQL on 127.0.0.1:5432, promtool), then runs pytest with any arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import consumer, pytest, grpc_tools, hypothesis" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "test.sh: starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

if ! command -v promtool >/dev/null; then
  echo "test.sh: installing Debian's prometheus package for promtool" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package may start a server of its own; the tests start theirs on free ports.
  pkill -x prometheus 2>/dev/null || true
fi

exec .venv/bin/python -m pytest "$@"
