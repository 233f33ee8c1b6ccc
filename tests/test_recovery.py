"""Attention recovery at the attention level (paper Eq. 3-4, section 2.4.1)."""

import pytest
import torch

import lipar
from lipar.attention import MaskAttention, choose_attention
from lipar.plan import PlanConfig, PruningPlan, derive_frames
from lipar.recovery import build_layouts, fill_keys
from lipar.rope import apply_rope, rope_angles, rope_table, token_positions

CFG = lipar.TINY
H, D = CFG.num_heads, CFG.head_dim


def _plan(keep: torch.Tensor, chunk=3) -> PruningPlan:
    """A plan from a keep mask [1, T, Hp, Wp] (frame 0 and chunk 0 must be kept)."""
    src, anc = derive_frames(keep, chunk)
    t, hp, wp = keep.shape[1:]
    return PruningPlan(keep, src, anc, (1, 16, t, hp * 2, wp * 2), PlanConfig(chunk_frames=chunk))


def _random_keep(t=9, hp=2, wp=3, seed=0, p=0.5):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(1, t, hp, wp, generator=g) > p
    keep[:, :3] = True   # chunk 0 has no anchor: never pruned
    return keep


def _duplicated_qkv(plan, standin_frame, seed=0):
    """Unroped q, k, v [1, N, H, D] over the whole grid where each pruned token's k/v are
    exact copies of its stand-in's (same (y, x), frame ``standin_frame``)."""
    g = torch.Generator().manual_seed(seed)
    t, hp, wp = plan.keep.shape[1:]
    n = t * hp * wp
    q, k, v = (torch.randn(1, n, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    keep = plan.keep[0].flatten()
    yx = torch.arange(n) % (hp * wp)
    sf = standin_frame[0].flatten()
    for i in torch.nonzero(~keep).squeeze(1).tolist():
        j = sf[i].item() * hp * wp + yx[i].item()
        k[:, i], v[:, i] = k[:, j], v[:, j]
    return q, k, v


def _full_attention(q, k, v, t, hp, wp, chunk):
    """Exact block-causal attention over all tokens, RoPE at true positions -> [1, N, H, D]."""
    pos = token_positions(t, hp, wp)
    rot = rope_table(rope_angles(pos, CFG), torch.float64)
    qr, kr = apply_rope(q, rot), apply_rope(k, rot)
    chunk_of = pos[:, 0] // chunk
    mask = torch.where(chunk_of[None] <= chunk_of[:, None], 0.0, float("-inf")).double()
    s = torch.einsum("bqhd,bkhd->bhqk", qr, kr) / D**0.5 + mask
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)


def _recovered(q, k, v, plan, mode, form, chunk=3, scratch=False):
    """Attention of kept queries through lipar's layouts and key buffers, chunk by chunk.
    With ``scratch`` the cache holds kept tokens only (NaN beyond) and duplicates are
    assembled in a separate buffer, as the sampler does."""
    t, hp, wp = plan.keep.shape[1:]
    lays = build_layouts(plan.latent_shape, CFG, chunk, plan=plan, mode=mode, form=form, dtype=torch.float64)
    cap = max(l.key_end - l.num_dups for l in lays) if scratch else max(l.key_end for l in lays)
    kb = torch.full((1, cap + 4, H, D), float("nan"), dtype=torch.float64)
    vb = torch.full_like(kb, float("nan"))
    sb = None
    if scratch:
        n = max(l.key_len for l in lays)
        sb = (torch.zeros(1, n, H, D, dtype=torch.float64), torch.zeros(1, n, H, D, dtype=torch.float64))
    outs = {}
    attn = MaskAttention()
    for lay in lays:
        g0 = lay.frame_start * hp * wp
        idx = g0 + lay.kept_idx
        qk = apply_rope(q[:, idx], lay.rope)
        kk = apply_rope(k[:, idx], lay.rope)
        keys, values = fill_keys(kb, vb, kk, v[:, idx], lay, scratch=sb)
        attn.begin_chunk(lay)
        out = attn(qk, keys, values, lay)
        for j, gi in enumerate(idx.tolist()):
            outs[gi] = out[:, j]
    return outs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_m_degree_exact_equals_full_attention_with_exact_duplicates(seed):
    keep = _random_keep(seed=seed)
    plan = _plan(keep)
    assert (~plan.keep).sum() > 5
    q, k, v = _duplicated_qkv(plan, plan.source_frame, seed)
    full = _full_attention(q, k, v, *keep.shape[1:], 3)
    rec = _recovered(q, k, v, plan, "m_degree", "exact")
    rec_scratch = _recovered(q, k, v, plan, "m_degree", "exact", scratch=True)
    naive = _recovered(q, k, v, plan, "none", "exact")
    kept = torch.nonzero(plan.keep[0].flatten()).squeeze(1).tolist()
    err = max((rec[i] - full[:, i]).abs().max().item() for i in kept)
    assert max((rec_scratch[i] - full[:, i]).abs().max().item() for i in kept) < 1e-12
    naive_err = max((naive[i] - full[:, i]).abs().max().item() for i in kept)
    assert err < 1e-12                 # exact, with cache (later chunks) and without (chunk 0)
    assert naive_err > 1e-3            # naive pruning is visibly wrong on the same data


def test_noise_aware_exact_equals_full_attention_when_anchors_duplicate():
    keep = _random_keep(seed=5)
    plan = _plan(keep)
    t = keep.shape[1]
    for c in range(1, t // 3):
        # Chunk c's own pruned tokens copy their anchor (a clean cache entry); pruned tokens
        # of earlier chunks copy their source; later chunks are invisible to chunk c.
        sf = plan.source_frame.clone()
        sl = slice(3 * c, 3 * c + 3)
        sf[:, sl] = plan.anchor_frame[:, sl]
        q, k, v = _duplicated_qkv(plan, sf, seed=c)
        full = _full_attention(q, k, v, *keep.shape[1:], 3)
        rec = _recovered(q, k, v, plan, "noise_aware", "exact")
        hw = keep.shape[2] * keep.shape[3]
        kept = [i for i in torch.nonzero(plan.keep[0].flatten()).squeeze(1).tolist() if i // hw // 3 == c]
        assert kept
        err = max((rec[i] - full[:, i]).abs().max().item() for i in kept)
        assert err < 1e-12, c


@pytest.mark.parametrize("mode", ["m_degree", "noise_aware"])
def test_compressed_form_equals_unrotated_duplicates(mode):
    """The compressed form is full attention with each duplicate placed at its stand-in's
    position (log-multiplicity bias); check that against an explicit dense computation.
    Stand-ins: the source frame, or with noise_aware the anchor for the chunk's own tokens."""
    keep = _random_keep(seed=7)
    plan = _plan(keep)
    t, hp, wp = keep.shape[1:]
    hw = hp * wp
    g = torch.Generator().manual_seed(0)
    n = t * hw
    q, k, v = (torch.randn(1, n, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    rec = _recovered(q, k, v, plan, mode, "compressed")
    pos = token_positions(t, hp, wp)
    rot = rope_table(rope_angles(pos, CFG), torch.float64)
    qr, kr = apply_rope(q, rot), apply_rope(k, rot)
    keepf = plan.keep[0].flatten()
    chunk_of = torch.arange(n) // hw // 3
    yx = torch.arange(n) % hw
    for i in torch.nonzero(keepf).squeeze(1).tolist():
        c = i // hw // 3
        stand = plan.source_frame[0].flatten().clone()
        if mode == "noise_aware":
            stand[chunk_of == c] = plan.anchor_frame[0].flatten()[chunk_of == c]
        src = torch.where(keepf, torch.arange(n), stand * hw + yx)   # every token -> itself or its stand-in
        vis = chunk_of <= c
        s = torch.einsum("bhd,bkhd->bhk", qr[:, i], kr[:, src][:, vis]) / D**0.5
        ref = torch.einsum("bhk,bkhd->bhd", s.softmax(-1), v[:, src][:, vis])
        assert (rec[i] - ref).abs().max().item() < 1e-12


@pytest.mark.parametrize("mode", ["m_degree", "noise_aware"])
@pytest.mark.parametrize("seed", [0, 3])
def test_compressed_layouts_split_the_cache_into_biased_and_plain_regions(seed, mode):
    """Replaying the cache writes: each chunk's key range holds every kept token of it and
    of earlier chunks exactly once, all keys with a bias come first, tokens keep their
    slots across chunks, and the cache needs only the kept count plus one chunk's tail."""
    keep = _random_keep(t=12, hp=3, wp=4, seed=seed)
    plan = _plan(keep)
    hw = 12
    lays = build_layouts(plan.latent_shape, CFG, 3, plan=plan, mode=mode, form="compressed")
    total = int(plan.keep.sum())
    slots: dict[int, int] = {}           # slot -> flat token index
    home: dict[int, int] = {}            # token -> its permanent slot
    for lay in lays:
        toks = (lay.frame_start * hw + lay.kept_idx).tolist()
        nf = lay.num_own_biased
        for j, tok in enumerate(toks[:lay.own_len]):
            slots[lay.cache_len + j] = tok
        for j, tok in enumerate(toks[len(toks) - nf:]):
            slots[lay.own_biased_slot + j] = tok
            home[tok] = lay.own_biased_slot + j
        for j, tok in enumerate(toks[:len(toks) - nf]):
            home[tok] = lay.cache_len + j
        in_range = [slots[s] for s in range(lay.key_start, lay.key_end)]
        visible = [i for i in torch.nonzero(plan.keep[0].flatten()).squeeze(1).tolist() if i // hw // 3 <= lay.index]
        assert sorted(in_range) == visible
        if lay.key_bias is not None:
            nz = torch.nonzero(lay.key_bias > 0).squeeze(1)
            assert nz.numel() and nz.max().item() < lay.num_biased
        if mode == "noise_aware":   # the chunk's own tokens are never biased for itself
            assert not set(in_range[:lay.num_biased]) & set(toks)
    assert sorted(home.values()) == list(range(total))
    assert max(l.key_end for l in lays) <= total + max(l.num_own_biased for l in lays)
    assert 0 < lays[-1].num_biased < total   # both regions in use here


def test_mask_attention_is_softmax_with_a_per_key_bias():
    """The mask strategy equals softmax(q.k / sqrt(D) + bias) v in float64, per-sample biases and a
    masked (-inf) padding key included; off CUDA every backend choice gives it."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 11, 2, 16, generator=g, dtype=torch.float64) for _ in range(3))
    bias = torch.log1p(torch.randint(0, 4, (2, 11), generator=g).double())
    bias[1, 3] = float("-inf")
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / 4.0 + bias[:, None, None, :]
    ref = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)
    attn = choose_attention("cpu", "auto")
    assert isinstance(attn, MaskAttention)
    lay = SimpleNamespace(key_bias=bias, num_biased=11)
    attn.begin_chunk(lay)
    assert (attn(q, k, v, lay) - ref).abs().max().item() < 1e-12
    attn.begin_chunk(SimpleNamespace(key_bias=None, num_biased=0))   # the bias does not leak into the next chunk
    assert (attn(q, k, v, lay) - ref).abs().max().item() > 1e-3


@pytest.mark.parametrize("backend,bias_mode,msg", [("xformers", None, "Unknown attention backend"),
                                                   ("cudnn", None, "needs a CUDA device"),
                                                   ("flash_attn", None, "needs a CUDA device"),
                                                   ("auto", "fold", "Unknown bias mode"),
                                                   ("auto", "split", "needs a CUDA GPU")])
def test_attention_choice_refuses_what_cannot_run(backend, bias_mode, msg):
    with pytest.raises(lipar.LiparError, match=msg):
        choose_attention("cpu", backend, bias_mode=bias_mode)


def test_flash_attention_that_cannot_compile_falls_back_to_cudnn(monkeypatch, caplog):
    """A FlashAttention kernel that fails to build (import or compile error on this GPU/toolkit) is
    replaced by the cuDNN split form before the run starts, with a warning naming the error."""
    import logging

    import lipar.attention as la

    def broken(*a, **k):
        raise RuntimeError("ptxas fatal: unsupported GPU architecture\nmore lines")
    monkeypatch.setattr(la, "flash_lse", broken)
    with caplog.at_level(logging.WARNING, logger="lipar"):
        got = la.SplitAttention("flash_attn_4").prepare(torch.bfloat16, 2, 64, device="cpu")
    assert isinstance(got, la.SplitAttention) and got.plain == "cudnn"
    assert "flash_attn_4 could not run here (RuntimeError: ptxas fatal" in caplog.text
    # fp32 (or a head size the bias kernel does not take) runs the mask form instead
    assert isinstance(la.SplitAttention("cudnn").prepare(torch.float32, 2, 64, device="cpu"), MaskAttention)
    assert isinstance(la.SplitAttention("cudnn").prepare(torch.bfloat16, 2, 96, device="cpu"), MaskAttention)
