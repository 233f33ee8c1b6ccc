import torch

from lipar.plan import PlanConfig, build_plan, patchify
from lipar.restore import restore_latent


def test_restore_round_trip_copies_from_previous_frame():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 16, 1, 6, 8, generator=g).repeat(1, 1, 9, 1, 1)
    z[:, :, 4:, :2, :2] += 3.0            # token (0,0) changes at frame 4 then stays
    z = z + 0.01 * torch.randn(z.shape, generator=g)
    plan = build_plan(z, PlanConfig(smooth=1, dilate_kept=0))
    assert 0.3 < plan.prune_ratio() < 0.8
    # what the sampler hands back: kept tokens computed, pruned tokens zero
    keep_px = plan.pixel_mask()
    out = torch.where(keep_px, z, torch.zeros_like(z))
    restored = restore_latent(out, plan)
    expect = z.clone()
    for t in range(1, 9):                 # pruned position <- previous frame (already restored)
        m = ~keep_px[:, :, t].expand_as(expect[:, :, t])
        expect[:, :, t][m] = expect[:, :, t - 1][m]
    assert torch.equal(restored, expect)
    assert torch.equal(patchify(restored)[plan.keep], patchify(z)[plan.keep])
    assert out.abs().sum() > 0 and not torch.equal(out, restored)   # input untouched


def test_restore_without_plan_is_identity():
    z = torch.randn(1, 16, 3, 4, 4)
    assert torch.equal(restore_latent(z, None), z)
