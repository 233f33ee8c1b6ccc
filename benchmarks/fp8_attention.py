"""Would fp8 attention pay on our shapes? cuDNN's fp8 SDPA (through cudnn-frontend's Python graph API, where
that package is installed; PyTorch does not expose it) against bf16 cuDNN (SDPA) and FlashAttention-4 (where
installed), on the unpruned run's plain-attention shapes (12 heads x 128).

fp8 here is what a per-tensor fp8 KV cache would give: q, k, v quantised to e4m3 with one scale each
(amax / 448), softmax probabilities scaled by 448 before their fp8 product with v, and the output written in
fp8 (Hopper's fp8 kernels output fp8) with the scale v's amax allows, then read back as bf16. Relative L2 error
against float64 attention on the first 256 queries, for two input scales: unit normals (scores of std 1, an
almost flat softmax over 32k keys) and queries x4 (std 4, peaked). Medians of CUDA-event timings.

    python benchmarks/fp8_attention.py --out benchmarks/results/h200_fp8_attention.json
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import torch

from bench_io import cuda_median_ms, save_result  # noqa: E402  (benchmarks/bench_io.py)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lipar.attention import cudnn_priority, flash_attn_version, flash_plain, sdpa  # noqa: E402

H, D = 12, 128
SHAPES = [(4680, 32760), (3100, 21718), (4680, 4680)]
FP8_MAX = 448.0


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """float64 attention of the first ``rows`` queries: [1, rows, H, D]."""
    qd, kd, vd = (t.double() for t in (q[:, :rows], k, v))
    s = torch.einsum("bqhd,bkhd->bhqk", qd, kd) / math.sqrt(D)
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), vd)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).norm() / ref.norm()).item()


class CudnnFp8:
    """One cuDNN fp8 SDPA forward graph for [1, Lq, H, D] x [1, Lk, H, D] (lipar's layout), per-tensor scales."""

    def __init__(self, cudnn, lq: int, lk: int, device: torch.device):
        self.cudnn = cudnn
        e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        self.handle = cudnn.create_handle()
        cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream(device).cuda_stream)
        g = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=self.handle)

        def blh(n):   # [B, L, H, D] memory seen as (b, h, s, d)
            return dict(dim=[1, H, n, D], stride=[n * H * D, D, H * D, 1], data_type=e4m3)
        self.q, self.k, self.v = g.tensor(name="q", **blh(lq)), g.tensor(name="k", **blh(lk)), g.tensor(name="v", **blh(lk))
        scalar = dict(dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=fp32)
        self.scales = [g.tensor(name=n, **scalar) for n in ("dq", "dk", "dv", "ds", "ss", "so")]
        o, _, amax_s, amax_o = g.sdpa_fp8(q=self.q, k=self.k, v=self.v, descale_q=self.scales[0],
                                          descale_k=self.scales[1], descale_v=self.scales[2],
                                          descale_s=self.scales[3], scale_s=self.scales[4], scale_o=self.scales[5],
                                          is_inference=True, attn_scale=1.0 / math.sqrt(D), use_causal_mask=False,
                                          name="sdpa_fp8")
        o.set_output(True).set_dim([1, H, lq, D]).set_stride([lq * H * D, D, H * D, 1]).set_data_type(e4m3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(fp32)
        self.o, self.amax = o, (amax_s, amax_o)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        self.graph = g
        self.workspace = torch.empty(g.get_workspace_size(), dtype=torch.uint8, device=device)
        self.out = torch.empty((1, lq, H, D), dtype=torch.float8_e4m3fn, device=device)
        self.amax_buf = [torch.empty((1, 1, 1, 1), dtype=torch.float32, device=device) for _ in range(2)]

    def quantised(self, q, k, v):
        """fp8 tensors and the six scale tensors for bf16 inputs (per-tensor amax scaling)."""
        pack, scales = [], []
        for t in (q, k, v):
            s = FP8_MAX / t.abs().amax().float().clamp(min=1e-12)
            pack.append((t.float() * s).to(torch.float8_e4m3fn))
            scales.append(1.0 / s)
        so = 1.0 / scales[2]               # |o| <= amax(v): the output's fp8 range
        scales += [torch.tensor(1.0 / FP8_MAX, device=q.device), torch.tensor(FP8_MAX, device=q.device), so]
        return pack, [s.reshape(1, 1, 1, 1).float().contiguous() for s in scales]

    def __call__(self, qf, kf, vf, scales):
        pack = {self.q: qf, self.k: kf, self.v: vf, self.o: self.out,
                self.amax[0]: self.amax_buf[0], self.amax[1]: self.amax_buf[1]}
        pack.update(dict(zip(self.scales, scales)))
        self.graph.execute(pack, self.workspace, handle=self.handle)
        return self.out

    def dequantised(self, scales) -> torch.Tensor:
        return (self.out.float() / scales[5].reshape(())).to(torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/fp8_attention.json")
    args = ap.parse_args()
    dev = torch.device("cuda")
    try:
        import cudnn
        fe = getattr(cudnn, "__version__", "?")
        backend = cudnn.backend_version()
    except (ImportError, OSError) as e:
        cudnn, fe, backend = None, f"not importable: {e}", None
    fa = flash_attn_version(dev)
    rows = []
    for lq, lk in SHAPES:
        g = torch.Generator(device=dev).manual_seed(lq + lk)
        q, k, v = (torch.randn(1, n, H, D, device=dev, generator=g, dtype=torch.bfloat16) for n in (lq, lk, lk))
        row = {"queries": lq, "keys": lk}
        with cudnn_priority():
            row["cudnn_bf16_ms"] = round(cuda_median_ms(lambda: sdpa(q, k, v), iters=20, warmup=3), 4)
        if fa:
            row[f"{fa}_ms"] = round(cuda_median_ms(lambda: flash_plain(fa, q, k, v), iters=20, warmup=3), 4)
        if cudnn is not None:
            t0 = time.perf_counter()
            try:
                op = CudnnFp8(cudnn, lq, lk, dev)
            except Exception as e:     # the row says why (an unsupported configuration on this GPU/cuDNN)
                row["cudnn_fp8"] = f"graph not built: {type(e).__name__}: {e}"[:400]
                rows.append(row)
                print(row, file=sys.stderr)
                continue
            row["cudnn_fp8_build_s"] = round(time.perf_counter() - t0, 3)
            pack, scales = op.quantised(q, k, v)
            row["cudnn_fp8_ms"] = round(cuda_median_ms(lambda: op(*pack, scales), iters=20, warmup=3), 4)
            row["quantise_qkv_ms"] = round(cuda_median_ms(lambda: op.quantised(q, k, v), iters=20, warmup=3), 4)
            for name, qs in (("unit", q), ("peaked", q * 4)):
                ref = reference(qs, k, v)
                with cudnn_priority():
                    row[f"err_bf16_{name}"] = round(rel(sdpa(qs, k, v)[:, :256], ref), 6)
                pack, scales = op.quantised(qs, k, v)
                op(*pack, scales)
                row[f"err_fp8_{name}"] = round(rel(op.dequantised(scales)[:, :256], ref), 6)
            row["fp8_speedup_vs_cudnn_bf16"] = round(row["cudnn_bf16_ms"] / row["cudnn_fp8_ms"], 3)
        rows.append(row)
        print(row, file=sys.stderr)
    res = {"benchmark": "fp8_attention", "command": " ".join([sys.executable] + sys.argv),
           "gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn_torch": torch.backends.cudnn.version(), "cudnn_frontend": fe, "cudnn_backend": backend,
           "flash_attn": fa, "python": platform.python_version(), "heads": H, "head_dim": D, "rows": rows}
    save_result(res, args.out)
    keys = ["queries", "keys", "cudnn_bf16_ms", f"{fa}_ms" if fa else None, "cudnn_fp8_ms", "quantise_qkv_ms",
            "err_bf16_unit", "err_fp8_unit", "err_bf16_peaked", "err_fp8_peaked"]
    keys = [k for k in keys if k]
    print(" ".join(f"{k:>16}" for k in keys))
    for r in rows:
        print(" ".join(f"{r.get(k, '-')!s:>16}" for k in keys))


if __name__ == "__main__":
    main()
