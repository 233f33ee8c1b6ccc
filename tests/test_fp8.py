"""lipar.fp8: row quantisation against a float64 e4m3 reference, the emulated fp8 product,
prepared weights (bf16, fp8, scaled fp8, refusals) and a run's ``Fp8Linears`` on tiny Wan
models. CUDA tests (Triton kernels, torch._scaled_mm, CUDA graphs) skip without a GPU."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipar
from lipar import fp8
from lipar.config import WanConfig
from lipar.errors import LiparError

FP8 = torch.float8_e4m3fn
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
needs_fp8 = pytest.mark.skipif(not (CUDA and fp8.fp8_supported("cuda")), reason="needs a GPU with fp8 (sm >= 8.9)")


# ---- an e4m3fn reference, independent of torch's float8 cast ------------------------------------
def _e4m3_magnitudes() -> torch.Tensor:
    """The 127 non-negative finite e4m3fn values in code order 0x00..0x7E (float64): subnormals
    m/8 * 2^-6, normals (1 + m/8) * 2^(e-7); 0x7F is NaN."""
    vals = []
    for code in range(0x7F):
        e, m = code >> 3, code & 7
        vals.append(m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    return torch.tensor(vals, dtype=torch.float64)


MAGS = _e4m3_magnitudes()


def _round_e4m3(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Round float64 values (|v| <= 448) to the nearest e4m3fn value, ties to the even code.
    Returns (rounded values, relative distance of |v| to the nearest rounding midpoint)."""
    a = v.abs().flatten()
    hi = torch.searchsorted(MAGS, a).clamp(1, len(MAGS) - 1)
    lo = hi - 1
    d_lo, d_hi = a - MAGS[lo], MAGS[hi] - a
    pick = torch.where(d_lo < d_hi, lo, torch.where(d_hi < d_lo, hi, torch.where(lo % 2 == 0, lo, hi)))
    pick = torch.where(a >= MAGS[-1], torch.full_like(pick, len(MAGS) - 1), pick)
    mid = (MAGS[lo] + MAGS[hi]) / 2
    margin = ((a - mid).abs() / a.clamp_min(1e-300)).view(v.shape)
    return (MAGS[pick] * v.flatten().sign()).view(v.shape), margin


def _reference(x64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row quantisation in float64: (rounded scaled values, scales as float32, midpoint margins)."""
    amax = x64.abs().amax(dim=1, keepdim=True).clamp_min(float(torch.tensor(fp8.AMAX_FLOOR, dtype=torch.float32)))
    scaled = x64 * (448.0 / amax)
    q, margin = _round_e4m3(scaled)
    return q, (amax / 448.0).float(), margin


def _rows(m: int, k: int, seed: int, dtype=torch.bfloat16) -> torch.Tensor:
    """Rows of very different magnitudes (1e-3..1e3), one all-zero row, one with a single nonzero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g, dtype=torch.float64) * 10 ** (6 * torch.rand(m, 1, generator=g) - 3)
    x[1] = 0
    x[2] = 0
    x[2, k // 2] = -3.5
    return x.to(dtype)


def test_e4m3_reference_agrees_with_torch_decoding():
    codes = torch.arange(0x7F, dtype=torch.uint8).view(FP8).double()
    assert torch.equal(codes, MAGS)
    assert MAGS[-1] == 448.0 and MAGS[1] == 2.0 ** -9


@pytest.mark.parametrize("k", [96, 20, 1536])
def test_quantize_rows_matches_float64_reference(k):
    x = _rows(37, k, seed=k)
    x8, scale = fp8.quantize_rows(x)
    assert x8.dtype == FP8 and x8.shape == x.shape and scale.shape == (37, 1) and scale.dtype == torch.float32
    q_ref, s_ref, margin = _reference(x.double())
    assert torch.equal(scale, s_ref)                       # scales exact
    got = x8.double()
    mismatch = got != q_ref
    # only where the float64 value sits on a rounding midpoint to within float32 precision
    # (bf16 inputs land exactly on midpoints now and then: x * 448 / amax is then rounded in float32)
    assert bool((margin[mismatch] < 1e-6).all()), margin[mismatch]
    assert mismatch.float().mean() < 1e-2
    # round trip within e4m3's rounding: half a step, 2^-4 relative (normals) or 2^-10 (subnormals)
    err = (got * scale.double() - x.double()).abs()
    bound = torch.maximum(x.double().abs() * 2.0 ** -4, 2.0 ** -10 * scale.double()) * (1 + 1e-5)
    assert bool((err <= bound).all())
    assert torch.equal(got.abs().amax(dim=1)[[0, 3, 4]], torch.full((3,), 448.0, dtype=torch.float64))


def test_quantize_rows_zero_rows_and_edge_shapes():
    x = _rows(5, 32, seed=3, dtype=torch.float32)
    x8, scale = fp8.quantize_rows(x)
    assert bool((x8[1].float() == 0).all()) and torch.isfinite(scale).all() and bool((scale > 0).all())
    assert scale[1, 0] == torch.tensor(1e-12, dtype=torch.float32) / 448
    assert x8[2].float()[16] == -448.0 and scale[2, 0] == torch.tensor(3.5 / 448, dtype=torch.float32)
    e8, es = fp8.quantize_rows(x[:0])
    assert e8.shape == (0, 32) and es.shape == (0, 1)
    wide = torch.randn(6, 64, dtype=torch.bfloat16)
    a8, asc = fp8.quantize_rows(wide[:, 16:48])            # a row stride of 64
    b8, bsc = fp8.quantize_rows(wide[:, 16:48].contiguous())
    assert torch.equal(a8.view(torch.uint8), b8.view(torch.uint8)) and torch.equal(asc, bsc)
    with pytest.raises(LiparError, match="2-D"):
        fp8.quantize_rows(torch.randn(2, 3, 4))
    with pytest.raises(LiparError, match="length 0"):
        fp8.quantize_rows(torch.randn(3, 0))


def _gelu64(h: torch.Tensor) -> torch.Tensor:
    return 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h ** 3)))


def test_gelu_quantize_rows_matches_float64_reference():
    h = _rows(29, 160, seed=5)
    x8, scale = fp8.gelu_quantize_rows(h)
    q_ref, s_ref, margin = _reference(_gelu64(h.double()))
    # GELU runs in float32: scales within float32 rounding of the float64 ones, values where not on a midpoint
    assert torch.allclose(scale, s_ref, rtol=1e-6, atol=0)
    mismatch = x8.double() != q_ref
    assert bool((margin[mismatch] < 1e-5).all()) and mismatch.float().mean() < 1e-3
    # and it is not plain quantisation: the negative half is squashed
    plain, _ = fp8.quantize_rows(h)
    assert not torch.equal(plain.view(torch.uint8), x8.view(torch.uint8))


# ---- prepared weights -------------------------------------------------------------------------
def _linear(k: int, n: int, dtype=torch.bfloat16, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n).to(dtype).requires_grad_(False)


def test_prepare_linear_quantises_bf16_weights_per_channel():
    lin = _linear(64, 48)
    lin.weight[5] *= 100                                     # one loud channel keeps its own scale
    w = fp8.prepare_linear(lin, torch.bfloat16, "cpu")
    assert w is not None and w.source == "quantized"
    assert w.w8.shape == (48, 64) and w.w8.dtype == FP8 and w.scale.shape == (1, 48)
    assert w.bias.dtype == torch.bfloat16 and torch.equal(w.bias, lin.bias)
    amax = lin.weight.double().abs().amax(dim=1)
    assert torch.equal(w.scale[0], (amax / 448).float())
    err = (w.dequantize(torch.float64) - lin.weight.double()).abs()
    assert bool((err <= lin.weight.double().abs() * 2.0 ** -4 + 2.0 ** -10 * w.scale.double().view(-1, 1)).all())
    assert w.scale[0, 5] > 50 * w.scale[0, 4]
    assert fp8.prepare_linear(_linear(64, 48, torch.float16), torch.float16, "cpu").bias.dtype == torch.float16
    assert w.nbytes() == 48 * 64 + 48 * 4 + 48 * 2


def _fp8_linear(k: int, n: int, scale=None, attr="scale_weight") -> tuple[nn.Linear, torch.Tensor]:
    lin = _linear(k, n, torch.float32, seed=1)
    real = lin.weight.clone()
    s = 1.0 if scale is None else scale.view(-1, 1) if scale.numel() == n else scale.flatten()[0]
    lin.weight = nn.Parameter((real / s).to(FP8), requires_grad=False)
    if scale is not None:
        setattr(lin, attr, nn.Parameter(torch.as_tensor(scale, dtype=torch.float32), requires_grad=False))
    return lin, real


def test_prepare_linear_fp8_weights_in_place_with_and_without_scale():
    lin, _ = _fp8_linear(32, 16)
    w = fp8.prepare_linear(lin, torch.bfloat16, "cpu")
    assert w.source == "fp8" and w.w8.data_ptr() == lin.weight.data_ptr()
    assert torch.equal(w.scale, torch.ones(1, 16)) and w.bias.dtype == torch.bfloat16
    assert w.nbytes() == 16 * 4 + 16 * 2                    # no copy of the weight
    lin, real = _fp8_linear(32, 16, scale=torch.tensor(0.01))
    w = fp8.prepare_linear(lin, torch.bfloat16, "cpu")
    assert torch.equal(w.scale, torch.full((1, 16), 0.01))
    assert torch.allclose(w.dequantize(), lin.weight.float() * 0.01)
    assert (w.dequantize() - real).norm() / real.norm() < 0.05
    per_channel = torch.linspace(0.01, 0.02, 16)
    lin, _ = _fp8_linear(32, 16, scale=per_channel, attr="weight_scale")
    assert torch.equal(fp8.prepare_linear(lin, torch.bfloat16, "cpu").scale, per_channel.view(1, 16))
    lin, _ = _fp8_linear(32, 16, scale=torch.ones(3))
    assert fp8.prepare_linear(lin, torch.bfloat16, "cpu") is None      # a scale of neither 1 nor N values


def test_prepare_linear_quantized_tensor_weights():
    """ComfyUI's scaled-fp8 weights load as a tensor subclass holding ``_qdata`` (fp8) and
    ``_params.scale``; its own dtype reads as the compute dtype."""
    lin = _linear(48, 32, seed=2)
    q = (lin.weight.float() / 0.002).to(FP8)
    wrapper = torch.empty(32, 48, dtype=torch.bfloat16)
    wrapper._qdata = q
    wrapper._params = types.SimpleNamespace(scale=torch.tensor(0.002), transposed=False)
    lin.weight = nn.Parameter(wrapper, requires_grad=False)
    lin.weight._qdata, lin.weight._params = wrapper._qdata, wrapper._params
    w = fp8.prepare_linear(lin, torch.bfloat16, "cpu")
    assert w.source == "fp8" and w.w8.data_ptr() == q.data_ptr()
    assert torch.equal(w.scale, torch.full((1, 32), 0.002))
    lin.weight._params = types.SimpleNamespace(scale=torch.tensor(0.002), transposed=True)
    assert fp8.prepare_linear(lin, torch.bfloat16, "cpu") is None


def test_prepare_linear_refusals():
    patched = _linear(32, 16)
    patched.weight_function = [lambda w: w]                  # a ComfyUI LoRA hook
    assert fp8.prepare_linear(patched, torch.bfloat16, "cpu") is None
    patched = _linear(32, 16)
    patched.bias_function = [lambda b: b]
    assert fp8.prepare_linear(patched, torch.bfloat16, "cpu") is None
    empty_hooks = _linear(32, 16)
    empty_hooks.weight_function, empty_hooks.bias_function = [], []   # ComfyUI's default: no patches
    assert fp8.prepare_linear(empty_hooks, torch.bfloat16, "cpu") is not None
    assert fp8.prepare_linear(_linear(20, 16), torch.bfloat16, "cpu") is None       # K % 16
    assert fp8.prepare_linear(_linear(32, 24), torch.bfloat16, "cpu") is None       # N % 16
    assert fp8.prepare_linear(_linear(32, 16), torch.float64, "cpu") is None        # compute dtype
    assert fp8.prepare_linear(_linear(32, 16, torch.float64), torch.bfloat16, "cpu") is None
    e5 = _linear(32, 16)
    e5.weight = nn.Parameter(e5.weight.to(torch.float8_e5m2), requires_grad=False)
    assert fp8.prepare_linear(e5, torch.bfloat16, "cpu") is None
    full = _linear(32, 16)
    full._full_precision_mm = True
    assert fp8.prepare_linear(full, torch.bfloat16, "cpu") is None
    no_bias = nn.Linear(32, 16, bias=False).bfloat16()
    assert fp8.prepare_linear(no_bias, torch.bfloat16, "cpu").bias is None
    assert not fp8.fp8_supported("cpu")


# ---- products ---------------------------------------------------------------------------------
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _linear64(lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """lin(x) in float64, leaving the module as it is."""
    return F.linear(x.double(), lin.weight.double(), lin.bias.double())


def _ffn64(ffn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _linear64(ffn[2], F.gelu(_linear64(ffn[0], x), approximate="tanh"))


def test_linear_fp8_emulation_is_the_dequantised_product():
    lin = _linear(64, 48, seed=3)
    w = fp8.prepare_linear(lin, torch.bfloat16, "cpu")
    x = torch.randn(2, 7, 64, dtype=torch.bfloat16)
    y = fp8.linear_fp8(x, w, torch.float32)
    assert y.shape == (2, 7, 48) and y.dtype == torch.float32
    x8, sx = fp8.quantize_rows(x.reshape(-1, 64))
    expect = F.linear((x8.double() * sx.double()), w.dequantize(torch.float64), lin.bias.double()).view(2, 7, 48)
    assert _rel(y, expect) < 1e-6
    # the fp8 path really quantises: a few percent from the bf16 product, not more
    err = _rel(y, _linear64(lin, x))
    assert 1e-3 < err < 0.06, err
    assert fp8.linear_fp8(x, w, torch.bfloat16).dtype == torch.bfloat16
    assert fp8.linear_fp8(x[:, :0], w, torch.bfloat16).shape == (2, 0, 48)
    with pytest.raises(LiparError, match="width 32"):
        fp8.linear_fp8(torch.randn(3, 32), w, torch.bfloat16)


def test_linears_fp8_shares_one_quantisation():
    ws = [fp8.prepare_linear(_linear(64, 32, seed=s), torch.bfloat16, "cpu") for s in range(3)]
    x = torch.randn(1, 9, 64, dtype=torch.bfloat16)
    for y, w in zip(fp8.linears_fp8(x, ws, torch.bfloat16), ws):
        assert torch.equal(y, fp8.linear_fp8(x, w, torch.bfloat16))


def test_ffn_fp8_emulation():
    torch.manual_seed(4)
    ffn = nn.Sequential(nn.Linear(64, 128), nn.GELU(approximate="tanh"), nn.Linear(128, 64)).bfloat16()
    w0, w2 = (fp8.prepare_linear(ffn[j], torch.bfloat16, "cpu") for j in (0, 2))
    x = torch.randn(1, 11, 64, dtype=torch.bfloat16)
    y = fp8.ffn_fp8(x, w0, w2, torch.bfloat16)
    h = fp8.linear_fp8(x, w0, torch.bfloat16).reshape(-1, 128)
    g8, sg = fp8.gelu_quantize_rows(h)
    expect = F.linear(g8.double() * sg.double(), w2.dequantize(torch.float64), ffn[2].bias.double())
    assert _rel(y.reshape(-1, 64), expect) < 1e-2           # one bf16 rounding of the output apart
    err = _rel(y, _ffn64(ffn, x))
    assert 1e-3 < err < 0.08, err
    with pytest.raises(LiparError, match="second matrix"):
        fp8.ffn_fp8(x, w0, w0, torch.bfloat16)


# ---- a run's linears on Wan module trees ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bf16():
    return lipar.build_model(lipar.TINY, seed=1, dtype=torch.bfloat16)


def test_fp8_linears_ffn_policy(tiny_bf16):
    m = tiny_bf16
    fp = fp8.Fp8Linears(m, dtype=torch.bfloat16, device="cpu", which="ffn")
    assert len(fp) == 2 * lipar.TINY.num_layers and fp.skipped == []
    blk = m.blocks[1]
    assert fp.covers(blk.ffn) and fp.covers(blk.ffn[0]) and not fp.covers(blk.self_attn.q)
    y = torch.randn(1, 13, lipar.TINY.dim, dtype=torch.bfloat16)
    out = fp.ffn(blk.ffn, y)
    assert out.shape == y.shape and out.dtype == torch.bfloat16
    w0, w2 = fp.weight(blk.ffn[0]), fp.weight(blk.ffn[2])
    assert torch.equal(out, fp8.ffn_fp8(y, w0, w2, torch.bfloat16))
    err = _rel(out, _ffn64(blk.ffn, y))
    assert 1e-3 < err < 0.08, err
    assert torch.equal(fp.linear(blk.self_attn.q, y), blk.self_attn.q(y))          # not prepared: as is
    assert torch.equal(fp.linear(blk.self_attn.q, y, fallback=lambda lin, x: 2 * lin(x)), 2 * blk.self_attn.q(y))
    assert fp.nbytes() > 0 and fp.current()


def test_fp8_linears_all_policy(tiny_bf16):
    m = tiny_bf16
    fp = fp8.Fp8Linears(m, dtype=torch.bfloat16, device="cpu", which="all")
    assert len(fp) == lipar.TINY.num_layers * (2 + 4 + 2)
    sa, ca = m.blocks[0].self_attn, m.blocks[0].cross_attn
    assert fp.covers(sa.o) and fp.covers(ca.q) and not fp.covers(ca.k) and not fp.covers(ca.v)
    x = torch.randn(2, 5, lipar.TINY.dim, dtype=torch.bfloat16)
    q, k, v = fp.linears([sa.q, sa.k, sa.v], x)
    assert torch.equal(q, fp.linear(sa.q, x)) and torch.equal(v, fp.linear(sa.v, x))
    assert 1e-3 < _rel(k, _linear64(sa.k, x)) < 0.06
    mixed = fp.linears([sa.q, ca.k], x)                       # ca.k is not prepared: its own forward
    assert torch.equal(mixed[0], q) and torch.equal(mixed[1], ca.k(x))


def test_fp8_linears_fall_back_where_shapes_do_not_qualify():
    cfg = WanConfig(dim=200, ffn_dim=400, num_layers=2, num_heads=2)     # 200 is not a multiple of 16
    m = lipar.build_model(cfg, seed=2, dtype=torch.bfloat16)
    fp = fp8.Fp8Linears(m, dtype=torch.bfloat16, device="cpu", which="all")
    assert len(fp) == 0 and "blocks.0.ffn" in fp.skipped and "blocks.1.self_attn.q" in fp.skipped
    y = torch.randn(1, 4, 200, dtype=torch.bfloat16)
    assert not fp.covers(m.blocks[0].ffn)
    assert torch.equal(fp.ffn(m.blocks[0].ffn, y), m.blocks[0].ffn(y))
    assert torch.equal(fp.linear(m.blocks[0].self_attn.q, y), m.blocks[0].self_attn.q(y))
    assert torch.equal(fp.linears([m.blocks[0].self_attn.q], y)[0], m.blocks[0].self_attn.q(y))


def test_fp8_linears_patched_ffn_and_swapped_weights():
    m = lipar.build_model(lipar.TINY, seed=3, dtype=torch.bfloat16)
    m.blocks[0].ffn[2].weight_function = [lambda w: w]
    fp = fp8.Fp8Linears(m, dtype=torch.bfloat16, device="cpu")
    assert fp.skipped == ["blocks.0.ffn"] and not fp.covers(m.blocks[0].ffn[0]) and fp.covers(m.blocks[1].ffn)
    y = torch.randn(1, 3, lipar.TINY.dim, dtype=torch.bfloat16)
    assert torch.equal(fp.ffn(m.blocks[0].ffn, y, fallback=lambda f, x: f(x)), m.blocks[0].ffn(y))
    assert fp.current()
    lin = m.blocks[1].ffn[0]
    lin.weight = nn.Parameter(lin.weight.clone(), requires_grad=False)   # what a host does for a LoRA
    assert not fp.current()


def test_fp8_linears_rejects_bad_input(tiny_bf16):
    with pytest.raises(LiparError, match="policy"):
        fp8.Fp8Linears(tiny_bf16, dtype=torch.bfloat16, device="cpu", which="attention")
    with pytest.raises(LiparError, match="blocks"):
        fp8.Fp8Linears(nn.Linear(16, 16), dtype=torch.bfloat16, device="cpu")


# ---- CUDA: Triton kernels, _scaled_mm, graphs -------------------------------------------------
def _codes_close(a8: torch.Tensor, b8: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor, frac: float) -> None:
    """Equal scales (rtol 1e-6) and fp8 values equal but for at most ``frac`` of them one step apart."""
    assert torch.allclose(sa, sb, rtol=1e-6, atol=0)
    a, b = a8.float(), b8.float()
    diff = a != b
    step = torch.maximum(a.abs(), b.abs()) * 2.0 ** -3 + 2.0 ** -9
    assert bool(((a - b).abs()[diff] <= step[diff] * 1.01).all())
    assert diff.float().mean().item() <= frac, diff.float().mean().item()


@needs_cuda
@pytest.mark.skipif(not lipar.kernels.triton_available(), reason="needs Triton")
@pytest.mark.parametrize("k", [20, 1536, 8960])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_triton_quantize_equals_torch(k, dtype, monkeypatch):
    x = _rows(301, k, seed=k, dtype=dtype).cuda()
    for one_pass_max in (16384, 512):                        # rows in registers; two-pass tiles
        monkeypatch.setattr(fp8, "ONE_PASS_MAX", one_pass_max)
        q, s = fp8.quantize_rows(x)
        rq, rs = fp8._quantize_torch(x, gelu=False)
        assert torch.equal(s, rs) and torch.equal(q.view(torch.uint8), rq.view(torch.uint8))
        g, gs = fp8.gelu_quantize_rows(x)
        rg, rgs = fp8._quantize_torch(x, gelu=True)
        _codes_close(g, rg, gs, rgs, frac=2e-3)
    strided = torch.randn(64, 2 * k, device="cuda", dtype=dtype)[:, :k]
    q, s = fp8.quantize_rows(strided)
    rq, rs = fp8._quantize_torch(strided, gelu=False)
    assert torch.equal(s, rs) and torch.equal(q.view(torch.uint8), rq.view(torch.uint8))


def _emulated(x: torch.Tensor, w: fp8.Fp8Weight) -> torch.Tensor:
    x8, sx = fp8._quantize_torch(x.reshape(-1, x.shape[-1]), gelu=False)
    out = (x8.double() * sx.double()) @ w.dequantize(torch.float64).t() + w.bias.double()
    return out.view(*x.shape[:-1], -1)


@needs_fp8
@pytest.mark.parametrize("m", [1, 37, 4679])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fast_accum", [True, False])
def test_linear_fp8_scaled_mm_vs_emulation(m, out_dtype, fast_accum):
    torch.manual_seed(m)
    k, n = (8960, 1536) if m == 4679 else (1536, 1536)
    lin = nn.Linear(k, n).to("cuda", out_dtype)
    w = fp8.prepare_linear(lin, out_dtype, "cuda")
    x = torch.randn(1, m, k, device="cuda", dtype=out_dtype)
    y = fp8.linear_fp8(x, w, out_dtype, fast_accum=fast_accum)
    assert y.dtype == out_dtype and y.shape == (1, m, lin.out_features)
    emu = _emulated(x, w)
    fp8_err = _rel(emu, _linear64(lin, x))                               # what fp8 rounding costs (~2.7%)
    assert 5e-3 < fp8_err < 0.06
    assert _rel(y, emu) < 0.1 * fp8_err                      # the tensor cores add little to it


@needs_fp8
def test_ffn_fp8_cuda_vs_emulation_and_graph_replay():
    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(1536, 8960), nn.GELU(approximate="tanh"), nn.Linear(8960, 1536))
    ffn = ffn.to("cuda", torch.bfloat16)
    w0, w2 = (fp8.prepare_linear(ffn[j], torch.bfloat16, "cuda") for j in (0, 2))
    x = torch.randn(1, 1000, 1536, device="cuda", dtype=torch.bfloat16)
    y = fp8.ffn_fp8(x, w0, w2, torch.bfloat16)
    err = _rel(y, _ffn64(ffn, x))
    assert 5e-3 < err < 0.08, err
    static = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fp8.ffn_fp8(static, w0, w2, torch.bfloat16)          # warm-up (Triton compiles) before capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fp8.ffn_fp8(static, w0, w2, torch.bfloat16)
    static.copy_(x * 2)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, fp8.ffn_fp8(x * 2, w0, w2, torch.bfloat16))


@needs_fp8
def test_fp8_under_cuda_malloc_async_capture():
    """ComfyUI selects the cudaMallocAsync allocator; tensors allocated inside a capture are then
    unmapped until replay and Triton refuses them as tensor arguments. The kernel takes addresses."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import torch
        from torch import nn
        from lipar import fp8
        assert torch.cuda.get_allocator_backend() == "cudaMallocAsync"
        ffn = nn.Sequential(nn.Linear(256, 512), nn.GELU(approximate="tanh"), nn.Linear(512, 256)).cuda().bfloat16()
        w0, w2 = (fp8.prepare_linear(ffn[j], torch.bfloat16, "cuda") for j in (0, 2))
        x = torch.randn(77, 256, device="cuda", dtype=torch.bfloat16)
        eager = fp8.ffn_fp8(x * 3, w0, w2, torch.bfloat16)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = fp8.ffn_fp8(x * 3, w0, w2, torch.bfloat16)   # x * 3: allocated inside the capture
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)
        print("ok")
    """)
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]


@needs_fp8
def test_fp8_linears_on_cuda_tiny_model():
    m = lipar.build_model(lipar.TINY, seed=5, dtype=torch.bfloat16, device="cuda")
    fp = fp8.Fp8Linears(m, dtype=torch.bfloat16, device="cuda", which="all")
    assert len(fp) == lipar.TINY.num_layers * 8 and fp.current()
    blk = m.blocks[0]
    w = fp.weight(blk.ffn[0])                                 # quantised by the Triton kernel
    q, s = fp8._quantize_torch(blk.ffn[0].weight.cpu(), gelu=False)
    assert torch.equal(w.w8.cpu().view(torch.uint8), q.view(torch.uint8)) and torch.equal(w.scale.cpu(), s.view(1, -1))
    y = torch.randn(1, 50, lipar.TINY.dim, device="cuda", dtype=torch.bfloat16)
    err = _rel(fp.ffn(blk.ffn, y), _ffn64(blk.ffn, y))
    assert 1e-3 < err < 0.08, err
    q, k, v = fp.linears([blk.self_attn.q, blk.self_attn.k, blk.self_attn.v], y)
    assert torch.equal(k, fp.linear(blk.self_attn.k, y))
