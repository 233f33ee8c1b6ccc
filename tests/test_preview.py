"""lipar.preview's animated WEBP: frames encoded in parallel, put into one animation container."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lipar.preview import _riff_chunks, animation_pixels, webp_animation, write_animation

Image = pytest.importorskip("PIL.Image")


def _clip(frames=7, h=46, w=70) -> np.ndarray:
    """A smooth panning clip as uint8 pixels [frames, h, w, 3]."""
    g = torch.Generator().manual_seed(0)
    base = F.interpolate(torch.rand(1, 3, 6, 24, generator=g), size=(h, 2 * w), mode="bicubic",
                         align_corners=False).clamp(0, 1)[0].permute(1, 2, 0)
    return animation_pixels(torch.stack([base[:, 3 * i:3 * i + w] for i in range(frames)]))


def _decoded(path) -> list[np.ndarray]:
    with Image.open(path) as im:
        out = []
        for k in range(im.n_frames):
            im.seek(k)
            out.append(np.asarray(im.convert("RGB")).astype(np.float64))
        return out


def test_parallel_webp_is_an_animation_pillow_reads_as_its_own(tmp_path):
    px = _clip()
    ours = write_animation(px, str(tmp_path / "ours.webp"), fps=4.0, effort=0, threads=3)
    frames = [Image.fromarray(p) for p in px]
    pillow = str(tmp_path / "pillow.webp")
    frames[0].save(pillow, save_all=True, append_images=frames[1:], duration=250, loop=0, lossless=False,
                   quality=80, method=0)
    with Image.open(ours) as im:
        assert im.is_animated and im.n_frames == 7 and im.size == (70, 46)
    err = max(np.abs(a - p).mean() for a, p in zip(_decoded(ours), px))
    ref = max(np.abs(a - p).mean() for a, p in zip(_decoded(pillow), px))
    assert err <= 1.1 * ref + 0.5, (err, ref)          # the same lossy coding as Pillow's animation encoder


def test_webp_container_fields():
    data = webp_animation(_clip(frames=3, h=20, w=30), fps=8.0, effort=0, threads=2)
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    chunks = _riff_chunks(data)
    tags = [t for t, _ in chunks]
    assert tags == [b"VP8X", b"ANIM", b"ANMF", b"ANMF", b"ANMF"]
    vp8x = chunks[0][1]
    assert vp8x[0] & 0x02 and not vp8x[0] & 0x10                         # animation, no alpha
    assert int.from_bytes(vp8x[4:7], "little") == 29 and int.from_bytes(vp8x[7:10], "little") == 19
    assert struct.unpack("<H", chunks[1][1][4:6])[0] == 0                   # loops forever
    for _, frame in chunks[2:]:
        assert int.from_bytes(frame[12:15], "little") == 125               # 1000 / 8 fps ms
        assert frame[16:20] in (b"VP8 ", b"VP8L")
