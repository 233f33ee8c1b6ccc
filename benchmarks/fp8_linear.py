"""bf16 vs fp8 matrix products for the 1.3B model's linear layers at 832x480 (4680 tokens per chunk).

Rows: F.linear in bf16; torch._scaled_mm with per-tensor scales (ComfyUI's fp8_e4m3fn_fast form) and
with per-row activation / per-output-channel weight scales, each without and with the activation's
quantisation (amax, divide, cast) counted. Relative L2 error against the bf16 product of the same
(fp8-rounded) weights. JSON to --out.

    python benchmarks/fp8_linear.py --out benchmarks/results/fp8_linear.json
"""
from __future__ import annotations

import argparse
import platform
import sys

import torch
import torch.nn.functional as F

from bench_io import save_result  # noqa: E402  (benchmarks/bench_io.py)
SHAPES = {"qkvo/cross_q (1536->1536)": (1536, 1536), "ffn.0 (1536->8960)": (1536, 8960),
          "ffn.2 (8960->1536)": (8960, 1536)}
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def bench(fn, iters: int = 50) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4680)
    ap.add_argument("--out", default="benchmarks/results/fp8_linear.json")
    a = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, (k, n) in SHAPES.items():
        x = torch.randn(a.tokens, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16) * 0.01
        # weights: per-output-channel fp8 (rowwise) and per-tensor fp8 (ComfyUI's scaled fp8)
        ws_row = w.abs().amax(1, keepdim=True).float() / FP8_MAX               # [N, 1]
        w8_row = (w.float() / ws_row).to(FP8)
        ws_t = w.abs().amax().float() / FP8_MAX
        w8_t = (w.float() / ws_t).to(FP8)
        ref = F.linear(x, (w8_row.float() * ws_row).to(torch.bfloat16), bias)

        def quant_row(x=x):
            s = x.abs().amax(1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX   # [M, 1]
            return (x / s).to(FP8), s

        def quant_t(x=x):
            s = x.abs().amax().float().clamp(min=1e-12) / FP8_MAX
            return (x / s).to(FP8), s

        xq_r, xs_r = quant_row()
        xq_t, xs_t = quant_t()
        mm_row = lambda: torch._scaled_mm(xq_r, w8_row.t(), scale_a=xs_r, scale_b=ws_row.t(), bias=bias,
                                          out_dtype=torch.bfloat16)
        mm_t = lambda: torch._scaled_mm(xq_t, w8_t.t(), scale_a=xs_t, scale_b=ws_t, bias=bias,
                                        out_dtype=torch.bfloat16)

        def full_row():
            q, s = quant_row()
            return torch._scaled_mm(q, w8_row.t(), scale_a=s, scale_b=ws_row.t(), bias=bias, out_dtype=torch.bfloat16)

        t_bf16 = bench(lambda: F.linear(x, w, bias))
        flops = 2 * a.tokens * k * n
        row = {"layer": name, "tokens": a.tokens, "bf16_ms": t_bf16, "bf16_tflops": flops / t_bf16 / 1e9}
        for label, fn in (("fp8_tensorwise_mm", mm_t), ("fp8_rowwise_mm", mm_row), ("fp8_rowwise_with_quant", full_row),
                          ("quant_rowwise_only", quant_row)):
            row[label + "_ms"] = bench(fn)
        row["rel_l2_rowwise"] = rel(mm_row(), ref)
        row["rel_l2_tensorwise"] = rel(mm_t(), ref)
        rows.append(row)
    hdr = f"{'layer':28s} {'bf16':>7s} {'fp8 t':>7s} {'fp8 r':>7s} {'r+quant':>8s} {'quant':>7s} {'relL2 r':>8s} {'relL2 t':>8s}"
    print(hdr)
    for r in rows:
        print(f"{r['layer']:28s} {r['bf16_ms']:7.3f} {r['fp8_tensorwise_mm_ms']:7.3f} {r['fp8_rowwise_mm_ms']:7.3f} "
              f"{r['fp8_rowwise_with_quant_ms']:8.3f} {r['quant_rowwise_only_ms']:7.3f} {r['rel_l2_rowwise']:8.4f} "
              f"{r['rel_l2_tensorwise']:8.4f}")
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
           "command": " ".join(sys.argv), "rows": rows}
    save_result(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
