"""bf16 vs lipar's fp8 compute (lipar/fp8.py) for the 1.3B model's linear layers, quantisation included.

Rows (4680 tokens = one 832x480 chunk by default):
  layer    one Linear per shape (1536->1536: q/k/v/o and cross q/o; 1536->8960: ffn.0; 8960->1536:
           ffn.2): F.linear in bf16; linear_fp8 (Triton row quantisation + torch._scaled_mm, rowwise
           scales, fast accumulation as Fp8Linears runs it), also with fp32 accumulation; the
           quantisation kernel alone
  ffn      one FFN: lipar's bf16 path (GELU in cuBLASLt's epilogue, then F.linear) vs ffn_fp8
           (quantise, mm, fused GELU + quantise, mm); gelu_quantize_rows alone
  stack    all 30 layers' FFNs, then all 30 layers' linears (q, k, v, o, cross q, o, FFN; no
           attention): bf16; Fp8Linears "ffn"; Fp8Linears "all" (q, k, v share one quantisation)
Times: medians over --iters CUDA-event timings of CUDA-graph replays (the sampler replays graphs;
eager timings would add Python and launch overhead) and of eager calls. rel_l2: against the bf16
result with the same (random, bf16) weights. JSON (gpu, torch, command, rows) to --out and, when
the OUT environment variable is set, a copy into $OUT.

    python benchmarks/fp8_compute.py                      # H200: well under a minute
    python benchmarks/fp8_compute.py --device cpu --tokens 64 --small --layers 2 --iters 2   # CPU smoke run
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench_io import cuda_median_ms, save_result  # noqa: E402  (benchmarks/bench_io.py)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lipar import fp8  # noqa: E402

DIM, FFN_DIM = 1536, 8960
SMALL_DIM, SMALL_FFN = 128, 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4680, help="rows of every activation (4680: one 832x480 chunk)")
    ap.add_argument("--layers", type=int, default=30, help="blocks in the stack rows (the 1.3B model has 30)")
    ap.add_argument("--iters", type=int, default=30, help="timed repetitions; the median is reported")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help=f"dim {SMALL_DIM}, ffn_dim {SMALL_FFN} (smoke runs)")
    ap.add_argument("--no-graphs", action="store_true", help="time eager calls only")
    ap.add_argument("--sweep", action="store_true", help="also time the quantisation kernel's launch shapes (CUDA)")
    ap.add_argument("--out", default="benchmarks/results/fp8_compute.json")
    return ap.parse_args(argv)


# ---- timing -------------------------------------------------------------------------------------
def _median_ms(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)
    return cuda_median_ms(fn, iters)


def timed(fn: Callable[[], object], iters: int, device: torch.device, graphs: bool) -> dict:
    """{"eager_ms", "graph_ms"}: medians of eager calls and (CUDA) of replays of one captured call."""
    for _ in range(3):
        fn()
    out = {"eager_ms": _median_ms(fn, iters, device)}
    if graphs and device.type == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        out["graph_ms"] = _median_ms(g.replay, iters, device)
        del g
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# ---- the model's shapes -------------------------------------------------------------------------
def linear(k: int, n: int, device: torch.device, gen: torch.Generator) -> nn.Linear:
    lin = nn.Linear(k, n, device=device, dtype=torch.bfloat16).requires_grad_(False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen, device=device) / k ** 0.5)
        lin.bias.copy_(0.01 * torch.randn(n, generator=gen, device=device))
    return lin


def ffn_module(dim: int, ffn_dim: int, device: torch.device, gen: torch.Generator) -> nn.Sequential:
    return nn.Sequential(linear(dim, ffn_dim, device, gen), nn.GELU(approximate="tanh"), linear(ffn_dim, dim, device, gen))


def ffn_bf16(ffn: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """lipar's bf16 FFN (lipar.causal.feed_forward on CUDA): GELU in the first product's epilogue."""
    x2 = x.reshape(-1, x.shape[-1])
    if x.is_cuda:
        h = torch._addmm_activation(ffn[0].bias, x2, ffn[0].weight.t(), use_gelu=True)
    else:
        h = F.gelu(F.linear(x2, ffn[0].weight, ffn[0].bias), approximate="tanh")
    return F.linear(h, ffn[2].weight, ffn[2].bias).view(*x.shape[:-1], -1)


class Block(nn.Module):
    """The linears of one Wan block under Wan's names (what Fp8Linears looks for)."""

    def __init__(self, dim: int, ffn_dim: int, device: torch.device, gen: torch.Generator):
        super().__init__()
        self.self_attn = nn.Module()
        self.cross_attn = nn.Module()
        for name in "qkvo":
            setattr(self.self_attn, name, linear(dim, dim, device, gen))
        for name in "qo":
            setattr(self.cross_attn, name, linear(dim, dim, device, gen))
        self.ffn = ffn_module(dim, ffn_dim, device, gen)


def block_linears(blk: Block, x: torch.Tensor, run: Callable, run3: Callable, run_ffn: Callable) -> list[torch.Tensor]:
    """Every linear of a block on x (no attention, no norms): q, k, v, o, cross q, o, FFN."""
    sa, ca = blk.self_attn, blk.cross_attn
    return [*run3([sa.q, sa.k, sa.v], x), run(sa.o, x), run(ca.q, x), run(ca.o, x), run_ffn(blk.ffn, x)]


# ---- rows ---------------------------------------------------------------------------------------
def layer_rows(a: argparse.Namespace, dim: int, ffn_dim: int, device: torch.device, gen: torch.Generator) -> list[dict]:
    graphs = not a.no_graphs
    rows = []
    for name, (k, n) in {f"{dim}->{dim} (q/k/v/o, cross q/o)": (dim, dim), f"{dim}->{ffn_dim} (ffn.0)": (dim, ffn_dim),
                         f"{ffn_dim}->{dim} (ffn.2)": (ffn_dim, dim)}.items():
        lin = linear(k, n, device, gen)
        w = fp8.prepare_linear(lin, torch.bfloat16, device)
        x = torch.randn(a.tokens, k, generator=gen, device=device, dtype=torch.bfloat16)
        ref = F.linear(x, lin.weight, lin.bias)
        row = {"row": "layer", "layer": name, "tokens": a.tokens}
        for label, fn in (("bf16", lambda: F.linear(x, lin.weight, lin.bias)),
                          ("fp8", lambda: fp8.linear_fp8(x, w, torch.bfloat16, fast_accum=True)),
                          ("fp8_fp32_accum", lambda: fp8.linear_fp8(x, w, torch.bfloat16, fast_accum=False)),
                          ("quantize_only", lambda: fp8.quantize_rows(x))):
            row[label] = timed(fn, a.iters, device, graphs)
        row["rel_l2_fp8"] = rel(fp8.linear_fp8(x, w, torch.bfloat16, fast_accum=True), ref)
        row["rel_l2_fp8_fp32_accum"] = rel(fp8.linear_fp8(x, w, torch.bfloat16, fast_accum=False), ref)
        rows.append(row)
    return rows


def ffn_row(a: argparse.Namespace, dim: int, ffn_dim: int, device: torch.device, gen: torch.Generator) -> dict:
    graphs = not a.no_graphs
    ffn = ffn_module(dim, ffn_dim, device, gen)
    w0, w2 = (fp8.prepare_linear(ffn[j], torch.bfloat16, device) for j in (0, 2))
    x = torch.randn(1, a.tokens, dim, generator=gen, device=device, dtype=torch.bfloat16)
    h = torch.randn(a.tokens, ffn_dim, generator=gen, device=device, dtype=torch.bfloat16)
    row = {"row": "ffn", "layer": f"ffn {dim}->{ffn_dim}->{dim}", "tokens": a.tokens}
    for label, fn in (("bf16", lambda: ffn_bf16(ffn, x)),
                      ("fp8", lambda: fp8.ffn_fp8(x, w0, w2, torch.bfloat16, fast_accum=True)),
                      ("fp8_fp32_accum", lambda: fp8.ffn_fp8(x, w0, w2, torch.bfloat16, fast_accum=False)),
                      ("gelu_quantize_only", lambda: fp8.gelu_quantize_rows(h))):
        row[label] = timed(fn, a.iters, device, graphs)
    ref = ffn_bf16(ffn, x)
    row["rel_l2_fp8"] = rel(fp8.ffn_fp8(x, w0, w2, torch.bfloat16, fast_accum=True), ref)
    row["rel_l2_fp8_fp32_accum"] = rel(fp8.ffn_fp8(x, w0, w2, torch.bfloat16, fast_accum=False), ref)
    return row


def stack_rows(a: argparse.Namespace, dim: int, ffn_dim: int, device: torch.device, gen: torch.Generator) -> list[dict]:
    graphs = not a.no_graphs
    model = nn.Module()
    model.blocks = nn.ModuleList(Block(dim, ffn_dim, device, gen) for _ in range(a.layers))
    x = torch.randn(1, a.tokens, dim, generator=gen, device=device, dtype=torch.bfloat16)
    holders = {which: fp8.Fp8Linears(model, dtype=torch.bfloat16, device=device, which=which) for which in fp8.POLICIES}
    plain = (lambda lin, y: lin(y), lambda lins, y: [lin(y) for lin in lins], ffn_bf16)
    runs = {"bf16": plain}
    for which, h in holders.items():
        runs[f"fp8_{which}"] = (h.linear, h.linears, lambda f, y, h=h: h.ffn(f, y, fallback=ffn_bf16))
    rows = []
    for stack in ("ffn", "all_linears"):
        def call(run, stack=stack):
            if stack == "ffn":
                return [run[2](blk.ffn, x) for blk in model.blocks]
            return [o for blk in model.blocks for o in block_linears(blk, x, *run)]

        ref = call(runs["bf16"])
        row = {"row": "stack", "layer": f"{a.layers} layers: {stack}", "tokens": a.tokens}
        for label, run in runs.items():
            row[label] = timed(lambda run=run: call(run), max(3, a.iters // 3), device, graphs)
            if label != "bf16":
                out = call(run)
                row[f"rel_l2_{label}"] = statistics.mean(rel(o, r) for o, r in zip(out, ref))
        rows.append(row)
    for which, h in holders.items():
        rows[0].setdefault("fp8_weight_bytes", {})[which] = h.nbytes()
    return rows


def sweep_rows(a: argparse.Namespace, dim: int, ffn_dim: int, device: torch.device, gen: torch.Generator) -> list[dict]:
    """The row-quantisation kernel at each launch shape: one pass (row in registers) at 4/8/16
    warps, two passes over BLOCK-wide tiles; GB/s counts the bf16 read once and the fp8 write."""
    _, tl = fp8._triton()
    rows = []
    for k in (dim, ffn_dim):
        x = torch.randn(a.tokens, k, generator=gen, device=device, dtype=torch.bfloat16)
        q = torch.empty(x.shape, device=device, dtype=fp8.FP8)
        s = torch.empty((a.tokens, 1), device=device, dtype=torch.float32)
        one = 1 << (k - 1).bit_length()
        shapes = [(one, True, w, False) for w in (4, 8, 16)] + [
            (b, False, w, h) for b in (1024, 2048, 4096) for w in (4, 8) for h in (False, True)]
        for gelu in (False, True):
            for block, one_pass, warps, hint in shapes:
                def fn(block=block, one_pass=one_pass, warps=warps, gelu=gelu, x=x, q=q, s=s, k=k, hint=hint):
                    fp8._quant_kernel()[(a.tokens,)](x.data_ptr(), q.data_ptr(), s.data_ptr(), k, k,
                                                    IN_DTYPE=tl.bfloat16, BLOCK=block, ONE_PASS=one_pass,
                                                    GELU=gelu, HINTS=hint, X_ALIGNED=True,
                                                    num_warps=warps)
                t = timed(fn, a.iters, device, graphs=not a.no_graphs)
                ms = t.get("graph_ms", t["eager_ms"])
                rows.append({"row": "sweep", "layer": f"quantize K={k} gelu={gelu} block={block} "
                             f"one_pass={one_pass} warps={warps} hints={hint}", "tokens": a.tokens,
                             "quantize_only": t, "gb_per_s": a.tokens * k * 3 / ms / 1e6,
                             "chosen": fp8._launch_shape(k) == (block, one_pass, warps) and hint == fp8.L2_HINTS})
    return rows


def _fmt(r: dict, key: str) -> str:
    t = r.get(key)
    if t is None:
        return f"{'-':>9s}"
    return f"{t.get('graph_ms', t['eager_ms']):9.3f}"


def report(rows: list[dict]) -> None:
    keys = ["bf16", "fp8", "fp8_fp32_accum", "quantize_only", "gelu_quantize_only", "fp8_ffn", "fp8_all"]
    print(f"{'row':40s}" + "".join(f"{k[:9]:>10s}" for k in keys) + "   rel L2 (ms: graph replays)")
    for r in rows:
        if r["row"] == "sweep":
            print(f"{r['layer']:70s} {_fmt(r, 'quantize_only')} ms {r['gb_per_s']:6.0f} GB/s"
                  + (" (chosen)" if r["chosen"] else ""))
            continue
        errs = " ".join(f"{k[7:]}={v:.4f}" for k, v in r.items() if k.startswith("rel_l2_"))
        print(f"{r['layer'][:40]:40s}" + "".join(" " + _fmt(r, k) for k in keys) + "   " + errs)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("fp8_compute: no CUDA device here; for a CPU smoke run pass --device cpu --small", file=sys.stderr)
        return 2
    if device.type == "cuda" and not fp8.fp8_supported(device):
        print(f"fp8_compute: {torch.cuda.get_device_name(device)} has no fp8 tensor cores (needs sm >= 8.9)",
              file=sys.stderr)
        return 2
    dim, ffn_dim = (SMALL_DIM, SMALL_FFN) if a.small else (DIM, FFN_DIM)
    gen = torch.Generator(device=device).manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        rows = layer_rows(a, dim, ffn_dim, device, gen) + [ffn_row(a, dim, ffn_dim, device, gen)]
        rows += stack_rows(a, dim, ffn_dim, device, gen)
        if a.sweep and device.type == "cuda":
            rows += sweep_rows(a, dim, ffn_dim, device, gen)
    report(rows)
    res = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "triton": _triton_version(), "python": platform.python_version(),
           "command": " ".join(sys.argv), "seconds": time.perf_counter() - start, "rows": rows}
    save_result(res, a.out)
    print(f"wrote {a.out} ({res['seconds']:.1f} s)")
    return 0


def _triton_version() -> str | None:
    from lipar.kernels import _triton
    t = _triton()
    return t[0].__version__ if t is not None else None


if __name__ == "__main__":
    raise SystemExit(main())
