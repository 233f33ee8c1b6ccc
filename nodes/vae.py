"""Wan VAE Encode / Decode (fast): ComfyUI's VAE Encode / VAE Decode, with the Wan2.1 VAE computed by lipar.

Both nodes return exactly what ComfyUI's VAEEncode / VAEDecode return for the same VAE (same cropping, pixel
scaling, dtype and values: the code below follows ``comfy.sd.VAE.encode`` / ``decode`` step by step) but
compute the Wan2.1 VAE's ``first_stage_model`` with ``lipar.wan_vae`` (larger time chunks, channels_last,
no copies of whole chunks, a fused norm kernel). Other video VAEs (the tiny lighttaew2_1 / TAEHV, Wan2.2's
VAE) run ComfyUI's own module. For both, the pixel scaling runs on the GPU instead of the host (the same
float32 operations, so the same values), which saves ComfyUI's passes over the whole clip on the CPU (on an
832x480x81 clip, 0.55 s for a decode and 0.75 s for an encode on a 2-core host). Image VAEs go to
ComfyUI's own ``vae.encode`` / ``vae.decode`` unchanged; so does a run that runs out of memory (ComfyUI's
VAE then tiles), with a warning.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import host
from ..lipar import transfer
from ..lipar.wan_vae import WanVAEConfig, check, decode as wan_decode, encode as wan_encode, working_memory
from ..lipar.errors import LiparError
from ..lipar.timing import StageClock
from .common import CATEGORY, latent_samples, log, user_errors

CONFIG = WanVAEConfig()       # the runner's measured defaults (benchmarks/wan_vae.py)


def fast_model(vae: Any, what: str) -> torch.nn.Module | None:
    """The Wan2.1 VAE module lipar can compute, or None (with an INFO line saying what runs instead)."""
    model = getattr(vae, "first_stage_model", None)
    if model is None or getattr(vae, "latent_dim", 3) != 3:
        log.info("LIPAR Wan VAE %s: the VAE (%s) is not a video VAE; using ComfyUI's VAE %s.", what,
                 type(model).__name__, what)
        return None
    try:
        check(model)
    except LiparError as e:
        log.info("LIPAR Wan VAE %s: not a Wan2.1 VAE (%s); running ComfyUI's %s module (pixel scaling on the GPU).",
                 what, str(getattr(e, "reason", e)).rstrip("."), type(model).__name__)
        return None
    return model


def video_vae(vae: Any) -> bool:
    """A video VAE whose module ComfyUI runs on whole clips (what the device-side path can run)."""
    model = getattr(vae, "first_stage_model", None)
    return (model is not None and getattr(vae, "latent_dim", None) == 3 and not getattr(vae, "not_video", False)
            and callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None)))


def _load(vae: Any, memory: int) -> Any:
    """ComfyUI's model management for the VAE (as VAE.encode/decode do), or None outside ComfyUI."""
    mm = host.model_management()
    if mm is not None and hasattr(mm, "load_models_gpu"):
        mm.load_models_gpu([vae.patcher], memory_required=memory,
                           force_full_load=getattr(vae, "disable_offload", False))
    return mm


def _batch_number(mm: Any, vae: Any, memory: int) -> int:
    """Samples per call, as ComfyUI's VAE computes it from free memory."""
    if mm is None or not hasattr(mm, "get_free_memory"):
        return 1
    return max(1, int(mm.get_free_memory(vae.device) / max(1, memory)))


def _oom_types(mm: Any) -> tuple[type, ...]:
    oom = getattr(mm, "OOM_EXCEPTION", None) if mm is not None else None
    return (oom,) if isinstance(oom, type) else (torch.cuda.OutOfMemoryError,)


def _chunk_callback():
    """Interrupt check and progress after each chunk."""
    bar: list[host.Progress] = []

    def on_chunk(done: int, total: int) -> None:
        host.throw_if_interrupted()
        if not bar:
            bar.append(host.Progress(total))
        bar[0].update(done, total)
    return on_chunk


def _release(mm: Any) -> None:
    if mm is not None and hasattr(mm, "soft_empty_cache"):
        mm.soft_empty_cache()


def _frames_to_device(vae: Any, frames: torch.Tensor) -> torch.Tensor:
    """``vae.process_input(video).to(vae.vae_dtype)`` on the VAE's device, where ``video`` [b, C, T, H, W] is
    ``frames`` [b, T, H, W, C] (host, IMAGE layout) with the channels moved to axis 1, as ComfyUI's VAE Encode
    moves them. ComfyUI moves and scales on the host; here pieces of frames cross as they lie (plain copies
    through pinned buffers, not a transposing copy) and the same float32 ops run on the GPU, a piece at a time."""
    b, t, h, w, c = frames.shape
    x = torch.empty((b, c, t, h, w), dtype=vae.vae_dtype, device=vae.device)
    for t0, part in transfer.to_device_in_pieces(frames, 1, torch.device(vae.device)):
        x[:, :, t0:t0 + part.shape[1]] = vae.process_input(part.movedim(-1, 1))    # [b, C, f, H, W]
    return x


def _frames_to_host(vae: Any, out: torch.Tensor, dest: torch.Tensor) -> None:
    """``vae.process_output`` of decoded frames ``out`` [b, C, T, H, W] (on the GPU) into ``dest`` [b, T, H, W, C]
    (on ComfyUI's intermediate device, a ``host.output_tensor``). ComfyUI converts and scales on the host; the
    same float32 ops run here on the GPU, a few frames at a time, each piece laid out as IMAGE frames and copied
    across once (through pinned buffers, ``lipar.transfer``)."""
    step = transfer.piece_length(dest, 1)

    def pieces():
        for t in range(0, out.shape[2], step):
            yield t, vae.process_output(out[:, :, t:t + step].float()).movedim(1, -1)    # [b, f, H, W, C]
    transfer.to_host_in_pieces(pieces(), dest, 1)


def _in_batches(vae: Any, memory: int, total: int, run: Callable[[int, int], None], what: str) -> bool:
    """ComfyUI's VAE batching: load the VAE for ``memory`` bytes of work, then ``run(i, step)`` for each batch of
    ``total`` samples. False (with a warning, the failed run's tensors freed) when the GPU ran out of memory."""
    mm = _load(vae, memory)
    step = _batch_number(mm, vae, memory)
    out_of_memory = False
    try:
        for i in range(0, total, step):
            run(i, step)
    except _oom_types(mm):
        out_of_memory = True             # leave the except block first, so the failed run's tensors can be freed
    if out_of_memory:
        _release(mm)
        log.warning("LIPAR Wan VAE %s ran out of GPU memory; using ComfyUI's VAE %s (it tiles when needed).",
                    what.capitalize(), what)
    return not out_of_memory


def _log_seconds(what: str, frames: int, clock: StageClock) -> None:
    """The INFO line saying where a node's time went."""
    log.info("LIPAR Wan VAE %s: %d frames in %.3f s (%s)", what, frames, sum(clock.seconds.values()),
             ", ".join(f"{k} {v:.3f}" for k, v in clock.seconds.items()))


def encode_pixels(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``VAE.encode(pixels)`` (IMAGE [N, H, W, C] -> latent [1, 16, T, H/8, W/8] float32 on ComfyUI's
    intermediate device), with lipar computing a Wan2.1 VAE."""
    model = fast_model(vae, "encode")
    if model is None and not video_vae(vae):
        return vae.encode(pixels)
    vae.throw_exception_if_invalid()
    frames = vae.vae_encode_crop_pixels(pixels)                         # [N, H, W, C], cropped to multiples of 8
    if frames.ndim < 5:
        frames = frames.unsqueeze(0)                                    # [1, N, H, W, C]: the frames are time
    b, t, h, w, c = frames.shape
    shape = (b, c, t, h, w)                                             # what the VAE module takes
    memory = int(vae.memory_used_encode(shape, vae.vae_dtype))
    if model is not None:
        memory = max(memory, working_memory(model, shape, "encode", CONFIG, vae.vae_dtype))
    on_chunk = _chunk_callback()
    samples: list[torch.Tensor] = []
    clock = StageClock()

    def run(i: int, step: int) -> None:
        clock.mark("load")
        x = _frames_to_device(vae, frames[i:i + step])
        clock.mark("to_device")
        with user_errors():
            z = wan_encode(model, x, CONFIG, on_chunk) if model is not None else vae.first_stage_model.encode(x)
        out = z.to(vae.output_device).float()
        if not samples:
            samples.append(torch.empty((b,) + tuple(out.shape[1:]), device=vae.output_device))
        samples[0][i:i + step] = out
        clock.mark("module")

    if not _in_batches(vae, memory, b, run, "encode"):
        return vae.encode(pixels)
    _log_seconds("encode", t * b, clock)
    return samples[0]


def decoded_shape(vae: Any, latent_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The IMAGE shape [B, T, H, W, C] ComfyUI's VAE object says a decode of ``latent_shape`` [B, C, t, h, w]
    gives (its ``upscale_ratio`` per axis and ``output_channels``), or None where it does not say. Used to
    prepare the output while the VAE runs; the decode's real shape decides."""
    ratio, channels = getattr(vae, "upscale_ratio", None), getattr(vae, "output_channels", None)
    if not isinstance(ratio, (tuple, list)) or len(ratio) != 3 or not isinstance(channels, int) or len(latent_shape) != 5:
        return None
    sizes = [r(n) if callable(r) else int(r * n) for r, n in zip(ratio, latent_shape[2:])]
    return (latent_shape[0], *(int(n) for n in sizes), channels)


def decode_latent(vae: Any, latent: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``VAE.decode(latent)`` (latent [B, 16, T, h, w] -> images [B, T', H, W, C] float32 in 0..1 on
    ComfyUI's intermediate device), with lipar computing a Wan2.1 VAE."""
    model = fast_model(vae, "decode")
    if model is None and not video_vae(vae):
        return vae.decode(latent)
    vae.throw_exception_if_invalid()
    memory = int(vae.memory_used_decode(latent.shape, vae.vae_dtype))
    if model is not None:
        memory = max(memory, working_memory(model, tuple(latent.shape), "decode", CONFIG, vae.vae_dtype))
    on_chunk = _chunk_callback()
    pixels: list[torch.Tensor] = []
    clock = StageClock()

    expected = decoded_shape(vae, tuple(latent.shape))
    early = host.output_tensor_later(expected, device=vae.output_device) if expected is not None else None

    def run(i: int, step: int) -> None:
        clock.mark("load")
        z = latent[i:i + step].to(vae.vae_dtype).to(vae.device)
        with user_errors():                                                 # [b, C, T, H, W] on the GPU
            out = wan_decode(model, z, CONFIG, on_chunk) if model is not None else vae.first_stage_model.decode(z)
        if out.is_cuda:
            torch.cuda.current_stream(out.device).synchronize()            # the copies below wait for it anyway
        clock.mark("module")
        if not pixels:                                                      # [B, T, H, W, C]
            shape = (latent.shape[0], out.shape[2], *out.shape[3:], out.shape[1])
            made = early.result() if early is not None else None
            pixels.append(made if made is not None and tuple(made.shape) == shape else
                          host.output_tensor(shape, device=vae.output_device))
        clock.mark("allocate")
        _frames_to_host(vae, out, pixels[0][i:i + step])
        clock.mark("to_host")

    if not _in_batches(vae, memory, latent.shape[0], run, "decode"):
        return vae.decode(latent)
    _log_seconds("decode", pixels[0].shape[0] * pixels[0].shape[1], clock)
    return pixels[0]


class WanVAEEncode:
    DESCRIPTION = (
        "VAE Encode for the Wan2.1 VAE, computed faster by LIPAR: the same latent as ComfyUI's VAE Encode (same "
        "weights, same cropping to multiples of 8, equal up to bf16 rounding), from larger time chunks and fused "
        "kernels. Other video VAEs (the tiny lighttaew2_1, Wan2.2's VAE) run their own module, giving exactly VAE "
        "Encode's latent; for all of them the pixels are scaled on the GPU instead of the CPU. Image VAEs, and a run "
        "that would run out of memory, go to ComfyUI's own VAE Encode.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The video's latent, as VAE Encode gives it.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pixels": ("IMAGE", {"tooltip": "The video frames (e.g. from Load Video); cropped to multiples of 8 as VAE "
                                            "Encode crops them."}),
            "vae": ("VAE", {"tooltip": "The Wan2.1 VAE (wan_2.1_vae.safetensors), computed by LIPAR; other video VAEs "
                                       "(the tiny lighttaew2_1) run their own module; image VAEs go to ComfyUI's VAE Encode."}),
        }}

    def encode(self, pixels, vae):
        return ({"samples": encode_pixels(vae, pixels)},)


class WanVAEDecode:
    DESCRIPTION = (
        "VAE Decode for the Wan2.1 VAE, computed faster by LIPAR: the same frames as ComfyUI's VAE Decode (same "
        "weights, equal up to bf16 rounding), from larger time chunks and fused kernels. Other video VAEs (the tiny "
        "lighttaew2_1, Wan2.2's VAE) run their own module, giving exactly VAE Decode's frames; for all of them the "
        "frames are scaled on the GPU and copied to the host once. Image VAEs, and a run that would run out of memory "
        "(ComfyUI then decodes in tiles), go to ComfyUI's own VAE Decode.")
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The decoded frames, as VAE Decode gives them.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "samples": ("LATENT", {"tooltip": "The latent to decode (e.g. the Self-Forcing Causal Sampler's output)."}),
            "vae": ("VAE", {"tooltip": "The Wan2.1 VAE (wan_2.1_vae.safetensors), computed by LIPAR; other video VAEs "
                                       "(the tiny lighttaew2_1) run their own module; image VAEs go to ComfyUI's VAE Decode."}),
        }}

    def decode(self, samples, vae):
        latent = latent_samples(samples, "samples")
        if latent.is_nested:
            latent = latent.unbind()[0]
        images = decode_latent(vae, latent)
        if images.ndim == 5:                       # [B, T, H, W, C] -> one batch of frames, as VAE Decode does
            images = images.reshape(-1, *images.shape[-3:])
        return (images,)
