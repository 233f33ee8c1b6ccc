#!/usr/bin/env bash
# Creates ./.venv with what lipar and its tests need (torch, test-only packages).
# Idempotent: re-running it only installs what is missing; torch is left alone once it imports.
#
# torch: with a working NVIDIA GPU (nvidia-smi lists one), the plain PyPI build (CUDA).
# Without one, PyTorch's CPU-only build (about 200 MB instead of several GB of CUDA wheels):
#   1. from a local wheel cache if pip has one (PIP_FIND_LINKS / pip.conf find-links; CI has
#      no internet), then its small pure-Python dependencies from the usual index;
#   2. otherwise from https://download.pytorch.org/whl/cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC="torch==2.13.*"
PIP=(python -m pip install -q --disable-pip-version-check)

has_nvidia_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU "
}

install_cpu_torch() {
  if "${PIP[@]}" --no-index --no-deps "$TORCH_SPEC" >/dev/null 2>&1; then
    echo "setup_env: installed torch from the local wheel cache (CPU machine)" >&2
    "${PIP[@]}" "$TORCH_SPEC" >/dev/null     # its dependencies; torch itself is already satisfied
  else
    echo "setup_env: installing PyTorch's CPU-only build from download.pytorch.org (no NVIDIA GPU found)" >&2
    "${PIP[@]}" "$TORCH_SPEC" --index-url https://download.pytorch.org/whl/cpu >/dev/null
  fi
}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if python -c "import torch" >/dev/null 2>&1; then
  :   # already there (whichever build): leave it
elif has_nvidia_gpu; then
  echo "setup_env: installing torch (CUDA build; an NVIDIA GPU was found)" >&2
  "${PIP[@]}" "$TORCH_SPEC" >/dev/null
else
  install_cpu_torch
fi
"${PIP[@]}" -r requirements.txt -r requirements-test.txt >/dev/null
