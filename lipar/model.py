"""A Wan2.1 text-to-video DiT module tree with Wan's parameter names and shapes.

Only the *structure* lives here; the causal forward is in ``lipar.causal`` and runs on
any module tree with these names (this one, or ComfyUI's loaded ``WanModel``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import WanConfig


class WanRMSNorm(nn.Module):
    """RMSNorm over the last dim (Wan's ``norm_q``/``norm_k``); PyTorch's fused kernel
    accumulates in float32 for half-precision inputs."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class WanAttentionWeights(nn.Module):
    """Projections of one attention layer: q, k, v, o and the q/k RMS norms."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps)
        self.norm_k = WanRMSNorm(dim, eps)


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.self_attn = WanAttentionWeights(d, cfg.eps)
        self.norm3 = nn.LayerNorm(d, cfg.eps, elementwise_affine=True)
        self.cross_attn = WanAttentionWeights(d, cfg.eps)
        self.norm2 = nn.LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)


class WanHead(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * 4)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)


class WanDiT(nn.Module):
    """Wan2.1-T2V DiT parameters (``patch_embedding``, ``blocks.N.self_attn.q``, ...)."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, d * 6))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg)


def build_model(cfg: WanConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> WanDiT:
    """A randomly initialised model of the given config (deterministic for a seed)."""
    # Initialised on the CPU so a seed gives the same weights on every device.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanDiT(cfg)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
