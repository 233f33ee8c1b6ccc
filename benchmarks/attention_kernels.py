"""Attention kernels for LIPAR's shapes on a GPU (12 heads of 128, bf16).

Times, per (query tokens, key tokens): SDPA's flash, cuDNN and memory-efficient backends
without a bias; with a per-key bias as a broadcast mask (efficient, cuDNN) and folded
into an extra channel (flash, cuDNN); and FlexAttention with a score_mod, when it
compiles. Prints a table and writes JSON to benchmarks/results/attention_kernels.json.

    python benchmarks/attention_kernels.py
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lipar.attention import fold_key_bias  # noqa: E402

H, D = 12, 128
SHAPES = [(4680, 4680), (4680, 32760), (3100, 3100), (3100, 21700), (2340, 2340), (2340, 16380), (1170, 8190)]


def bench(fn, iters=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    dev = torch.device("cuda")
    rows = []
    flex = None
    try:
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
    except Exception as e:  # report and carry on without it
        print("flex_attention unavailable:", e)
    for lq, lk in SHAPES:
        q = torch.randn(1, H, lq, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, H, lk, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, H, lk, D, device=dev, dtype=torch.bfloat16)
        bias = torch.log1p(torch.randint(0, 3, (lk,), device=dev).float())
        mask = bias.to(torch.bfloat16).view(1, 1, 1, lk)
        flops = 4 * lq * lk * D * H
        row = {"q": lq, "k": lk}
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float())
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    row[name] = bench(lambda: F.scaled_dot_product_attention(q, k, v))
            except Exception as e:
                row[name] = None
                print(name, "failed:", str(e)[:120])
        for name, backend in (("mask_efficient", SDPBackend.EFFICIENT_ATTENTION), ("mask_cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                    err = ((out.float() - ref).norm() / ref.norm()).item()
                    row[name] = bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
                    row[name + "_err"] = err
            except Exception as e:
                row[name] = None
                print(name, "failed:", str(e)[:120])
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        qp, kp, vp, scale = fold_key_bias(qt, kt, vt, bias)
        qp, kp, vp = (x.transpose(1, 2) for x in (qp, kp, vp))
        for name, backend in (("fold_flash", SDPBackend.FLASH_ATTENTION), ("fold_cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    out = F.scaled_dot_product_attention(qp, kp, vp, scale=scale)[..., :D]
                    row[name + "_err"] = ((out.float() - ref).norm() / ref.norm()).item()
                    row[name] = bench(lambda: F.scaled_dot_product_attention(qp, kp, vp, scale=scale))
            except Exception as e:
                row[name] = None
                print(name, "failed:", str(e)[:120])
        # multiplicities through an extra value channel: q, k stay at 128 channels, v' = [w v, w]
        w = bias.exp().to(torch.bfloat16).view(1, 1, lk, 1)
        vw = torch.zeros(1, H, lk, 136, device=dev, dtype=torch.bfloat16)
        vw[..., :D] = v * w
        vw[..., D:D + 1] = w
        for name, backend in (("value_cudnn", SDPBackend.CUDNN_ATTENTION), ("value_efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    o = F.scaled_dot_product_attention(q, k, vw)
                    out = o[..., :D] / o[..., D:D + 1]
                    row[name + "_err"] = ((out.float() - ref).norm() / ref.norm()).item()
                    row[name] = bench(lambda: F.scaled_dot_product_attention(q, k, vw))
            except Exception as e:
                row[name] = None
                print(name, "failed:", str(e)[:160])
        if flex is not None and os.environ.get("LIPAR_BENCH_FLEX", "1") == "1":
            try:
                def score_mod(score, b, h, qi, ki):
                    return score + bias[ki]
                out = flex(q, k, v, score_mod=score_mod)
                row["flex_bias_err"] = ((out.float() - ref).norm() / ref.norm()).item()
                row["flex_bias"] = bench(lambda: flex(q, k, v, score_mod=score_mod))
                row["flex"] = bench(lambda: flex(q, k, v))
            except Exception as e:
                print("flex failed:", str(e)[:200])
        for key in list(row):
            if key not in ("q", "k") and not key.endswith("_err") and row[key]:
                row[key + "_tflops"] = round(flops / row[key] / 1e9, 1)
        rows.append(row)
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/attention_kernels.json", "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=2)
    cols = ["flash", "cudnn", "efficient", "mask_cudnn", "fold_flash", "fold_cudnn", "value_cudnn", "value_efficient",
            "flex", "flex_bias"]
    print("ms (TFLOP/s)     " + " ".join(f"{c:>16}" for c in cols))
    print("rel. errors vs fp32:", [{k: round(v, 4) for k, v in r.items() if k.endswith("_err")} for r in rows[:1]])
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:7.3f} ({r.get(c + '_tflops', 0):5.0f})" if v else f"{'-':>16}")
        print(f"q{r['q']:>5} k{r['k']:>6} " + " ".join(cells))


if __name__ == "__main__":
    main()
