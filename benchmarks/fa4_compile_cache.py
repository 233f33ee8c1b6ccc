"""FlashAttention-4's compile time per process, with and without its on-disk kernel cache.

Each row is a fresh Python process that builds lipar's FlashAttention-4 strategy the way a sampler run does
(``SplitAttention('flash_attn_4').prepare(bf16, 12 heads, 128)``: both kernel variants compiled before any
CUDA-graph capture) and reports ``compile_seconds``. Rows: no cache (as every ComfyUI start is by default),
then ``FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1`` with an empty ``FLASH_ATTENTION_CUTE_DSL_CACHE_DIR`` (the
first start fills it) and the same again (a later ComfyUI session). Needs FlashAttention-4 importable.

    python benchmarks/fa4_compile_cache.py --out benchmarks/results/h200_fa4_compile_cache.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

from bench_io import save_result  # noqa: E402  (benchmarks/bench_io.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from lipar.attention import SplitAttention, flash_attn_version
assert flash_attn_version(torch.device("cuda")) == "flash_attn_4", "FlashAttention-4 is not importable here"
t0 = time.perf_counter()
strategy = SplitAttention("flash_attn_4").prepare(torch.bfloat16, 12, 128)
print(json.dumps({{"strategy": strategy.name, "compile_seconds": round(strategy.compile_seconds, 3),
                  "prepare_seconds": round(time.perf_counter() - t0, 3)}}))
"""


def run_child(env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD.format(root=ROOT)], env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"the child process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/fa4_compile_cache.json")
    args = ap.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_ATTENTION_CUTE_DSL_CACHE")}
    rows = [{"case": "no cache", **run_child(base)}]
    with tempfile.TemporaryDirectory() as cache:
        cached = {**base, "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED": "1", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR": cache}
        rows.append({"case": "cache enabled, empty (first session)", **run_child(cached)})
        rows.append({"case": "cache enabled, filled (next session)", **run_child(cached),
                     "cache_bytes": folder_bytes(cache)})
    res = {"benchmark": "fa4_compile_cache", "command": " ".join([sys.executable] + sys.argv),
           "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": rows}
    save_result(res, args.out)
    for r in rows:
        print(f"{r['case']:<40} compile {r['compile_seconds']:>7.3f} s  ({r['strategy']})")


if __name__ == "__main__":
    main()
