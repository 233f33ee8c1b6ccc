"""Pruning-mask previews as IMAGE-style tensors ``[N, H, W, 3]`` (float, 0..1)."""

from __future__ import annotations

import io
import os
import struct
from concurrent.futures import ThreadPoolExecutor

import torch

from .errors import LiparError
from .plan import PruningPlan

PRUNED_TINT = (0.15, 0.35, 1.0)   # pruned patches are tinted blue
KEPT_GRID = (1.0, 1.0, 1.0)
PRUNED_GRID = (0.12, 0.2, 0.55)


def latent_frame_of_video_frame(n: int) -> int:
    """Wan's VAE maps video frame 0 to latent frame 0 and frames 4t-3..4t to latent frame t."""
    return 0 if n == 0 else (n - 1) // 4 + 1


def mask_preview(plan: PruningPlan, frames: torch.Tensor | None = None, *, sample: int = 0,
                 strength: float = 0.55) -> torch.Tensor:
    """A preview of which patches are pruned.

    frames: optional source video ``[N, H, W, 3]`` in 0..1 with ``N = 4*(T-1)+1`` frames (or
    N = T) and H, W = 8 x the latent size. With frames, returns them with pruned patches
    tinted; without, returns the T masks upscaled to pixel size (kept white, pruned dark blue).
    """
    device = frames.device if isinstance(frames, torch.Tensor) else plan.keep.device
    keep = plan.keep[sample].to(device, torch.float32)              # [T, Hp, Wp]
    t, hp, wp = keep.shape
    if frames is None:
        px = keep.repeat_interleave(16, 1).repeat_interleave(16, 2)  # [T, H, W]
        kept = torch.tensor(KEPT_GRID, device=device).view(1, 1, 1, 3)
        pruned = torch.tensor(PRUNED_GRID, device=device).view(1, 1, 1, 3)
        img = px.unsqueeze(-1) * kept + (1 - px.unsqueeze(-1)) * pruned
        # thin grid lines between tokens help reading the mask
        img[:, ::16, :, :] *= 0.85
        img[:, :, ::16, :] *= 0.85
        return img.clamp(0, 1)
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise LiparError(f"Source frames must be an IMAGE batch [N, H, W, 3]; got {getattr(frames, 'shape', type(frames))}.")
    n, h, w, _ = frames.shape
    if n == t:
        lat_of = list(range(n))
    elif n == 4 * (t - 1) + 1:
        lat_of = [latent_frame_of_video_frame(i) for i in range(n)]
    else:
        raise LiparError(f"The source frames ({n}) do not match the plan's {t} latent frames; connect the frames "
                         f"that were VAE-encoded ({4 * (t - 1) + 1} frames).")
    if (h, w) != (hp * 16, wp * 16):
        raise LiparError(f"The source frames are {w}x{h} but the plan is for {wp * 16}x{hp * 16} video.")
    m = keep[lat_of].repeat_interleave(16, 1).repeat_interleave(16, 2).unsqueeze(-1)  # [N, H, W, 1]
    tint = torch.tensor(PRUNED_TINT, device=device).view(1, 1, 1, 3)
    f = frames.detach().float()
    return (m * f + (1 - m) * ((1 - strength) * f + strength * tint)).clamp(0, 1)


def one_frame_per_latent_frame(images: torch.Tensor, latent_frames: int,
                               device: torch.device | str | None = None) -> torch.Tensor:
    """From ``[N, H, W, C]`` images of a 4*(T-1)+1-frame video (or T frames), the frame each
    latent frame ends on (video frames 0, 4, 8, ...) as ``[T, H, W, C]`` on ``device`` (default:
    the images' device): a preview of T frames shows every mask. The frames are copied one at a
    time into the result, so the clip is never gathered into a copy on the host first (for an
    832x480x81 clip: 21 frames, 100 MB moved once instead of copied twice)."""
    device = images.device if device is None else torch.device(device)
    if images.shape[0] == latent_frames:
        return images.to(device)
    out = torch.empty((latent_frames,) + tuple(images.shape[1:]), dtype=images.dtype, device=device)
    for t in range(latent_frames):
        out[t].copy_(images[4 * t])
    return out


def fit_frames(frames: torch.Tensor, latent_frames: int, latent_h: int, latent_w: int,
               spatial: int = 8) -> tuple[torch.Tensor | None, str]:
    """Source frames ``[N, H, W, 3]`` brought to the size a latent of ``latent_h x latent_w``
    decodes to, as a VAE encoder saw them: each side centre-cropped to a multiple of
    ``spatial`` (what ComfyUI's VAE Encode does, e.g. 854x480 -> 848x480); if that does not
    give the latent's size, resized to it. Returns (frames or None, what was done): None when
    the frame count fits neither 4*(T-1)+1 nor T (the preview then shows the masks alone)."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] < 3:
        return None, f"the images input is not an IMAGE batch [N, H, W, 3] ({getattr(frames, 'shape', type(frames))})"
    n, h, w = frames.shape[:3]
    want_n = 4 * (latent_frames - 1) + 1
    if n not in (want_n, latent_frames):
        return None, (f"the images input has {n} frames but the latent stands for {want_n}; showing the masks alone "
                      "(connect the frames that were VAE-encoded)")
    frames = frames[..., :3]
    th, tw = latent_h * spatial, latent_w * spatial
    ch, cw = h // spatial * spatial, w // spatial * spatial
    frames = frames[:, (h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
    if (ch, cw) == (th, tw):
        note = "" if (ch, cw) == (h, w) else f"cropped the images from {w}x{h} to {cw}x{ch} as VAE Encode does"
        return frames, note
    resized = torch.nn.functional.interpolate(frames.float().permute(0, 3, 1, 2), size=(th, tw), mode="bilinear",
                                              align_corners=False, antialias=True).permute(0, 2, 3, 1)
    return resized.clamp(0, 1), f"resized the images from {w}x{h} to the latent's {tw}x{th}"


def animation_pixels(images: torch.Tensor):
    """``[N, H, W, 3]`` images (0..1, any device) as uint8 pixels ``[N, H, W, 3]`` on the host (the
    conversion runs on the images' device; only the uint8 pixels cross)."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def write_animation(pixels, path: str, fps: float = 8.0, effort: int = 4, threads: int | None = None) -> str:
    """Write uint8 pixels ``[N, H, W, 3]`` as an animated image (Pillow picks the format from the
    extension; WEBP ``effort`` 0-6: 0 encodes ~2x faster than 4, a little larger). A ``.webp`` is made
    by ``webp_animation``: its frames are encoded in parallel (Pillow releases the GIL)."""
    if path.lower().endswith(".webp"):
        with open(path, "wb") as f:
            f.write(webp_animation(pixels, fps=fps, effort=effort, threads=threads))
        return path
    from PIL import Image

    frames = [Image.fromarray(img) for img in pixels]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0, lossless=False,
                   quality=80, method=effort)
    return path


def webp_animation(pixels, fps: float = 8.0, effort: int = 4, quality: int = 80, threads: int | None = None) -> bytes:
    """An animated WEBP (looping, every frame a full key frame) of uint8 pixels ``[N, H, W, 3]``.

    Each frame is encoded as a still lossy WEBP by Pillow on its own thread, and the frames' bitstreams
    are put into one animation container (RIFF ``WEBP``: ``VP8X`` with the animation flag, ``ANIM``,
    one ``ANMF`` per frame; Google's WebP container specification). Pillow's animation encoder works
    frame after frame on one thread; this takes the pruner's 21-frame preview from ~0.1 s to about
    that over the number of cores."""
    from PIL import Image

    n, h, w = pixels.shape[:3]

    def still(img) -> list[tuple[bytes, bytes]]:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "WEBP", quality=quality, method=effort, lossless=False)
        return [c for c in _riff_chunks(buf.getvalue()) if c[0] in (b"ALPH", b"VP8 ", b"VP8L")]

    workers = max(1, min(n, threads or os.cpu_count() or 1, 16))
    with ThreadPoolExecutor(workers, thread_name_prefix="lipar-webp") as pool:
        frames = list(pool.map(still, pixels))
    alpha = any(tag == b"ALPH" for chunks in frames for tag, _ in chunks)
    duration = max(1, min(round(1000 / fps), 0xFFFFFF))
    body = _chunk(b"VP8X", bytes([0x02 | (0x10 if alpha else 0)]) + b"\0\0\0" + _u24(w - 1) + _u24(h - 1))
    body += _chunk(b"ANIM", b"\0\0\0\0" + struct.pack("<H", 0))          # background, loop forever
    for chunks in frames:     # at (0, 0), full size, the duration, no blending with the previous frame
        header = _u24(0) + _u24(0) + _u24(w - 1) + _u24(h - 1) + _u24(duration) + bytes([0x02])
        body += _chunk(b"ANMF", header + b"".join(_chunk(tag, data) for tag, data in chunks))
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def _u24(v: int) -> bytes:
    """A little-endian 24-bit field."""
    return struct.pack("<I", v)[:3]


def _chunk(tag: bytes, data: bytes) -> bytes:
    """A RIFF chunk: tag, little-endian size, data, padded to an even length."""
    return tag + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (tag, payload) chunks of a RIFF ``WEBP`` file."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise LiparError("Pillow did not write a WEBP image.")
    out, i = [], 12
    while i + 8 <= len(data):
        size = struct.unpack("<I", data[i + 4:i + 8])[0]
        out.append((data[i:i + 4], data[i + 8:i + 8 + size]))
        i += 8 + size + (size % 2)
    return out


def save_animation(images: torch.Tensor, path: str, fps: float = 8.0, effort: int = 4) -> str:
    """Write ``[N, H, W, 3]`` images (0..1, any device) as an animated image (see ``write_animation``)."""
    return write_animation(animation_pixels(images), path, fps=fps, effort=effort)
