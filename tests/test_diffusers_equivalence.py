"""lipar's Wan2.1 forward equals diffusers' ``WanTransformer3DModel`` on the same weights.

diffusers' Wan transformer is an independent re-implementation of the original Wan2.1 DiT
(converted checkpoints load into it name for name). Here both get the same random,
deliberately perturbed weights (every norm affine, RMSNorm weight and modulation moved off
its default, so a swapped or dropped mapping shows), and ``lipar.causal.forward_once``
(whole latent as one chunk, no cache) must reproduce diffusers' output.

Conventions that differ between the two and how they are handled here:

* Parameter names: Wan's originals (lipar) vs diffusers' ones; the table ``_RULES`` maps them
  and the test asserts the mapping is a bijection with equal shapes (nothing left over on
  either side). Note Wan's ``norm3`` (the affine cross-attention norm) is diffusers'
  ``norm2``, and Wan's ``norm2`` (the affine-free FFN norm) is diffusers' ``norm3``; only the
  affine one has parameters.
* Text context: lipar zero-pads the umt5 context to ``text_len`` = 512 tokens and attends over
  all 512 (as the original Wan does); diffusers' transformer takes the context as given (its
  pipeline pads to 512 beforehand), so the test zero-pads it to 512 before handing it over.
* Timestep: both take the model timestep (0..1000, floats allowed) of shape [B]. Both use the
  cos-then-sin sinusoid (diffusers via ``flip_sin_to_cos=True``) with frequencies
  10000^(-i/half). The one real difference: diffusers builds the sinusoid in float32
  (``get_timestep_embedding``), lipar -- like the original Wan2.1 ``sinusoidal_embedding_1d``
  -- in float64. At t ~ 1000 float32 rounding of the phase t*f moves the embedding by up to
  ~4e-5, which gives a ~1e-5 relative output difference. So the forward is compared twice:
  against stock diffusers with a loose bound (``STOCK_TOL``), and against diffusers whose
  ``Timesteps`` computes the *same formula* in float64 (``_Float64Timesteps``, reading the
  module's own flip/shift settings) with a tight bound (``REL_TOL``); the sinusoid itself is
  checked separately (order and frequencies must agree to float32 phase rounding).
* RoPE: both use interleaved channel pairs, split 44/42/42 over (frame, row, col) for head
  dim 128, theta 10000, positions starting at 0.
* Precision: diffusers hard-casts to float32 inside (FP32LayerNorm, ``temb.float()``,
  ``hidden_states.float()`` in every block, float32 RoPE tables and sinusoid), so a float64
  run of diffusers is not a float64 reference; both models run in float32 here (lipar's own
  float64 path is covered by tests/reference.py / test_causal.py).
"""

from __future__ import annotations

import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402

from lipar.causal import forward_once  # noqa: E402
from lipar.config import TINY  # noqa: E402
from lipar.model import build_model  # noqa: E402

REL_TOL = 1e-6    # vs diffusers with a float64 timestep sinusoid (matches exactly on CPU)
STOCK_TOL = 1e-4  # vs stock diffusers (float32 sinusoid; observed ~1e-5 at t ~ 1000)

# (diffusers name regex, lipar name template); "\1" etc. refer to the regex groups.
_RULES: list[tuple[str, str]] = [
    (r"patch_embedding\.(weight|bias)", r"patch_embedding.\1"),
    (r"condition_embedder\.text_embedder\.linear_1\.(weight|bias)", r"text_embedding.0.\1"),
    (r"condition_embedder\.text_embedder\.linear_2\.(weight|bias)", r"text_embedding.2.\1"),
    (r"condition_embedder\.time_embedder\.linear_1\.(weight|bias)", r"time_embedding.0.\1"),
    (r"condition_embedder\.time_embedder\.linear_2\.(weight|bias)", r"time_embedding.2.\1"),
    (r"condition_embedder\.time_proj\.(weight|bias)", r"time_projection.1.\1"),
    (r"blocks\.(\d+)\.attn1\.to_q\.(weight|bias)", r"blocks.\1.self_attn.q.\2"),
    (r"blocks\.(\d+)\.attn1\.to_k\.(weight|bias)", r"blocks.\1.self_attn.k.\2"),
    (r"blocks\.(\d+)\.attn1\.to_v\.(weight|bias)", r"blocks.\1.self_attn.v.\2"),
    (r"blocks\.(\d+)\.attn1\.to_out\.0\.(weight|bias)", r"blocks.\1.self_attn.o.\2"),
    (r"blocks\.(\d+)\.attn1\.norm_q\.weight", r"blocks.\1.self_attn.norm_q.weight"),
    (r"blocks\.(\d+)\.attn1\.norm_k\.weight", r"blocks.\1.self_attn.norm_k.weight"),
    (r"blocks\.(\d+)\.attn2\.to_q\.(weight|bias)", r"blocks.\1.cross_attn.q.\2"),
    (r"blocks\.(\d+)\.attn2\.to_k\.(weight|bias)", r"blocks.\1.cross_attn.k.\2"),
    (r"blocks\.(\d+)\.attn2\.to_v\.(weight|bias)", r"blocks.\1.cross_attn.v.\2"),
    (r"blocks\.(\d+)\.attn2\.to_out\.0\.(weight|bias)", r"blocks.\1.cross_attn.o.\2"),
    (r"blocks\.(\d+)\.attn2\.norm_q\.weight", r"blocks.\1.cross_attn.norm_q.weight"),
    (r"blocks\.(\d+)\.attn2\.norm_k\.weight", r"blocks.\1.cross_attn.norm_k.weight"),
    # diffusers' norm2 is the affine cross-attention norm = Wan's norm3.
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"blocks.\1.norm3.\2"),
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj\.(weight|bias)", r"blocks.\1.ffn.0.\2"),
    (r"blocks\.(\d+)\.ffn\.net\.2\.(weight|bias)", r"blocks.\1.ffn.2.\2"),
    (r"blocks\.(\d+)\.scale_shift_table", r"blocks.\1.modulation"),
    (r"proj_out\.(weight|bias)", r"head.head.\1"),
    (r"scale_shift_table", r"head.modulation"),
]


def _lipar_name(diffusers_name: str) -> str:
    hits = [re.sub(pat, tmpl, diffusers_name) for pat, tmpl in _RULES if re.fullmatch(pat, diffusers_name)]
    assert len(hits) == 1, f"{diffusers_name!r} matched {len(hits)} mapping rules"
    return hits[0]


def _diffusers_config() -> dict:
    cfg = TINY
    return dict(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim,
        out_channels=cfg.out_dim,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=1024,
    )


def _mapping(lipar_model, diff_model) -> dict[str, str]:
    """diffusers name -> lipar name, checked to be a shape-preserving bijection."""
    lp = dict(lipar_model.named_parameters())
    dp = dict(diff_model.named_parameters())
    mapping = {d: _lipar_name(d) for d in dp}
    targets = list(mapping.values())
    assert len(set(targets)) == len(targets), "two diffusers parameters map onto one lipar parameter"
    unknown = sorted(set(targets) - set(lp))
    assert not unknown, f"mapped to lipar names that do not exist: {unknown}"
    leftover = sorted(set(lp) - set(targets))
    assert not leftover, f"lipar parameters with no diffusers counterpart: {leftover}"
    for d, w in mapping.items():
        assert dp[d].shape == lp[w].shape, f"{d} {tuple(dp[d].shape)} vs {w} {tuple(lp[w].shape)}"
    return mapping


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    lipar_model = build_model(TINY, seed=1234, dtype=torch.float32)
    # Move every parameter off its default (LayerNorm affine 1/0, RMSNorm 1, ...) so that a
    # swapped or missing mapping changes the output.
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for name, p in lipar_model.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    diff_model = WanTransformer3DModel(**_diffusers_config()).eval().requires_grad_(False)  # float32
    mapping = _mapping(lipar_model, diff_model)
    lp = dict(lipar_model.named_parameters())
    state = {d: lp[w].detach().clone() for d, w in mapping.items()}
    missing, unexpected = diff_model.load_state_dict(state, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    # Sanity: the perturbation really reached the norms that a wrong mapping would confuse.
    blk = lipar_model.blocks[0]
    assert not torch.allclose(blk.norm3.weight, torch.ones_like(blk.norm3.weight))
    assert not torch.allclose(blk.norm3.bias, torch.zeros_like(blk.norm3.bias))
    assert not torch.allclose(blk.self_attn.norm_q.weight, blk.self_attn.norm_k.weight)
    return lipar_model, diff_model, mapping


class _Float64Timesteps(torch.nn.Module):
    """diffusers' ``Timesteps`` (get_timestep_embedding) computed in float64 instead of float32.

    Same formula and the same settings as the wrapped module: frequencies
    exp(-ln(10000) * i / (half - downscale_freq_shift)), [sin, cos] flipped to [cos, sin]
    when ``flip_sin_to_cos``. Only the precision differs (the original Wan uses float64).
    """

    def __init__(self, inner):
        super().__init__()
        self.n = inner.num_channels
        self.flip = inner.flip_sin_to_cos
        self.shift = inner.downscale_freq_shift
        self.scale = inner.scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.n // 2
        i = torch.arange(half, dtype=torch.float64)
        freqs = torch.exp(-torch.log(torch.tensor(10000.0, dtype=torch.float64)) * i / (half - self.shift))
        arg = self.scale * t.to(torch.float64)[:, None] * freqs[None]
        emb = torch.cat([arg.sin(), arg.cos()], dim=-1)
        if self.flip:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        return emb.float()


def _run_both(lipar_model, diff_model, latent, timestep, context, *, float64_sinusoid: bool):
    with torch.no_grad():
        ours = forward_once(lipar_model, latent, timestep, context, backend="sdpa")
        # lipar zero-pads the text to text_len (512) and attends over all of it; give diffusers
        # the same padded context.
        b, l, d = context.shape
        padded = torch.zeros(b, TINY.text_len, d, dtype=context.dtype)
        padded[:, :l] = context
        emb = diff_model.condition_embedder
        stock = emb.timesteps_proj
        if float64_sinusoid:
            emb.timesteps_proj = _Float64Timesteps(stock)
        try:
            ref = diff_model(hidden_states=latent, timestep=timestep, encoder_hidden_states=padded,
                             return_dict=False)[0]
        finally:
            emb.timesteps_proj = stock
    return ours, ref


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_mapping_is_complete(models):
    lipar_model, diff_model, mapping = models
    assert len(mapping) == len(list(lipar_model.parameters())) == len(list(diff_model.parameters()))


def _inputs(case: str):
    g = torch.Generator().manual_seed(7 if case == "single" else 8)
    if case == "single":  # one chunk of 3 latent frames, 4x6 tokens per frame
        latent = torch.randn(1, 16, 3, 8, 12, generator=g)
        timestep = torch.tensor([937.5])
        context = torch.randn(1, 7, TINY.text_dim, generator=g)
    else:  # batch of 2 with different timesteps and contexts
        latent = torch.randn(2, 16, 2, 6, 10, generator=g)
        timestep = torch.tensor([937.5, 212.25])
        context = torch.randn(2, 11, TINY.text_dim, generator=g)
    return latent, timestep, context


def test_timestep_sinusoid_matches(models):
    """diffusers' (float32) sinusoid = lipar's (float64) one up to float32 phase rounding."""
    from lipar.causal import sinusoidal_embedding

    _, diff_model, _ = models
    stock = diff_model.condition_embedder.timesteps_proj
    t = torch.tensor([0.0, 1.0, 3.5, 212.25, 500.0, 937.5, 999.0])
    ours = sinusoidal_embedding(TINY.freq_dim, t)
    # float32 phase rounding: |t * f| <= 1000 -> error <= ~1000 * 2^-24 * few ulps
    assert (stock(t).double() - ours).abs().max() < 1e-4
    assert (_Float64Timesteps(stock)(t).double() - ours).abs().max() < 1e-6


@pytest.mark.parametrize("case", ["single", "batch2"])
def test_forward_matches_diffusers(models, case):
    lipar_model, diff_model, _ = models
    latent, timestep, context = _inputs(case)
    ours, ref = _run_both(lipar_model, diff_model, latent, timestep, context, float64_sinusoid=True)
    assert ours.shape == ref.shape == latent.shape
    assert torch.isfinite(ours).all()
    assert ref.abs().mean() > 1e-2  # a non-trivial output, not near zero
    err = _rel_l2(ours, ref)
    assert err < REL_TOL, f"relative L2 error {err:.3e} >= {REL_TOL:.0e}"
    # Each batch element on its own (own timestep and context).
    for i in range(latent.shape[0]):
        e = _rel_l2(ours[i], ref[i])
        assert e < REL_TOL, f"sample {i}: relative L2 error {e:.3e}"
    if case == "batch2":
        solo, _ = _run_both(lipar_model, diff_model, latent[1:], timestep[1:], context[1:],
                            float64_sinusoid=True)
        assert _rel_l2(solo[0], ref[1]) < REL_TOL
        # the two samples really differ (different timesteps/contexts)
        assert _rel_l2(ours[0], ours[1]) > 0.1


@pytest.mark.parametrize("case", ["single", "batch2"])
def test_forward_matches_stock_diffusers(models, case):
    """Unmodified diffusers: differs only by its float32 timestep sinusoid."""
    lipar_model, diff_model, _ = models
    latent, timestep, context = _inputs(case)
    ours, ref = _run_both(lipar_model, diff_model, latent, timestep, context, float64_sinusoid=False)
    err = _rel_l2(ours, ref)
    assert err < STOCK_TOL, f"relative L2 error {err:.3e} >= {STOCK_TOL:.0e}"


@pytest.mark.parametrize("name", ["blocks.0.norm2.weight", "blocks.1.attn2.norm_k.weight",
                                  "blocks.0.scale_shift_table", "scale_shift_table"])
def test_comparison_detects_a_wrong_weight(models, name):
    """Negative control: a default-valued (i.e. unmapped) weight must break the match."""
    lipar_model, diff_model, _ = models
    latent, timestep, context = _inputs("single")
    p = dict(diff_model.named_parameters())[name]
    saved = p.detach().clone()
    try:
        with torch.no_grad():
            if "scale_shift_table" in name:
                p.copy_(saved[:, [1, 0, *range(2, saved.shape[1])]])  # swap shift and scale
            else:
                p.fill_(1.0)
        ours, ref = _run_both(lipar_model, diff_model, latent, timestep, context, float64_sinusoid=True)
    finally:
        with torch.no_grad():
            p.copy_(saved)
    assert _rel_l2(ours, ref) > 1e-3
