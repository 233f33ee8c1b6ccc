"""Wan2.1 DiT configurations and inference of a config from checkpoint shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from .errors import LiparError


@dataclass(frozen=True)
class WanConfig:
    """Hyper-parameters of a Wan2.1 text-to-video DiT.

    Defaults are Wan2.1-T2V-1.3B (the Self-Forcing backbone).
    """

    dim: int = 1536
    ffn_dim: int = 8960
    num_layers: int = 30
    num_heads: int = 12
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Head-dim split (frame, row, column) of the 3-axis RoPE, e.g. 44/42/42 for 128."""
        d = self.head_dim
        return (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))

    def validate(self) -> "WanConfig":
        if self.dim % self.num_heads:
            raise LiparError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}.")
        if self.head_dim % 2 or any(s % 2 for s in self.rope_split):
            raise LiparError(f"head_dim {self.head_dim} does not split into even RoPE axes.")
        if self.patch_size != (1, 2, 2):
            raise LiparError(f"patch_size {self.patch_size} is not supported; Wan2.1 uses (1, 2, 2).")
        return self


WAN_1_3B = WanConfig()
# A small config of the same architecture for tests and CPU runs. It keeps Wan's head_dim 128
# (so checkpoint loaders that derive heads = dim / 128, ComfyUI's included, read it right).
TINY = WanConfig(dim=256, ffn_dim=512, num_layers=2, num_heads=2)

PRESETS: dict[str, WanConfig] = {"1.3b": WAN_1_3B, "tiny": TINY}


def preset(name: str) -> WanConfig:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise LiparError(f"Unknown config {name!r}; choose one of {sorted(PRESETS)}.") from None


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> WanConfig:
    """Read a WanConfig off the shapes of a Wan state dict (names without any prefix).

    The number of heads is not visible in the shapes; Wan always uses head_dim 128,
    so heads = dim / 128.
    """
    required = ["patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
                "blocks.0.ffn.0.weight", "head.head.weight"]
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise LiparError(
            "This does not look like a Wan2.1 DiT checkpoint: missing " + ", ".join(missing)
            + ". Load a Wan2.1-T2V / Self-Forcing diffusion-model file.")
    pe = state_dict["patch_embedding.weight"]  # [dim, in_dim, 1, 2, 2]
    dim, in_dim = int(pe.shape[0]), int(pe.shape[1])
    layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    if dim % 128:
        raise LiparError(f"Wan models have head_dim 128, but this checkpoint has dim {dim}, not a multiple of 128.")
    heads = dim // 128
    head_w = state_dict["head.head.weight"]  # [out_dim * 4, dim]
    return WanConfig(
        dim=dim,
        ffn_dim=int(state_dict["blocks.0.ffn.0.weight"].shape[0]),
        num_layers=layers,
        num_heads=heads,
        freq_dim=int(state_dict["time_embedding.0.weight"].shape[1]),
        text_dim=int(state_dict["text_embedding.0.weight"].shape[1]),
        in_dim=in_dim,
        out_dim=int(head_w.shape[0]) // 4,
        patch_size=tuple(int(s) for s in pe.shape[2:]),
    ).validate()
