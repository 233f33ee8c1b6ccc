#!/usr/bin/env bash
# Sets up ./.venv (if needed) and runs the main job: python -m lipar bench ... (arguments pass through).
# Without --model it uses a randomly initialised model of the real architecture and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
python -m lipar bench "$@"
