"""Command line: ``python -m lipar {bench,convert,preview}``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from lipar.errors import LiparError


def _bench(a: argparse.Namespace) -> int:
    from lipar.bench import BenchOptions, run_bench

    opts = BenchOptions(config=a.config, device=a.device, frames=a.frames, height=a.height, width=a.width,
                        steps=a.steps, mode=a.mode, clip=a.clip, model=a.model, dtype=a.dtype, compare=a.compare,
                        forms=a.forms, threshold=a.threshold, anchor_threshold=a.anchor_threshold,
                        target_prune=a.target_prune, repeat=a.repeat, seed=a.seed, backend=a.backend,
                        graphs=a.graphs, modes=a.modes, bias_mode=a.bias_mode)
    if not a.model:
        print(f"lipar: no --model given: using a randomly initialised {a.config} Wan2.1 model "
              "(real architecture; timings are meaningful, images are not).", file=sys.stderr)
    res = run_bench(opts)
    text = json.dumps(res, indent=None if a.json else 2)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(json.dumps(res, indent=2) + "\n")
    return 0


def _convert(a: argparse.Namespace) -> int:
    import torch

    from lipar.loading import convert_checkpoint

    cfg = convert_checkpoint(a.input, a.output, dtype={"bf16": torch.bfloat16, "fp16": torch.float16,
                                                        "fp32": torch.float32}[a.dtype])
    print(json.dumps({"output": a.output, "dim": cfg.dim, "layers": cfg.num_layers, "heads": cfg.num_heads}))
    return 0


def _preview(a: argparse.Namespace) -> int:
    from lipar.bench import video_to_latent_dims
    from lipar.clips import ClipSpec, make_clip
    from lipar.plan import PlanConfig, build_plan
    from lipar.preview import mask_preview, save_animation

    t, h, w = video_to_latent_dims(a.frames, a.height, a.width)
    z = make_clip(ClipSpec(kind=a.clip, latent_frames=t, height=h, width=w, seed=a.seed))
    plan = build_plan(z, PlanConfig(threshold=a.threshold, anchor_threshold=a.anchor_threshold))
    save_animation(mask_preview(plan), a.output, fps=4)
    print(json.dumps({"output": a.output, **{k: v for k, v in plan.stats().items() if k != "kept_per_chunk"}}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lipar", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("bench", help="time pruned vs unpruned Self-Forcing sampling on a synthetic clip")
    b.add_argument("--config", default="tiny", choices=["tiny", "1.3b"])
    b.add_argument("--device", default="cpu")
    b.add_argument("--frames", type=int, default=81, help="video frames (4k+1)")
    b.add_argument("--height", type=int, default=480)
    b.add_argument("--width", type=int, default=832)
    b.add_argument("--steps", default=None, help="e.g. 400,350,250 (default per --mode)")
    b.add_argument("--mode", default="edit", choices=["edit", "generate"])
    b.add_argument("--clip", default="objects", choices=["objects", "pan", "cut", "static"])
    b.add_argument("--model", default=None, help="checkpoint path; random weights when omitted")
    b.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"])
    b.add_argument("--compare", action="store_true", help="also run pruned sampling in every recovery mode")
    b.add_argument("--forms", default="exact,compressed", help="recovery forms to compare")
    b.add_argument("--threshold", type=float, default=0.15)
    b.add_argument("--anchor-threshold", type=float, default=0.3)
    b.add_argument("--target-prune", type=float, default=None, help="fit the threshold to this prune ratio")
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--backend", default="auto", choices=["auto", "sdpa", "cudnn", "flash_attn"])
    b.add_argument("--graphs", default="auto", choices=["auto", "on", "off"], help="CUDA-graph passes (auto: on CUDA)")
    b.add_argument("--bias-mode", default="auto", choices=["auto", "split", "mask", "fold"],
                   help="how compressed recovery's multiplicities reach the attention kernel")
    b.add_argument("--modes", default="none,m_degree,noise_aware", help="recovery modes to compare")
    b.add_argument("--json", action="store_true", help="print one line of JSON")
    b.add_argument("--out", default=None, help="also write the JSON to this file")
    b.set_defaults(func=_bench)

    c = sub.add_parser("convert", help="official Self-Forcing .pt -> ComfyUI-loadable .safetensors")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    c.set_defaults(func=_convert)

    v = sub.add_parser("preview", help="render a pruning-mask animation of a synthetic clip")
    v.add_argument("--clip", default="objects", choices=["objects", "pan", "cut", "static"])
    v.add_argument("--frames", type=int, default=81)
    v.add_argument("--height", type=int, default=480)
    v.add_argument("--width", type=int, default=832)
    v.add_argument("--threshold", type=float, default=0.15)
    v.add_argument("--anchor-threshold", type=float, default=0.3)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--output", default="mask_preview.webp")
    v.set_defaults(func=_preview)

    a = p.parse_args(argv)
    try:
        return a.func(a)
    except LiparError as e:
        print(f"lipar: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
