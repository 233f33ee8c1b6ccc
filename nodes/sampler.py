"""Self-Forcing Causal Sampler: chunk-wise KV-cached sampling, pruned when the latent carries a plan."""

from __future__ import annotations

import dataclasses

import torch

from . import host
from ._lib import lipar
from .common import (CATEGORY, PENDING_KEY, PLAN_KEY, check_not_pending, compute_dtype, conditioning_context,
                     diffusion_model, latent_plan, latent_samples, lipar_options, model_device, user_errors,
                     cuda_graphs_allowed)
from .patch import DEFAULT_OPTIONS

MODES = ("edit", "generate")


def inference_memory(cfg, latent_shape, chunk_frames: int, dtype: torch.dtype) -> int:
    """Bytes the run needs besides the weights: the KV cache of one sample (upper bound: every token
    plus the text) and one chunk's activations. Handed to ComfyUI so it frees room before loading."""
    _, _, t, h, w = latent_shape
    per_frame = (h // 2) * (w // 2)
    item = torch.empty((), dtype=dtype).element_size()
    cache = 2 * cfg.num_layers * (t * per_frame + cfg.text_len) * cfg.dim * item
    chunk = chunk_frames * per_frame
    activations = 4 * chunk * (cfg.ffn_dim + 8 * cfg.dim) * item
    return int(cache + activations)


def run_note(plan, options: dict | None, mode: str) -> str:
    if plan is None:
        note = "unpruned run (no pruning plan in the latent)"
        if options is not None:
            note += "; the Attention Recovery Patch has no effect without a plan"
        return note
    if options is None:
        note = ("pruned latent, default recovery (noise_aware, compressed; no Attention Recovery Patch): "
                "connect Token Restore before VAE Decode")
    elif options.get("recovery") == "none":
        note = "pruned latent with recovery 'none' (naive pruning): connect Token Restore before VAE Decode"
    else:
        note = "pruned latent: connect Token Restore before VAE Decode"
    if mode == "generate":
        note += "; generate mode prunes by the input latent's motion, which is meant for editing"
    return note


class SelfForcingSampler:
    DESCRIPTION = (
        "Self-Forcing causal sampling of a Wan2.1 model: the video is generated chunk by chunk with a KV cache. "
        "edit: SDEdit from the input latent noised to the first step (LIPAR's video editing). generate: from "
        "noise. If the latent carries a LIPAR pruning plan only kept tokens are computed; connect Token Restore "
        "before VAE Decode. Without a plan this is the unpruned baseline.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The denoised latent (with the plan still attached when pruned: connect Token Restore).",)

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
                                                 "shape, e.g. an empty video latent."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                                 "tooltip": "Seed of the noise (the same seed gives the same video on any device)."}),
                "steps": ("STRING", {"default": "400,350,250", "tooltip":
                    "Comma-separated decreasing denoising steps in (0, 1000]. Editing (SDEdit): 400,350,250; "
                    "generation: 1000,750,500,250. Empty: the mode's default."}),
                "shift": ("FLOAT", {"default": 5.0, "min": 0.1, "max": 20.0, "step": 0.1, "tooltip":
                    "Timestep shift of the flow-matching schedule (Self-Forcing: 5)."}),
                "chunk_frames": ("INT", {"default": 3, "min": 1, "max": 64, "tooltip":
                    "Latent frames generated per causal chunk (Self-Forcing: 3); must match the pruner's."}),
                "mode": (list(MODES), {"default": "edit", "tooltip":
                    "edit: re-generate the input video from its latent noised to the first step (SDEdit). "
                    "generate: from pure noise (the input latent only gives the shape)."}),
            },
        }

    def sample(self, model, positive, latent, seed, steps, shift, chunk_frames, mode):
        samples = latent_samples(latent)
        check_not_pending(latent, "sampling it again")
        module = diffusion_model(model)
        plan = latent_plan(latent)
        patch_options = lipar_options(model)
        options = {**DEFAULT_OPTIONS, **(patch_options or {})}
        context = conditioning_context(positive)
        steps_text = str(steps).strip()
        with user_errors():
            config = lipar.SamplerConfig(
                mode=mode, steps=lipar.schedule.parse_steps(steps_text) if steps_text else None, shift=float(shift),
                chunk_frames=int(chunk_frames), seed=int(seed), recovery=options["recovery"],
                recovery_form=options["recovery_form"], backend=options["attention_backend"],
                dtype=compute_dtype(model, module)).validate()
            lipar.validate.check_latent(samples, what="latent")
            if plan is not None:
                plan.check_fits(tuple(samples.shape), config.chunk_frames)
            cfg = lipar.causal.check_wan_module(module)

        host.load_model(model, inference_memory(cfg, samples.shape, config.chunk_frames, config.dtype))
        module = model.model.diffusion_model
        device = model_device(model, module)
        graphs = cuda_graphs_allowed(model)
        if graphs is not None:
            config = dataclasses.replace(config, cuda_graphs=graphs)
        inner = model.model
        process_in = getattr(inner, "process_latent_in", lipar.latents.normalize_wan21)
        process_out = getattr(inner, "process_latent_out", lipar.latents.denormalize_wan21)

        progress = host.Progress(1)

        def on_pass(info):
            host.throw_if_interrupted()
            progress.update(info.done, info.total)

        with user_errors(), torch.no_grad():
            z = process_in(samples.float())
            result = lipar.sample(module, context, z, plan=plan, config=config, device=device, on_pass=on_pass)
        progress.update(result.passes, result.passes)
        out_samples = process_out(result.latent.to(host.intermediate_device(), torch.float32))

        out = dict(latent)
        out["samples"] = out_samples
        if plan is not None:
            out[PLAN_KEY] = plan
            out[PENDING_KEY] = True
        b, _, t = samples.shape[:3]
        video_frames = b * (4 * (t - 1) + 1)
        seconds = float(result.seconds)
        info = {
            "seconds": round(seconds, 4),
            "fps": round(video_frames / seconds, 3) if seconds > 0 else None,
            "prune_ratio": round(plan.prune_ratio(), 6) if plan is not None else None,
            "recovery": result.info.get("recovery", options["recovery"] if plan is not None else "unpruned"),
            "recovery_form": options["recovery_form"] if plan is not None else None,
            "tokens_computed": int(result.tokens_computed),
            "tokens_full": int(result.tokens_full),
            "passes": int(result.passes),
            "video_frames": video_frames,
            "backend": result.info.get("backend"),
            "dtype": result.info.get("dtype"),
            "cuda_graphs": bool(result.info.get("cuda_graphs", False)),
            "steps": list(result.info.get("steps", [])),
            "note": run_note(plan, patch_options, mode),
        }
        share = info["tokens_computed"] / max(1, info["tokens_full"])
        fps = f"{info['fps']:.2f} FPS" if info["fps"] is not None else "n/a FPS"
        pruned = f", {info['prune_ratio'] * 100:.1f}% pruned" if plan is not None else ""
        print(f"[LIPAR] Self-Forcing sampler ({mode}): {video_frames} frames in {seconds:.2f} s ({fps}), "
              f"{info['passes']} passes, {share * 100:.1f}% of tokens computed{pruned}, recovery {info['recovery']}, "
              f"{info['backend']}/{info['dtype']} - {info['note']}")
        return {"ui": {"lipar_sampler": [info]}, "result": (out,)}
