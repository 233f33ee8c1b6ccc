"""Synthetic Wan-like video latents for tests and benchmarks (no VAE needed).

A clip is a ``[1, 16, T, H, W]`` latent of unit-ish variance: a smooth textured
background, optional moving textured objects, an optional camera pan and scene cut,
plus small per-frame jitter (what a VAE's encoding noise looks like between frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import LiparError

KINDS = ("objects", "pan", "cut", "static")


@dataclass(frozen=True)
class ClipSpec:
    kind: str = "objects"
    latent_frames: int = 21
    height: int = 60        # latent pixels (video height / 8)
    width: int = 104
    objects: int = 3        # moving objects ("objects", "cut")
    object_size: float = 0.22   # object side as a fraction of the shorter side
    speed: float = 1.5      # object motion, latent pixels per latent frame
    pan: float = 0.5        # camera pan, latent pixels per latent frame ("pan")
    jitter: float = 0.03    # per-frame noise std
    seed: int = 0


def _texture(g: torch.Generator, h: int, w: int, scale: int = 4) -> torch.Tensor:
    """Smooth random field [16, h, w] with std ~1."""
    lo = torch.randn(1, 16, max(2, h // scale), max(2, w // scale), generator=g)
    x = F.interpolate(lo, size=(h, w), mode="bilinear", align_corners=False)[0]
    return x / x.std()


def make_clip(spec: ClipSpec) -> torch.Tensor:
    """The clip as a float32 latent ``[1, 16, T, H, W]``."""
    if spec.kind not in KINDS:
        raise LiparError(f"Unknown clip kind {spec.kind!r}; choose one of {list(KINDS)}.")
    g = torch.Generator().manual_seed(spec.seed)
    t, h, w = spec.latent_frames, spec.height, spec.width
    pad = int(abs(spec.pan) * t) + 2
    bg = _texture(g, h, w + pad)
    bg2 = _texture(g, h, w + pad)
    side = max(2, int(min(h, w) * spec.object_size))
    objs = []
    n_obj = spec.objects if spec.kind in ("objects", "cut", "pan") else 0
    for _ in range(n_obj):
        tex = _texture(g, side, side, scale=2) * 1.5
        y0 = float(torch.rand(1, generator=g)) * (h - side)
        x0 = float(torch.rand(1, generator=g)) * (w - side)
        ang = float(torch.rand(1, generator=g)) * 6.283
        objs.append((tex, y0, x0, torch.tensor(ang).cos().item(), torch.tensor(ang).sin().item()))
    frames = []
    for f in range(t):
        base = bg2 if (spec.kind == "cut" and f >= t // 2) else bg
        off = int(round(spec.pan * f)) if spec.kind == "pan" else 0
        frame = base[:, :, off:off + w].clone()
        for tex, y0, x0, cy, cx in objs:
            # bounce inside the frame
            y = _bounce(y0 + spec.speed * f * cy, h - side)
            x = _bounce(x0 + spec.speed * f * cx, w - side)
            frame[:, y:y + side, x:x + side] = tex
        frame = frame + spec.jitter * torch.randn(frame.shape, generator=g)
        frames.append(frame)
    return torch.stack(frames, dim=1).unsqueeze(0)


def _bounce(p: float, hi: int) -> int:
    if hi <= 0:
        return 0
    p = abs(p) % (2 * hi)
    return int(round(2 * hi - p if p > hi else p))
