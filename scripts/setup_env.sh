#!/usr/bin/env bash
# Creates ./.venv with what lipar and its tests need (CPU torch, test-only packages).
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check "torch==2.13.*" >/dev/null
python -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt >/dev/null
