"""Latent Inter-Frame Pruner: makes a LIPAR pruning plan for a VAE-encoded video."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

import torch
import torch.nn.functional as F

from . import host
from ..lipar.latents import normalize_wan21
from ..lipar.plan import PlanConfig, build_plan
from ..lipar.preview import animation_pixels, fit_frames, mask_preview, one_frame_per_latent_frame, write_animation
from ..lipar.timing import StageClock
from ..lipar.validate import check_latent
from .common import CATEGORY, PLAN_KEY, latent_samples, log, user_errors

PREVIEW_MAX_SIDE = 384   # the in-node animation is downscaled to this (the node is ~380 px wide; the IMAGE output keeps
#                          full size). 21 frames encode in 17 ms at 384 px, 16.5 at 320 (frames in parallel; Pillow's
#                          animation encoder took 135 / 96 ms; H200 host, results/h200_host_copy.json)
_DEFAULTS = PlanConfig()   # widget defaults are the library's measured defaults
LATENT_FPS = 4.0         # the in-node animation shows one frame per latent frame (4 video frames)
_ENCODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lipar-preview")   # Pillow releases the GIL


def start_preview(images: torch.Tensor, fps: float) -> Future:
    """Start writing ``images`` [N, H, W, 3] (any device) as an animated WEBP into the temp directory:
    downscaled on their device and copied across as uint8 now, encoded (Pillow's fastest effort, the
    frames in parallel: ``lipar.preview.webp_animation``) in a worker thread while the node goes on.
    The future's result is the ui entry; wait for it before the node returns, so the file exists when
    the front end asks for it."""
    h, w = images.shape[1:3]
    scale = PREVIEW_MAX_SIDE / max(h, w)
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        images = F.interpolate(images.permute(0, 3, 1, 2), size=size, mode="area").permute(0, 2, 3, 1)
    pixels = animation_pixels(images)
    folder = host.temp_directory()
    os.makedirs(folder, exist_ok=True)
    filename = f"lipar_mask_{uuid.uuid4().hex[:16]}.webp"

    def encode() -> dict:
        write_animation(pixels, os.path.join(folder, filename), fps=fps, effort=0)
        return {"filename": filename, "subfolder": "", "type": "temp"}
    return _ENCODER.submit(encode)


def source_frames(images, latent_shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    """The source frame each latent frame ends on, on ``device`` and fitted to the latent's size, or None
    (with a warning saying why) when ``images`` cannot be drawn over. Only those frames cross to the GPU."""
    if images is None:
        return None
    t, h, w = latent_shape[2:]
    if isinstance(images, torch.Tensor) and images.shape[0] in (t, 4 * (t - 1) + 1):
        images = one_frame_per_latent_frame(images, t, device)
    frames, what = fit_frames(images, t, h, w)
    if what:
        log.warning("pruner preview: %s.", what)
    return frames


def plan_stats(plan) -> dict:
    stats = plan.stats()
    stats["latent_frames"] = plan.frames
    stats["tokens_per_frame"] = plan.tokens_per_frame
    if not plan.pruned_anything_possible():
        video = 4 * plan.config.chunk_frames + 1     # chunk_frames + 1 latent frames
        stats["note"] = (f"nothing can be pruned: the video fits in the first chunk ({plan.frames} latent frames), "
                         f"which is never pruned (no earlier frame to borrow from); use {video} or more video frames")
    elif plan.prune_ratio() == 0:
        stats["note"] = "nothing pruned at these thresholds: raise the threshold to prune more"
    return stats


class LatentInterFramePruner:
    DESCRIPTION = (
        "LIPAR pruning: finds the latent patches (16x2x2 tokens) of a VAE-encoded video that barely change from "
        "the previous frame and from what the KV cache holds, and marks them to be skipped by the Self-Forcing "
        "Causal Sampler. The plan travels inside the LATENT. Shows the mask (pruned patches tinted blue) and the "
        "pruned fraction per frame; tune the thresholds while watching it.")
    CATEGORY = CATEGORY
    FUNCTION = "prune"
    OUTPUT_NODE = True   # can be run alone ("queue selected output nodes") to tune the thresholds
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "mask_preview")
    OUTPUT_TOOLTIPS = (
        "The same latent with the pruning plan attached; connect it to the Self-Forcing Causal Sampler.",
        "The pruning mask, one frame per latent frame (the frame each latent frame ends on: video frames 0, 4, "
        "8, ...): the source frames with pruned patches tinted blue, or the masks alone (kept white, pruned dark "
        "blue) when no images are connected.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "latent": ("LATENT", {"tooltip": "The source video encoded by the Wan2.1 VAE (VAE Encode): [B, 16, T, H, W]."}),
                "threshold": ("FLOAT", {"default": _DEFAULTS.threshold, "min": 0.0, "max": 10.0, "step": 0.005, "tooltip":
                    "A patch is a pruning candidate when its mean absolute change from the previous frame (normalised "
                    "latent, per element) is below this (paper Eq. 1; 0.15). Higher prunes more; 0 prunes nothing."}),
                "anchor_threshold": ("FLOAT", {"default": _DEFAULTS.anchor_threshold, "min": 0.0, "max": 10.0, "step": 0.005, "tooltip":
                    "A candidate is pruned only if it is also this close to the latest kept patch at its location in an "
                    "earlier chunk, whose clean key/value the KV cache holds (noise-aware constraint, paper Eq. 5; 0.3)."}),
                "chunk_frames": ("INT", {"default": _DEFAULTS.chunk_frames, "min": 1, "max": 64, "tooltip":
                    "Latent frames per causal chunk; must equal the sampler's chunk frames (Self-Forcing: 3). The "
                    "first chunk is never pruned; the last one may be shorter."}),
                "trim_outliers": ("FLOAT", {"default": _DEFAULTS.trim_outliers, "min": 0.0, "max": 0.9, "step": 0.01, "tooltip":
                    "Fraction of the largest per-element differences of a patch ignored in the distance (0 = plain "
                    "mean). Makes pruning robust to a few noisy latent values."}),
                "smooth": ("INT", {"default": _DEFAULTS.smooth, "min": 1, "max": 15, "step": 2, "tooltip":
                    "Odd box-filter size applied to the difference maps before thresholding (1 = off)."}),
                "open_pruned": ("INT", {"default": _DEFAULTS.open_pruned, "min": 0, "max": 8, "tooltip":
                    "Radius of a morphological opening of the pruned region: removes isolated pruned specks (0 = off)."}),
                "dilate_kept": ("INT", {"default": _DEFAULTS.dilate_kept, "min": 0, "max": 8, "tooltip":
                    "Radius by which kept (moving) regions grow, so moving edges stay computed (0 = off)."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip":
                    "Optional: the source frames that were VAE-encoded (4*(T-1)+1 frames); the mask preview is drawn "
                    "over them. Sizes VAE Encode crops (e.g. 854x480 -> 848x480) are cropped the same way, others "
                    "resized; frames that do not fit give the masks alone. Never blocks the edit."}),
            },
        }

    def prune(self, latent, threshold, anchor_threshold, chunk_frames, trim_outliers, smooth, open_pruned,
              dilate_kept, images=None):
        clock = StageClock()
        samples = latent_samples(latent)
        config = PlanConfig(threshold=float(threshold), anchor_threshold=float(anchor_threshold),
                            chunk_frames=int(chunk_frames), trim_outliers=float(trim_outliers),
                            smooth=int(smooth), open_pruned=int(open_pruned), dilate_kept=int(dilate_kept))
        device = host.compute_device()       # the plan and the previews are made on the GPU when there is one
        with user_errors(), torch.no_grad():
            config.validate()
            check_latent(samples, what="latent to prune")
            plan = build_plan(normalize_wan21(samples.to(device, torch.float32)), config)
            preview = mask_preview(plan, source_frames(images, samples.shape, device))   # [T, H, W, 3]
            ui_image = start_preview(preview, LATENT_FPS)
        clock.mark("plan_and_preview")
        out = dict(latent)
        out[PLAN_KEY] = plan.to("cpu")
        stats = plan_stats(out[PLAN_KEY])
        clock.mark("stats")
        preview = host.to_intermediate(preview)               # while the animation is encoded
        clock.mark("output")
        ui_entry = ui_image.result()
        clock.mark("animation")
        stats["node_seconds"] = clock.seconds
        log.info("pruner: %.1f%% of tokens pruned (kept %s of %d per sample; %d latent frames, chunks of %d)%s",
                 stats["prune_ratio"] * 100, stats["tokens_kept"], stats["tokens_total"], plan.frames,
                 config.chunk_frames, f" - {stats['note']}" if stats.get("note") else "")
        return {"ui": {"images": [ui_entry], "animated": (True,), "lipar_stats": [stats]},
                "result": (out, preview)}
