"""Chunk-by-chunk sampling with a KV cache equals a dense block-causal recomputation."""

import torch

import lipar
from tests.reference import dense_forward, reference_sample


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_single_chunk_forward_matches_dense_reference(tiny64):
    from lipar.causal import forward_once

    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 16, 3, 6, 8, generator=g, dtype=torch.float64)
    ctx = torch.randn(2, 5, 4096, generator=g, dtype=torch.float64)
    ts = torch.tensor([937.5, 250.0], dtype=torch.float64)
    ours = forward_once(tiny64, lat, ts, ctx)
    ref = dense_forward(tiny64, lat, ts[:, None].expand(2, 3), ctx, chunk_frames=3)
    assert _rel(ours, ref) < 1e-10


def test_cached_sampling_equals_block_causal_dense(tiny64):
    g = torch.Generator().manual_seed(3)
    lat = torch.randn(1, 16, 9, 4, 6, generator=g, dtype=torch.float64)
    ctx = torch.randn(1, 7, 4096, generator=g, dtype=torch.float64)
    for mode, steps in (("edit", (400, 350, 250)), ("generate", (1000, 750, 500, 250))):
        cfg = lipar.SamplerConfig(mode=mode, steps=steps, seed=11, dtype=torch.float64)
        ours = lipar.sample(tiny64, ctx, lat, config=cfg).latent
        ref = reference_sample(tiny64, ctx, lat, steps, seed=11, edit=(mode == "edit"))
        assert _rel(ours, ref) < 1e-9, mode


def test_cache_is_causal_later_chunks_do_not_change_earlier(tiny64):
    """Chunk 0 of a 9-frame run equals chunk 0 of a 3-frame run (no peeking ahead)."""
    g = torch.Generator().manual_seed(4)
    lat = torch.randn(1, 16, 9, 4, 6, generator=g, dtype=torch.float64)
    ctx = torch.randn(1, 3, 4096, generator=g, dtype=torch.float64)
    cfg = lipar.SamplerConfig(seed=5, dtype=torch.float64)
    full = lipar.sample(tiny64, ctx, lat, config=cfg).latent
    changed = lat.clone()
    changed[:, :, 3:] += 1.0
    other = lipar.sample(tiny64, ctx, changed, config=cfg).latent
    assert torch.equal(full[:, :, :3], other[:, :, :3])
    assert not torch.allclose(full[:, :, 3:], other[:, :, 3:])


def test_modulated_norm_fused_equals_norm_then_modulation():
    """One modulation for all tokens goes into the LayerNorm's affine; per-token
    modulations (or batch > 1) take the two-step path; both equal norm(x) * (1 + scale) + shift."""
    from lipar.causal import modulated_norm

    g = torch.Generator().manual_seed(0)
    norm = torch.nn.LayerNorm(16, 1e-6, elementwise_affine=False).double()
    for b, n_mod in ((1, 1), (1, 7), (2, 1)):
        x = torch.randn(b, 7, 16, generator=g, dtype=torch.float64)
        shift, scale = (torch.randn(b, n_mod, 16, generator=g, dtype=torch.float64) for _ in range(2))
        ref = norm(x) * (1 + scale) + shift
        assert torch.allclose(modulated_norm(norm, x, shift, scale), ref, atol=1e-12), (b, n_mod)
    affine = torch.nn.LayerNorm(16, 1e-6).double()     # a norm with its own affine is not fused
    with torch.no_grad():
        affine.weight.mul_(2.0)
    assert torch.allclose(modulated_norm(affine, x, shift, scale), affine(x) * (1 + scale) + shift, atol=1e-12)
