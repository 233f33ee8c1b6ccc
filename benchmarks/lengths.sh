#!/usr/bin/env bash
# Videos of any length on one GPU (1.3B, bf16, 832x480, steps 400,350,250): short last chunks
# (65, 69 frames) against 81 frames, a 321-frame clip with the rolling window (21 frames, sink 3)
# unpruned and pruned, and a 961-frame (one minute) clip. JSON per run into DIR.
#   bash benchmarks/lengths.sh DIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
mkdir -p "$out"
common=(--config 1.3b --device cuda --steps 400,350,250 --json)
run() { local name=$1; shift; echo "== $name: $*" >&2; python3 -m lipar bench "${common[@]}" "$@" --out "$out/$name.json" >/dev/null; }
run h200_len_081 --frames 81 --repeat 3
run h200_len_065 --frames 65 --repeat 3
run h200_len_069 --frames 69 --repeat 3
run h200_len_321_objects --frames 321 --window-frames 21 --sink-frames 3 --repeat 2 --compare --clip objects \
    --modes none,noise_aware --forms compressed
run h200_len_961 --frames 961 --window-frames 21 --sink-frames 3 --repeat 1
python3 benchmarks/signature_cost.py --out "$out/h200_signature_cost.json"
python3 - "$out" <<'PY'
import json, sys, os
d = sys.argv[1]
rows = []
for name in ("h200_len_081", "h200_len_065", "h200_len_069", "h200_len_321_objects", "h200_len_961"):
    r = json.load(open(os.path.join(d, name + ".json")))
    t = r["latent_frames"]
    cs = r["chunk_seconds"]
    line = (f"{name:22s} frames {r['video_frames']:4d} latent {t:3d}  {r['seconds']:7.3f} s  {r['seconds'] / t * 1000:6.1f} ms/latent frame"
            f"  peak {r['peak_memory_bytes'] / 2**30:6.2f} GiB  kv {r['kv_cache_bytes'] / 2**30:5.2f} GiB"
            f"  chunk6 {cs[6] if len(cs) > 6 else float('nan'):.4f} last {cs[-1]:.4f}")
    for m, v in (r.get("modes") or {}).items():
        line += f"\n    {m:24s} {v['seconds']:7.3f} s  {v['speedup']:.2f}x  peak {v['peak_memory_bytes'] / 2**30:6.2f} GiB  mem {v['memory_ratio']}"
    rows.append(line)
print("\n".join(rows))
PY
