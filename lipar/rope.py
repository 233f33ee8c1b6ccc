"""Wan's 3-axis rotary position embedding (frame, row, column).

The head dim ``D`` is split into ``(D - 4*(D//6), 2*(D//6), 2*(D//6))`` channels
(44/42/42 for D=128), each axis with theta 10000; channel pairs are interleaved
``(x[2i], x[2i+1])``, as in Wan's complex-number formulation.
"""

from __future__ import annotations

import torch

from .config import WanConfig


def axis_inv_freqs(cfg: WanConfig, device=None) -> list[torch.Tensor]:
    """Inverse frequencies per axis: lengths D_a/2 (22, 21, 21 for D=128), float64."""
    out = []
    for d in cfg.rope_split:
        out.append(1.0 / cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d))
    return out


def rope_angles(positions: torch.Tensor, cfg: WanConfig) -> torch.Tensor:
    """Angles for token positions ``[N, 3]`` (frame, row, col) -> ``[N, D/2]`` float64."""
    inv = axis_inv_freqs(cfg, positions.device)
    pos = positions.to(torch.float64)
    return torch.cat([pos[:, a:a + 1] * inv[a][None] for a in range(3)], dim=1)


def frame_shift_angles(delta_frames: torch.Tensor, cfg: WanConfig) -> torch.Tensor:
    """Angles of a rotation by ``delta_frames`` [N] along the frame axis only -> [N, D/2]."""
    zeros = torch.zeros_like(delta_frames)
    return rope_angles(torch.stack([delta_frames, zeros, zeros], dim=1), cfg)


def rope_table(angles: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit complex rotations ``e^{i angle}`` [N, D/2]: complex64 for float32 runs, complex128 for float64."""
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex128 if dtype == torch.float64 else torch.complex64)


def apply_rope(x: torch.Tensor, table: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` [B, N, H, D] by per-token rotations.

    table: [N, D/2] complex (``rope_table``). Computed in the table's precision (float32 or
    float64), returned in x's dtype (written into ``out``, x's shape, when given): one fused
    kernel on CUDA, three in PyTorch elsewhere (cast, complex multiply, cast back).
    """
    from .kernels import rope_supported, rope_triton

    if rope_supported(x, table, out):
        return rope_triton(x, table, out=out)
    b, n, h, d = x.shape
    real = torch.float64 if table.dtype == torch.complex128 else torch.float32
    xc = torch.view_as_complex(x.to(real).reshape(b, n, h, d // 2, 2))
    y = torch.view_as_real(xc * table.view(1, n, 1, d // 2)).flatten(-2).to(x.dtype)
    return y if out is None else out.copy_(y)


def token_positions(frames: int, rows: int, cols: int, frame_offset: int = 0, device=None) -> torch.Tensor:
    """Positions [frames*rows*cols, 3] of a token grid in (frame, row, col) order."""
    f = torch.arange(frame_offset, frame_offset + frames, device=device)
    r = torch.arange(rows, device=device)
    c = torch.arange(cols, device=device)
    return torch.stack(torch.meshgrid(f, r, c, indexing="ij"), dim=-1).reshape(-1, 3)
