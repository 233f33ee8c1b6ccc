"""Is ComfyUI's tiny Wan2.1 VAE (TAEHV, lighttaew2_1) faster with parallel=True, channels_last or cudnn.benchmark?

Builds ComfyUI's own ``comfy.taesd.taehv.TAEHV`` the way ComfyUI's VAE loader does (``comfy.sd.VAE(sd=...)``
on a 16-channel TAEHV state dict; tree given by --comfyui): random weights ~ N(0, 1/fan_in), then the last
encoder conv rescaled so that the latent of a synthetic clip has the Wan2.1 latent statistics and the last
decoder conv so that decoded frames have mean 0.5 / std 0.25 (calibrated once in float32 on the CPU). The
state dict is float32 for ``--variant lighttaew2_1`` (ComfyUI: latent_format None) and float16 for
``--variant taehv-fp16`` (ComfyUI takes any fp16 16-channel TAEHV for HunyuanVideo's taehv and attaches
HunyuanVideo's latent scaling). The module runs in each --dtype (default float16; float32 with --device cpu;
ComfyUI itself picks bfloat16 for this VAE on an H200 unless --fp16-vae, so run both) on --device with the
inputs ComfyUI's ``VAE.encode`` / ``decode`` hand it: pixels [1, 3, T, H, W] in 0..1 (this VAE's process_input
is the identity) and a latent [1, 16, (T+3)//4, H/8, W/8] (Wan2.1 latent statistics), both in that dtype.
Times are the module's call only (not ComfyUI's host-side scaling and copies).

Variants (each: encode and decode; one untimed first call, one call for the peak memory above what was
allocated before it (torch.cuda.max_memory_allocated after a reset) whose output is compared, then the
median of --repeat calls timed by CUDA events):

- ``default``: as ComfyUI runs it: ``parallel=False`` (every frame walks through the blocks one at a time),
  contiguous NCHW, cudnn.benchmark off;
- ``parallel``: ``module.parallel = True``: each block runs on all frames at once ([B*T, C, H, W] batches);
- ``parallel+cl``: parallel, every Conv2d weight in channels_last and the input in channels_last_3d (so that
  TAEHV's movedim(2, 1) + reshape gives channels_last [B*T, C, H, W] frames without a copy). ComfyUI's module
  is run as it is, so not every layer sees channels_last input: a MemBlock's past comes from F.pad as NCHW
  (its torch.cat with x is then NCHW), TPool's reshape of frames into channels copies to NCHW, and encode's
  padding of T to a multiple of 4 (81 -> 84 frames) concatenates into an NCHW clip; the convs follow the
  channels_last weights and convert such inputs themselves;
- ``default+cl``: parallel=False with channels_last Conv2d weights (the per-frame reshape copies the input to
  NCHW; the convs run channels_last because of the weights);
- ``parallel+bench``, ``parallel+cl+bench``, ``default+bench``: the same with torch.backends.cudnn.benchmark on.
  These run in a fresh child process: PyTorch caches one cuDNN plan per conv shape/layout/dtype and the cache
  key does not include the benchmark flag, so a shape first run with benchmark off would keep its heuristic
  plan and the "bench" row would measure nothing.

Flags (parallel, cudnn.benchmark, TF32) are set per variant and restored. Every output is compared with the
``default`` output of the same dtype (identical?, max abs diff, relative L2) and with the module run in float32
(parallel=False, TF32 off), so that a variant's difference can be read against the default's own rounding
error. Then an estimate of the largest activations of the parallel path (the module run on the meta device
with hooks) at the run size and at 832x480x81, next to ComfyUI's own memory formulas for this VAE; the table
comes last. JSON to --out (and $OUT).

    python3 benchmarks/taehv_profile.py --dtype float16,bfloat16 --out benchmarks/results/h200_taehv_profile.json
    /work/comfy/.venv/bin/python benchmarks/taehv_profile.py --comfyui /work/comfy --device cpu --frames 9 \\
        --height 64 --width 96 --repeat 1 --out /tmp/taehv_profile_cpu.json          # smoke test (float32)
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from bench_io import cuda_median_ms, save_result  # noqa: E402  (benchmarks/bench_io.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {  # name: (parallel, channels_last, cudnn_benchmark)
    "default": (False, False, False),
    "parallel": (True, False, False),
    "parallel+cl": (True, True, False),
    "default+cl": (False, True, False),
    "parallel+bench": (True, False, True),
    "parallel+cl+bench": (True, True, True),
    "default+bench": (False, False, True),
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
TARGET = (81, 480, 832)          # frames, height, width of the graph's clip
GiB = 2 ** 30


def import_comfy(comfy_dir: str, device: torch.device):
    """ComfyUI's modules from ``comfy_dir`` (put on sys.path), and its version."""
    comfy_dir = os.path.abspath(comfy_dir)
    if not os.path.isfile(os.path.join(comfy_dir, "comfy", "taesd", "taehv.py")):
        raise SystemExit(f"--comfyui {comfy_dir}: no comfy/taesd/taehv.py there")
    sys.path.insert(0, comfy_dir)
    import comfy.cli_args
    if device.type == "cpu":
        comfy.cli_args.args.cpu = True          # ComfyUI's model management on a machine without a GPU
    import comfy.latent_formats
    import comfy.model_management
    import comfy.sd
    import comfy.taesd.taehv
    try:
        import comfyui_version
        version = comfyui_version.__version__
    except ImportError:
        version = None
    return comfy, version


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- the module, as ComfyUI builds it

def state_dict_for(variant: str, sd32: dict) -> dict:
    """The state dict in the dtype ComfyUI's loader keys on: fp16 decoder.1.weight -> HunyuanVideo's taehv."""
    dt = torch.float32 if variant == "lighttaew2_1" else torch.float16
    return {k: v.to(dt) for k, v in sd32.items()}


def comfy_vae(comfy, sd: dict, device: torch.device, dtype: torch.dtype):
    """``comfy.sd.VAE(sd=...)`` (what VAELoader calls), its module moved to ``device`` in ``dtype``."""
    vae = comfy.sd.VAE(sd=sd, device=device, dtype=dtype)
    model = vae.first_stage_model
    if not isinstance(model, comfy.taesd.taehv.TAEHV):
        raise SystemExit(f"comfy.sd.VAE built {type(model).__name__}, not TAEHV")
    return vae, model.to(device=device, dtype=dtype).eval()


def synthetic_video(frames: int, h: int, w: int, device: torch.device, seed: int) -> torch.Tensor:
    """[1, 3, T, H, W] float32 in 0..1: smooth random colour fields drifting over time plus a little pixel noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, frames // 8 + 2), max(2, h // 32 + 2), max(2, w // 32 + 2), generator=g)
    x = torch.nn.functional.interpolate(low.to(device), size=(frames, h, w), mode="trilinear", align_corners=False)
    gd = torch.Generator(device=device).manual_seed(seed + 1)
    x += 0.05 * torch.rand(x.shape, generator=gd, device=device) - 0.025
    return x.clamp_(0, 1)


def wan_latent(comfy, frames: int, h: int, w: int, device: torch.device, seed: int) -> torch.Tensor:
    """[1, 16, T, h, w] float32 with ComfyUI's Wan2.1 latent mean/std per channel (what the sampler hands VAE Decode;
    lighttaew2_1 decodes raw Wan2.1 latents)."""
    lf = comfy.latent_formats.Wan21()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 16, frames, h, w, generator=g)
    return (lf.latents_mean.float() + lf.latents_std.float() * z).to(device)


def calibrated_state_dict(comfy, variant: str, seed: int) -> dict:
    """Random TAEHV weights (float32, CPU), the last encoder / decoder conv rescaled per channel: latent of a
    synthetic clip with Wan2.1's latent mean/std (after the module's process_out), frames with mean 0.5 and std
    0.25 (so errors read on the real scales: latents ~N(mean, 2), pixels in 0..1)."""
    taehv = comfy.taesd.taehv
    g = torch.Generator().manual_seed(seed)
    shapes = taehv.TAEHV(latent_channels=16, show_progress_bar=False).state_dict()
    sd = {}
    for k, v in shapes.items():
        if k.endswith("bias"):
            sd[k] = 0.01 * torch.randn(v.shape, generator=g)
        else:
            sd[k] = torch.randn(v.shape, generator=g) / math.sqrt(max(1, v[0].numel()))
    cpu = torch.device("cpu")
    _, model = comfy_vae(comfy, state_dict_for(variant, sd), cpu, torch.float32)
    model.parallel = True
    model.show_progress_bar = False
    lf = comfy.latent_formats.Wan21()
    want_mean, want_std = lf.latents_mean.float().flatten(), lf.latents_std.float().flatten()

    def last_conv_output(seq, fn):
        got = []
        hook = seq[-1].register_forward_hook(lambda m, a, o: got.append(o.detach()))
        try:
            with torch.no_grad():
                fn()
        finally:
            hook.remove()
        y = got[-1]                                               # [B*T, C, H, W]
        return y.mean(dim=(0, 2, 3)), y.std(dim=(0, 2, 3)).clamp_min(1e-6)

    def rescale(conv, s, c):                                      # conv output y -> s * y + c per channel
        with torch.no_grad():
            conv.weight.mul_(s.view(-1, 1, 1, 1))
            conv.bias.copy_(conv.bias * s + c)

    for seq in (model.encoder, model.decoder):
        assert isinstance(seq[-1], torch.nn.Conv2d) and seq[-1].bias is not None, "unexpected TAEHV layout"
    clip = synthetic_video(9, 64, 96, cpu, seed)
    my, sy = last_conv_output(model.encoder, lambda: model.encode(clip))
    zero = torch.zeros(1, 16, 1, 1, 1)
    b = model.process_out(zero).flatten()                        # process_out(y) = a * y + b per channel
    a = model.process_out(zero + 1).flatten() - b
    s = want_std / (a.abs() * sy)
    rescale(model.encoder[-1], s, (want_mean - b) / a - s * my)
    my, sy = last_conv_output(model.decoder, lambda: model.decode(wan_latent(comfy, 3, 8, 12, cpu, seed)))
    s = 0.25 / sy
    rescale(model.decoder[-1], s, 0.5 - s * my)
    return {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}


def channels_last_copy(model: torch.nn.Module) -> torch.nn.Module:
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.weight.data = mod.weight.data.contiguous(memory_format=torch.channels_last)
    return m


# ---------------------------------------------------------------- timing and comparison

def measure(fn, device: torch.device, repeat: int) -> tuple[torch.Tensor, dict]:
    """First call (wall ms: includes cuDNN autotuning of new shapes), one call for the peak memory above the
    memory allocated before it (its output is returned), then the median of ``repeat`` calls (CUDA events)."""
    res = {}
    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        res["first_ms"] = (time.perf_counter() - t0) * 1e3
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        out = fn()
        sync(device)
        if device.type == "cuda":
            res["peak_bytes"] = torch.cuda.max_memory_allocated(device) - base
            res["base_bytes"] = base
            res["ms"] = cuda_median_ms(fn, iters=repeat)
        else:
            res["peak_bytes"] = None
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            res["ms"] = statistics.median(times)
    return out, res


def compare(out: torch.Tensor, ref: torch.Tensor | None, ref32: torch.Tensor | None) -> dict:
    o = out.float()
    res = {"finite": bool(torch.isfinite(o).all()), "shape": list(out.shape), "out_std": float(o.std())}
    if ref is not None:
        r = ref.float()
        d = o - r
        res.update(identical=bool(torch.equal(out, ref)), max_abs_diff=float(d.abs().max()),
                   rel_l2=float(d.norm() / r.norm().clamp_min(1e-30)))
        del d
    if ref32 is not None:
        d = o - ref32
        res.update(max_abs_vs_fp32=float(d.abs().max()), rel_l2_vs_fp32=float(d.norm() / ref32.norm().clamp_min(1e-30)))
    return res


def float32_reference(model32: torch.nn.Module, video: torch.Tensor, latent: torch.Tensor) -> dict:
    """The module in float32 (parallel=False, TF32 off) on the same (rounded) inputs."""
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model32.parallel = False
        with torch.no_grad():
            return {"encode": model32.encode(video.float()), "decode": model32.decode(latent.float())}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def run_variants(model, names, video, latent, device, repeat, refs, ref32, dtype_name, log_prefix="") -> list[dict]:
    """Each variant's encode and decode; ``refs`` (the default's outputs) is filled by the ``default`` variant."""
    rows = []
    cl_model = None
    for name in names:
        parallel, cl, bench = VARIANTS[name]
        if cl and cl_model is None:
            cl_model = channels_last_copy(model)
        m = cl_model if cl else model
        inputs = {"encode": video, "decode": latent}
        if cl and parallel:
            inputs = {k: v.contiguous(memory_format=torch.channels_last_3d) for k, v in inputs.items()}
        saved = m.parallel, torch.backends.cudnn.benchmark
        m.parallel, torch.backends.cudnn.benchmark = parallel, bench
        try:
            for op in ("encode", "decode"):
                x = inputs[op]
                fn = (lambda: m.encode(x)) if op == "encode" else (lambda: m.decode(x))
                row = {"dtype": dtype_name, "variant": name, "op": op, "parallel": parallel, "channels_last": cl,
                       "cudnn_benchmark": bench}
                try:
                    out, timing = measure(fn, device, repeat)
                    row.update(timing)
                    row.update(compare(out, refs.get(op), ref32.get(op)))
                    if name == "default":
                        refs[op] = out
                        row.update(identical=True, max_abs_diff=0.0, rel_l2=0.0)
                    del out
                except Exception as e:    # out of memory or a failing layout must not cost the other rows
                    row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                rows.append(row)
                print(f"{log_prefix}{fmt_row(row)}", flush=True)
        finally:
            m.parallel, torch.backends.cudnn.benchmark = saved
    return rows


def fmt_row(r: dict) -> str:
    if "error" in r:
        return f"{r['dtype']:8s} {r['variant']:18s} {r['op']:6s} FAILED {r['error']}"
    peak = "-" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / GiB:.2f}"
    same = "yes" if r.get("identical") else "no" if "identical" in r else "?"
    fin = "" if r.get("finite", True) else "  NOT FINITE"
    return (f"{r['dtype']:8s} {r['variant']:18s} {r['op']:6s} {r['ms']:9.2f} {r['first_ms']:9.1f} {peak:>8s} "
            f"{r.get('max_abs_diff', float('nan')):10.3g} {r.get('rel_l2', float('nan')):9.2e} {same:>5s} "
            f"{r.get('rel_l2_vs_fp32', float('nan')):9.2e}{fin}")


HEADER = (f"{'dtype':8s} {'variant':18s} {'op':6s} {'ms':>9s} {'first ms':>9s} {'peak GiB':>8s} "
          f"{'max|diff|':>10s} {'rel L2':>9s} {'same':>5s} {'L2 v fp32':>9s}")


# ---------------------------------------------------------------- activation sizes of the parallel path

def activation_estimate(comfy, model, op: str, shape: tuple, dtype: torch.dtype, top: int = 6) -> dict:
    """Run ``model.encode``/``decode`` with parallel=True on the meta device (no memory, no compute) with hooks
    on every leaf layer; each layer's input + output bytes plus what its callers hold at that moment (a MemBlock
    holds x, its past and their concatenation; encode holds the frame-padded copy of its input). The largest of
    these sums estimates the working memory above the input (cuDNN workspaces not included)."""
    taehv = comfy.taesd.taehv
    m = copy.deepcopy(model).to(device="meta", dtype=dtype)
    m.parallel, m.show_progress_bar = True, False
    seq_name = "encoder" if op == "encode" else "decoder"
    seq = getattr(m, seq_name)
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    held = [0]
    events = []
    hooks = []

    def mem_pre(mod, args):
        mod._held = 2 * (nbytes(args[0]) + nbytes(args[1]))
        held[0] += mod._held

    def mem_post(mod, args, out):
        held[0] -= mod._held

    def leaf(name):
        def hook(mod, args, out):
            inplace = getattr(mod, "inplace", False)
            events.append({"layer": f"{seq_name}.{name} {type(mod).__name__}", "shape": list(out.shape),
                           "in_bytes": nbytes(args[0]), "out_bytes": 0 if inplace else nbytes(out),
                           "held_bytes": held[0]})
        return hook

    for name, mod in seq.named_modules():
        if isinstance(mod, taehv.MemBlock):
            hooks += [mod.register_forward_pre_hook(mem_pre), mod.register_forward_hook(mem_post)]
        elif name and not list(mod.children()):
            hooks.append(mod.register_forward_hook(leaf(name)))
    t, h, w = shape
    try:
        with torch.no_grad():
            if op == "encode":
                padded = 4 * ((t + 3) // 4)
                held[0] = 3 * padded * h * w * torch.tensor([], dtype=dtype).element_size() if padded != t else 0
                out = m.encode(torch.empty(1, 3, t, h, w, device="meta", dtype=dtype))
            else:
                out = m.decode(torch.empty(1, 16, t, h, w, device="meta", dtype=dtype))
    finally:
        for hk in hooks:
            hk.remove()
    for e in events:
        e["sum_bytes"] = e["in_bytes"] + e["out_bytes"] + e["held_bytes"]
    peak = max(events, key=lambda e: e["sum_bytes"])
    biggest = sorted(events, key=lambda e: -max(e["in_bytes"], e["out_bytes"]))[:top]
    return {"op": op, "input_shape": [1, 3 if op == "encode" else 16, t, h, w], "output_shape": list(out.shape),
            "dtype": str(dtype).replace("torch.", ""), "estimate_bytes": peak["sum_bytes"], "at_layer": peak,
            "largest": biggest}


# ---------------------------------------------------------------- child process: the cudnn.benchmark variants

def child_main(a) -> int:
    device = torch.device(a.device)
    comfy, _ = import_comfy(a.comfyui, device)
    blob = torch.load(a.child, map_location="cpu", weights_only=False)
    dt = DTYPES[blob["dtype"]]
    _, model = comfy_vae(comfy, blob["sd"], device, dt)
    model.show_progress_bar = a.progress_bar
    to = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    rows = run_variants(model, blob["names"], blob["video"].to(device), blob["latent"].to(device), device, a.repeat,
                        to(blob["refs"]), to(blob["ref32"]), blob["dtype"], log_prefix="  [child] ")
    with open(a.child + ".rows.json", "w") as f:
        json.dump(rows, f)
    return 0


def run_child(a, names, sd, dtype_name, video, latent, refs, ref32, workdir) -> list[dict]:
    path = os.path.join(workdir, f"child_{dtype_name}.pt")
    cpu = lambda d: {k: v.detach().cpu() for k, v in d.items()}  # noqa: E731
    torch.save({"sd": sd, "dtype": dtype_name, "names": names, "video": video.cpu(), "latent": latent.cpu(),
                "refs": cpu(refs), "ref32": cpu(ref32)}, path)
    cmd = [sys.executable, os.path.abspath(__file__), "--comfyui", a.comfyui, "--device", a.device,
           "--repeat", str(a.repeat), "--child", path] + (["--progress-bar"] if a.progress_bar else [])
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"[taehv] cudnn.benchmark variants in a fresh process: {', '.join(names)}", flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0 or not os.path.exists(path + ".rows.json"):
        return [{"dtype": dtype_name, "variant": n, "op": op, "error": f"child process exit {rc}"}
                for n in names for op in ("encode", "decode")]
    with open(path + ".rows.json") as f:
        return json.load(f)


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", default=os.path.join(ROOT, ".gpu", "comfyui"),
                    help="a ComfyUI tree (its comfy/taesd/taehv.py and comfy/sd.py are what runs)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None,
                    help="comma-separated: float16, bfloat16, float32 (default: float16 on a GPU, float32 on the CPU, "
                         "where ComfyUI runs this VAE in float32 and float16 convolutions are very slow)")
    ap.add_argument("--variant", default="lighttaew2_1", choices=["lighttaew2_1", "taehv-fp16"],
                    help="lighttaew2_1: float32 state dict, no latent scaling (what lighttaew2_1 loads as); "
                         "taehv-fp16: float16 state dict, which ComfyUI gives HunyuanVideo's latent scaling")
    ap.add_argument("--frames", type=int, default=TARGET[0])
    ap.add_argument("--height", type=int, default=TARGET[1])
    ap.add_argument("--width", type=int, default=TARGET[2])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated variants (default: all; 'default' always runs)")
    ap.add_argument("--skip-bench", action="store_true", help="leave out the cudnn.benchmark variants (child process)")
    ap.add_argument("--progress-bar", action="store_true",
                    help="keep TAEHV's tqdm bar on (ComfyUI's default; off here)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/taehv_profile.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child_main(a)
    t_start = time.perf_counter()
    device = torch.device(a.device)
    if a.dtype is None:
        a.dtype = "float16" if device.type == "cuda" else "float32"
    dtype_names = [d.strip() for d in a.dtype.split(",") if d.strip()]
    for d in dtype_names:
        if d not in DTYPES:
            raise SystemExit(f"--dtype {d}: one of {', '.join(DTYPES)}")
    if a.height % 8 or a.width % 8:
        raise SystemExit("--height and --width must be multiples of 8 (ComfyUI crops to them)")
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    if only - set(VARIANTS):
        raise SystemExit(f"--only: unknown {sorted(only - set(VARIANTS))}; variants: {', '.join(VARIANTS)}")
    names = [n for n in VARIANTS if n == "default" or not only or n in only]
    local = [n for n in names if not VARIANTS[n][2]]
    bench = [] if a.skip_bench else [n for n in names if VARIANTS[n][2]]

    comfy, comfy_version = import_comfy(a.comfyui, device)
    mm = comfy.model_management
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lt = (a.frames + 3) // 4
    print(f"[taehv] ComfyUI {comfy_version} ({os.path.abspath(a.comfyui)}), torch {torch.__version__}, {gpu}; "
          f"{a.frames}x{a.height}x{a.width} -> latent {lt}x{a.height // 8}x{a.width // 8}, {a.variant}, "
          f"dtypes {', '.join(dtype_names)}", flush=True)

    sd = state_dict_for(a.variant, calibrated_state_dict(comfy, a.variant, a.seed))
    vae, _ = comfy_vae(comfy, sd, torch.device("cpu"), torch.float32)
    lf = vae.first_stage_model.latent_format
    info = {"module": type(vae.first_stage_model).__name__, "latent_format": None if lf is None else lf.__name__,
            "state_dict_dtype": str(sd["decoder.1.weight"].dtype).replace("torch.", ""),
            "working_dtypes": [str(d).replace("torch.", "") for d in vae.working_dtypes],
            "comfy_default_dtype_on_device": str(mm.vae_dtype(device, vae.working_dtypes)).replace("torch.", ""),
            "default_parallel": bool(vae.first_stage_model.parallel),
            "frames_to_trim": vae.first_stage_model.frames_to_trim, "patch_size": vae.first_stage_model.patch_size,
            "parameters": sum(p.numel() for p in vae.first_stage_model.parameters())}
    formulas = {}
    run_label = f"{a.width}x{a.height}x{a.frames}"
    sizes = {run_label: (a.frames, a.height, a.width), "832x480x81": TARGET}      # one entry when they are the same
    for label, (t, h, w) in sizes.items():
        for d in dtype_names:
            formulas[f"{label} {d}"] = {
                "memory_used_encode": int(vae.memory_used_encode((1, 3, t, h, w), DTYPES[d])),
                "memory_used_decode": int(vae.memory_used_decode((1, 16, (t + 3) // 4, h // 8, w // 8), DTYPES[d]))}
    print(f"[taehv] module {info['module']}, latent_format {info['latent_format']}, state dict "
          f"{info['state_dict_dtype']}, ComfyUI's own dtype for it here: {info['comfy_default_dtype_on_device']} "
          f"(working_dtypes {info['working_dtypes']}), parallel={info['default_parallel']}", flush=True)
    del vae

    video32 = synthetic_video(a.frames, a.height, a.width, device, a.seed + 10)
    latent32 = wan_latent(comfy, lt, a.height // 8, a.width // 8, device, a.seed + 20)
    rows, estimates = [], {}
    workdir = tempfile.mkdtemp(prefix="taehv_profile_")
    try:
        for dname in dtype_names:
            dt = DTYPES[dname]
            _, model = comfy_vae(comfy, sd, device, dt)
            model.show_progress_bar = a.progress_bar
            video, latent = video32.to(dt), latent32.to(dt)
            _, model32 = comfy_vae(comfy, sd, device, torch.float32)
            model32.show_progress_bar = False
            ref32 = float32_reference(model32, video, latent)
            del model32
            print(f"[taehv] {dname}: float32 reference: latent std {float(ref32['encode'].std()):.3g}, "
                  f"frames mean {float(ref32['decode'].mean()):.3g} std {float(ref32['decode'].std()):.3g}", flush=True)
            print(HEADER, flush=True)
            refs = {}
            rows += run_variants(model, local, video, latent, device, a.repeat, refs, ref32, dname)
            for label, (t, h, w) in sizes.items():
                for op, shp in (("encode", (t, h, w)), ("decode", ((t + 3) // 4, h // 8, w // 8))):
                    estimates[f"{label} {dname} {op}"] = activation_estimate(comfy, model, op, shp, dt)
            if bench:
                if "decode" not in refs or "encode" not in refs:
                    print("[taehv] no default output to compare with; cudnn.benchmark variants skipped", flush=True)
                else:
                    del model
                    rows += run_child(a, bench, sd, dname, video, latent, refs, ref32, workdir)
            del refs, ref32
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print("\nParallel path, largest activations (meta-device run; bytes of one tensor; est = max over layers of "
          "input + output + what the callers hold; no cuDNN workspace):")
    for key, e in estimates.items():
        label = key.split(" ")[0]
        measured = [r.get("peak_bytes") for r in rows if label == run_label and r.get("variant") == "parallel"
                    and r.get("op") == e["op"] and r.get("dtype") == e["dtype"]]
        meas = f", measured parallel peak {measured[0] / GiB:.2f} GiB" if measured and measured[0] is not None else ""
        f = formulas.get(f"{label} {e['dtype']}", {}).get(f"memory_used_{e['op']}")
        comfy_f = f", ComfyUI's memory_used_{e['op']} {f / GiB:.2f} GiB" if f is not None else ""
        at = e["at_layer"]
        print(f"  {key}: est {e['estimate_bytes'] / GiB:.2f} GiB at {at['layer']} {at['shape']}{meas}{comfy_f}")
        for t in e["largest"]:
            print(f"      {t['layer']:27s} out {str(t['shape']):24s} in {t['in_bytes'] / GiB:6.3f} GiB  "
                  f"out {t['out_bytes'] / GiB:6.3f} GiB")

    print("\n" + HEADER)
    for r in rows:
        print(fmt_row(r))
    res = {"gpu": gpu, "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None, "comfyui": comfy_version,
           "comfyui_dir": os.path.abspath(a.comfyui), "python": platform.python_version(),
           "command": " ".join(sys.argv), "device": str(device), "size": [a.frames, a.height, a.width],
           "latent": [16, lt, a.height // 8, a.width // 8], "dtypes": dtype_names, "variant": a.variant,
           "repeat": a.repeat, "progress_bar": a.progress_bar, "module": info, "comfy_memory_formulas": formulas,
           "variants": {n: dict(zip(("parallel", "channels_last", "cudnn_benchmark"), VARIANTS[n])) for n in names},
           "rows": rows, "activation_estimates": estimates, "wall_seconds": time.perf_counter() - t_start}
    save_result(res, a.out)
    print(f"[taehv] wrote {a.out} ({res['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
