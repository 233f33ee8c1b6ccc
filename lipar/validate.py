"""Input checks that turn bad tensors into clear LiparErrors before any math runs."""

from __future__ import annotations

import torch

from .errors import LiparError


def check_latent(latent: object, *, channels: int = 16, what: str = "latent") -> torch.Tensor:
    """Check a Wan video latent ``[B, C=16, T, H, W]`` and return it.

    Raises LiparError naming the problem and the fix for: non-tensors, wrong rank, wrong
    channel count, empty dims, odd H/W (Wan patchifies 2x2) and NaN/Inf values. Any frame
    count works: the last causal chunk may be shorter (``lipar.chunks.chunk_spans``).
    """
    if not isinstance(latent, torch.Tensor):
        raise LiparError(f"The {what} must be a tensor; got {type(latent).__name__}.")
    if latent.ndim != 5:
        hint = (" This looks like an image latent [B, C, H, W]; encode a video with a Wan VAE "
                "(VAE Encode of the video frames) to get [B, 16, T, H, W].") if latent.ndim == 4 else ""
        raise LiparError(f"The {what} must be a video latent [B, {channels}, T, H, W]; got shape {list(latent.shape)}.{hint}")
    b, c, t, h, w = latent.shape
    if min(b, c, t, h, w) == 0:
        raise LiparError(f"The {what} is empty (shape {list(latent.shape)}).")
    if c != channels:
        raise LiparError(f"The {what} has {c} channels; Wan2.1 latents have {channels}. "
                         "Encode the video with the Wan2.1 VAE (not an SD/Flux VAE).")
    if h % 2 or w % 2:
        raise LiparError(f"The {what} has odd spatial size {h}x{w}; Wan patchifies 2x2 latent pixels, so the video's "
                         "width and height must be multiples of 16.")
    if latent.is_floating_point() is False:
        raise LiparError(f"The {what} must be floating point; got {latent.dtype}.")
    if not bool(torch.isfinite(latent).all()):
        raise LiparError(f"The {what} contains NaN or Inf values; check the VAE encode step (try an fp32 VAE).")
    return latent
