"""Attention strategies on the 1.3B model's shapes (12 heads x 128, bf16), on the GPU at hand.

Plain attention (no bias) on the unpruned run's shapes: cuDNN (SDPA) vs FlashAttention-4 / 2.x where
installed. Recovery's split form on the chunks of the 33.8% run (queries, plain keys, biased keys,
passes): ``SplitAttention`` over cuDNN and over FlashAttention, and ``MaskAttention`` (SDPA with a
broadcast mask), summed over 30 layers x the chunk's passes. Relative error of every strategy against
float64 attention on one small shape. Medians of CUDA-event timings. JSON to --out.

    python benchmarks/attention_backends.py --out benchmarks/results/attention_backends.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from types import SimpleNamespace

import torch

from bench_io import cuda_median_ms, save_result  # noqa: E402  (benchmarks/bench_io.py)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lipar.attention import (MaskAttention, SplitAttention, cudnn_priority, flash_attn_version,  # noqa: E402
                             flash_plain, reference_attention, sdpa)

H, D = 12, 128
PLAIN_SHAPES = [(4680, 32760), (3100, 21718), (4680, 4680), (4680, 18720)]
# (queries, plain keys, biased keys, passes) of chunks 1-6 of the 33.8% run (noise_aware, compressed)
SPLIT_SHAPES = [(2807, 6355, 1132, 4), (2797, 7927, 2357, 4), (2841, 9638, 3487, 4), (2678, 11046, 4757, 4),
                (3071, 12997, 5877, 4), (2844, 14546, 7172, 3)]
LAYERS = 30
# lipar.flash_bias configs (BLOCK_M, BLOCK_N, num_warps, num_stages) tried with --sweep on the biased part
SWEEP = [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 4),
         (64, 128, 4, 3), (128, 64, 4, 3)]


def bench(fn) -> float:
    """Median milliseconds of ``fn`` over 20 CUDA-event timed calls, after 3 warm-ups."""
    return cuda_median_ms(fn, iters=20, warmup=3)


def rand(*shape):
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)


def strategies(version: str | None):
    out = {"mask": MaskAttention(cudnn_first=True), "split_cudnn": SplitAttention("cudnn")}
    if version:
        t0 = time.perf_counter()
        out["split_" + version] = SplitAttention(version).prepare(torch.bfloat16, H, D)
        print(f"{version}: prepare (compile) {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return out


def sweep() -> dict:
    """Seconds of the bias kernel over the 33.8% run's biased keys (continuing a cuDNN result), per config."""
    from lipar.attention import cudnn_lse
    from lipar.flash_bias import attention_key_bias, to_log2

    totals = {}
    for cfg in SWEEP:
        total = 0.0
        for lq, lp, lb, passes in SPLIT_SHAPES:
            q, k, v = rand(1, lq, H, D), rand(1, lb, H, D), rand(1, lb, H, D)
            prev = cudnn_lse(q, rand(1, lp, H, D), rand(1, lp, H, D))
            b2 = to_log2(torch.log1p(torch.randint(0, 6, (lb,), device="cuda").float()))
            total += bench(lambda: attention_key_bias(q, k, v, b2, prev=prev, config=cfg)) * passes * LAYERS / 1000
        totals[str(cfg)] = total
        print(f"bias kernel {cfg}: {total:.4f} s over the run", file=sys.stderr)
    return totals


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/attention_backends.json")
    ap.add_argument("--sweep", action="store_true", help="also time lipar.flash_bias configs on the biased keys")
    a = ap.parse_args()
    torch.manual_seed(0)
    version = flash_attn_version(torch.device("cuda"))
    strat = strategies(version)
    plain_rows = []
    for lq, lk in PLAIN_SHAPES:
        q, k, v = rand(1, lq, H, D), rand(1, lk, H, D), rand(1, lk, H, D)
        row = {"queries": lq, "keys": lk}
        with cudnn_priority():
            row["cudnn_ms"] = bench(lambda: sdpa(q, k, v))
        if version:
            row[version + "_ms"] = bench(lambda: flash_plain(version, q, k, v))
        plain_rows.append(row)
    split_rows = []
    totals = {name: 0.0 for name in strat}
    for lq, lp, lb, passes in SPLIT_SHAPES:
        q, k, v = rand(1, lq, H, D), rand(1, lp + lb, H, D), rand(1, lp + lb, H, D)
        bias = torch.zeros(lp + lb, device="cuda")
        bias[:lb] = torch.log1p(torch.randint(0, 6, (lb,), device="cuda").float())
        lay = SimpleNamespace(key_bias=bias, num_biased=lb)
        row = {"queries": lq, "plain_keys": lp, "biased_keys": lb, "passes": passes}
        for name, s in strat.items():
            s.begin_chunk(lay)
            with s.context():
                row[name + "_ms"] = bench(lambda s=s: s(q, k, v, lay))
            totals[name] += row[name + "_ms"] * passes * LAYERS / 1000
        split_rows.append(row)
    # accuracy on one shape, against float64
    q, k, v = rand(1, 700, H, D), rand(1, 2000, H, D), rand(1, 2000, H, D)
    bias = torch.zeros(2000, device="cuda")
    bias[:600] = torch.log1p(torch.randint(0, 6, (600,), device="cuda").float())
    lay = SimpleNamespace(key_bias=bias, num_biased=600)
    ref = reference_attention(q.double(), k.double(), v.double(), bias.double())
    rel = lambda x: ((x.double() - ref).norm() / ref.norm()).item()  # noqa: E731
    errors = {"sdpa_bf16_own": rel(reference_attention(q, k, v, bias))}
    for name, s in strat.items():
        s.begin_chunk(lay)
        with s.context():
            errors[name] = rel(s(q, k, v, lay))

    print(f"{'queries':>7} {'keys':>6} {'cudnn ms':>9}" + (f" {version + ' ms':>16}" if version else ""))
    for r in plain_rows:
        print(f"{r['queries']:7d} {r['keys']:6d} {r['cudnn_ms']:9.3f}" + (f" {r[version + '_ms']:16.3f}" if version else ""))
    print("split form, seconds over the 33.8% run's chunks 1-6 (30 layers x passes): "
          + ", ".join(f"{n} {t:.4f}" for n, t in totals.items()))
    print("relative error vs float64: " + ", ".join(f"{n} {e:.2e}" for n, e in errors.items()))
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
           "flash_attn": version, "command": " ".join(sys.argv), "heads": H, "head_dim": D,
           "plain": plain_rows, "split": split_rows, "split_run_seconds": totals, "relative_error": errors,
           "compile_seconds": {n: s.compile_seconds for n, s in strat.items()},
           "bias_kernel_sweep_seconds": sweep() if a.sweep else None}
    save_result(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
