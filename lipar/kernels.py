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
    def rope_kernel(x_ptr, t_ptr, o_ptr, n_rows, n_tokens, HEADS: tl.constexpr, HALF: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
        # a tile of BLOCK_T token rows x BLOCK_H heads, read and written as contiguous
        # [T, H, HALF, 2] blocks; rotates the interleaved pairs (x[2i], x[2i+1]) in float32
        rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        i = tl.arange(0, HALF)
        j = tl.arange(0, 2)
        off = (rows[:, None, None, None] * (HEADS * 2 * HALF) + heads[None, :, None, None] * (2 * HALF)
               + i[None, None, :, None] * 2 + j[None, None, None, :])
        mask = (rows[:, None, None, None] < n_rows) & (heads[None, :, None, None] < HEADS)
        x0, x1 = tl.split(tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32))   # [T, H, HALF]
        toff = (rows % n_tokens)[:, None, None] * (2 * HALF) + i[None, :, None] * 2 + j[None, None, :]
        c, s = tl.split(tl.load(t_ptr + toff, mask=(rows < n_rows)[:, None, None], other=0.0))  # table: (cos, sin)
        c, s = c[:, None, :], s[:, None, :]
        tl.store(o_ptr + off, tl.join(x0 * c - x1 * s, x0 * s + x1 * c).to(o_ptr.dtype.element_ty), mask=mask)

    return rope_kernel


def capture_allocations_unmapped() -> bool:
    """True while a CUDA graph is being captured under the ``cudaMallocAsync`` allocator (the one
    ComfyUI's main.py selects): tensors allocated during such a capture have no device mapping
    until the graph runs, and Triton's launcher refuses them ("cannot be accessed from Triton")."""
    return torch.cuda.is_current_stream_capturing() and torch.cuda.get_allocator_backend() == "cudaMallocAsync"


def rope_supported(x: torch.Tensor, table: torch.Tensor, out: torch.Tensor | None = None) -> bool:
    """Where ``rope_triton`` runs: CUDA, Triton, a power-of-two half head dim, contiguous x (and
    out); during a cudaMallocAsync capture only with an ``out`` made before it."""
    half = x.shape[-1] // 2
    return (x.is_cuda and table.dtype == torch.complex64 and x.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and half & (half - 1) == 0 and x.is_contiguous() and triton_available()
            and (out.is_contiguous() if out is not None else not capture_allocations_unmapped()))


def rope_triton(x: torch.Tensor, table: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, N, H, D] contiguous, table [N, D/2] complex64 -> rotated copy of x, written to
    ``out`` (contiguous, x's shape) when given. In a cudaMallocAsync capture x was just
    allocated, so it is copied into ``out`` and rotated there (the kernel works in place)."""
    b, n, h, d = x.shape
    if out is None:
        out = torch.empty_like(x)
    elif capture_allocations_unmapped() and x.data_ptr() != out.data_ptr():
        x = out.copy_(x)
    # tiles of ~1024 elements: on an H100 (4680 x 12 x 128 bf16) 32-37 us, against 74-79 us for
    # one program per token and 94-108 us for 4096-element tiles (benchmarks/NOTES.md, v10)
    block_h = min(h & -h, 4)          # heads per tile: the largest power of two dividing H, at most 4
    block_t = max(1, 1024 // (block_h * d))
    grid = (-(-(b * n) // block_t), -(-h // block_h))
    _rope_kernel()[grid](x, torch.view_as_real(table.contiguous()), out, b * n, n, HEADS=h, HALF=d // 2,
                         BLOCK_T=block_t, BLOCK_H=block_h, num_warps=4)
    return out
