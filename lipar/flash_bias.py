"""FlashAttention forward over keys with a per-key score bias, continuing a finished attention (Triton).

Attention recovery gives some keys a score bias ``log(1 + m)``. cuDNN runs plain
attention fastest; a bias costs it ~25% (folded into an extra key channel, keys 144
wide instead of 128). So the sampler keeps the keys that ever carry a bias in a region
of their own, runs cuDNN over the plain region, and this kernel *continues* that
result over the biased region: it starts the online softmax of FlashAttention-2 from
the plain part's output and log-sum-exp, adds the bias to each score tile, and writes
the attention over both regions. No scores are materialised; no merge pass follows.

Shapes: q ``[B, Lq, H, D]``; k, v ``[B, Lk, H, D]`` (any strides with a unit channel
stride: cache views work as they are); bias ``[Lk]`` (or ``[B, Lk]``) float32 in log2
units (``to_log2``); optional previous part: out ``[B, Lq, H, D]`` and lse ``[B, Lq, H]``
float32 (natural log, as cuDNN returns it). D: a power of two, 16..128; bf16 or fp16.
"""

from __future__ import annotations

import functools
import math

import torch

from .kernels import _triton

LOG2E = 1.4426950408889634
NEG_BIAS = -30000.0   # finite floor for biases: exp() underflows to 0, no inf - inf, fits bf16 keys

# (BLOCK_M, BLOCK_N, num_warps, num_stages): the fastest of 11 configs on the split shapes of
# the 33.8% run on an H100 (the removed benchmarks/bias_attention.py --sweep, results/bias_attention_sweep.json; within 2% of (128, 64, 8, 4)).
# Tried and dropped: TMA tensor-descriptor loads and warp specialisation (slower or no
# better), lazy rescaling of the accumulator (the branch cost 15%).
CONFIG = (128, 64, 8, 3)


@functools.lru_cache(maxsize=1)
def _kernel():
    triton, tl = _triton()

    @triton.jit
    def _tile(acc, l_i, m_i, q, k_ptr, v_ptr, b_ptr, start, lk, stride_kn, stride_vn, qk_scale, offs_n, offs_d,
              TAIL: tl.constexpr):
        n = start + offs_n
        if TAIL:
            valid = n < lk
            k = tl.load(k_ptr + n[:, None] * stride_kn + offs_d[None, :], mask=valid[:, None], other=0.0)
            bias = tl.load(b_ptr + n, mask=valid, other=float("-inf"))
            v = tl.load(v_ptr + n[:, None] * stride_vn + offs_d[None, :], mask=valid[:, None], other=0.0)
        else:
            k = tl.load(k_ptr + n[:, None] * stride_kn + offs_d[None, :])
            bias = tl.load(b_ptr + n)
            v = tl.load(v_ptr + n[:, None] * stride_vn + offs_d[None, :])
        s = tl.dot(q, tl.trans(k)) * qk_scale + bias[None, :]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        return acc, l_i, m_new

    @triton.jit
    def attn_fwd(Q, K, V, Bias, Prev, PrevLse, O, qk_scale, lq, lk, heads,
                 sqb, sqm, sqh, skb, skn, skh, svb, svn, svh, spb, spm, sph, slb, slm, slh, sob, som, soh, sbb,
                 HAS_PREV: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // heads
        h = bh % heads
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        row_ok = offs_m < lq
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        if HAS_PREV:   # state of the finished part: max = its lse (log2 units), sum = 1, acc = its output
            m_i = tl.load(PrevLse + b * slb + h * slh + offs_m * slm, mask=row_ok, other=0.0) * 1.4426950408889634
            l_i = tl.full([BLOCK_M], 1.0, tl.float32)
            acc = tl.load(Prev + b * spb + h * sph + offs_m[:, None] * spm + offs_d[None, :], mask=row_ok[:, None],
                          other=0.0).to(tl.float32)
        else:
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, D], tl.float32)
        k_ptr = K + b * skb + h * skh
        v_ptr = V + b * svb + h * svh
        b_ptr = Bias + b * sbb
        full = (lk // BLOCK_N) * BLOCK_N
        for start in range(0, full, BLOCK_N):
            acc, l_i, m_i = _tile(acc, l_i, m_i, q, k_ptr, v_ptr, b_ptr, start, lk, skn, svn, qk_scale, offs_n,
                                  offs_d, False)
        if full < lk:
            acc, l_i, m_i = _tile(acc, l_i, m_i, q, k_ptr, v_ptr, b_ptr, full, lk, skn, svn, qk_scale, offs_n,
                                  offs_d, True)
        out = acc / l_i[:, None]
        tl.store(O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=row_ok[:, None])

    return attn_fwd


def to_log2(key_bias: torch.Tensor) -> torch.Tensor:
    """Natural-log score bias -> the kernel's float32 log2 units, clamped to a finite floor."""
    return (key_bias.float() * LOG2E).clamp_(min=NEG_BIAS).contiguous()


def attention_key_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_log2: torch.Tensor, *,
                       prev: tuple[torch.Tensor, torch.Tensor] | None = None,
                       config: tuple[int, int, int, int] = CONFIG) -> torch.Tensor:
    """Attention of q over ``prev``'s keys (if given) and over k/v with a per-key bias.

    q [B, Lq, H, D]; k, v [B, Lk, H, D]; bias_log2 [Lk] or [B, Lk] float32 (a longer
    buffer is fine: its first Lk entries are used); prev: (out [B, Lq, H, D], lse
    [B, Lq, H] float32, natural log) of attention over other keys. Returns [B, Lq, H, D].
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    if lk == 0:
        raise ValueError("attention_key_bias needs at least one key")
    for t in (q, k, v):
        if t.stride(-1) != 1:
            raise ValueError("attention_key_bias needs a unit stride on the channel axis")
    if bias_log2.dtype != torch.float32 or bias_log2.stride(-1) != 1 or bias_log2.shape[-1] < lk:
        raise ValueError("bias_log2 must be float32 with unit stride and at least Lk entries")
    out = torch.empty(b, lq, h, d, device=q.device, dtype=q.dtype)
    if lq == 0:
        return out
    if prev is None:
        po, pl = out, bias_log2   # unread placeholders (HAS_PREV=False): no allocation
    else:
        po, pl = prev
        if po.stride(-1) != 1:
            raise ValueError("the previous part's output needs a unit stride on the channel axis")
    bm, bn, warps, stages = config
    grid = (-(-lq // bm), b * h)
    _kernel()[grid](q, k, v, bias_log2, po, pl, out, LOG2E / math.sqrt(d), lq, lk, h,
                    q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                    v.stride(0), v.stride(1), v.stride(2), po.stride(0), po.stride(1), po.stride(2),
                    *(pl.stride() + (0, 0, 0))[:3], out.stride(0), out.stride(1), out.stride(2),
                    bias_log2.stride(0) if bias_log2.ndim == 2 else 0,
                    HAS_PREV=prev is not None, D=d, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
    return out
