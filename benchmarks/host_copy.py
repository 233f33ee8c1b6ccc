"""What moving a node's output to the host costs, and what the pruner's animation costs to encode.

Nodes hand ComfyUI their IMAGE outputs on the CPU (an 832x480x81 clip is 388 MB of float32). This
times, for such a clip on the GPU (wall seconds, median of --repeat, after one warm-up):

- ``d2h_empty``: ``copy_`` into a fresh ``torch.empty`` host tensor (what ``.to("cpu")`` does: its pages
  are faulted in one at a time by the copying thread);
- ``zeros`` and ``d2h_zeros``: a fresh ``torch.zeros`` host tensor (pages touched by all of PyTorch's
  threads), and the copy into it (``nodes/host.py: output_tensor``); ``d2h_zeros_16``: the same in slices
  of 16 frames, as VAE Decode (fast) copies;
- ``d2h_pinned``: into pinned memory (PyTorch's caching host allocator, warm);
- ``h2d_image``: the clip from pageable host memory to the GPU (whole, and in 16-frame slices);
- ``webp_<side>``: ``lipar.preview.write_animation`` (frames encoded in parallel, ``webp_animation``) of the
  pruner's 21-frame preview, against ``pillow_anim_webp_<side>``, Pillow's animation encoder (a smooth moving
  synthetic clip, pruned patches tinted) downscaled so its longer side is ``side`` pixels; for the first
  side also encoded in a worker thread while the main thread copies the full-size preview out, as the
  pruner node runs it (``webp_<side>_with_output_copy``, against ``output_copy_alone``).

    python3 benchmarks/host_copy.py --out benchmarks/results/h200_host_copy.json
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_io import save_result  # noqa: E402  (benchmarks/bench_io.py)
from lipar.preview import animation_pixels, write_animation  # noqa: E402


def wall(fn, repeat: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def synthetic_preview(frames: int, h: int, w: int, device) -> torch.Tensor:
    """A smooth clip [frames, h, w, 3] in 0..1 that pans, with every third 16x16 patch tinted blue."""
    g = torch.Generator().manual_seed(0)
    base = F.interpolate(torch.rand(1, 3, h // 16, w // 8, generator=g), size=(h, 2 * w), mode="bicubic",
                         align_corners=False).clamp(0, 1)[0]
    out = torch.stack([base[:, :, 3 * i:3 * i + w] for i in range(frames)]).permute(0, 2, 3, 1)
    mask = (torch.arange(h // 16 * (w // 16)) % 3 == 0).view(h // 16, w // 16)
    mask = mask.repeat_interleave(16, 0).repeat_interleave(16, 1)[..., None]
    tint = torch.tensor([0.15, 0.35, 1.0])
    return torch.where(mask, 0.45 * out + 0.55 * tint, out).to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sides", default="384,320,256")
    ap.add_argument("--out", default="benchmarks/results/host_copy.json")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    shape = (args.frames, args.height, args.width, 3)
    rows = {}
    clip = torch.rand(shape, device=dev)
    host = torch.rand(shape)
    if cuda:
        rows["d2h_empty"] = wall(lambda: torch.empty(shape).copy_(clip), args.repeat, sync)
        rows["zeros"] = wall(lambda: torch.zeros(shape), args.repeat, sync)
        rows["d2h_zeros"] = wall(lambda: torch.zeros(shape).copy_(clip), args.repeat, sync)

        def sliced():
            dest = torch.zeros(shape)
            for t in range(0, shape[0], 16):
                dest[t:t + 16].copy_(clip[t:t + 16])
        rows["d2h_zeros_16"] = wall(sliced, args.repeat, sync)
        rows["d2h_pinned"] = wall(lambda: torch.empty(shape, pin_memory=True).copy_(clip), args.repeat, sync)
        rows["h2d_image"] = wall(lambda: host.to(dev), args.repeat, sync)

        def h2d_sliced():
            dest = torch.empty(shape, device=dev)
            for t in range(0, shape[0], 16):
                dest[t:t + 16].copy_(host[t:t + 16])
        rows["h2d_image_16"] = wall(h2d_sliced, args.repeat, sync)
    latent_frames = (args.frames - 1) // 4 + 1
    preview = synthetic_preview(latent_frames, args.height, args.width, dev)
    with tempfile.TemporaryDirectory() as tmp:
        for side in [int(s) for s in args.sides.split(",")]:
            scale = side / max(args.height, args.width)
            size = (round(args.height * scale), round(args.width * scale))
            small = F.interpolate(preview.permute(0, 3, 1, 2), size=size, mode="area").permute(0, 2, 3, 1)
            pixels = animation_pixels(small)
            path = os.path.join(tmp, f"p{side}.webp")
            rows[f"webp_{side}"] = wall(lambda: write_animation(pixels, path, fps=4.0, effort=0), args.repeat,
                                        lambda: None)
            rows[f"webp_{side}_bytes"] = os.path.getsize(path)
            frames = [Image.fromarray(img) for img in pixels]
            rows[f"pillow_anim_webp_{side}"] = wall(lambda: frames[0].save(
                path, save_all=True, append_images=frames[1:], duration=250, loop=0, lossless=False, quality=80,
                method=0), args.repeat, lambda: None)
            if cuda and side == int(args.sides.split(",")[0]):
                # as the pruner node runs it: encoded in a worker thread while the main thread copies its IMAGE out
                out_shape = (latent_frames, args.height, args.width, 3)

                def overlapped():
                    with ThreadPoolExecutor(1) as pool:
                        job = pool.submit(write_animation, pixels, path, fps=4.0, effort=0)
                        torch.zeros(out_shape).copy_(preview)
                        job.result()
                rows[f"webp_{side}_with_output_copy"] = wall(overlapped, args.repeat, sync)
                rows["output_copy_alone"] = wall(lambda: torch.zeros(out_shape).copy_(preview), args.repeat, sync)
    res = {"gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
           "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "shape": list(shape), "repeat": args.repeat,
           "command": "python3 " + " ".join(sys.argv), "seconds": {k: round(v, 5) for k, v in rows.items()}}
    save_result(res, args.out)
    for k, v in rows.items():
        print(f"{k:16s} {v:10.4f}" if isinstance(v, float) else f"{k:16s} {v:10d}")


if __name__ == "__main__":
    main()
