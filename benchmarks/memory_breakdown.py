"""What the peak memory of a sampling run is made of (CUDA only).

For the unpruned run and the default pruned run of `python -m lipar bench --compare`
(same clip, same fitted threshold), records the CUDA allocator's history over one warm
run, replays it to the moment of the run's peak of allocated memory and groups the
tensors alive then by the lipar line that allocated them. Also reports the memory the
allocator reserved (CUDA-graph pools live there: their blocks are free between
replays, so `max_memory_allocated` does not count them, but the GPU holds them).

    python benchmarks/memory_breakdown.py [--target-prune 0.338] [--frames 81]

Prints a table; writes benchmarks/results/memory_breakdown.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lipar.graphs import clear_graph_cache  # noqa: E402
from lipar.sampler import sample  # noqa: E402

from case import edit_case  # noqa: E402  (benchmarks/case.py)


def _site(frames: list[dict]) -> str:
    """The innermost lipar frame of an allocation's Python stack, else its innermost frame."""
    for f in frames:
        name = f.get("filename", "")
        if "/lipar/" in name and "torch" not in name:
            return f"{name.rsplit('/', 1)[-1]}:{f.get('line')} {f.get('name')}"
    return f"{frames[0].get('filename', '?').rsplit('/', 1)[-1]}:{frames[0].get('name')}" if frames else "?"


def live_at_peak(trace: list[dict], start: int) -> tuple[int, dict[str, int]]:
    """Replay allocator events; return the peak of live bytes after event ``start`` and the
    live bytes per allocation site at that moment (blocks alive before the trace began are
    not in it: the caller adds them as one line)."""
    live: dict[int, tuple[int, str]] = {}
    total, peak, at_peak = 0, -1, {}
    for i, ev in enumerate(trace):
        act = ev["action"]
        if act == "alloc":
            live[ev["addr"]] = (ev["size"], _site(ev.get("frames", [])))
            total += ev["size"]
        elif act == "free_completed" and ev["addr"] in live:
            total -= live.pop(ev["addr"])[0]
        if i >= start and total > peak:
            peak = total
            at_peak = dict(live)
    sites: dict[str, int] = defaultdict(int)
    for size, site in at_peak.values():
        sites[site] += size
    return peak, dict(sites)


def measure(model, ctx, latent, plan, cfg, dev) -> dict:
    clear_graph_cache()
    gc.collect()
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(dev)
    left: dict[str, int] = defaultdict(int)   # blocks alive now that an earlier measured run allocated
    for seg in torch.cuda.memory._snapshot()["segments"]:
        for blk in seg["blocks"]:
            if blk["state"] == "active_allocated" and blk.get("frames"):
                left[_site(blk["frames"])] += blk["size"]
    torch.cuda.memory._record_memory_history(max_entries=4_000_000, stacks="python")
    try:
        sample(model, ctx, latent, plan=plan, config=cfg)         # cold: captures graphs
        start = len(torch.cuda.memory._snapshot()["device_traces"][dev.index or 0])
        torch.cuda.reset_peak_memory_stats(dev)
        sample(model, ctx, latent, plan=plan, config=cfg)         # warm: the measured run
        peak_alloc = torch.cuda.max_memory_allocated(dev)
        peak_reserved = torch.cuda.max_memory_reserved(dev)
        snap = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    trace = snap["device_traces"][dev.index or 0]
    traced_peak, sites = live_at_peak(trace, start)
    pools = sum(s["total_size"] for s in snap["segments"] if tuple(s.get("segment_pool_id", (0, 0))) != (0, 0))
    return {"peak_allocated": peak_alloc, "peak_reserved": peak_reserved, "before_run": before,
            "traced_peak_plus_before": traced_peak + before, "graph_pool_segments": pools,
            "sites": dict(sorted(sites.items(), key=lambda kv: -kv[1])),
            "left_by_earlier_runs": dict(left)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target-prune", type=float, default=0.338)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--clip", default="objects")
    args = ap.parse_args()
    dev, model, ctx, latent, plan, scfg = edit_case(args.clip, args.target_prune, args.frames)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__,
           "command": "python benchmarks/memory_breakdown.py " + " ".join(sys.argv[1:]),
           "weights": weights, "prune_ratio": plan.prune_ratio(), "runs": {}}
    for name, p in (("unpruned", None), ("pruned", plan)):
        out["runs"][name] = measure(model, ctx, latent, p, scfg, dev)
    gb = 1e9
    u, p = out["runs"]["unpruned"], out["runs"]["pruned"]
    print(f"weights {weights / gb:.3f} GB, prune ratio {out['prune_ratio']:.3f}")
    print(f"{'':34} {'unpruned':>9} {'pruned':>9} {'ratio':>6}")
    for key in ("peak_allocated", "peak_reserved", "traced_peak_plus_before", "before_run", "graph_pool_segments"):
        print(f"{key:34} {u[key] / gb:9.3f} {p[key] / gb:9.3f} {p[key] / max(u[key], 1):6.3f}")
    print("live at the peak, by site (GB):")
    sites = set(u["sites"]) | set(p["sites"])
    for site in sorted(sites, key=lambda s: -max(u["sites"].get(s, 0), p["sites"].get(s, 0))):
        a, b = u["sites"].get(site, 0), p["sites"].get(site, 0)
        if max(a, b) >= 1e6:
            print(f"  {site[:60]:60} {a / gb:7.3f} {b / gb:7.3f}")
    print("alive before the pruned run, allocated by the unpruned one (GB):", {k: round(v / gb, 3) for k, v in
                                                                            p["left_by_earlier_runs"].items()})
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "memory_breakdown.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
