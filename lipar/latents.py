"""Wan2.1 VAE latent statistics (the published per-channel mean/std of the Wan VAE).

Hosts like ComfyUI keep latents in the VAE's raw space and normalise them right before
the transformer; the pruning thresholds of the paper apply to normalised latents
(what Self-Forcing's pipeline feeds the model).
"""

from __future__ import annotations

import torch

WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(WAN21_MEAN, device=x.device, dtype=x.dtype).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN21_STD, device=x.device, dtype=x.dtype).view(1, 16, 1, 1, 1)
    return mean, std


def normalize_wan21(raw: torch.Tensor) -> torch.Tensor:
    """Raw Wan2.1 VAE latent [B, 16, T, H, W] -> normalised (what the DiT sees)."""
    mean, std = _stats(raw)
    return (raw - mean) / std


def denormalize_wan21(latent: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(latent)
    return latent * std + mean
