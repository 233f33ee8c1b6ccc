"""FP8 compute in the sampler: speed and fidelity against bf16 on the same weights (GPU with fp8 tensor cores).

The `python -m lipar bench --compare` case (random 1.3B weights, 832x480x81, steps 400,350,250), unpruned
and 33.8% pruned (noise_aware, compressed), with ``fp8`` off and on. Two weight sets: the model's bf16
weights as they are (fp8 "on" quantises them per output channel: quantisation + compute error), and the
same model with every block linear's weight first rounded through that quantisation (bf16 and fp8 then
use the same effective weights: compute error alone). Fidelity: relative L2 of the final latent against
the bf16 run. Medians of --repeat timed runs after a warm-up. JSON to --out.

    python benchmarks/fp8_sampler.py --out benchmarks/results/fp8_sampler.json
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

import torch

from bench_io import save_result  # noqa: E402  (benchmarks/bench_io.py)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lipar.fp8 import Fp8Linears  # noqa: E402
from lipar.sampler import sample  # noqa: E402

from case import edit_case  # noqa: E402  (benchmarks/case.py)


def timed(fn, repeat: int):
    fn()                                        # warm-up (captures graphs, prepares fp8 weights)
    times, out = [], None
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return out, times[len(times) // 2]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def round_weights_through_fp8(model) -> int:
    """Replace each block linear's weight by its per-channel fp8 quantisation, dequantised (in place)."""
    holder = Fp8Linears(model, dtype=torch.bfloat16, device="cuda", which="all")
    n = 0
    with torch.no_grad():
        for blk in model.blocks:
            for lin in (blk.self_attn.q, blk.self_attn.k, blk.self_attn.v, blk.self_attn.o, blk.cross_attn.q,
                        blk.cross_attn.o, blk.ffn[0], blk.ffn[2]):
                w = holder.weight(lin)
                if w is not None:
                    lin.weight.copy_(w.dequantize(lin.weight.dtype))
                    n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/fp8_sampler.json")
    a = ap.parse_args()
    dev, model, ctx, latent, plan, base = edit_case()
    rows = []
    for weights in ("bf16", "fp8-rounded"):
        if weights == "fp8-rounded":
            round_weights_through_fp8(model)
        for p in (None, plan):
            res = {}
            for fp8 in ("off", "on"):
                cfg = dataclasses.replace(base, fp8=fp8)
                out, sec = timed(lambda: sample(model, ctx, latent, plan=p, config=cfg), a.repeat)
                res[fp8] = (out, sec)
            row = {"weights": weights, "pruned": p is not None, "prune_ratio": p.prune_ratio() if p is not None else 0.0,
                   "bf16_seconds": res["off"][1], "fp8_seconds": res["on"][1],
                   "bf16_fps": 81 / res["off"][1], "fp8_fps": 81 / res["on"][1],
                   "speedup": res["off"][1] / res["on"][1], "fp8_linears": res["on"][0].info["fp8_linears"],
                   "attention": res["on"][0].info["attention"],
                   "final_latent_rel_l2": rel(res["on"][0].latent, res["off"][0].latent)}
            rows.append(row)
            print(f"{weights:12s} {'pruned' if p is not None else 'unpruned':8s} bf16 {row['bf16_seconds']:.3f} s "
                  f"({row['bf16_fps']:.1f} FPS)  fp8 {row['fp8_seconds']:.3f} s ({row['fp8_fps']:.1f} FPS)  "
                  f"{row['speedup']:.3f}x  rel L2 {row['final_latent_rel_l2']:.4f}", flush=True)
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
           "command": " ".join(sys.argv), "size": [81, 480, 832], "steps": [400, 350, 250], "rows": rows}
    save_result(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
