"""How attention runs: one strategy object per run, chosen once from the device, the installed
kernels and the user's backend option.

All tensors are ``[B, L, H, D]``. Self-attention of a chunk runs over the KV cache's visible
keys; attention recovery gives the keys of its first ``layout.num_biased`` slots a per-key
score bias (``layout.key_bias [Lk]``, log-multiplicities; ``-inf`` masks padding keys). Two
strategies, both with ``begin_chunk(layout)`` (once per chunk, before the layers) and
``__call__(q, keys, values, layout)`` (per layer):

``SplitAttention`` (CUDA with Triton, bf16/fp16): a fast plain kernel -- cuDNN through SDPA, or
FlashAttention (``flash_attn.cute``, FlashAttention-4, or the ``flash_attn`` 2.x package) --
runs over the keys that never carry a bias and returns its log-sum-exp; ``lipar.flash_bias``
continues that softmax over the biased keys. Nothing is materialised per pair of tokens.

``MaskAttention`` (everything else): PyTorch SDPA with the bias as a broadcast additive mask
``[1, 1, 1, Lk]``.

    >>> attn = choose_attention(torch.device("cuda"), "auto")   # SplitAttention(plain='flash_attn_4') on an H200 with FA4
    >>> attn = attn.prepare(torch.bfloat16, heads=12, head_dim=128)   # compiles FA4's kernels before any capture
    >>> attn.begin_chunk(layout); out = attn(q, keys, values, layout)     # [1, Nk, 12, 128]

Cross-attention (text keys, no bias) always runs through SDPA (``cross``): it is captured in
the CUDA graphs, and its 512 keys leave nothing to gain. Tests: tests/test_gpu.py
(``test_attention_strategies_match_sdpa``), tests/test_recovery.py.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time

import torch
import torch.nn.functional as F

from .errors import LiparError
from .flash_bias import attention_key_bias, to_log2
from .kernels import triton_available

log = logging.getLogger("lipar")

BACKENDS = ("auto", "sdpa", "cudnn", "flash_attn")
# GPU families (compute capability major) where ``auto`` runs FlashAttention-4 over the plain keys
# when it is installed: measured faster than cuDNN there (H200: 1.44 vs 1.72 ms for 4680 x 32760
# tokens, 12 x 128 bf16; benchmarks/results/h200_attention_backends.json). Elsewhere auto is cuDNN.
FA4_AUTO_FAMILIES = (9,)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch SDPA in lipar's layout: ``[B, Lq, H, D] x [B, Lk, H, D] -> [B, Lq, H, D]``; mask broadcasts
    to ``[B, H, Lq, Lk]`` (additive)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def cudnn_priority():
    """Context in which SDPA tries cuDNN attention first (on an H100 it ran 1.6-1.9x faster than
    SDPA's flash kernel for our shapes, benchmarks/results/attention_kernels.json)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


# ---- plain kernels that return their log-sum-exp ----------------------------------------------------

def cudnn_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDNN attention and its log-sum-exp: ``(out [B, Lq, H, D], lse [B, Lq, H] float32, natural log)``."""
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, True, scale=1.0 / math.sqrt(q.shape[-1]))
    b, lq, h, _ = q.shape
    return res[0].transpose(1, 2), res[1].view(b, h, lq).transpose(1, 2)


@functools.lru_cache(maxsize=1)
def _flash_attn_4():
    """FlashAttention-4's forward (``flash_attn.cute``), or None when it is not importable."""
    try:
        from flash_attn.cute.interface import _flash_attn_fwd  # type: ignore[import-not-found]
    except Exception as e:   # an absent package, or one whose CUDA libraries fail to load
        log.debug("FlashAttention-4 unavailable: %s", e)
        return None
    return _flash_attn_fwd


@functools.lru_cache(maxsize=1)
def _flash_attn_2():
    """The flash-attn 2.x package's ``flash_attn_func``, or None."""
    try:
        from flash_attn import flash_attn_func  # type: ignore[import-not-found]
    except Exception as e:
        log.debug("flash-attn 2.x unavailable: %s", e)
        return None
    return flash_attn_func


def flash_attn_version(device: torch.device) -> str | None:
    """'flash_attn_4' where FlashAttention-4 imports and the GPU is Hopper or newer, else 'flash_attn_2'
    where the 2.x package imports, else None."""
    if device.type != "cuda":
        return None
    if torch.cuda.get_device_capability(device)[0] >= 9 and _flash_attn_4() is not None:
        return "flash_attn_4"
    return "flash_attn_2" if _flash_attn_2() is not None else None


def flash_lse(version: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention (4 or 2.x) and its log-sum-exp, as ``cudnn_lse`` returns them."""
    if version == "flash_attn_4":
        out, lse = _flash_attn_4()(q, k, v, softmax_scale=1.0 / math.sqrt(q.shape[-1]), return_lse=True)[:2]
    else:
        out, lse, _ = _flash_attn_2()(q, k, v, softmax_scale=1.0 / math.sqrt(q.shape[-1]), return_attn_probs=True)
    return out, lse.transpose(1, 2)      # lse [B, H, Lq] -> [B, Lq, H]


def flash_plain(version: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if version == "flash_attn_4":
        return _flash_attn_4()(q, k, v, softmax_scale=1.0 / math.sqrt(q.shape[-1]))[0]
    return _flash_attn_2()(q, k, v, softmax_scale=1.0 / math.sqrt(q.shape[-1]))


# ---- strategies --------------------------------------------------------------------------------------

class Attention:
    """One run's attention. ``name`` says what runs; ``compile_seconds`` what ``prepare`` spent
    compiling kernels (before any CUDA-graph capture)."""

    name = "attention"
    compile_seconds = 0.0

    def prepare(self, dtype: torch.dtype, heads: int, head_dim: int, device: torch.device | str = "cuda") -> Attention:
        """Once per run, before the first chunk: compile what needs compiling (on ``device``). Returns
        the strategy to use (itself, or its fallback when a kernel cannot be built here)."""
        return self

    def context(self):
        """Context the model's passes run in (SDPA's kernel priority)."""
        return contextlib.nullcontext()

    def cross(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Cross-attention to the text: plain SDPA, capturable in a CUDA graph."""
        return sdpa(q, k, v)

    def begin_chunk(self, lay) -> None:
        """Once per chunk, before the layers: per-chunk state derived from the layout."""

    def __call__(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lay) -> torch.Tensor:
        """Self-attention of a chunk's kept queries ``q [B, Nk, H, D]`` over ``keys``/``values``
        ``[B, Lk, H, D]`` with ``lay.key_bias`` on the first ``lay.num_biased`` keys."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"attention": self.name, "attention_compile_seconds": round(self.compile_seconds, 3)}


class MaskAttention(Attention):
    """PyTorch SDPA; recovery's per-key bias as a broadcast additive mask. Runs on any device."""

    def __init__(self, cudnn_first: bool = False):
        self.cudnn_first = cudnn_first
        self.name = "sdpa" + (" (cudnn first)" if cudnn_first else "")
        self._mask: torch.Tensor | None = None

    def context(self):
        return cudnn_priority() if self.cudnn_first else contextlib.nullcontext()

    def begin_chunk(self, lay) -> None:
        self._mask = None
        if lay.key_bias is not None:
            self._mask = lay.key_bias.view(-1, 1, 1, lay.key_bias.shape[-1])      # [1|B, 1, 1, Lk]

    def __call__(self, q, keys, values, lay):
        mask = None if self._mask is None else self._mask.to(q.dtype)
        return sdpa(q, keys, values, mask)


class SplitAttention(Attention):
    """CUDA: a plain kernel over the never-biased keys, then ``lipar.flash_bias`` continues its
    softmax over the biased ones. ``plain``: 'cudnn', 'flash_attn_4' or 'flash_attn_2'."""

    def __init__(self, plain: str):
        self.plain = plain
        self.name = f"{plain} + bias kernel"
        self._bias_log2: torch.Tensor | None = None

    def prepare(self, dtype, heads, head_dim, device="cuda"):
        if dtype not in (torch.bfloat16, torch.float16) or not (16 <= head_dim <= 128) or head_dim & (head_dim - 1):
            # lipar's bias kernel: bf16/fp16, head_dim a power of two in 16..128
            return MaskAttention(cudnn_first=True)
        if self.plain == "cudnn":
            return self
        t0 = time.perf_counter()
        try:      # the first call of each kernel compiles for seconds: both variants (with/without lse) now
            q = torch.randn(1, 128, heads, head_dim, device=device, dtype=dtype)
            flash_lse(self.plain, q, q, q)
            flash_plain(self.plain, q, q, q)
            torch.cuda.synchronize(device)
        except Exception as e:   # a kernel this GPU, driver or toolkit cannot build: run cuDNN instead
            log.warning("%s could not run here (%s: %s); using cuDNN attention instead.",
                        self.plain, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            return SplitAttention("cudnn")
        self.compile_seconds = time.perf_counter() - t0
        if self.compile_seconds > 0.5:       # compiled now (later runs in this process reuse the kernels)
            log.info("%s compiled in %.2f s (README 'Attention backends and FP8': keeping it between sessions)",
                     self.plain, self.compile_seconds)
        return self

    def context(self):
        return cudnn_priority()

    def begin_chunk(self, lay) -> None:
        self._bias_log2 = None
        if lay.key_bias is not None and lay.num_biased:
            self._bias_log2 = to_log2(lay.key_bias[:lay.num_biased])

    def _plain(self, q, k, v):
        if self.plain == "cudnn":
            return sdpa(q, k, v)
        return flash_plain(self.plain, q, k, v)

    def _plain_lse(self, q, k, v):
        if self.plain == "cudnn":
            return cudnn_lse(q, k, v)
        return flash_lse(self.plain, q, k, v)

    def __call__(self, q, keys, values, lay):
        if q.shape[1] == 0:     # a chunk whose tokens are all pruned (the kernels return no tensor then)
            return q.new_empty(q.shape[:-1] + values.shape[-1:])
        nb = lay.num_biased if self._bias_log2 is not None else 0
        if nb == 0:
            return self._plain(q, keys, values)
        prev = self._plain_lse(q, keys[:, nb:], values[:, nb:]) if keys.shape[1] > nb else None
        return attention_key_bias(q, keys[:, :nb], values[:, :nb], self._bias_log2, prev=prev)


# ---- the choice ------------------------------------------------------------------------------------------

def check_backend(backend: str, device: torch.device) -> None:
    """Refuse an unknown backend, or one the device cannot run, with the fix."""
    if backend not in BACKENDS:
        raise LiparError(f"Unknown attention backend {backend!r}; choose one of {list(BACKENDS)}.")
    if backend in ("cudnn", "flash_attn") and device.type != "cuda":
        raise LiparError(f"Attention backend {backend!r} needs a CUDA device; choose 'auto' or 'sdpa'.")
    if backend == "flash_attn" and flash_attn_version(device) is None:
        raise LiparError("Attention backend 'flash_attn' was asked for but neither FlashAttention-4 (flash-attn-4, "
                         "Hopper or newer) nor flash-attn 2.x is installed; install one or choose 'auto'.")


def split_possible(device: torch.device) -> bool:
    """The split form needs CUDA, Triton, and cuDNN attention with its log-sum-exp (Ampere or newer)."""
    return (device.type == "cuda" and triton_available() and torch.backends.cudnn.is_available()
            and torch.cuda.get_device_capability(device)[0] >= 8)


def choose_attention(device: torch.device | str, backend: str = "auto", *, bias_mode: str | None = None) -> Attention:
    """The run's attention strategy.

    backend (the user's option): 'auto' (FlashAttention-4 over the plain keys where it is installed
    on a GPU family in ``FA4_AUTO_FAMILIES``, cuDNN elsewhere on CUDA, SDPA off CUDA), 'cudnn',
    'flash_attn' (FlashAttention-4 or 2.x, whichever is installed), 'sdpa' (PyTorch's own choice,
    bias as a mask). bias_mode: a test hook ('mask' or 'split') that forces the form.
    """
    device = torch.device(device)
    check_backend(backend, device)
    if bias_mode not in (None, "mask", "split"):
        raise LiparError(f"Unknown bias mode {bias_mode!r} (a test hook: 'mask' or 'split').")
    can_split = split_possible(device)
    if bias_mode == "split" and not can_split:
        raise LiparError("The split attention form needs a CUDA GPU (Ampere or newer) with cuDNN and Triton.")
    if device.type != "cuda" or backend == "sdpa" or bias_mode == "mask" or not can_split:
        if backend == "flash_attn" and not can_split:
            log.warning("flash_attn needs Triton for attention recovery's bias; using SDPA with a mask.")
        return MaskAttention(cudnn_first=device.type == "cuda" and backend != "sdpa")
    version = flash_attn_version(device)
    if backend == "flash_attn" or (backend == "auto" and version == "flash_attn_4"
                                    and torch.cuda.get_device_capability(device)[0] in FA4_AUTO_FAMILIES):
        return SplitAttention(version)
    return SplitAttention("cudnn")


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention with an optional per-key bias ``[Lk]`` or ``[B, Lk]``, by SDPA with a mask:
    the definition the strategies are tested against (any device, any dtype)."""
    mask = None
    if key_bias is not None:
        mask = key_bias.to(q.dtype).view(-1, 1, 1, k.shape[1])
    return sdpa(q, k, v, mask)
