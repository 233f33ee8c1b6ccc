"""Command line: ``python -m lipar {bench,convert,preview}`` (or ``bash scripts/bench.sh ...``).

stdout carries the JSON result only; progress and errors go to stderr. Errors in the
arguments exit with status 2 and a ``lipar: error: ...`` line saying what to change.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile

from .bench import (BACKENDS, COMPARE_DEFAULTS, DTYPES, GRAPHS, MAX_TARGET_PRUNE, BenchOptions,
                         check_memory, check_seed, run_bench, to_json, video_to_latent_dims)
from .clips import KINDS as CLIP_KINDS
from .config import PRESETS
from .errors import LiparError

# What PIL writes as an animation with lipar.preview.save_animation's arguments.
PREVIEW_EXTENSIONS = (".webp", ".gif", ".png", ".apng")

MAIN_DESCRIPTION = """\
LIPAR command line. 'python -m lipar COMMAND --help' describes each command.
stdout carries the JSON result only; progress and errors go to stderr. Errors in the
arguments exit with status 2 and a 'lipar: error: ...' line saying what to change.
From outside the repository, or without activating .venv: bash scripts/bench.sh ARGS."""

BENCH_DESCRIPTION = """\
Time Self-Forcing (Wan2.1) video editing on a synthetic clip: the unpruned baseline and,
with --compare, LIPAR-pruned sampling in each recovery mode and form. Reports seconds,
FPS, speed-up, memory and how far the pruned output is from the baseline (PSNR,
relative L2) as JSON on stdout; progress goes to stderr.

Without --model it uses a randomly initialised model of the real Wan2.1 architecture
(--config tiny or 1.3b): timings are meaningful, the images are not."""

BENCH_EPILOG = """\
examples:
  CPU, tiny model (about a minute):
    python -m lipar bench --config tiny --frames 21 --height 240 --width 416 --compare
  GPU, the real 1.3B architecture at 832x480, 81 frames, 33.8% of the tokens pruned:
    python -m lipar bench --config 1.3b --device cuda --frames 81 --steps 400,350,250 \\
        --compare --target-prune 0.338 --json

From anywhere, without activating a virtual environment: bash scripts/bench.sh ARGS
(sets up ./.venv on first use, then runs python -m lipar bench ARGS)."""

CONVERT_DESCRIPTION = """\
Convert an official Self-Forcing checkpoint (.pt, e.g. self_forcing_dmd.pt; the EMA
generator is preferred) or any accepted Wan2.1 layout into a plain .safetensors file that
ComfyUI's Load Diffusion Model node reads. Prints the output path and model shape as JSON."""

CONVERT_EPILOG = """\
example:
  python -m lipar convert checkpoints/self_forcing_dmd.pt \\
      ComfyUI/models/diffusion_models/self_forcing_dmd.safetensors --dtype bf16"""

PREVIEW_DESCRIPTION = """\
Render which latent tokens LIPAR would prune on a synthetic clip, as an animation
(kept patches white, pruned ones dark blue). Prints the plan's statistics as JSON."""

PREVIEW_EPILOG = """\
example:
  python -m lipar preview --clip pan --frames 21 --height 240 --width 416 --output pan_mask.webp"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows '(default: X)' after each help text, but not for options without a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


# ----------------------------------------------------------------------------- output files

def check_output_file(path: str, option: str, *, overwrite: bool = True, make_dirs: bool = False) -> str:
    """Check before any work that ``path`` can be written; leaves nothing behind."""
    if not path:
        raise LiparError(f"{option} needs a file name.")
    if os.path.isdir(path):
        raise LiparError(f"{option} {path!r} is a folder; give a file name inside it, e.g. "
                         f"{os.path.join(path, 'result' + _suffix(option))!r}.")
    if os.path.exists(path):
        if not overwrite:
            raise LiparError(f"{option} {path!r} already exists; pass --force to overwrite it, or choose another name.")
        _try_append(path, option)
        return path
    folder = _existing_folder(os.path.dirname(os.path.abspath(path)), option, make_dirs)
    _try_create_in(folder, option)
    return path


def _suffix(option: str) -> str:
    return {"--out": ".json", "the output": ".safetensors"}.get(option, ".webp")


def _existing_folder(folder: str, option: str, make_dirs: bool) -> str:
    """The folder that will hold the file, or (with make_dirs) its nearest existing ancestor."""
    probe = folder
    while make_dirs and not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.exists(probe):
        raise LiparError(f"The folder {folder!r} for {option} does not exist; create it first "
                         f"(mkdir -p {shlex.quote(folder)}).")
    if not os.path.isdir(probe):
        raise LiparError(f"{option}: {probe!r} is a file, not a folder; choose another path.")
    return probe


def _try_append(path: str, option: str) -> None:
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise LiparError(f"{option} {path!r} cannot be written ({e.strerror}); choose another path.") from None


def _try_create_in(folder: str, option: str) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lipar-write-test-"):
            pass
    except OSError as e:
        raise LiparError(f"{option}: cannot create files in {folder!r} ({e.strerror}); "
                         "choose another folder.") from None


def _write_text(path: str, text: str) -> None:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise LiparError(f"Could not write --out {path!r} ({e.strerror}); the result was printed above.") from None


# ----------------------------------------------------------------------------- commands

def _bench_options(a: argparse.Namespace) -> BenchOptions:
    return BenchOptions(config=a.config, device=a.device, frames=a.frames, height=a.height, width=a.width,
                        steps=a.steps, mode=a.mode, clip=a.clip, model=a.model, dtype=a.dtype, compare=a.compare,
                        forms=a.forms, threshold=a.threshold, anchor_threshold=a.anchor_threshold,
                        target_prune=a.target_prune, repeat=a.repeat, seed=a.seed, backend=a.backend,
                        graphs=a.graphs, fp8=a.fp8, modes=a.modes, window_frames=a.window_frames,
                        sink_frames=a.sink_frames)


def _bench(a: argparse.Namespace) -> int:
    setup = _bench_options(a).validate()
    if a.out:
        check_output_file(a.out, "--out", make_dirs=True)
    res = run_bench(setup)
    res["command"] = "python -m lipar " + shlex.join(a.argv)
    print(to_json(res, indent=None if a.json else 2), flush=True)
    if a.out:
        _write_text(a.out, to_json(res, indent=2) + "\n")
    return 0


def _convert(a: argparse.Namespace) -> int:
    import torch

    from .loading import convert_checkpoint

    if not os.path.isfile(a.input):
        raise LiparError(f"The input checkpoint {a.input!r} is not a file; give the path of a Self-Forcing .pt "
                         "or Wan2.1 .safetensors.")
    if not a.output.endswith(".safetensors"):
        raise LiparError(f"The output file must end in .safetensors; got {a.output!r}.")
    if os.path.exists(a.output) and os.path.samefile(a.input, a.output):
        raise LiparError("The output is the input file; write the converted checkpoint to another path.")
    check_output_file(a.output, "the output", overwrite=a.force)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    cfg = convert_checkpoint(a.input, a.output, dtype=dtype)
    print(to_json({"output": a.output, "dim": cfg.dim, "layers": cfg.num_layers, "heads": cfg.num_heads}))
    return 0


def _preview(a: argparse.Namespace) -> int:
    import torch

    from .clips import ClipSpec, make_clip
    from .plan import PlanConfig, build_plan
    from .preview import mask_preview, save_animation

    ext = os.path.splitext(a.output)[1].lower()
    if ext not in PREVIEW_EXTENSIONS:
        raise LiparError(f"--output {a.output!r}: cannot write a {ext or 'extension-less'} animation; "
                         f"use one of {', '.join(PREVIEW_EXTENSIONS)} (e.g. mask_preview.webp).")
    check_seed(a.seed)
    t, h, w = video_to_latent_dims(a.frames, a.height, a.width)
    pcfg = PlanConfig(threshold=a.threshold, anchor_threshold=a.anchor_threshold).validate()
    check_memory({"latent": 16 * t * h * w * 4 * 3, "images": t * a.height * a.width * 3 * 4 * 3},
                 torch.device("cpu"), fix="Use smaller --frames/--height/--width.")
    check_output_file(a.output, "--output")
    z = make_clip(ClipSpec(kind=a.clip, latent_frames=t, height=h, width=w, seed=a.seed))
    plan = build_plan(z, pcfg)
    save_animation(mask_preview(plan), a.output, fps=4)
    print(to_json({"output": a.output, **{k: v for k, v in plan.stats().items() if k != "kept_per_chunk"}}))
    return 0


# ----------------------------------------------------------------------------- parser

def _add_video_args(p: argparse.ArgumentParser, what: str, seeds: str) -> None:
    p.add_argument("--clip", default="objects", choices=list(CLIP_KINDS),
                   help=f"synthetic {what} clip: moving objects, camera pan, scene cut or static")
    p.add_argument("--frames", type=int, default=81, help="video frames, 4k+1 (e.g. 21 or 81; Wan's VAE makes "
                                                          "k+1 latent frames of them)")
    p.add_argument("--height", type=int, default=480, help="video height in pixels, a multiple of 16")
    p.add_argument("--width", type=int, default=832, help="video width in pixels, a multiple of 16")
    p.add_argument("--seed", type=int, default=0, help=f"seed of {seeds} (0 .. 2**63-1)")


def _add_bench(sub) -> None:
    b = sub.add_parser("bench", help="time pruned vs unpruned Self-Forcing sampling on a synthetic clip",
                       description=BENCH_DESCRIPTION, epilog=BENCH_EPILOG, formatter_class=_HelpFormatter)
    b.add_argument("--config", default="tiny", choices=sorted(PRESETS),
                   help="architecture of the random model (ignored with --model)")
    b.add_argument("--model", default=None, help="checkpoint (.safetensors or .pt) to time instead of random "
                                                 "weights (default: random weights)")
    b.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    b.add_argument("--dtype", default=None, choices=list(DTYPES),
                   help="compute dtype (default: bf16 on CUDA, fp32 on the CPU)")
    _add_video_args(b, "source", "the clip, the noise and the random weights")
    b.add_argument("--mode", default="edit", choices=["edit", "generate"],
                   help="edit: SDEdit from the clip; generate: from noise")
    b.add_argument("--steps", default=None, help="denoising steps, strictly decreasing in (0, 1000] "
                                                 "(default: 400,350,250 for edit, 1000,750,500,250 for generate)")
    b.add_argument("--repeat", type=int, default=3, help="timed runs per configuration (the median is reported), "
                                                         "after one warm-up run")
    b.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="attention kernel (auto: FlashAttention-4 on Hopper where installed, else cuDNN on CUDA; "
                        "SDPA on the CPU)")
    b.add_argument("--graphs", default="auto", choices=list(GRAPHS), help="replay passes as CUDA graphs "
                                                                          "(auto: on for CUDA)")
    b.add_argument("--fp8", default="auto", choices=["auto", "on", "off"],
                   help="linear layers as fp8 products (auto: when the model's weights are fp8; on: also for "
                        "bf16 weights; needs fp8 tensor cores)")
    b.add_argument("--window-frames", type=int, default=21, help="KV cache / attention window in latent frames "
                   "(Self-Forcing's local_attn_size; 0: no limit): videos longer than it roll the cache")
    b.add_argument("--sink-frames", type=int, default=3, help="first latent frames kept for the whole video once "
                   "the window rolls (attention sink)")
    b.add_argument("--compare", action="store_true", help="also time pruned sampling in each recovery mode/form "
                                                          "and compare its output with the baseline")
    _add_compare_args(b)
    b.add_argument("--json", action="store_true", help="print the result as one line of JSON (default: indented)")
    b.add_argument("--out", default=None, help="also write the JSON to this file (default: stdout only)")
    b.set_defaults(func=_bench)


def _add_compare_args(b: argparse.ArgumentParser) -> None:
    d = COMPARE_DEFAULTS
    b.add_argument("--threshold", type=float, default=None,
                   help=f"pruning threshold, mean latent change below which a token may be pruned; "
                        f"needs --compare (default: {d['threshold']})")
    b.add_argument("--anchor-threshold", type=float, default=None,
                   help=f"a candidate token is pruned only if its change from the anchor frame is below "
                        f"this too; needs --compare (default: {d['anchor_threshold']})")
    b.add_argument("--target-prune", type=float, default=None,
                   help=f"fit both thresholds to prune this fraction of tokens, in [0, {MAX_TARGET_PRUNE}]; "
                        "needs --compare; replaces --threshold/--anchor-threshold (default: off)")
    b.add_argument("--modes", default=None, help=f"recovery modes to time; needs --compare (default: {d['modes']})")
    b.add_argument("--forms", default=None, help=f"forms of m_degree/noise_aware recovery to time; needs --compare "
                                                 f"(default: {d['forms']})")


def _add_convert(sub) -> None:
    c = sub.add_parser("convert", help="official Self-Forcing .pt -> ComfyUI-loadable .safetensors",
                       description=CONVERT_DESCRIPTION, epilog=CONVERT_EPILOG, formatter_class=_HelpFormatter)
    c.add_argument("input", help="checkpoint to read (.pt or .safetensors)")
    c.add_argument("output", help="file to write; must end in .safetensors, and its folder must exist")
    c.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="dtype of the written weights")
    c.add_argument("--force", action="store_true", help="overwrite the output if it exists (default: refuse)")
    c.set_defaults(func=_convert)


def _add_preview(sub) -> None:
    v = sub.add_parser("preview", help="render a pruning-mask animation of a synthetic clip",
                       description=PREVIEW_DESCRIPTION, epilog=PREVIEW_EPILOG, formatter_class=_HelpFormatter)
    _add_video_args(v, "", "the clip")
    v.add_argument("--threshold", type=float, default=0.15, help="pruning threshold (mean latent change)")
    v.add_argument("--anchor-threshold", type=float, default=0.3,
                   help="change from the anchor frame below which a candidate token is pruned")
    v.add_argument("--output", default="mask_preview.webp",
                   help=f"animation to write: {', '.join(PREVIEW_EXTENSIONS)}; its folder must exist")
    v.set_defaults(func=_preview)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lipar", description=MAIN_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{bench,convert,preview}")
    _add_bench(sub)
    _add_convert(sub)
    _add_preview(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    a.argv = argv
    try:
        return a.func(a)
    except LiparError as e:
        print(f"lipar: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
