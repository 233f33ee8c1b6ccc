#!/usr/bin/env bash
# The GPU real-host tier on the GPU machine, in one command (re-runnable on a fresh machine):
#
#   bash tests/realhost_gpu/run.sh [run.py options]        carry: .gpu/comfyui .gpu/wheels .gpu/comfy_overlay
#
# Installs the carried wheels (comfy-kitchen, torchsde, trampoline: what ComfyUI 0.8 imports and the
# machine lacks) into .gpu/site once, puts them on PYTHONPATH and runs tests/realhost_gpu/run.py with
# the carried ComfyUI tree. The JSON goes to benchmarks/results/realhost_gpu.json (and, when the
# device tool's $OUT is set, a copy of it and of the log goes to $OUT).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SCRIPT=run.sh
# shellcheck source=tests/realhost_gpu/site.sh
. "$ROOT/tests/realhost_gpu/site.sh"
export LIPAR_REALHOST_GPU_COMMAND="bash tests/realhost_gpu/run.sh $*"

nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/[realhost_gpu] GPU: /'
out=benchmarks/results/realhost_gpu.json
log=.gpu/realhost_gpu.log
mkdir -p .gpu
"$PY" tests/realhost_gpu/run.py --comfyui .gpu/comfyui --overlay .gpu/comfy_overlay --out "$out" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$log" "$OUT/realhost_gpu.log" 2>/dev/null
  out=$(out_path "$out" "$@")
  [ -f "$out" ] && cp "$out" "$OUT/realhost_gpu.json"
  tar -C .gpu/work -czf "$OUT/realhost_gpu_logs.tgz" --exclude=models --exclude=artifacts . 2>/dev/null || true
fi
exit "$rc"
