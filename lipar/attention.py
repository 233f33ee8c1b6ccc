"""The one attention entry point: PyTorch SDPA (cuDNN first on CUDA) or flash-attn.

Backends: ``sdpa`` (PyTorch's own choice), ``cudnn`` (SDPA with the cuDNN kernel first;
on an H100 it ran 1.6-1.9x faster than SDPA's flash kernel for our shapes, see
benchmarks/results/attention_kernels.json), ``flash_attn`` (the flash-attn package),
and ``auto``: cudnn on CUDA, else sdpa.

All tensors are ``[B, L, H, D]``. A per-key additive score bias ``key_bias [B, Lk]``
(or ``[Lk]``) carries attention recovery's log-multiplicities and masks padding keys
(-inf). It is never a per-pair matrix: kernels either take it as a broadcast bias
(SDPA), fold it into one extra query/key channel ("fold"), which keeps any
FlashAttention-style kernel usable, or ("split", the sampler's default on CUDA) run the
keys that never carry a bias through plain cuDNN attention and continue over the biased
ones with lipar's own Triton kernel (``lipar.flash_bias``).
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F

from .errors import LiparError
from .flash_bias import NEG_BIAS, attention_key_bias
from .kernels import triton_available

BACKENDS = ("auto", "sdpa", "cudnn", "flash_attn")
BIAS_MODES = ("auto", "split", "mask", "fold")


@functools.lru_cache(maxsize=1)
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func  # type: ignore[import-not-found]
    except ImportError:
        return None
    return flash_attn_func


def flash_attn_available() -> bool:
    return _flash_attn_func() is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise LiparError(f"Unknown attention backend {backend!r}; choose one of {list(BACKENDS)}.")
    if backend == "flash_attn":
        if not flash_attn_available():
            raise LiparError("Attention backend 'flash_attn' was asked for but the flash_attn package is not "
                             "installed; install flash-attn or choose 'auto'/'sdpa'.")
        if device.type != "cuda":
            raise LiparError("Attention backend 'flash_attn' needs a CUDA device; choose 'auto' or 'sdpa'.")
        return "flash_attn"
    if backend == "cudnn" and device.type != "cuda":
        raise LiparError("Attention backend 'cudnn' needs a CUDA device; choose 'auto' or 'sdpa'.")
    if backend == "auto":
        return "cudnn" if device.type == "cuda" else "sdpa"
    return backend


def sdpa_context(backend: str):
    """Context that makes SDPA try cuDNN first for backend 'cudnn' (a no-op otherwise)."""
    if backend != "cudnn":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


def split_available(backend: str, device: torch.device) -> bool:
    """The split path needs cuDNN attention with its log-sum-exp (Ampere or newer) and Triton."""
    return (backend == "cudnn" and device.type == "cuda" and triton_available()
            and torch.backends.cudnn.is_available() and torch.cuda.get_device_capability(device)[0] >= 8)


def resolve_bias_mode(bias_mode: str, backend: str, device: torch.device | None = None) -> str:
    """How a per-key bias reaches the kernel: "split" (cuDNN over the never-biased keys, then
    ``lipar.flash_bias`` continues over the biased ones; CUDA + cuDNN + Triton), "fold" (an
    extra key channel: any FlashAttention-style kernel), "mask" (SDPA's broadcast mask).
    "auto": split where it runs, else fold for cudnn/flash_attn, mask for plain sdpa."""
    if bias_mode not in BIAS_MODES:
        raise LiparError(f"Unknown bias mode {bias_mode!r}; choose one of {list(BIAS_MODES)}.")
    can_split = device is not None and split_available(backend, device)
    if bias_mode == "split" and not can_split:
        raise LiparError("Bias mode 'split' needs a CUDA GPU (Ampere or newer) with the cuDNN attention backend "
                         "and Triton; choose 'auto', 'fold' or 'mask'.")
    if bias_mode != "auto":
        return bias_mode
    if can_split:
        return "split"
    return "mask" if backend == "sdpa" else "fold"


def fold_width(d: int) -> int:
    """Channels of a folded key: d + 1 (the bias channel), padded to a multiple of 16
    (on an H100, cuDNN ran width 144 5-6% faster than 136; benchmarks/NOTES.md)."""
    return (d + 1 + 15) // 16 * 16


def fold_key_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor):
    """Fold a per-key bias into an extra channel: q' = [q, 1], k' = [k, bias * sqrt(D)].

    Then ``q'.k' / sqrt(D) = q.k / sqrt(D) + bias`` exactly (up to the key dtype's
    rounding of the bias). Channels are zero-padded to a multiple of 8 for the kernels;
    the returned scale is the original 1/sqrt(D). v is padded to the same width.
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    dp = fold_width(d)
    qp = q.new_zeros(b, lq, h, dp)
    qp[..., :d] = q
    qp[..., d] = 1.0
    kp = k.new_zeros(b, lk, h, dp)
    kp[..., :d] = k
    bias = key_bias.clamp(min=NEG_BIAS) * math.sqrt(d)
    kp[..., d] = (bias.view(-1, lk, 1) if bias.ndim == 2 else bias.view(1, lk, 1)).to(k.dtype)
    vp = v.new_zeros(b, lk, h, dp)
    vp[..., :d] = v
    return qp, kp, vp, 1.0 / math.sqrt(d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, key_bias: torch.Tensor | None = None,
              backend: str = "sdpa", bias_mode: str = "auto") -> torch.Tensor:
    """Softmax attention ``[B, Lq, H, D] x [B, Lk, H, D] -> [B, Lq, H, D]`` (no causal mask).

    key_bias: optional ``[B, Lk]`` or ``[Lk]`` float added to every query's score of a key.
    backend: an already-resolved backend ("sdpa" or "flash_attn").
    bias_mode: "mask" passes the bias to SDPA as a broadcast mask; "fold" uses
    ``fold_key_bias`` (an extra query/key channel); "auto" = "mask" for plain sdpa, "fold"
    for cudnn and flash_attn (on an H100 the fold ran 30% under the unbiased cuDNN kernel,
    a mask or multiplicities in an extra value channel no better; see benchmarks/NOTES.md).
    "split" needs the cache's region layout (``attention_split``); here it counts as "auto".
    """
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    if key_bias is None:
        return _kernel(q, k, v, scale, backend)
    if resolve_bias_mode("auto" if bias_mode == "split" else bias_mode, backend) == "fold":
        qp, kp, vp, scale = fold_key_bias(q, k, v, key_bias)
        return _kernel(qp, kp, vp, scale, backend)[..., :d]
    mask = key_bias.to(q.dtype)
    mask = mask.view(-1, 1, 1, k.shape[1]) if mask.ndim == 2 else mask.view(1, 1, 1, -1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


def _kernel(q, k, v, scale: float, backend: str) -> torch.Tensor:
    if backend == "flash_attn":
        return _flash_attn_func()(q, k, v, softmax_scale=scale)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


def attention_folded(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *, backend: str,
                     out: dict | None = None) -> torch.Tensor:
    """Attention over folded keys (``[B, Lk, H, W]``, W = fold_width(D): channel D holds
    ``bias * sqrt(D)``, the rest of the padding is zero) and plain values ``[B, Lk, H, D]``.
    q: [B, Lq, H, D] -> [B, Lq, H, D]. ``out``: a dict that keeps the padded-query buffer
    between calls (keyed by shape), so each call only copies q into it."""
    d = q.shape[-1]
    shape = tuple(q.shape[:-1]) + (keys.shape[-1],)
    qp = None if out is None else out.get(shape)
    if qp is None:
        qp = q.new_zeros(shape)
        qp[..., d] = 1.0
        if out is not None:
            out[shape] = qp
    qp[..., :d] = q
    return _kernel(qp, keys, values, 1.0 / math.sqrt(d), backend)


def write_folded_bias(keys: torch.Tensor, key_bias: torch.Tensor, d: int, start: int = 0) -> None:
    """Store a per-key bias [Lk] into channel d of folded keys [..., start + Lk <= L, H, W]
    (any leading dims), at key positions [start, start + Lk)."""
    bias = (key_bias.clamp(min=NEG_BIAS) * math.sqrt(d)).view(-1, 1)
    keys[..., start:start + key_bias.shape[-1], :, d] = bias.to(keys.dtype)


def attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDNN attention and its log-sum-exp: ``[B, Lq, H, Dk] x [B, Lk, H, Dk], [B, Lk, H, Dv] ->
    (out [B, Lq, H, Dv], lse [B, Lq, H] float32, natural log)``; scale defaults to 1/sqrt(Dk)."""
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, True,
        scale=scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    b, lq, h, _ = q.shape
    return res[0].transpose(1, 2), res[1].view(b, h, lq).transpose(1, 2)


def attention_split(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, num_biased: int,
                    bias_log2: torch.Tensor) -> torch.Tensor:
    """Attention over keys whose first ``num_biased`` carry a per-key bias and the rest none:
    cuDNN over the plain keys, then ``lipar.flash_bias`` continues over the biased ones.

    q [B, Lq, H, D]; keys, values [B, Lk, H, D]; bias_log2 [>= num_biased] float32 in log2
    units (``flash_bias.to_log2``). Needs ``split_available``."""
    if q.shape[1] == 0:     # a chunk whose tokens are all pruned (cuDNN returns no tensor then)
        return q.new_empty(q.shape[:-1] + values.shape[-1:])
    if num_biased == 0:
        return _kernel(q, keys, values, 1.0 / math.sqrt(q.shape[-1]), "cudnn")
    prev = attention_lse(q, keys[:, num_biased:], values[:, num_biased:]) if keys.shape[1] > num_biased else None
    return attention_key_bias(q, keys[:, :num_biased], values[:, :num_biased], bias_log2, prev=prev)
