"""What a Preview Image node on the pruner's mask output costs per run (ComfyUI's own node, host only).

The pruner's ``mask_preview`` IMAGE holds one full-size frame per latent frame (21 frames for 81). Wired
into ComfyUI's Preview Image (as the example workflows did until session 6), every run writes them as
PNGs on the host. This times ``nodes.PreviewImage().save_images`` from the ComfyUI tree given by
--comfyui on 21 smooth 832x480 frames (median of --repeat, after one warm-up) and saves JSON.

    /work/comfy/.venv/bin/python benchmarks/preview_image_cost.py --comfyui /work/comfy \\
        --out benchmarks/results/cpu/preview_image_cost.json
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from bench_io import save_result  # noqa: E402  (benchmarks/bench_io.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", required=True, help="a ComfyUI checkout (its nodes.py is imported)")
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/cpu/preview_image_cost.json")
    a = ap.parse_args()
    command = "python " + " ".join([os.path.relpath(os.path.abspath(__file__))] + sys.argv[1:])
    sys.path.insert(0, os.path.abspath(a.comfyui))
    sys.argv = [sys.argv[0], "--cpu"]                   # ComfyUI parses its own arguments on import
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    import torch.nn.functional as F
    import comfy.cli_args  # noqa: F401
    import nodes

    g = torch.Generator().manual_seed(0)
    frames = F.interpolate(torch.rand(a.frames, 3, a.height // 16, a.width // 16, generator=g),
                           size=(a.height, a.width), mode="bicubic", align_corners=False).clamp(0, 1)
    frames = frames.permute(0, 2, 3, 1).contiguous()     # [N, H, W, 3], smooth like real frames
    node = nodes.PreviewImage()
    node.save_images(frames)
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        node.save_images(frames)
        times.append(time.perf_counter() - t0)
    res = {"what": "ComfyUI PreviewImage.save_images on the pruner's mask_preview-sized IMAGE",
           "shape": list(frames.shape), "seconds": round(statistics.median(times), 4),
           "runs": [round(t, 4) for t in times], "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "machine": platform.machine(), "torch": torch.__version__, "comfyui": os.path.abspath(a.comfyui),
           "command": command}
    save_result(res, a.out)
    print(f"PreviewImage, {a.frames} frames {a.width}x{a.height}: {res['seconds']:.3f} s (median of {a.repeat})")


if __name__ == "__main__":
    main()
