"""Videos of any length: a short last chunk, and a rolling KV cache with an attention sink.

The references are written independently of lipar's cache code: ``tests/reference.py``
recomputes every pass densely over the whole prefix with a frame-level mask that encodes
Self-Forcing's cache eviction (``local_attn_size`` / ``sink_size``).
"""

import pytest
import torch

import lipar
from lipar.chunks import KVWindow, chunk_spans
from lipar.plan import build_plan, empty_plan, restrict_to_window
from tests.reference import reference_sample, window_visibility


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _latent(t, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, t, 4, 6, generator=g, dtype=torch.float64)


CTX = torch.randn(1, 7, 4096, generator=torch.Generator().manual_seed(8), dtype=torch.float64)


def test_chunk_spans_and_window_visibility():
    assert chunk_spans(17, 3) == [(0, 3), (3, 3), (6, 3), (9, 3), (12, 3), (15, 2)]
    assert chunk_spans(2, 3) == [(0, 2)] and chunk_spans(4, 3) == [(0, 3), (3, 1)]
    w = KVWindow(21, 3)
    assert w.visible(18, 3) == [(0, 18)]                 # fits: everything before
    assert w.visible(21, 3) == [(0, 3), (6, 21)]         # Self-Forcing evicts frames 3-5
    assert w.visible(24, 3) == [(0, 3), (9, 24)]
    assert w.visible(21, 2) == [(0, 3), (5, 21)]         # a short chunk keeps one more frame
    assert KVWindow(21, 0).visible(24, 3) == [(6, 24)]
    assert KVWindow(0, 0).visible(300, 3) == [(0, 300)]
    # the same sets as the reference's independent mask
    for t, cf, win, sink in ((14, 3, 6, 1), (11, 3, 6, 2), (10, 2, 5, 0)):
        vis = window_visibility(t, cf, win, sink)
        for f0, n in chunk_spans(t, cf):
            ours = torch.zeros(t, dtype=torch.bool)
            for a, b in KVWindow(win, sink).visible(f0, n):
                ours[a:b] = True
            assert torch.equal(ours[:f0], vis[f0, :f0]), (t, f0)
    with pytest.raises(lipar.LiparError, match="at least 5"):
        KVWindow(4, 2).validate(3)


@pytest.mark.parametrize("t", [17, 4, 2])
def test_short_last_chunk_equals_block_causal_dense(tiny64, t):
    """17 latent frames (a 65-frame video): chunks of 3 and a last one of 2; 4 frames: 3 + 1;
    2 frames: one short chunk. Float64 against the dense reference."""
    lat = _latent(t)
    cfg = lipar.SamplerConfig(seed=11, dtype=torch.float64)
    ours = lipar.sample(tiny64, CTX, lat, config=cfg)
    ref = reference_sample(tiny64, CTX, lat, (400, 350, 250), seed=11)
    assert ours.info["chunks"] == len(chunk_spans(t, 3))
    assert _rel(ours.latent, ref) < 1e-9


@pytest.mark.parametrize("t,window,sink", [(12, 6, 1), (11, 6, 2), (14, 7, 0), (13, 8, 3)])
def test_rolling_window_with_sink_equals_dense_windowed_reference(tiny64, t, window, sink, monkeypatch):
    import lipar.recovery

    monkeypatch.setattr(lipar.recovery, "MOVE_PIECE", 5)     # the cache moves in many small pieces
    lat = _latent(t, seed=t)
    cfg = lipar.SamplerConfig(seed=2, dtype=torch.float64, window_frames=window, sink_frames=sink)
    ours = lipar.sample(tiny64, CTX, lat, config=cfg)
    ref = reference_sample(tiny64, CTX, lat, (400, 350, 250), seed=2, window=window, sink=sink)
    assert ours.info["window_rolls"]
    assert _rel(ours.latent, ref) < 1e-9
    unbounded = reference_sample(tiny64, CTX, lat, (400, 350, 250), seed=2)
    assert _rel(unbounded, ref) > 1e-4          # the window changes the result: the test can fail


def test_window_that_never_rolls_changes_nothing(tiny64):
    lat = _latent(9)
    runs = [lipar.sample(tiny64, CTX, lat, config=lipar.SamplerConfig(seed=1, dtype=torch.float64, window_frames=w))
            for w in (0, 9, 21)]
    assert torch.equal(runs[0].latent, runs[1].latent) and torch.equal(runs[0].latent, runs[2].latent)
    assert not any(r.info["window_rolls"] for r in runs)


def test_kv_cache_is_allocated_for_the_window_not_the_video():
    model = lipar.build_model(lipar.TINY, seed=0)
    ctx = CTX.float()
    sizes = []
    for t in (12, 24):
        lat = _latent(t).float()
        r = lipar.sample(model, ctx, lat, config=lipar.SamplerConfig(window_frames=6, sink_frames=3))
        sizes.append(r.info["kv_cache_bytes"])
    per_frame = 2 * lipar.TINY.num_layers * 6 * lipar.TINY.dim * 4         # k+v, 6 tokens a frame, float32
    assert sizes[0] == sizes[1] == 6 * per_frame
    r = lipar.sample(model, ctx, _latent(12).float(), config=lipar.SamplerConfig(window_frames=0))
    assert r.info["kv_cache_bytes"] == 12 * per_frame


@pytest.mark.parametrize("mode", ["none", "m_degree", "noise_aware"])
@pytest.mark.parametrize("form", ["exact", "compressed"])
def test_noop_plan_with_rolling_window_equals_unpruned(tiny64, mode, form):
    lat = _latent(14)
    cfg = lipar.SamplerConfig(seed=4, dtype=torch.float64, window_frames=6, sink_frames=2, recovery=mode,
                              recovery_form=form)
    base = lipar.sample(tiny64, CTX, lat, config=cfg).latent
    out = lipar.sample(tiny64, CTX, lat, plan=empty_plan(lat.shape), config=cfg).latent
    assert _rel(out, base) < 1e-12


def _static_with_blinking_corner(t):
    """Every token static except a corner that changes every frame."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 16, 1, 8, 12, generator=g).repeat(1, 1, t, 1, 1)
    z[:, :, :, :2, :2] = torch.randn(1, 16, t, 2, 2, generator=g)
    return z


def test_eviction_and_anchors_static_stretches_stay_cheap_while_the_sink_holds_the_anchor():
    """A long still shot: every token after chunk 0 is pruned with its anchor in frame 2. A
    sink that holds chunk 0 keeps that anchor in the cache for the whole video, so nothing
    more is computed; without a sink, the anchor leaves the window and the chunk that no
    longer sees it is computed whole (an anchor must be a clean cache entry of an earlier
    chunk, so the chunk's first frame cannot anchor the other two); its last frame is the
    new anchor for the chunks after it."""
    z = _static_with_blinking_corner(30)
    plan = build_plan(z)
    kept = plan.kept_per_chunk()[0]
    assert kept[0] == 3 * 24 and all(k == 3 for k in kept[1:])            # only the blinking corner
    same, added = restrict_to_window(plan, KVWindow(9, 3))
    assert added == 0 and same is plan
    nosink, added = restrict_to_window(plan, KVWindow(9, 0))
    assert added > 0
    per_chunk = nosink.kept_per_chunk()[0]
    # chunk c (frames 3c..3c+2) sees the 6 frames before it: frame 2 leaves at chunk 3, which is
    # computed whole; chunks 4 and 5 still see frame 11; chunk 6 no longer does, ...
    assert per_chunk == [72, 3, 3, 72, 3, 3, 72, 3, 3, 72], per_chunk
    anchors = nosink.anchor_frame[0][~nosink.keep[0]]
    assert bool((anchors >= 0).all())
    # building the plan with the window gives the same keep mask here (the re-kept frame is
    # identical to the old anchor, so distances do not change)
    assert torch.equal(build_plan(z, window=KVWindow(9, 0)).keep, nosink.keep)


def test_pruned_tokens_whose_stand_in_left_the_window_leave_with_it():
    """Cache replay of windowed layouts: each chunk's key range holds exactly the kept tokens of
    the frames its window shows plus its own, biased keys first, and every bias counts the
    pruned tokens whose stand-in is still there."""
    from lipar.recovery import build_layouts, move_visible

    z = _static_with_blinking_corner(20)
    z[:, :, 9:, 4:6, 6:8] += 3.0                       # a patch that changes once at frame 9
    plan = restrict_to_window(build_plan(z), KVWindow(7, 1))[0]
    hw = 24
    window = KVWindow(7, 1)
    for mode in ("m_degree", "noise_aware"):
        lays = build_layouts(plan.latent_shape, lipar.TINY, 3, plan=plan, mode=mode, form="compressed",
                             window=window)
        cap = max(l.key_end for l in lays)
        kb = torch.full((1, cap, 1, 1), -1.0)           # each slot holds the flat index of its token
        vb = kb.clone()
        keep = plan.keep[0].flatten()
        src = plan.source_frame[0].flatten()
        for lay in lays:
            move_visible(kb, vb, lay)
            toks = (lay.frame_start * hw + lay.kept_idx).double().view(1, -1, 1, 1)
            kb[:, lay.cache_len:lay.cache_len + lay.own_len] = toks[:, :lay.own_len]
            if lay.num_own_biased:
                kb[:, lay.own_biased_slot:lay.own_biased_slot + lay.num_own_biased] = toks[:, lay.own_len:]
            in_range = kb[0, lay.key_start:lay.key_end, 0, 0].long().tolist()
            f0, n = lay.frame_start, lay.frames
            seen = [f for a, b in window.visible(f0, n) for f in range(a, b)] + list(range(f0, f0 + n))
            expect = sorted(i for i in torch.nonzero(keep).squeeze(1).tolist() if i // hw in seen)
            assert sorted(in_range) == expect, (mode, lay.index)
            if lay.key_bias is None:
                continue
            m = torch.expm1(lay.key_bias).round().long()
            assert not bool(m[lay.num_biased:].any())
            for slot in torch.nonzero(m).squeeze(1).tolist():
                tok = in_range[slot]
                stands = [i for i in torch.nonzero(~keep).squeeze(1).tolist()
                          if i // hw in seen and i % hw == tok % hw and (
                              (plan.anchor_frame[0].flatten()[i] if (mode == "noise_aware" and i // hw >= f0)
                               else src[i]) == tok // hw)]
                assert m[slot] == len(stands), (mode, lay.index, slot)
