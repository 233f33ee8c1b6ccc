#!/usr/bin/env bash
# Sets up ./.venv (if needed) and runs the test suite (host-free tier; the real-ComfyUI tier
# in tests/realhost runs only when LIPAR_COMFYUI points at a ComfyUI checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
python -m pytest -q tests "$@"
