#!/usr/bin/env bash
# The whole-graph benchmark on the GPU machine, in one command (re-runnable on a fresh machine):
#
#   bash benchmarks/whole_graph.sh [whole_graph.py options]     carry: .gpu/comfyui .gpu/wheels .gpu/comfy_overlay
#
# Installs the carried wheels (comfy-kitchen, torchsde, trampoline: what ComfyUI 0.8 imports and the machine
# lacks) into .gpu/site once, exactly as tests/realhost_gpu/run.sh does (same folder and stamp, so either
# script reuses the other's install), then runs benchmarks/whole_graph.py --config 1.3b on the carried ComfyUI
# tree with a time budget (--budget 360 s: graphs that would start later are listed as skipped, so the whole
# command stays under about 7 minutes). The models are written once into .gpu/work/whole_graph/1.3b/models and
# reused on a warm machine. JSON: benchmarks/results/whole_graph.json (and, when the device tool's $OUT is set,
# a copy of it and of the log in $OUT).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT=whole_graph.sh
# shellcheck source=tests/realhost_gpu/site.sh
. "$ROOT/tests/realhost_gpu/site.sh"
export WHOLE_GRAPH_COMMAND="bash benchmarks/whole_graph.sh $*"

nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader 2>/dev/null \
  | sed 's/^/[whole_graph] GPU: /'
out=$(out_path benchmarks/results/whole_graph.json "$@")
log=.gpu/whole_graph.log
mkdir -p .gpu
"$PY" benchmarks/whole_graph.py --config 1.3b --comfyui .gpu/comfyui --overlay .gpu/comfy_overlay --budget 360 \
  --out "$out" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$log" "$OUT/whole_graph.log" 2>/dev/null
  [ -f "$out" ] && cp "$out" "$OUT/whole_graph.json"
fi
exit "$rc"
