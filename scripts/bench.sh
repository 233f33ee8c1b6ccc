#!/usr/bin/env bash
# Sets up ./.venv (if needed) and runs the main job: python -m lipar bench ... (arguments pass through).
# Without --model it uses a randomly initialised model of the real architecture and says so.
# Works from any directory: relative --out/--model paths are taken from where you run it.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
bash "$REPO/scripts/setup_env.sh"
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$REPO/.venv/bin/python" -m lipar bench "$@"
