"""lipar.wan_vae computes the Wan2.1 VAE of a module tree with ComfyUI's layout, for every switch and chunk size.

The reference (tests/wan_vae_models.py) computes the VAE over the whole clip at once from each causal layer's
definition, with no chunks or caches; it equals ComfyUI's own chunked WanVAE (tests/realhost checks the
runner against ComfyUI itself).
"""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch import nn

from lipar import LiparError, wan_vae
from lipar.wan_vae import COMFY_LOOP, NotWanVAEError, WanVAEConfig
from tests.wan_vae_models import build_vae, reference_decode, reference_encode

F64_TOL = 1e-11


def _rel(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def vae():
    return build_vae(dim=4, seed=0)


def _video(frames, h, w, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 3, frames, h, w, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


def _latent(frames, h, w, seed=2, dtype=torch.float64, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, frames, h, w, generator=g, dtype=torch.float64).to(dtype)


ALL_SWITCHES = [WanVAEConfig(encode_chunk=k, decode_chunk=k, channels_last=cl, buffers=buf, fused_norm=fu)
                for k, cl, buf, fu in itertools.product((1, 2), (False, True), (False, True), (False, True))]


@pytest.mark.parametrize("frames", [1, 5, 9, 17])
@pytest.mark.parametrize("size", [(8, 24), (24, 40), (40, 56)])
def test_encode_equals_whole_clip_reference(vae, frames, size):
    x = _video(frames, *size)
    ref = reference_encode(vae, x)
    assert ref.shape == (1, 16, 1 + (frames - 1) // 4, size[0] // 8, size[1] // 8)
    for cfg in (WanVAEConfig(), COMFY_LOOP, WanVAEConfig(encode_chunk=3)):
        assert _rel(wan_vae.encode(vae, x, cfg), ref) < F64_TOL, cfg


@pytest.mark.parametrize("frames", [1, 2, 3, 5])
@pytest.mark.parametrize("size", [(1, 3), (3, 5), (5, 7)])
def test_decode_equals_whole_clip_reference(vae, frames, size):
    z = _latent(frames, *size)
    ref = reference_decode(vae, z)
    assert ref.shape == (1, 3, 1 + 4 * (frames - 1), 8 * size[0], 8 * size[1])
    for cfg in (WanVAEConfig(), COMFY_LOOP, WanVAEConfig(decode_chunk=3)):
        assert _rel(wan_vae.decode(vae, z, cfg), ref) < F64_TOL, cfg


@pytest.mark.parametrize("cfg", ALL_SWITCHES, ids=lambda c: f"k{c.encode_chunk}-cl{int(c.channels_last)}"
                         f"-buf{int(c.buffers)}-fused{int(c.fused_norm)}")
def test_every_switch_gives_the_same_result(vae, cfg):
    x, z = _video(13, 24, 40), _latent(4, 3, 5)
    assert _rel(wan_vae.encode(vae, x, cfg), reference_encode(vae, x)) < F64_TOL
    assert _rel(wan_vae.decode(vae, z, cfg), reference_decode(vae, z)) < F64_TOL


def test_chunk_sizes_larger_than_the_clip_and_uneven_last_chunks(vae):
    x, z = _video(21, 16, 24), _latent(6, 2, 3)
    ref_x, ref_z = reference_encode(vae, x), reference_decode(vae, z)
    for k in (1, 2, 3, 4, 5, 9):
        cfg = WanVAEConfig(encode_chunk=k, decode_chunk=k)
        assert _rel(wan_vae.encode(vae, x, cfg), ref_x) < F64_TOL, k
        assert _rel(wan_vae.decode(vae, z, cfg), ref_z) < F64_TOL, k


def test_frames_after_the_last_4k_plus_1_are_dropped_as_comfyui_does(vae):
    x = _video(12, 16, 24)
    out = wan_vae.encode(vae, x)
    assert out.shape[2] == 3
    assert _rel(out, wan_vae.encode(vae, x[:, :, :9])) < F64_TOL


def test_float32_matches_float64_at_rounding_level(vae):
    vae32 = build_vae(dim=4, seed=0, dtype=torch.float32)
    x, z = _video(9, 24, 40), _latent(3, 3, 5)
    ref_x, ref_z = reference_encode(vae, x), reference_decode(vae, z)
    for cfg in (WanVAEConfig(), COMFY_LOOP):
        assert _rel(wan_vae.encode(vae32, x.float(), cfg).double(), ref_x) < 2e-5
        assert _rel(wan_vae.decode(vae32, z.float(), cfg).double(), ref_z) < 2e-5
    assert wan_vae.encode(vae32, x.float()).dtype == torch.float32


def test_norm_bias_is_applied():
    vae_b = build_vae(dim=4, seed=3, norm_bias=True)
    with torch.no_grad():
        for m in vae_b.modules():
            if getattr(m, "bias", None) is not None and hasattr(m, "gamma"):
                m.bias.normal_(0, 0.3)
    x, z = _video(5, 16, 24), _latent(2, 2, 3)
    for cfg in (WanVAEConfig(), COMFY_LOOP):
        assert _rel(wan_vae.encode(vae_b, x, cfg), reference_encode(vae_b, x)) < F64_TOL
        assert _rel(wan_vae.decode(vae_b, z, cfg), reference_decode(vae_b, z)) < F64_TOL


def test_batch_samples_are_independent(vae):
    z = _latent(3, 2, 3, batch=2)
    out = wan_vae.decode(vae, z)
    for i in range(2):
        assert _rel(out[i:i + 1], reference_decode(vae, z[i:i + 1])) < F64_TOL
    x = torch.cat([_video(5, 16, 24, seed=5), _video(5, 16, 24, seed=6)])
    enc = wan_vae.encode(vae, x)
    for i in range(2):
        assert _rel(enc[i:i + 1], reference_encode(vae, x[i:i + 1])) < F64_TOL


def _convs(vae):
    return [m for m in vae.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]


def test_modules_are_read_not_called_or_changed(vae):
    before = {k: (v.clone(), v.data_ptr(), v.stride()) for k, v in vae.state_dict().items()}
    for m in _convs(vae):
        m.calls = 0
    wan_vae.encode(vae, _video(5, 16, 24), WanVAEConfig(channels_last=True))
    wan_vae.decode(vae, _latent(2, 2, 3), WanVAEConfig(channels_last=True))
    assert all(m.calls == 0 for m in _convs(vae))
    for k, v in vae.state_dict().items():
        old, ptr, stride = before[k]
        assert v.data_ptr() == ptr and v.stride() == stride and torch.equal(v, old), k


def _picked(vae):
    """One convolution of every role the runner has."""
    e, d = vae.encoder, vae.decoder
    return [e.conv1, e.downsamples[0].residual[6], e.downsamples[3].shortcut, e.downsamples[2].resample[1],
            e.downsamples[5].resample[1], e.downsamples[5].time_conv, e.middle[1].to_qkv, e.head[2], vae.conv1,
            vae.conv2, d.conv1, d.middle[1].proj, d.upsamples[3].time_conv, d.upsamples[3].resample[1],
            d.upsamples[11].resample[1], d.upsamples[12].residual[2], d.head[2]]


@pytest.mark.parametrize("hook", ["comfy_cast_weights", "weight_function", "bias_function"])
def test_weights_cast_or_patched_on_the_fly_run_through_the_modules_own_forward(hook):
    """A conv ComfyUI casts or patches on the fly runs by its own forward, so the patch applies; the rest by weights."""
    vae, patched = build_vae(dim=4, seed=4), build_vae(dim=4, seed=4)
    picked = _picked(vae)
    for m, p in zip(picked, _picked(patched)):
        if hook == "comfy_cast_weights":
            m.comfy_cast_weights = True
        elif hook == "weight_function":
            m.weight_function = [lambda w: w * 1.25]
            p.weight.data.mul_(1.25)
        else:
            m.bias_function = [lambda b: b + 0.1]
            p.bias.data.add_(0.1)
    x, z = _video(9, 24, 40), _latent(3, 3, 5)
    ref_x, ref_z = reference_encode(patched, x), reference_decode(patched, z)
    if hook != "comfy_cast_weights":
        assert _rel(ref_x, reference_encode(vae, x)) > 1e-3         # the patch matters
    for cfg in (WanVAEConfig(), COMFY_LOOP):
        assert _rel(wan_vae.encode(vae, x, cfg), ref_x) < F64_TOL, cfg
        assert _rel(wan_vae.decode(vae, z, cfg), ref_z) < F64_TOL, cfg
    assert all(m.calls > 0 for m in picked), [type(m).__name__ for m in picked if m.calls == 0]
    others = [m for m in _convs(vae) if all(m is not p for p in picked)]
    assert others and all(m.calls == 0 for m in others)


def test_on_chunk_reports_progress(vae):
    seen = []
    wan_vae.decode(vae, _latent(6, 2, 3, batch=2), WanVAEConfig(decode_chunk=2), on_chunk=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 8) for i in range(1, 9)]           # per sample: frame 0, then 2 + 2 + 1 frames
    seen.clear()
    wan_vae.encode(vae, _video(17, 16, 24), WanVAEConfig(encode_chunk=3), on_chunk=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]                # frame 0, 12 frames, 4 frames


def test_working_memory_grows_with_chunks_and_size(vae):
    small = wan_vae.working_memory(vae, (1, 16, 21, 60, 104), "decode", WanVAEConfig(decode_chunk=1))
    big = wan_vae.working_memory(vae, (1, 16, 21, 60, 104), "decode", WanVAEConfig(decode_chunk=4))
    assert 0 < small < big
    assert wan_vae.working_memory(vae, (1, 3, 81, 480, 832), "encode") > \
        wan_vae.working_memory(vae, (1, 3, 81, 240, 416), "encode")
    with pytest.raises(LiparError, match="stage"):
        wan_vae.working_memory(vae, (1, 16, 21, 60, 104), "both")


# ---------------------------------------------------------------- refusals


class _Tiny(nn.Module):
    """A TAEHV-like tiny VAE: plain sequential encoder/decoder."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3))
        self.decoder = nn.Sequential(nn.Conv2d(16, 8, 3), nn.ReLU(), nn.Conv2d(8, 3, 3))


def test_supported_and_check():
    vae = build_vae(dim=4)
    info = wan_vae.check(vae)
    assert (info.dim, info.z_dim, info.image_channels) == (4, 16, 3)
    assert wan_vae.supported(vae)
    for bad, words in ((_Tiny(), "no `conv1`"), (nn.Linear(3, 3), "no `encoder`"), ("vae", "not a torch module")):
        assert not wan_vae.supported(bad)
        with pytest.raises(NotWanVAEError, match=words) as e:
            wan_vae.check(bad)
        assert isinstance(e.value, LiparError) and "ComfyUI's own VAE" in str(e.value)


def test_wan22_layout_is_refused():
    vae = build_vae(dim=4)
    nested = nn.Module()
    nested.upsamples = nn.Sequential(vae.decoder.upsamples[0])
    vae.decoder.upsamples[0] = nested
    assert not wan_vae.supported(vae)
    with pytest.raises(NotWanVAEError, match="Wan2.2"):
        wan_vae.check(vae)


@pytest.mark.parametrize("edit, words", [
    (lambda v: delattr(v, "conv2"), "no `conv2`"),
    (lambda v: setattr(v.decoder.head, "1", nn.ReLU()), r"decoder.head.1` is ReLU"),
    (lambda v: setattr(v.encoder.downsamples[5], "mode", "downsample5d"), "unknown mode"),
    (lambda v: setattr(v.encoder.downsamples[5], "mode", "downsample2d"), "2 times in time"),
    (lambda v: setattr(v.decoder.middle[1].to_qkv, "weight", nn.Parameter(torch.zeros(5, 16, 1, 1))), "to_qkv.weight"),
    (lambda v: setattr(v.encoder.downsamples[0].residual[2], "_padding", (1, 1, 1, 1, 1, 1)), "causal padding"),
    (lambda v: setattr(v.encoder.downsamples[0].residual[0], "gamma", nn.Parameter(torch.ones(3))), "RMS norm"),
    (lambda v: v.encoder.middle.append(nn.Identity()), "three blocks"),
])
def test_layouts_that_differ_are_named(edit, words):
    vae = build_vae(dim=4)
    edit(vae)
    with pytest.raises(NotWanVAEError, match=words):
        wan_vae.check(vae)


def test_bad_inputs_and_config_are_refused_before_work(vae):
    with pytest.raises(LiparError, match="multiples of 8"):
        wan_vae.encode(vae, _video(5, 20, 24))
    with pytest.raises(LiparError, match="3 channels"):
        wan_vae.encode(vae, torch.zeros(1, 4, 5, 16, 16, dtype=torch.float64))
    with pytest.raises(LiparError, match=r"\[B, C, T, H, W\]"):
        wan_vae.decode(vae, torch.zeros(16, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(LiparError, match="16 channels"):
        wan_vae.decode(vae, torch.zeros(1, 48, 3, 4, 4, dtype=torch.float64))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(LiparError, match="encode_chunk"):
            WanVAEConfig(encode_chunk=bad)
    with pytest.raises(LiparError, match="decode_chunk"):
        WanVAEConfig(decode_chunk=0)


def test_fused_kernel_only_on_cuda():
    assert not wan_vae._Run(torch.device("cpu"), torch.float32, WanVAEConfig(fused_norm=True)).fused


@pytest.mark.skipif(not torch.cuda.is_available() or not wan_vae.triton_available(), reason="needs CUDA and Triton")
def test_cuda_bf16_runner_matches_float64_reference_like_the_loop():
    """bf16 on CUDA, every switch: error against float64 no worse than ComfyUI's own loop (the runner's COMFY_LOOP)."""
    vae = build_vae(dim=8, seed=7)
    vae16 = build_vae(dim=8, seed=7, dtype=torch.bfloat16).cuda()
    x, z = _video(9, 32, 48), _latent(3, 4, 6)
    ref_x, ref_z = reference_encode(vae, x), reference_decode(vae, z)

    def err(out, ref):
        return (out.double().cpu() - ref).pow(2).mean().sqrt().item()

    base_x = err(wan_vae.encode(vae16, x.cuda().bfloat16(), COMFY_LOOP), ref_x)
    base_z = err(wan_vae.decode(vae16, z.cuda().bfloat16(), COMFY_LOOP), ref_z)
    for cfg in ALL_SWITCHES + [WanVAEConfig(fold_bias=True), WanVAEConfig(cudnn_benchmark=True)]:
        assert err(wan_vae.encode(vae16, x.cuda().bfloat16(), cfg), ref_x) < 1.5 * base_x, cfg
        assert err(wan_vae.decode(vae16, z.cuda().bfloat16(), cfg), ref_z) < 1.5 * base_z, cfg
    for cfg in (dataclasses.replace(WanVAEConfig(), channels_last=False), WanVAEConfig()):
        assert wan_vae._Run(torch.device("cuda"), torch.bfloat16, cfg).fused


def test_cudnn_benchmark_switch_restores_the_global_flag(vae):
    before = torch.backends.cudnn.benchmark
    z = _latent(2, 2, 3)
    out = wan_vae.decode(vae, z, WanVAEConfig(cudnn_benchmark=True))
    assert torch.backends.cudnn.benchmark == before
    assert _rel(out, reference_decode(vae, z)) < F64_TOL


INTERPRETED = """
import os, sys, torch
sys.path[:0] = [{root!r}]
from lipar import wan_vae as wv
from tests.wan_vae_models import build_vae, reference_decode, reference_encode
init, call = wv._Run.__init__, wv._Norm.__call__

def forced_init(self, device, dtype, config):      # the fused kernel on CPU tensors (Triton's interpreter)
    init(self, device, dtype, config)
    self.fused = config.fused_norm

def forced_call(self, x, act, out=None, in_bias=None):
    if not self.run.fused:
        return call(self, x, act, out, in_bias)
    return wv._rms_act_triton(x, self.gain32, self.bias32, act, torch.empty_like(x) if out is None else out, in_bias)

wv._Run.__init__, wv._Norm.__call__ = forced_init, forced_call
vae64, vae = build_vae(dim=4, seed=3, norm_bias=True), build_vae(dim=4, seed=3, dtype=torch.float32, norm_bias=True)
g = torch.Generator().manual_seed(0)
x = torch.rand(1, 3, 9, 16, 24, generator=g, dtype=torch.float64) * 2 - 1
z = torch.randn(1, 16, 3, 2, 3, generator=g, dtype=torch.float64)
rx, rz = reference_encode(vae64, x), reference_decode(vae64, z)
for cfg in (wv.WanVAEConfig(fold_bias=True), wv.WanVAEConfig(channels_last=False)):
    a, d = wv.encode(vae, x.float(), cfg).double(), wv.decode(vae, z.float(), cfg).double()
    print(((a - rx).abs().max() / rx.abs().max()).item(), ((d - rz).abs().max() / rz.abs().max()).item())
"""


def test_fused_kernel_under_tritons_interpreter():
    """The Triton RMS_norm+SiLU kernel (input bias, norm bias, strided output into a buffer) run on CPU by Triton's
    interpreter inside the whole runner equals the float64 reference at float32 rounding (needs triton installed)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", INTERPRETED.format(root=root)], capture_output=True, text=True,
                       env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    errs = [float(v) for line in r.stdout.split("\n") if line.strip() for v in line.split()]
    assert len(errs) == 4 and max(errs) < 1e-5, r.stdout
