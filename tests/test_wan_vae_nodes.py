"""Wan VAE Encode / Decode (fast), called host-free with a stand-in for ComfyUI's ``comfy.sd.VAE``.

The stand-in restates what ComfyUI's VAE does around its module (crop to multiples of 8, x * 2 - 1, the
module's encode, float32 on the output device; decode, clamp((x + 1) / 2), channels last) with the
whole-clip reference as the module's computation. tests/realhost runs the nodes against ComfyUI's real
VAEEncode / VAEDecode.
"""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from lipar_pack.nodes import NODE_CLASS_MAPPINGS
from lipar_pack.nodes import vae as vae_nodes
from tests import comfy_services
from tests.wan_vae_models import build_vae, reference_decode, reference_encode

Encode = NODE_CLASS_MAPPINGS["LIPAR_WanVAEEncode"]
Decode = NODE_CLASS_MAPPINGS["LIPAR_WanVAEDecode"]


class FakeVAE:
    """The parts of comfy.sd.VAE the nodes use, for a Wan2.1 VAE module (ComfyUI's steps, restated)."""

    latent_dim = 3
    disable_offload = False

    def __init__(self, model):
        self.first_stage_model = model
        self.vae_dtype = next(model.parameters()).dtype
        self.device = self.output_device = torch.device("cpu")
        self.patcher = object()
        self.calls = []
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
        self.memory_used_encode = lambda shape, dtype: 6000 * shape[3] * shape[4] * 4
        self.memory_used_decode = lambda shape, dtype: 7000 * shape[3] * shape[4] * 64 * 4

    def throw_exception_if_invalid(self):
        pass

    def vae_encode_crop_pixels(self, pixels):
        for d in (1, 2):
            size = pixels.shape[d] // 8 * 8
            if size != pixels.shape[d]:
                pixels = pixels.narrow(d, (pixels.shape[d] % 8) // 2, size)
        return pixels[..., :3]

    def encode(self, pixels):
        self.calls.append("encode")
        video = self.process_input(self.vae_encode_crop_pixels(pixels).movedim(-1, 1).movedim(1, 0).unsqueeze(0))
        return reference_encode(self.first_stage_model, video.to(self.vae_dtype)).float()

    def decode(self, latent):
        self.calls.append("decode")
        return self.process_output(reference_decode(self.first_stage_model, latent.to(self.vae_dtype)).float()).movedim(1, -1)


@pytest.fixture(scope="module")
def wan_vae_model():
    return build_vae(dim=4, seed=5, dtype=torch.float32)


def _pixels(frames=13, h=27, w=43, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(frames, h, w, 3, generator=g)


def _rel(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device, (a.shape, b.shape, a.dtype, b.dtype)
    return ((a - b).abs().max() / b.abs().max()).item()


def test_encode_returns_what_vae_encode_returns(wan_vae_model):
    vae = FakeVAE(wan_vae_model)
    pixels = _pixels()                                   # 27x43: cropped to 24x40 with offsets (1, 1)
    (latent,) = Encode().encode(pixels, vae)
    assert set(latent) == {"samples"} and vae.calls == []
    want = vae.encode(pixels)
    assert latent["samples"].shape == (1, 16, 4, 3, 5) and _rel(latent["samples"], want) < 2e-5


def test_decode_returns_what_vae_decode_returns(wan_vae_model):
    vae = FakeVAE(wan_vae_model)
    z = torch.randn(1, 16, 3, 3, 5, generator=torch.Generator().manual_seed(1)) * 2
    (images,) = Decode().decode({"samples": z, "batch_index": [0]}, vae)
    assert vae.calls == []
    want = vae.decode(z).reshape(-1, 24, 40, 3)         # VAE Decode joins the batch's frames
    assert images.shape == (9, 24, 40, 3) and _rel(images, want) < 2e-5
    assert images.min() >= 0 and images.max() <= 1


class _TinyVideoVAE(nn.Module):
    """A TAEHV-like tiny video VAE: ``encode`` [1, 3, T, H, W] -> [1, 16, T, H/8, W/8], ``decode`` back."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv3d(3, 16, (1, 8, 8), stride=(1, 8, 8))
        self.decoder = nn.ConvTranspose3d(16, 3, (1, 8, 8), stride=(1, 8, 8))

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


def _comfy_generic(vae, what, x):
    """ComfyUI's generic VAE.encode / decode for a video VAE (host-side scaling), restated."""
    model = vae.first_stage_model
    if what == "encode":
        video = vae.vae_encode_crop_pixels(x).movedim(-1, 1).movedim(1, 0).unsqueeze(0)
        return model.encode(vae.process_input(video).to(vae.vae_dtype)).float()
    return vae.process_output(model.decode(x.to(vae.vae_dtype)).float()).movedim(1, -1)


def test_other_video_vaes_run_their_own_module_with_device_side_scaling(caplog, monkeypatch):
    """A video VAE that is not Wan2.1 (TAEHV-like) runs its own module through the nodes' path: the same
    values as ComfyUI's VAE Encode / Decode (bit for bit: the same float32 operations, scaled a few frames
    at a time), an INFO line says so."""
    monkeypatch.setattr(vae_nodes.transfer, "STAGING_BYTES", 2 * 16 * 24 * 3 * 4)    # 5 frames: pieces of 2, 2 and 1
    torch.manual_seed(0)
    vae = FakeVAE(_TinyVideoVAE())
    pixels = _pixels(5, 16, 24)
    with caplog.at_level(logging.INFO, logger="lipar"):
        (latent,) = Encode().encode(pixels, vae)
        (images,) = Decode().decode({"samples": latent["samples"]}, vae)
    assert vae.calls == []                               # not handed to vae.encode / vae.decode
    assert torch.equal(latent["samples"], _comfy_generic(vae, "encode", pixels))
    want = _comfy_generic(vae, "decode", latent["samples"]).reshape(-1, 16, 24, 3)
    assert images.shape == (5, 16, 24, 3) and torch.equal(images, want)
    assert "not a Wan2.1 VAE" in caplog.text and "no `conv1`" in caplog.text and "_TinyVideoVAE module" in caplog.text


def test_decoded_frames_land_in_a_prefaulted_host_tensor(monkeypatch):
    """The decoded IMAGE is copied into ``host.output_tensor`` (its pages touched by all of PyTorch's
    threads first), not into a fresh ``torch.empty`` that the copy faults in page by page."""
    made = []
    real = vae_nodes.host.output_tensor

    def spy(*a, **k):
        made.append(real(*a, **k))
        return made[-1]
    monkeypatch.setattr(vae_nodes.host, "output_tensor", spy)
    torch.manual_seed(0)
    vae = FakeVAE(_TinyVideoVAE())
    (images,) = Decode().decode({"samples": torch.randn(1, 16, 5, 2, 3)}, vae)
    assert len(made) == 1 and images.data_ptr() == made[0].data_ptr()


def test_decode_prepares_its_output_while_the_vae_runs(monkeypatch):
    """Where ComfyUI's VAE object says what a decode gives (``upscale_ratio``, ``output_channels``), the output
    tensor is made on a worker thread while the module decodes and then filled; where the prediction is wrong,
    the decode's real shape wins."""
    import threading

    threads = []
    real = vae_nodes.host.output_tensor

    def spy(*a, **k):
        threads.append(threading.current_thread().name)
        return real(*a, **k)
    monkeypatch.setattr(vae_nodes.host, "output_tensor", spy)
    torch.manual_seed(0)
    vae = FakeVAE(_TinyVideoVAE())
    vae.output_channels = 3
    z = torch.randn(1, 16, 5, 2, 3)
    want = _comfy_generic(vae, "decode", z).reshape(-1, 16, 24, 3)
    vae.upscale_ratio = (lambda a: a, 8, 8)              # what this module does: made early and used
    assert vae_nodes.decoded_shape(vae, tuple(z.shape)) == (1, 5, 16, 24, 3)
    (images,) = Decode().decode({"samples": z}, vae)
    assert torch.equal(images, want) and len(threads) == 1 and threads[0].startswith("lipar-host")
    threads.clear()
    vae.upscale_ratio = (lambda a: max(0, a * 4 - 3), 8, 8)   # Wan's frame count: wrong for this module
    (images,) = Decode().decode({"samples": z}, vae)
    assert torch.equal(images, want) and len(threads) == 2 and not threads[1].startswith("lipar-host")
    vae.upscale_ratio = 8                                # an image VAE's ratio says nothing about frames
    assert vae_nodes.decoded_shape(vae, tuple(z.shape)) is None


def test_cropped_frames_cross_to_the_device_as_they_lie(monkeypatch):
    """Frames go to the VAE's device in their IMAGE layout and the channels move there: a cropped (strided)
    clip gives the same latent as ComfyUI's host-side movedim."""
    monkeypatch.setattr(vae_nodes.transfer, "STAGING_BYTES", 2 * 19 * 29 * 3 * 4)    # pieces of 2 frames
    torch.manual_seed(0)
    vae = FakeVAE(_TinyVideoVAE())
    pixels = _pixels(7, 19, 29)                          # cropped to 16x24 with offsets (1, 2)
    (latent,) = Encode().encode(pixels, vae)
    assert torch.equal(latent["samples"], _comfy_generic(vae, "encode", pixels))


def test_image_vaes_go_to_comfyuis_vae_unchanged(caplog):
    vae = FakeVAE(_TinyVideoVAE())
    vae.latent_dim = 2                                   # an image VAE
    vae.encode = lambda pixels: torch.full((1, 16, 1, 1), 7.0)
    vae.decode = lambda latent: torch.full((5, 8, 8, 3), 0.5)
    with caplog.at_level(logging.INFO, logger="lipar"):
        (latent,) = Encode().encode(_pixels(5, 16, 16), vae)
        (images,) = Decode().decode({"samples": torch.zeros(5, 16, 1, 1)}, vae)
    assert torch.equal(latent["samples"], torch.full((1, 16, 1, 1), 7.0))
    assert images.shape == (5, 8, 8, 3)
    assert "not a video VAE" in caplog.text


def test_out_of_memory_falls_back_to_comfyuis_vae(wan_vae_model, monkeypatch, caplog):
    vae = FakeVAE(wan_vae_model)

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(vae_nodes, "wan_encode", oom)
    monkeypatch.setattr(vae_nodes, "wan_decode", oom)
    pixels, z = _pixels(5, 16, 24), torch.randn(1, 16, 2, 2, 3)
    with caplog.at_level(logging.WARNING, logger="lipar"):
        (latent,) = Encode().encode(pixels, vae)
        (images,) = Decode().decode({"samples": z}, vae)
    assert vae.calls == ["encode", "decode"]
    assert torch.equal(latent["samples"], vae.encode(pixels))
    assert torch.equal(images, vae.decode(z).reshape(-1, 16, 24, 3))
    assert caplog.text.count("ran out of GPU memory") == 2


def test_comfyui_services_are_used_when_present(wan_vae_model, monkeypatch):
    calls = comfy_services.install(monkeypatch, get_free_memory=lambda dev=None: 10 ** 12,
                                   OOM_EXCEPTION=torch.cuda.OutOfMemoryError)

    vae = FakeVAE(wan_vae_model)
    z = torch.randn(1, 16, 6, 2, 3)
    Decode().decode({"samples": z}, vae)
    ((models, memory, full),) = calls["load"]
    assert models == [vae.patcher] and memory >= vae.memory_used_decode(z.shape, vae.vae_dtype) and full is False
    chunks = 1 + -(-5 // vae_nodes.CONFIG.decode_chunk)
    assert calls["progress"] == [(i, chunks) for i in range(1, chunks + 1)] and calls["interrupt"] == chunks
    calls["stop_at"] = calls["interrupt"] + 2
    with pytest.raises(comfy_services.Interrupted):
        Decode().decode({"samples": z}, vae)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_node_outputs_move_to_the_host_in_pieces(monkeypatch):
    """``host.to_intermediate`` (the pruner's IMAGE, the sampler's latent) converts on the GPU and returns the
    same values as ``.to("cpu", dtype)``, in a pre-faulted host tensor, through the pinned pieces."""
    monkeypatch.setattr(vae_nodes.transfer, "STAGING_BYTES", 1 << 20)
    x = torch.rand(21, 96, 88, 3, device="cuda", dtype=torch.float16)
    got = vae_nodes.host.to_intermediate(x, torch.float32)
    assert got.device.type == "cpu" and got.dtype == torch.float32 and torch.equal(got, x.float().cpu())
    z = torch.randn(1, 16, 5, 4, 6, device="cuda")                          # one piece along a batch of one
    assert torch.equal(vae_nodes.host.to_intermediate(z), z.cpu())
