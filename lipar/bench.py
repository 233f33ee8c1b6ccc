"""``python -m lipar bench``: time the sampler, unpruned vs pruned, on a synthetic clip.

Without ``--model`` the model is randomly initialised with the real architecture
(speed does not depend on weight values); the JSON says so under ``weights``.
"""

from __future__ import annotations

import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from lipar.clips import ClipSpec, make_clip
from lipar.config import WanConfig, preset
from lipar.errors import LiparError
from lipar.model import build_model
from lipar.plan import PlanConfig, PruningPlan, build_plan
from lipar.restore import restore_latent
from lipar.sampler import SamplerConfig, sample
from lipar.schedule import parse_steps

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class BenchOptions:
    config: str = "tiny"
    device: str = "cpu"
    frames: int = 81
    height: int = 480
    width: int = 832
    steps: str | None = None
    mode: str = "edit"
    clip: str = "objects"
    model: str | None = None
    dtype: str | None = None
    compare: bool = False
    recovery: str = "noise_aware"
    forms: str = "exact,compressed"
    threshold: float = 0.15
    anchor_threshold: float = 0.3
    target_prune: float | None = None
    repeat: int = 3
    seed: int = 0
    backend: str = "auto"
    graphs: str = "auto"       # auto | on | off
    bias_mode: str = "auto"    # auto | split | mask | fold
    modes: str = "none,m_degree,noise_aware"


def video_to_latent_dims(frames: int, height: int, width: int) -> tuple[int, int, int]:
    if frames < 1 or (frames - 1) % 4:
        raise LiparError(f"--frames must be 4k+1 (e.g. 81); got {frames}.")
    if height % 16 or width % 16:
        raise LiparError(f"--height and --width must be multiples of 16; got {width}x{height}.")
    return (frames - 1) // 4 + 1, height // 8, width // 8


def pass_flops(cfg: WanConfig, n_q: int, n_k: int) -> float:
    """Multiply-add FLOPs (x2) of one chunk pass through all blocks (head/embeddings ignored)."""
    d = cfg.dim
    linear = 2 * n_q * (4 * d * d + 2 * d * d + 2 * d * cfg.ffn_dim)
    attn = 4 * n_q * n_k * d + 4 * n_q * cfg.text_len * d
    return cfg.num_layers * (linear + attn)


def run_flops(cfg: WanConfig, plan: PruningPlan | None, t: int, hw: int, chunk: int, n_steps: int,
              recovery: str, form: str, cache_last: bool = False) -> float:
    """Total FLOPs of a sampling run as executed (keys include materialised duplicates)."""
    from lipar.recovery import build_layouts

    total = 0.0
    n_chunks = t // chunk
    if plan is None:
        for c in range(n_chunks):
            n = chunk * hw
            passes = n_steps + (1 if (c < n_chunks - 1 or cache_last) else 0)
            total += passes * pass_flops(cfg, n, (c + 1) * n)
        return total
    lays = build_layouts(plan.latent_shape, cfg, chunk, plan=plan.select(0), mode=recovery, form=form)
    for lay in lays:
        passes = n_steps + (1 if (lay.index < n_chunks - 1 or cache_last) else 0)
        total += passes * pass_flops(cfg, lay.num_kept, lay.key_len)
    return total


def fit_threshold(latent: torch.Tensor, target: float, base: PlanConfig) -> PruningPlan:
    """Bisect the threshold (anchor threshold = 2x, the paper's ratio) to hit a prune ratio."""
    lo, hi = 0.0, 4.0
    best = None
    for _ in range(30):
        mid = (lo + hi) / 2
        plan = build_plan(latent, PlanConfig(**{**base.__dict__, "threshold": mid, "anchor_threshold": min(10.0, 2 * mid)}))
        r = plan.prune_ratio()
        if best is None or abs(r - target) < abs(best.prune_ratio() - target):
            best = plan
        if abs(r - target) < 0.002:
            break
        lo, hi = (mid, hi) if r < target else (lo, mid)
    return best


def _psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    mse = (out.double() - ref.double()).pow(2).mean().item()
    peak = (ref.max() - ref.min()).item()
    return float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse)


def _rel(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        out, ref = out[mask], ref[mask]
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _fresh(device) -> None:
    """Drop cached CUDA graphs and free cached blocks, so each configuration's memory is its own."""
    if device.type == "cuda":
        from lipar.graphs import clear_graph_cache

        clear_graph_cache()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _time_call(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _timed(model, ctx, latent, plan, cfg, repeat, device) -> tuple[Any, list[float], int | None]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, res = [], None
    for _ in range(max(1, repeat)):
        res = sample(model, ctx, latent, plan=plan, config=cfg)
        times.append(res.seconds)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return res, times, peak


def run_bench(o: BenchOptions) -> dict[str, Any]:
    device = torch.device(o.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LiparError("--device cuda was asked for but CUDA is not available.")
    t, h, w = video_to_latent_dims(o.frames, o.height, o.width)
    dtype = DTYPES[o.dtype] if o.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if o.model:
        from lipar.loading import load_model
        model = load_model(o.model, dtype=dtype, device=device)
        weights = o.model
    else:
        model = build_model(preset(o.config), seed=o.seed, dtype=dtype, device=device)
        weights = "random"
    cfg_model = model.config
    steps = parse_steps(o.steps) if o.steps else None
    graphs = {"auto": None, "on": True, "off": False}[o.graphs]
    scfg = SamplerConfig(mode=o.mode, steps=steps, seed=o.seed, backend=o.backend, dtype=dtype, cuda_graphs=graphs,
                         bias_mode=o.bias_mode)
    latent = make_clip(ClipSpec(kind=o.clip, latent_frames=t, height=h, width=w, seed=o.seed)).to(device)
    ctx = (0.1 * torch.randn(1, 64, cfg_model.text_dim, generator=torch.Generator().manual_seed(o.seed))).to(device)
    hw = (h // 2) * (w // 2)
    n_steps = len(scfg.resolved_steps())
    video_frames = 4 * (t - 1) + 1

    # warm-up (kernels, allocator, cuBLAS handles; CUDA-graph capture) on the same shapes
    _fresh(device)
    cold = sample(model, ctx, latent, config=scfg)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    base_res, base_times, base_peak = _timed(model, ctx, latent, None, scfg, o.repeat, device)
    base_s = statistics.median(base_times)
    base_flops = run_flops(cfg_model, None, t, hw, scfg.chunk_frames, n_steps, "none", "exact")
    result: dict[str, Any] = {
        "command": "python -m lipar " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("__main__.py") else None,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "config": o.config if not o.model else "from checkpoint",
        "weights": weights,
        "dtype": str(dtype).replace("torch.", ""),
        "mode": o.mode,
        "steps": list(scfg.resolved_steps()),
        "clip": o.clip,
        "video_frames": video_frames,
        "latent_frames": t,
        "height": o.height, "width": o.width,
        "tokens_total": t * hw,
        "seconds": round(base_s, 5),
        "seconds_all": [round(x, 5) for x in base_times],
        "fps": round(video_frames / base_s, 3),
        "tflops_effective": round(base_flops / base_s / 1e12, 2),
        "peak_memory_bytes": base_peak,
        "model_bytes": model_bytes,
        "working_memory_bytes": base_peak - model_bytes if base_peak else None,
        "attention_backend": base_res.info["backend"],
        "bias_mode": o.bias_mode,
        "cuda_graphs": base_res.info["cuda_graphs"],
        "cold_seconds": round(cold.seconds, 5),
        "capture_seconds": cold.info["capture_seconds"],
    }
    if not o.compare:
        return result

    pcfg = PlanConfig(threshold=o.threshold, anchor_threshold=o.anchor_threshold, chunk_frames=scfg.chunk_frames)
    plan = fit_threshold(latent, o.target_prune, pcfg) if o.target_prune is not None else build_plan(latent, pcfg)
    plan_s = statistics.median(_time_call(lambda: build_plan(latent, plan.config), device) for _ in range(5))
    restore_s = statistics.median(_time_call(lambda: restore_latent(base_res.latent, plan), device) for _ in range(5))
    result.update({"prune_ratio": round(plan.prune_ratio(), 5), "tokens_kept": int(plan.keep.sum().item()),
                   "plan_seconds": round(plan_s, 6), "restore_seconds": round(restore_s, 6),
                   "threshold": plan.config.threshold, "anchor_threshold": plan.config.anchor_threshold,
                   "kept_per_chunk": plan.kept_per_chunk()[0]})
    keep_px = plan.pixel_mask().expand_as(base_res.latent)
    ref = base_res.latent
    modes: dict[str, Any] = {}
    forms = [f for f in o.forms.split(",") if f]
    wanted = [m for m in o.modes.split(",") if m]
    runs = [("none", "exact")] if "none" in wanted else []
    runs += [(m, f) for f in forms for m in ("m_degree", "noise_aware") if m in wanted]
    for mode, form in runs:
        cfg = SamplerConfig(**{**scfg.__dict__, "recovery": mode, "recovery_form": form})
        _fresh(device)
        cold = sample(model, ctx, latent, plan=plan, config=cfg)  # warm-up for these shapes; graph capture
        res, times, peak = _timed(model, ctx, latent, plan, cfg, o.repeat, device)
        s = statistics.median(times)
        out = restore_latent(res.latent, plan)
        flops = run_flops(cfg_model, plan, t, hw, scfg.chunk_frames, n_steps, mode, form)
        modes[f"{mode}/{form}" if mode != "none" else "none"] = {
            "seconds": round(s, 5), "seconds_all": [round(x, 5) for x in times],
            "speedup": round(base_s / s, 3), "fps": round(video_frames / s, 3),
            "tflops_effective": round(flops / s / 1e12, 2),
            "peak_memory_bytes": peak,
            "memory_ratio": round(peak / base_peak, 4) if peak and base_peak else None,
            "working_memory_ratio": round((peak - model_bytes) / (base_peak - model_bytes), 4) if peak and base_peak else None,
            "cold_seconds": round(cold.seconds, 5), "capture_seconds": cold.info["capture_seconds"],
            "plan_restore_overhead_pct": round(100 * (plan_s + restore_s) / s, 3),
            "psnr_db": round(_psnr(out, ref), 3), "rel_l2": round(_rel(out, ref), 6),
            "rel_l2_kept": round(_rel(out, ref, keep_px), 6),
        }
    result["modes"] = modes
    return result
