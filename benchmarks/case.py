"""The setup shared by the GPU benchmark scripts: the `python -m lipar bench --compare` case.

Random-weight 1.3B model in bf16, a synthetic 832x480 clip, the same text embedding and
seed as `lipar.bench`, and a plan whose threshold is bisected to a target prune ratio.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lipar.bench import fit_threshold, video_to_latent_dims  # noqa: E402
from lipar.clips import ClipSpec, make_clip  # noqa: E402
from lipar.config import preset  # noqa: E402
from lipar.model import build_model  # noqa: E402
from lipar.plan import PlanConfig, PruningPlan  # noqa: E402
from lipar.sampler import SamplerConfig  # noqa: E402


def edit_case(clip: str = "objects", target_prune: float = 0.338, frames: int = 81):
    """-> (device, model, ctx [1, 64, 4096], latent [1, 16, T, 60, 104], plan, sampler config)."""
    dev = torch.device("cuda", torch.cuda.current_device())
    t, h, w = video_to_latent_dims(frames, 480, 832)
    cfg = preset("1.3b")
    model = build_model(cfg, seed=0, dtype=torch.bfloat16, device=dev)
    latent = make_clip(ClipSpec(kind=clip, latent_frames=t, height=h, width=w, seed=0)).to(dev)
    ctx = (0.1 * torch.randn(1, 64, cfg.text_dim, generator=torch.Generator().manual_seed(0))).to(dev)
    plan: PruningPlan = fit_threshold(latent, target_prune, PlanConfig(chunk_frames=3))
    return dev, model, ctx, latent, plan, SamplerConfig(steps=(400, 350, 250))
