"""Self-Forcing Causal Sampler: chunk-wise KV-cached sampling, pruned when the latent carries a plan."""

from __future__ import annotations

import dataclasses

import torch

from . import host
from ..lipar.causal import check_wan_module
from ..lipar.errors import LiparError
from ..lipar.graphs import release_graphs
from ..lipar.latents import denormalize_wan21, normalize_wan21
from ..lipar.restore import restore_latent
from ..lipar.sampler import MODES, SamplerConfig, sample
from ..lipar.schedule import EDITING_STEPS, parse_steps
from ..lipar.timing import StageClock
from ..lipar.validate import check_latent
from .common import (CATEGORY, PLAN_KEY, compute_dtype, conditioning_context, cuda_graphs_allowed,
                     diffusion_model, latent_plan, latent_samples, lipar_options, log, model_device, user_errors)
from .patch import DEFAULT_OPTIONS

_DEFAULTS = SamplerConfig()


def inference_memory(cfg, latent_shape, config) -> int:
    """Bytes a run needs besides the weights, handed to ComfyUI so it frees room before loading:
    the KV cache of one sample (upper bound: every token of the frames the window holds), the
    text keys/values, one chunk's activations, and the CUDA-graph static buffers."""
    _, _, t, h, w = latent_shape
    per_frame = (h // 2) * (w // 2)
    item = torch.empty((), dtype=config.dtype).element_size()
    frames = min(t, config.window_frames) if config.window_frames else t
    cache = 2 * cfg.num_layers * frames * per_frame * cfg.dim * item
    text = 2 * cfg.num_layers * cfg.text_len * cfg.dim * item
    chunk = min(t, config.chunk_frames) * per_frame
    activations = 4 * chunk * (cfg.ffn_dim + 8 * cfg.dim) * item
    graph_buffers = chunk * (6 * cfg.dim + 4 * cfg.out_dim) * item
    return int(cache + text + activations + graph_buffers)


def run_note(plan, options: dict | None, mode: str, info: dict) -> str:
    """One line for the node's panel: what ran and anything the user should know."""
    if plan is None:
        note = "unpruned run (no pruning plan in the latent)"
        if options is not None:
            note += "; the Attention Recovery Patch has no effect without a plan"
    elif plan.prune_ratio() == 0:
        note = ("nothing was pruned (the first chunk is never pruned)" if not plan.pruned_anything_possible()
                else "nothing was pruned at these thresholds")
    else:
        recovery = options.get("recovery") if options else None
        note = ("pruned run, naive pruning (recovery 'none')" if recovery == "none" else
                f"pruned run, recovery {recovery or 'noise_aware (default)'}") + "; pruned positions restored"
    if info.get("window_rolls"):
        note += (f"; KV window {info['window_frames']} frames with a {info['sink_frames']}-frame sink")
        if info.get("window_kept_tokens"):
            note += f" ({info['window_kept_tokens']} tokens kept whose anchor left the window)"
    if plan is not None and mode == "generate":
        note += "; generate mode prunes by the input latent's motion, which is meant for editing"
    return note


class SelfForcingSampler:
    DESCRIPTION = (
        "Self-Forcing causal sampling of a Wan2.1 model: the video is generated chunk by chunk with a KV cache. "
        "edit: SDEdit from the input latent noised to the first step (LIPAR's video editing). generate: from "
        "noise. If the latent carries a LIPAR pruning plan only kept tokens are computed and the pruned positions "
        "are filled from the previous frame, so VAE Decode can follow directly. Without a plan this is the "
        "unpruned baseline.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The denoised video latent, complete (pruned positions restored): connect VAE Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A Self-Forcing (Wan2.1-T2V-1.3B) model, optionally through the "
                                               "Attention Recovery Patch."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt, from CLIP Text Encode with the umt5-xxl text "
                                                         "encoder (Load CLIP, type 'wan')."}),
                "latent": ("LATENT", {"tooltip": "edit: the source video's latent (from VAE Encode, or the Latent "
                                                 "Inter-Frame Pruner to prune). generate: any latent of the output's "
                                                 "shape, e.g. an empty video latent. Any length."}),
                "seed": ("INT", {"default": _DEFAULTS.seed, "min": 0, "max": 0xffffffffffffffff,
                                 "control_after_generate": True,
                                 "tooltip": "Seed of the noise (the same seed gives the same video on any device)."}),
                "steps": ("STRING", {"default": ",".join(map(str, EDITING_STEPS)), "tooltip":
                    "Comma-separated decreasing whole numbers in (0, 1000]. Editing (SDEdit): 400,350,250; "
                    "generation: 1000,750,500,250. Empty: the mode's default."}),
                "shift": ("FLOAT", {"default": _DEFAULTS.shift, "min": 0.1, "max": 20.0, "step": 0.1, "tooltip":
                    "Timestep shift of the flow-matching schedule (Self-Forcing: 5)."}),
                "chunk_frames": ("INT", {"default": _DEFAULTS.chunk_frames, "min": 1, "max": 64, "tooltip":
                    "Latent frames generated per causal chunk (Self-Forcing: 3); must match the pruner's. The last "
                    "chunk may be shorter."}),
                "mode": (list(MODES), {"default": _DEFAULTS.mode, "tooltip":
                    "edit: re-generate the input video from its latent noised to the first step (SDEdit). "
                    "generate: from pure noise (the input latent only gives the shape)."}),
            },
            "optional": {
                "window_frames": ("INT", {"default": _DEFAULTS.window_frames, "min": 0, "max": 4096, "advanced": True,
                    "tooltip": "Latent frames the KV cache holds and each chunk attends to (Self-Forcing's "
                               "local_attn_size). Self-Forcing was trained on 21 (81 video frames): videos up to that "
                               "run exactly as without a window. Longer videos then use bounded memory and time per "
                               "chunk, and forget frames older than the window (except the sink). 0: no limit "
                               "(memory and time grow with the video, attention spans beyond the training length)."}),
                "sink_frames": ("INT", {"default": _DEFAULTS.sink_frames, "min": 0, "max": 64, "advanced": True,
                    "tooltip": "First latent frames kept in the KV cache for the whole video once the window rolls "
                               "(attention sink; Self-Forcing's sink_size). 3 keeps the first chunk: it anchors the "
                               "look of the video and keeps still regions cheap to prune. 0: the window just rolls."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, steps=None):
        """Refuse a bad steps string when the prompt is queued, before anything runs (ComfyUI
        keeps checking the numeric widgets' ranges itself: they are not named here)."""
        if isinstance(steps, str) and steps.strip():
            try:
                parse_steps(steps)
            except LiparError as e:
                return str(e)
        return True

    def sample(self, model, positive, latent, seed, steps, shift, chunk_frames, mode,
               window_frames=_DEFAULTS.window_frames, sink_frames=_DEFAULTS.sink_frames):
        clock = StageClock()
        samples = latent_samples(latent)
        module = diffusion_model(model)
        plan = latent_plan(latent)
        patch_options = lipar_options(model)
        options = {**DEFAULT_OPTIONS, **(patch_options or {})}
        context = conditioning_context(positive)
        steps_text = str(steps).strip()
        inner = model.model
        process_in = getattr(inner, "process_latent_in", normalize_wan21)
        process_out = getattr(inner, "process_latent_out", denormalize_wan21)
        with user_errors(), torch.no_grad():
            config = SamplerConfig(
                mode=mode, steps=parse_steps(steps_text) if steps_text else None, shift=float(shift),
                chunk_frames=int(chunk_frames), seed=int(seed), recovery=options["recovery"],
                recovery_form=options["recovery_form"], backend=options["attention_backend"], fp8=options["fp8_compute"],
                dtype=compute_dtype(model, module), window_frames=int(window_frames),
                sink_frames=int(sink_frames)).validate()
            check_latent(samples, what="latent")
            z = process_in(samples.float())
            if plan is not None:      # before the model is loaded: a plan for another latent is refused at once
                plan.check_latent(z, config.chunk_frames)
            cfg = check_wan_module(module)

        needed = inference_memory(cfg, samples.shape, config)
        clock.mark("checks")
        host.load_model(model, needed)
        clock.mark("load_model")
        module = model.model.diffusion_model
        device = model_device(model, module)
        graphs = cuda_graphs_allowed(model)
        if graphs is not None:
            config = dataclasses.replace(config, cuda_graphs=graphs)

        progress = host.Progress(1)
        previews = host.ChunkPreviews(model)

        def on_pass(info):
            host.throw_if_interrupted()
            progress.update(info.done, info.total, previews.ready())

        with user_errors(), torch.no_grad():
            result = sample(module, context, z, plan=plan, config=config, device=device, on_pass=on_pass,
                            on_chunk=previews.chunk_done)
            restored = restore_latent(result.latent, result.plan)
        clock.mark("sample_call")
        progress.update(result.passes, result.passes, previews.ready(wait=True))
        graphs_kept = host.keep_graphs(model, device, needed)
        if result.info.get("cuda_graphs") and not graphs_kept:
            release_graphs(module)
        out_samples = process_out(host.to_intermediate(restored, torch.float32))

        out = {k: v for k, v in latent.items() if k != PLAN_KEY}
        out["samples"] = out_samples
        clock.mark("after")
        b, _, t = samples.shape[:3]
        video_frames = b * (4 * (t - 1) + 1)
        seconds = float(result.seconds)
        ri = result.info
        info = {
            "seconds": round(seconds, 4),
            "fps": round(video_frames / seconds, 3) if seconds > 0 else None,
            "prune_ratio": round(result.plan.prune_ratio(), 6) if plan is not None else None,
            "recovery": ri.get("recovery", options["recovery"] if plan is not None else "unpruned"),
            "recovery_form": options["recovery_form"] if plan is not None else None,
            "tokens_computed": int(result.tokens_computed),
            "tokens_full": int(result.tokens_full),
            "passes": int(result.passes),
            "video_frames": video_frames,
            "backend": ri.get("backend"),
            "dtype": ri.get("dtype"),
            "cuda_graphs": bool(ri.get("cuda_graphs", False)),
            "path": ri.get("path"),
            "kernels": ri.get("kernels"),
            "attention": ri.get("attention"),
            "fp8": ri.get("fp8"),
            "graphs_kept": bool(ri.get("cuda_graphs")) and graphs_kept,
            "window_frames": ri.get("window_frames"),
            "sink_frames": ri.get("sink_frames"),
            "window_rolls": bool(ri.get("window_rolls")),
            "kv_cache_bytes": ri.get("kv_cache_bytes"),
            "steps": list(ri.get("steps", [])),
            # where the node's own time went: checks, ComfyUI's model loading, lipar.sample (its host-side set-up
            # included), previews/restore/copy-out after it
            "node_seconds": clock.seconds,
            "setup_seconds": ri.get("setup_seconds"),   # of sample_call: lipar.sample's host-side set-up
            "note": run_note(result.plan, patch_options, mode, ri),
        }
        info["details"] = {"ran": f"{info['path']}, {info['kernels']} kernels, {info['attention']} attention",
                           "KV window": (f"{info['window_frames']} frames, sink {info['sink_frames']}"
                                         + (" (rolled)" if info["window_rolls"] else "")
                                         if info["window_frames"] else "unbounded")}
        share = info["tokens_computed"] / max(1, info["tokens_full"])
        fps = f"{info['fps']:.2f} FPS" if info["fps"] is not None else "n/a FPS"
        pruned = f", {info['prune_ratio'] * 100:.1f}% pruned" if plan is not None else ""
        log.info("Self-Forcing sampler (%s): %d frames in %.2f s (%s), %d passes, %.1f%% of tokens computed%s, "
                 "recovery %s, %s/%s, %s, %s kernels - %s", mode, video_frames, seconds, fps, info["passes"],
                 share * 100, pruned, info["recovery"], info["backend"], info["dtype"], info["path"],
                 info["kernels"], info["note"])
        return {"ui": {"lipar_sampler": [info]}, "result": (out,)}
