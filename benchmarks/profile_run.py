"""Where the GPU time of one sampling run goes (CUDA only).

Profiles one warm run each of the unpruned and the default pruned sampler (the setup of
`python -m lipar bench --compare`) with the PyTorch profiler and sums kernel time by
kind: cuDNN attention, the recovery's Triton attention (`attn_fwd`), matrix products,
everything else. "idle" is the run's wall time the GPU ran no kernel at all (CPU-bound
gaps between graph replays, host syncs).

    python benchmarks/profile_run.py [--target-prune 0.338]

Prints a table; writes benchmarks/results/profile_run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lipar.sampler import sample  # noqa: E402

from case import edit_case  # noqa: E402  (benchmarks/case.py)

KINDS = (("attention_cudnn", ("cudnn", "fmha", "flash_fwd", "sdpa")),
         ("attention_bias", ("attn_fwd",)),
         ("gemm", ("gemm", "nvjet", "sm90_xmma", "cutlass", "matmul")),
         ("rope", ("rope_kernel",)))


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def busy_union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by [start, end) intervals (microseconds)."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def profile_one(model, ctx, latent, plan, cfg) -> dict:
    sample(model, ctx, latent, plan=plan, config=cfg)     # warm-up, graph capture
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        sample(model, ctx, latent, plan=plan, config=cfg)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    kernels = [e for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.elapsed_us() > 0]
    by_kind: dict[str, float] = {}
    by_name: dict[str, float] = {}
    for e in kernels:
        k = kind_of(e.name)
        by_kind[k] = by_kind.get(k, 0.0) + e.time_range.elapsed_us() / 1e6
        by_name[e.name] = by_name.get(e.name, 0.0) + e.time_range.elapsed_us() / 1e6
    spans = [(e.time_range.start, e.time_range.end) for e in kernels]
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    busy = busy_union(spans) / 1e6
    return {"wall_seconds": wall, "kernel_span_seconds": (last - first) / 1e6, "busy_seconds": busy,
            "idle_seconds": (last - first) / 1e6 - busy, "kernels": len(kernels),
            "by_kind_seconds": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "top_kernels_seconds": dict(sorted(by_name.items(), key=lambda kv: -kv[1])[:25])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target-prune", type=float, default=0.338)
    ap.add_argument("--clip", default="objects")
    args = ap.parse_args()
    dev, model, ctx, latent, plan, scfg = edit_case(args.clip, args.target_prune, 81)
    out = {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__,
           "command": "python benchmarks/profile_run.py " + " ".join(sys.argv[1:]),
           "prune_ratio": plan.prune_ratio(), "runs": {}}
    for name, p in (("unpruned", None), ("pruned", plan)):
        out["runs"][name] = profile_one(model, ctx, latent, p, scfg)
    u, p = out["runs"]["unpruned"], out["runs"]["pruned"]
    print(f"prune ratio {out['prune_ratio']:.3f} (profiled runs are slower than unprofiled ones)")
    print(f"{'seconds':22} {'unpruned':>9} {'pruned':>9} {'ratio':>6}")
    rows = ["wall_seconds", "kernel_span_seconds", "busy_seconds", "idle_seconds"]
    for key in rows:
        print(f"{key:22} {u[key]:9.4f} {p[key]:9.4f} {u[key] / max(p[key], 1e-9):6.2f}")
    for kind in sorted(set(u["by_kind_seconds"]) | set(p["by_kind_seconds"])):
        a, b = u["by_kind_seconds"].get(kind, 0.0), p["by_kind_seconds"].get(kind, 0.0)
        print(f"{'  ' + kind:22} {a:9.4f} {b:9.4f} {a / max(b, 1e-9):6.2f}")
    print("top kernels of the pruned run (s, kind, name):")
    for name, sec in list(p["top_kernels_seconds"].items())[:15]:
        print(f"  {sec:8.4f} {kind_of(name):16} {name[:90]}")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "profile_run.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
