"""Pruning plans on hand-built latents with known static and moving patches."""

import pytest
import torch

import lipar
import lipar.clips
from lipar.plan import PlanConfig, PruningPlan, build_plan, patchify

NOCLEAN = dict(smooth=1, dilate_kept=0, open_pruned=0, trim_outliers=0.0)


def _latent(t=9, hp=3, wp=4, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, 16, 1, hp * 2, wp * 2, generator=g)
    return base.repeat(1, 1, t, 1, 1).clone()


def _set_patch(z, t, y, x, value):
    z[:, :, t, 2 * y:2 * y + 2, 2 * x:2 * x + 2] = value


def test_static_video_prunes_everything_but_chunk0():
    z = _latent()
    plan = build_plan(z, PlanConfig(**NOCLEAN))
    keep = plan.keep[0]
    assert keep[:3].all()                    # frame 0 never, chunk 0 has no anchor
    assert not keep[3:].any()
    assert plan.prune_ratio() == pytest.approx(6 / 9)
    assert (plan.source_frame[0, 3:] == 2).all() and (plan.anchor_frame[0, 3:6] == 2).all()
    assert (plan.anchor_frame[0, 6:] == 2).all()   # nothing kept in chunk 1: anchor stays frame 2


def test_moving_patch_is_kept_and_thresholds_apply():
    z = _latent()
    # a patch that changes every frame at (1, 1): kept everywhere
    for t in range(9):
        _set_patch(z, t, 1, 1, float(t))
    # a slow drift at (0, 0): each step 0.11 (< 0.15) but accumulates vs the anchor
    for t in range(9):
        _set_patch(z, t, 0, 0, 0.11 * t)
    plan = build_plan(z, PlanConfig(threshold=0.15, anchor_threshold=0.3, **NOCLEAN))
    keep = plan.keep[0]
    assert keep[:, 1, 1].all()
    # drift: frame 3 vs anchor frame 2 differs by 0.11 -> pruned; frame 4 by 0.22 -> pruned;
    # frame 5 by 0.33 -> kept; chunk 2 anchors on frame 5 and repeats the pattern
    assert keep[:, 0, 0].tolist() == [True, True, True, False, False, True, False, False, True]
    # same clip, tighter anchor threshold: frame 4 (0.22 away) is kept too
    plan2 = build_plan(z, PlanConfig(threshold=0.15, anchor_threshold=0.15, **NOCLEAN))
    assert plan2.keep[0, :, 0, 0].tolist()[3:6] == [False, True, True]
    # threshold 0 prunes nothing
    assert build_plan(z, PlanConfig(threshold=0.0, **NOCLEAN)).keep.all()


def test_anchor_crosses_chunk_boundaries_and_sources_chain():
    z = _latent(t=12)
    _set_patch(z, 4, 2, 3, 5.0)   # a one-frame flash at frame 4
    plan = build_plan(z, PlanConfig(**NOCLEAN))
    k = plan.keep[0, :, 2, 3].tolist()
    # frame 4 differs from 3 -> kept; frame 5 differs from 4 -> kept (back to the background)
    assert k == [True, True, True, False, True, True, False, False, False, False, False, False]
    assert plan.source_frame[0, :, 2, 3].tolist() == [0, 1, 2, 2, 4, 5, 5, 5, 5, 5, 5, 5]
    # anchor for chunk 2 (frames 6-8) is the latest kept before frame 6 -> 5
    assert plan.anchor_frame[0, 6:9, 2, 3].tolist() == [5, 5, 5]


def test_batch_plans_are_per_sample():
    z = torch.cat([_latent(seed=0), _latent(seed=1)])
    _set_patch(z[1:], 4, 0, 0, 9.0)
    plan = build_plan(z, PlanConfig(**NOCLEAN))
    assert plan.batch == 2
    assert not plan.keep[0, 4, 0, 0] and plan.keep[1, 4, 0, 0]
    one = plan.select(1)
    assert one.batch == 1 and torch.equal(one.keep[0], plan.keep[1])


def test_cleanup_only_grows_kept_region():
    z = lipar.clips.make_clip(lipar.clips.ClipSpec(latent_frames=9, height=24, width=32, objects=2))
    base = build_plan(z, PlanConfig(**NOCLEAN))
    for opts in (dict(dilate_kept=1), dict(open_pruned=1), dict(smooth=3), dict(trim_outliers=0.1)):
        cleaned = build_plan(z, PlanConfig(**{**NOCLEAN, **opts}))
        assert cleaned.keep[:, 0].all()
        if "smooth" not in opts and "trim_outliers" not in opts:
            assert (cleaned.keep | ~base.keep).all(), opts    # kept stays kept
            assert cleaned.keep.sum() >= base.keep.sum()


def test_plan_round_trips_and_checks(tmp_path):
    z = _latent()
    _set_patch(z, 5, 0, 1, 3.0)
    plan = build_plan(z)
    plan.save(str(tmp_path / "p.pt"))
    again = PruningPlan.load(str(tmp_path / "p.pt"))
    assert torch.equal(again.keep, plan.keep) and again.config == plan.config
    d = plan.to_dict()
    d["keep"] = d["keep"].clone()
    d["keep"][0, 0, 0, 0] = False
    with pytest.raises(lipar.LiparError, match="frame 0"):
        PruningPlan.from_dict(d)


def test_stats():
    z = _latent()
    plan = build_plan(z, PlanConfig(**NOCLEAN))
    s = plan.stats()
    assert s["tokens_total"] == 9 * 12 and s["tokens_kept"] == 36
    assert s["kept_per_chunk"] == [[36, 0, 0]]
    assert len(s["prune_ratio_per_frame"]) == 9


def test_patchify_matches_wan_token_layout():
    z = torch.arange(16 * 2 * 4 * 6, dtype=torch.float32).view(1, 16, 2, 4, 6)
    p = patchify(z)
    assert p.shape == (1, 2, 2, 3, 64)
    assert torch.equal(p[0, 1, 1, 2].view(16, 2, 2), z[0, :, 1, 2:4, 4:6])


@pytest.mark.parametrize("kw,msg", [
    (dict(threshold=-0.1), "threshold"), (dict(threshold=float("nan")), "threshold"),
    (dict(anchor_threshold=11), "anchor_threshold"), (dict(chunk_frames=0), "chunk_frames"),
    (dict(smooth=2), "smooth"), (dict(dilate_kept=9), "dilate_kept"), (dict(trim_outliers=1.0), "trim"),
])
def test_bad_options(kw, msg):
    with pytest.raises(lipar.LiparError, match=msg):
        build_plan(_latent(), PlanConfig(**kw))


@pytest.mark.parametrize("shape,msg", [
    ((1, 4, 9, 6, 8), "16"),
    ((1, 16, 9, 5, 8), "odd"), ((1, 16, 6, 8), "video latent"), ((0, 16, 9, 6, 8), "empty"),
])
def test_bad_latents(shape, msg):
    with pytest.raises(lipar.LiparError, match=msg):
        build_plan(torch.zeros(shape))


def test_nan_latent():
    z = _latent()
    z[0, 0, 3, 0, 0] = float("nan")
    with pytest.raises(lipar.LiparError, match="NaN"):
        build_plan(z)


def test_plan_for_other_shape_or_chunking_is_refused():
    plan = build_plan(_latent())
    with pytest.raises(lipar.LiparError, match="made for a latent of shape"):
        plan.check_fits((1, 16, 9, 6, 10))
    with pytest.raises(lipar.LiparError, match="3-frame chunks"):
        plan.check_fits((1, 16, 9, 6, 8), chunk_frames=1)


def test_any_frame_count_last_chunk_short():
    """17 latent frames: chunks of 3 and a last one of 2, which can be pruned like any other."""
    z = torch.zeros(1, 16, 17, 6, 8)
    z[:, :, :, :2, :2] = torch.randn(1, 16, 17, 2, 2, generator=torch.Generator().manual_seed(0))
    plan = build_plan(z)
    assert plan.kept_per_chunk()[0] == [36, 3, 3, 3, 3, 2]     # one changing token per frame
    assert plan.kept_per_chunk()[0][-1] == 2 and not plan.keep[0, 15:, 1:].any()
    one_chunk = build_plan(torch.zeros(1, 16, 3, 6, 8))
    assert one_chunk.prune_ratio() == 0 and not one_chunk.pruned_anything_possible()
    assert build_plan(torch.zeros(1, 16, 2, 6, 8)).kept_per_chunk() == [[24]]


def test_plan_is_tied_to_its_latent():
    """A plan made for another latent of the same shape is refused where it is used: another
    clip, a trimmed-then-padded latent, the sum of two latents; rounding differences of another
    host's normalisation are not."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 16, 9, 6, 8, generator=g)
    plan = build_plan(z)
    plan.check_latent(z, 3)
    plan.check_latent(z * (1 + 1e-7) + 1e-8, 3)
    padded = torch.cat([z[:, :, :6], z[:, :, 5:6].expand(-1, -1, 3, -1, -1)], 2)
    for other in (torch.randn(z.shape, generator=g), padded, z + 0.05 * torch.randn(z.shape, generator=g)):
        with pytest.raises(lipar.LiparError, match="made for another latent"):
            plan.check_latent(other, 3)
    assert plan.select(0).fingerprint.shape == (1, 9, 3)
    assert PruningPlan.from_dict(plan.to_dict()).fingerprint.equal(plan.fingerprint)


@pytest.mark.parametrize("edit,msg", [
    (lambda p: p.keep.__setitem__((0, 4, 0, 0), ~p.keep[0, 4, 0, 0]), "do not follow from the keep mask"),
    (lambda p: setattr(p, "anchor_frame", p.anchor_frame[:, :5]), r"anchor_frame must be torch.int64 of shape"),
    (lambda p: setattr(p, "keep", p.keep.float()), r"keep must be torch.bool"),
    (lambda p: setattr(p, "source_frame", p.source_frame + 100), "do not follow"),
    (lambda p: p.keep.__setitem__((0, 0, 0, 0), False), "frame 0 must be kept"),
])
def test_hand_edited_plans_are_refused_before_sampling(edit, msg):
    z = torch.zeros(1, 16, 9, 6, 8)
    plan = build_plan(z)
    edit(plan)
    with pytest.raises(lipar.LiparError, match=msg):
        plan.check_latent(z, 3)
