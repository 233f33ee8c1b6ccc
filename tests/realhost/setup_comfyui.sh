#!/usr/bin/env bash
# Set up a ComfyUI checkout for the real-host test tier (tests/realhost).
#
#   bash tests/realhost/setup_comfyui.sh /path/to/ComfyUI [--browser]
#
# Step 0, manual: get ComfyUI itself (the tests were written against 0.8.0), e.g.
#   git clone --branch v0.8.0 --depth 1 https://github.com/comfyanonymous/ComfyUI /path/to/ComfyUI
# This script does not download ComfyUI.
#
# Then it:
#   1. creates /path/to/ComfyUI/.venv (the default LIPAR_COMFYUI_PYTHON) unless it exists;
#   2. installs torch + torchvision (TORCH_PACKAGES, default "torch==2.13.0 torchvision==0.28.0";
#      on a machine without a GPU the CUDA wheels run on the CPU, which is all the tier needs);
#   3. installs ComfyUI's requirements.txt without its torch lines (torchaudio has no wheel
#      for every torch release; ComfyUI only logs a warning for its audio nodes without it),
#      plus what this pack needs (its requirements.txt);
#   4. with --browser, for the front-end test: Debian's chromium (apt-get, needs root) and the
#      `playwright` Python package into the Python that runs pytest (PYTEST_PYTHON, default
#      python3). No browser is downloaded: the test drives /usr/bin/chromium.
#
# Idempotent: re-running only installs what is missing. Afterwards:
#   LIPAR_COMFYUI=/path/to/ComfyUI python -m pytest -q tests/realhost
set -euo pipefail

if [ $# -lt 1 ]; then
  sed -n '2,25p' "$0"
  exit 2
fi
COMFY=$(cd "$1" && pwd)
BROWSER=0
[ "${2:-}" = "--browser" ] && BROWSER=1
PACK=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-python3}
TORCH_PACKAGES=${TORCH_PACKAGES:-"torch==2.13.0 torchvision==0.28.0"}

if [ ! -f "$COMFY/main.py" ] || [ ! -f "$COMFY/requirements.txt" ]; then
  echo "error: $COMFY is not a ComfyUI checkout (no main.py / requirements.txt)" >&2
  exit 1
fi

if [ ! -x "$COMFY/.venv/bin/python" ]; then
  echo "creating $COMFY/.venv"
  "$PY" -m venv "$COMFY/.venv"
fi
VPY="$COMFY/.venv/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)

if ! "$VPY" -c "import torch, torchvision" 2>/dev/null; then
  echo "installing $TORCH_PACKAGES"
  # shellcheck disable=SC2086
  "${PIP[@]}" $TORCH_PACKAGES
fi

REQ=$(mktemp)
trap 'rm -f "$REQ"' EXIT
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$COMFY/requirements.txt" > "$REQ"
echo "installing ComfyUI's requirements (without torch/torchvision/torchaudio) and the pack's"
"${PIP[@]}" -r "$REQ" -r "$PACK/requirements.txt"

"$VPY" - <<'EOF'
import av, torch, safetensors, numpy
print(f"ComfyUI venv ready: torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), "
      f"av {av.__version__}, safetensors {safetensors.__version__}")
EOF

if [ "$BROWSER" = 1 ]; then
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    else
      echo "warning: chromium is missing; run: sudo apt-get install chromium" >&2
    fi
  fi
  TPY=${PYTEST_PYTHON:-python3}
  if ! "$TPY" -c "import playwright" 2>/dev/null; then
    "$TPY" -m pip install --disable-pip-version-check -q playwright
  fi
  echo "browser test: $(command -v chromium || echo 'no chromium') with playwright in $TPY"
fi

echo "run: LIPAR_COMFYUI=$COMFY python -m pytest -q tests/realhost"
