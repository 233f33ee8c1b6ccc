"""Small fused GPU kernels (Triton), used on CUDA when Triton is importable.

``rope_triton``: RoPE of ``[B, N, H, D]`` bf16/fp16/fp32 tensors in one pass (the
PyTorch path takes three: cast, complex multiply, cast back). Everything else falls
back to ``lipar.rope.apply_rope``'s PyTorch code.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def _triton():
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None
    return triton, tl


def triton_available() -> bool:
    return _triton() is not None


@functools.lru_cache(maxsize=1)
def _rope_kernel():
    triton, tl = _triton()

    @triton.jit
    def rope_kernel(x_ptr, t_ptr, o_ptr, n_tokens, n_heads, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
        # one program per token; rotates the interleaved pairs (x[2i], x[2i+1]) of every head
        row = tl.program_id(0)
        tok = row % n_tokens
        h = tl.arange(0, BLOCK_H)[:, None]
        i = tl.arange(0, HALF)[None, :]
        mask = h < n_heads
        off = row * n_heads * 2 * HALF + h * 2 * HALF + 2 * i
        x0 = tl.load(x_ptr + off, mask=mask).to(tl.float32)
        x1 = tl.load(x_ptr + off + 1, mask=mask).to(tl.float32)
        c = tl.load(t_ptr + tok * 2 * HALF + 2 * i)        # table: complex64 as (cos, sin) pairs
        s = tl.load(t_ptr + tok * 2 * HALF + 2 * i + 1)
        tl.store(o_ptr + off, (x0 * c - x1 * s).to(o_ptr.dtype.element_ty), mask=mask)
        tl.store(o_ptr + off + 1, (x0 * s + x1 * c).to(o_ptr.dtype.element_ty), mask=mask)

    return rope_kernel


def rope_supported(x: torch.Tensor, table: torch.Tensor) -> bool:
    half = x.shape[-1] // 2
    return (x.is_cuda and table.dtype == torch.complex64 and x.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and half & (half - 1) == 0 and x.is_contiguous() and triton_available())


def rope_triton(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x [B, N, H, D] contiguous, table [N, D/2] complex64 -> rotated copy of x."""
    b, n, h, d = x.shape
    out = torch.empty_like(x)
    triton, _ = _triton()
    _rope_kernel()[(b * n,)](x, torch.view_as_real(table.contiguous()), out, n, h, HALF=d // 2,
                             BLOCK_H=triton.next_power_of_2(h))
    return out
