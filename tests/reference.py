"""An independent dense reference of Wan2.1 + Self-Forcing for tests (float64, CPU).

Written from the published equations, not from lipar's code paths: whole-sequence
forward with a dense block-causal mask, complex-number RoPE, weights read directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _ln(x, weight=None, bias=None, eps=1e-6):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _rms(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _lin(x, mod):
    return F.linear(x, mod.weight, mod.bias)


def rope_complex(x, frames, rows, cols, head_dim, theta=10000.0):
    """Wan's rope_apply with complex numbers: x [B, N, H, D], tokens in (f, r, c) order."""
    d_f = head_dim - 4 * (head_dim // 6)
    d_r = d_c = 2 * (head_dim // 6)

    def freqs(n, d):
        inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        return torch.polar(torch.ones(n, d // 2, dtype=torch.float64), torch.outer(torch.arange(n, dtype=torch.float64), inv))

    ff, fr, fc = freqs(frames, d_f), freqs(rows, d_r), freqs(cols, d_c)
    grid = torch.cat([
        ff[:, None, None, :].expand(frames, rows, cols, -1),
        fr[None, :, None, :].expand(frames, rows, cols, -1),
        fc[None, None, :, :].expand(frames, rows, cols, -1),
    ], dim=-1).reshape(frames * rows * cols, 1, -1)
    b, n, h, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, n, h, d // 2, 2))
    return torch.view_as_real(xc * grid).reshape(b, n, h, d)


def window_visibility(t, chunk_frames, window=None, sink=0):
    """Frame-level attention mask [T, T] bool (query frame, key frame) of Self-Forcing's
    chunk-wise cache: a chunk sees itself and earlier chunks; with a rolling cache of
    ``window`` frames (``local_attn_size``) whose first ``sink`` frames stay (``sink_size``),
    a chunk that does not fit next to everything before it sees the sink frames and the
    ``window - sink - n`` latest frames before it (n: its own frames), as the official
    cache eviction leaves them."""
    vis = torch.zeros(t, t, dtype=torch.bool)
    for f0 in range(0, t, chunk_frames):
        n = min(chunk_frames, t - f0)
        rows = slice(f0, f0 + n)
        vis[rows, f0:f0 + n] = True
        if window is None or f0 + n <= window:
            vis[rows, :f0] = True
        else:
            keep_recent = window - sink - n
            vis[rows, :min(sink, f0)] = True
            vis[rows, max(0, f0 - keep_recent):f0] = True
    return vis


def dense_forward(model, latent, t_frames, context, chunk_frames, text_len=512, frame_vis=None):
    """Block-causal full-sequence forward.

    latent [B, 16, T, H, W] float64, t_frames [B, T] model timesteps, context [B, L, 4096].
    frame_vis: optional [T, T] bool frame-level mask (default: block-causal chunks).
    Returns flow [B, 16, T, H, W].
    """
    cfg = model.config
    b, c, t, h, w = latent.shape
    hp, wp = h // 2, w // 2
    nh, hd = cfg.num_heads, cfg.head_dim
    x = F.conv3d(latent, model.patch_embedding.weight, model.patch_embedding.bias, stride=(1, 2, 2))
    x = x.flatten(2).transpose(1, 2)                                           # [B, N, dim]
    n = x.shape[1]
    # time embedding per frame, broadcast to tokens
    half = cfg.freq_dim // 2
    ang = t_frames.reshape(-1, 1).double() * torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    sin_emb = torch.cat([ang.cos(), ang.sin()], 1)
    te = model.time_embedding
    e = _lin(F.silu(_lin(sin_emb, te[0])), te[2])                              # [B*T, dim]
    e0 = _lin(F.silu(e), model.time_projection[1]).view(b, t, 6, cfg.dim)
    e = e.view(b, t, cfg.dim)
    tok_frame = torch.arange(t).repeat_interleave(hp * wp)
    e_tok, e0_tok = e[:, tok_frame], e0[:, tok_frame]                           # [B, N, ...]
    ctx = torch.zeros(b, text_len, context.shape[-1], dtype=torch.float64)
    ctx[:, :context.shape[1]] = context
    tx = model.text_embedding
    ctx = _lin(F.gelu(_lin(ctx, tx[0]), approximate="tanh"), tx[2])
    if frame_vis is None:
        frame_vis = window_visibility(t, chunk_frames)
    mask = torch.where(frame_vis[tok_frame][:, tok_frame], 0.0, float("-inf")).double()
    for blk in model.blocks:
        mod = (blk.modulation[None] + e0_tok)                                   # [B, N, 6, dim]
        y = _ln(x) * (1 + mod[:, :, 1]) + mod[:, :, 0]
        sa = blk.self_attn
        q = _rms(_lin(y, sa.q), sa.norm_q.weight).view(b, n, nh, hd)
        k = _rms(_lin(y, sa.k), sa.norm_k.weight).view(b, n, nh, hd)
        v = _lin(y, sa.v).view(b, n, nh, hd)
        q, k = rope_complex(q, t, hp, wp, hd), rope_complex(k, t, hp, wp, hd)
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / hd**0.5 + mask
        a = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v).reshape(b, n, -1)
        x = x + _lin(a, sa.o) * mod[:, :, 2]
        ca = blk.cross_attn
        yq = _ln(x, blk.norm3.weight, blk.norm3.bias)
        qc = _rms(_lin(yq, ca.q), ca.norm_q.weight).view(b, n, nh, hd)
        kc = _rms(_lin(ctx, ca.k), ca.norm_k.weight).view(b, -1, nh, hd)
        vc = _lin(ctx, ca.v).view(b, -1, nh, hd)
        s = torch.einsum("bqhd,bkhd->bhqk", qc, kc) / hd**0.5
        x = x + _lin(torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), vc).reshape(b, n, -1), ca.o)
        y = _ln(x) * (1 + mod[:, :, 4]) + mod[:, :, 3]
        x = x + _lin(F.gelu(_lin(y, blk.ffn[0]), approximate="tanh"), blk.ffn[2]) * mod[:, :, 5]
    hm = model.head.modulation[None] + e_tok.unsqueeze(2)                       # [B, N, 2, dim]
    out = _lin(_ln(x) * (1 + hm[:, :, 1]) + hm[:, :, 0], model.head.head)     # [B, N, 64]
    out = out.view(b, t, hp, wp, 1, 2, 2, c)
    return torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(b, c, t, h, w)


def warp(step, shift=5.0):
    u = step / 1000.0
    return shift * u / (1 + (shift - 1) * u)


def reference_sample(model, context, latent, steps, seed, chunk_frames=3, shift=5.0, edit=True,
                     window=None, sink=0):
    """Self-Forcing sampling where every pass recomputes the whole prefix densely.

    Earlier chunks enter as their clean outputs at timestep 0 (what the KV cache holds);
    the current chunk enters noisy at its timestep. Noise: one seeded CPU generator drawing
    [B, C, T, H, W] once per step, step i of every chunk using draw i. The last chunk may be
    shorter; ``window``/``sink``: a rolling cache (``window_visibility``), where every frame's
    hidden states are those its own chunk computed with its own window.
    """
    b, c, t, h, w = latent.shape
    g = torch.Generator().manual_seed(seed)
    noise = torch.stack([torch.randn((b, c, t, h, w), generator=g) for _ in steps]).double()
    sig = [warp(s, shift) for s in steps]
    out = torch.zeros_like(latent)
    vis = window_visibility(t, chunk_frames, window, sink)
    for f0 in range(0, t, chunk_frames):
        f1 = min(t, f0 + chunk_frames)
        x = noise[0, :, :, f0:f1]
        if edit:
            x = (1 - sig[0]) * latent[:, :, f0:f1] + sig[0] * x
        for i, s in enumerate(sig):
            seq = torch.cat([out[:, :, :f0], x], dim=2)
            tf = torch.cat([torch.zeros(b, f0), torch.full((b, f1 - f0), s * 1000.0)], 1).double()
            v = dense_forward(model, seq, tf, context, chunk_frames, frame_vis=vis[:f1, :f1])[:, :, f0:f1]
            x0 = x - s * v
            if i + 1 < len(sig):
                x = (1 - sig[i + 1]) * x0 + sig[i + 1] * noise[i + 1, :, :, f0:f1]
        out[:, :, f0:f1] = x0
    return out
