"""lipar's Wan2.1 VAE runner (lipar/wan_vae.py) against ComfyUI's own WanVAE: seconds, memory, same result.

Builds ComfyUI's ``comfy.ldm.wan.vae.WanVAE`` from the tree given by --comfyui (the Wan2.1 layout ComfyUI's
loader builds: dim 96, z 16, random weights, gains near 1), in bf16 on the GPU, and times on a 832x480x81
clip / its 21-frame latent:

- ``comfy``: ``WanVAE.encode`` / ``decode`` as ComfyUI calls them;
- ``lipar <switches>``: ``lipar.wan_vae.encode`` / ``decode`` on the same module with each combination of
  the runner's switches (``comfy_loop``: the runner on ComfyUI's schedule and layout, every switch off;
  then chunks, channels_last, buffers, fused_norm added one at a time; other chunk sizes).

Same result: every output is compared with ComfyUI's module run in float32 (TF32 off) on the same
input; ``err_ratio`` = (lipar's RMS error) / (ComfyUI bf16's RMS error) against that reference, so
1.0 means "as close to the exact result as ComfyUI's own bf16 run" (<= 1.5 counts as the same result),
``max_ratio`` likewise for the largest error. A direct check compares the fused RMS_norm+SiLU kernel with
PyTorch. Rows: median seconds over --repeat runs after one warm-up, peak memory above what was allocated
before, lipar's own estimate (``working_memory``). A kernel profile of ComfyUI's and the default runner's
decode follows (``--no-profile`` skips it). JSON to --out and, if $OUT is set, a copy there.

    python benchmarks/wan_vae.py --comfyui .gpu/comfyui                      # H200: about 2-3 minutes
    python benchmarks/wan_vae.py --comfyui /work/comfy --device cpu --frames 9 --height 64 --width 96   # dry run
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import torch

from bench_io import save_result  # noqa: E402  (benchmarks/bench_io.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lipar import wan_vae  # noqa: E402
from lipar.wan_vae import COMFY_LOOP, WanVAEConfig  # noqa: E402

DEFAULT = WanVAEConfig()


def variants() -> list[tuple[str, WanVAEConfig]]:
    """(name, config): ComfyUI's schedule, then each switch added in turn, then each removed from the default,
    then other chunk sizes."""
    chunks = dataclasses.replace(COMFY_LOOP, encode_chunk=DEFAULT.encode_chunk, decode_chunk=DEFAULT.decode_chunk)
    cl = dataclasses.replace(chunks, channels_last=True)
    buf = dataclasses.replace(cl, buffers=True)
    rows = [("comfy_loop", COMFY_LOOP), ("chunks", chunks), ("chunks+cl", cl), ("chunks+cl+buf", buf),
            ("default (chunks+cl+buf+fused)", DEFAULT),
            ("default-cl", dataclasses.replace(DEFAULT, channels_last=False)),
            ("default-buf", dataclasses.replace(DEFAULT, buffers=False)),
            ("default-fused", dataclasses.replace(DEFAULT, fused_norm=False)),
            ("default+cudnn_benchmark", dataclasses.replace(DEFAULT, cudnn_benchmark=True)),
            ("default+fold_bias", dataclasses.replace(DEFAULT, fold_bias=True))]
    for enc, dec in ((2, 4), (5, 20)):
        rows.append((f"default enc{enc} dec{dec}", dataclasses.replace(DEFAULT, encode_chunk=enc, decode_chunk=dec)))
    return rows


def make_vae(vae_mod, device, dtype):
    """ComfyUI's Wan2.1 VAE as comfy/sd.py builds it, random weights (fan-in scaled; gains near 1)."""
    torch.manual_seed(0)
    vae = vae_mod.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True], image_channels=3, dropout=0.0)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "gamma" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.ndim == 1:
                p.normal_(0, 0.02)
            else:
                p.normal_(0, (1.0 / p[0].numel()) ** 0.5)
    return vae.to(device, dtype).eval()


class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, fn, repeat: int):
        """(output of the last run, median seconds, peak bytes above the start, seconds of the first run: a
        warm-up that also pays for kernel compilation and cuDNN autotuning of new shapes)."""
        self.sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        self.sync()
        self.first = time.perf_counter() - t0
        times, peak, out = [], 0, None
        for _ in range(repeat):
            out = None
            self.sync()
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            with torch.no_grad():
                out = fn()
            self.sync()
            times.append(time.perf_counter() - t0)
            if self.cuda:
                peak = max(peak, torch.cuda.max_memory_allocated() - base)
        times.sort()
        return out, times[len(times) // 2], peak


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    d = out.float() - ref.float()
    return float(d.pow(2).mean().sqrt()), float(d.abs().max())


def reference(vae32, video, z):
    """ComfyUI's module in float32 with TF32 off: the exact result the bf16 runs are compared with."""
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            return vae32.encode(video.float()), vae32.decode(z.float())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def fused_norm_check(device: torch.device) -> dict:
    """The fused RMS_norm+SiLU kernel vs PyTorch's path on bf16 [1, C, T, H, W] tensors, channels_last and not,
    written into a padded buffer's interior (what the runner does); max error in bf16 ulps of the output."""
    if device.type != "cuda" or not wan_vae.triton_available():
        return {"ran": False, "why": "needs CUDA and Triton"}
    res = {"ran": True, "cases": []}
    norm_mod = torch.nn.Module()
    for c, cl, bias in ((96, True, False), (384, True, True), (192, False, False)):
        norm_mod.gamma = torch.nn.Parameter(1 + 0.1 * torch.randn(c, 1, 1, 1, device=device))
        norm_mod.bias = torch.nn.Parameter(0.1 * torch.randn(c, 1, 1, 1, device=device)) if bias else None
        spec = wan_vae._NormSpec(norm_mod, c)
        cfg = dataclasses.replace(DEFAULT, channels_last=cl)
        fused = wan_vae._Norm(wan_vae._Run(device, torch.bfloat16, cfg), spec)
        plain = wan_vae._Norm(wan_vae._Run(device, torch.bfloat16, dataclasses.replace(cfg, fused_norm=False)), spec)
        x = torch.randn(1, c, 5, 30, 52, device=device, dtype=torch.bfloat16) * 3
        x = x.contiguous(memory_format=torch.channels_last_3d) if cl else x
        buf = fused.run.scratch(("t",), c, 7, 32, 54)
        out = fused(x, True, buf[:, :, 2:, 1:31, 1:53])
        ref32 = torch.nn.functional.silu(torch.nn.functional.normalize(x.float(), dim=1) * fused.gain32.view(1, c, 1, 1, 1)
                                         + (fused.bias32.view(1, c, 1, 1, 1) if bias else 0))
        border_zero = bool(buf[:, :, :, 0].abs().max() == 0 and buf[:, :, :, :, -1].abs().max() == 0)
        res["cases"].append({"channels": c, "channels_last": cl, "bias": bias, "border_zero": border_zero,
                             "max_err_fused_vs_fp32": float((out.float() - ref32).abs().max()),
                             "max_err_torch_bf16_vs_fp32": float((plain(x, True).float() - ref32).abs().max())})
    return res


def kernel_profile(fn, top: int = 12) -> dict:
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t and not ev.key.startswith(("aten::", "cudnn::")):
            rows.append((ev.key[:90], t / 1e3, ev.count))
    rows.sort(key=lambda r: -r[1])
    return {"total_ms": sum(r[1] for r in rows), "top": rows[:top]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", required=True, help="a ComfyUI tree (its comfy/ldm/wan/vae.py is the baseline)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated variant names to run (default: all)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/wan_vae.json")
    a = ap.parse_args()
    t_start = time.perf_counter()
    device = torch.device(a.device)
    sys.path.insert(0, os.path.abspath(a.comfyui))
    import comfy.cli_args
    if device.type == "cpu":
        comfy.cli_args.args.cpu = True
    import comfy.ldm.wan.vae as vae_mod

    clock = Clock(device)
    dt = torch.bfloat16
    vae = make_vae(vae_mod, device, dt)
    info = wan_vae.check(vae)
    torch.manual_seed(1)
    video = (torch.rand(1, 3, a.frames, a.height, a.width, device=device) * 2 - 1).to(dt)
    print(f"[wan_vae] {a.frames}x{a.height}x{a.width} on {device} ({torch.cuda.get_device_name() if clock.cuda else 'cpu'}), "
          f"torch {torch.__version__}, VAE dim {info.dim} z {info.z_dim}", flush=True)

    rows = []
    z_c, t_enc, peak_enc = clock.timed(lambda: vae.encode(video), a.repeat)
    first = [clock.first]
    x_c, t_dec, peak_dec = clock.timed(lambda: vae.decode(z_c), a.repeat)
    first.append(clock.first)
    vae32 = make_vae(vae_mod, device, torch.float32)
    vae32.load_state_dict(vae.state_dict())
    z_ref, x_ref = reference(vae32, video, z_c)
    del vae32
    base_err = {"encode": errors(z_c, z_ref), "decode": errors(x_c, x_ref)}
    print(f"[wan_vae] ComfyUI bf16 vs float32: encode rms {base_err['encode'][0]:.3g} max {base_err['encode'][1]:.3g}, "
          f"decode rms {base_err['decode'][0]:.3g} max {base_err['decode'][1]:.3g}", flush=True)

    def row(stage, name, seconds, peak, out, ref, estimate=None, config=None):
        rms, mx = errors(out, ref)
        b_rms, b_max = base_err[stage]
        rows.append({"stage": stage, "variant": name, "seconds": seconds, "first_seconds": clock.first,
                     "peak_bytes": peak, "estimate_bytes": estimate,
                     "rms_err": rms, "max_err": mx, "err_ratio": rms / max(b_rms, 1e-30),
                     "max_ratio": mx / max(b_max, 1e-30), "config": dataclasses.asdict(config) if config else None})
        r = rows[-1]
        print(f"  {stage:6s} {name:32s} {seconds:7.3f} s (first {clock.first:6.2f})  peak {peak / 2**30:6.2f} GiB"
              f"{'' if estimate is None else f' (est {estimate / 2**30:5.2f})'}  err x{r['err_ratio']:.2f} "
              f"(max x{r['max_ratio']:.2f})", flush=True)

    first_enc, first_dec = first
    clock.first = first_enc
    row("encode", "comfy", t_enc, peak_enc, z_c, z_ref)
    clock.first = first_dec
    row("decode", "comfy", t_dec, peak_dec, x_c, x_ref)
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    for name, cfg in variants():
        if only and name not in only:
            continue
        try:
            z, t, peak = clock.timed(lambda: wan_vae.encode(vae, video, cfg), a.repeat)
            row("encode", name, t, peak, z, z_ref, wan_vae.working_memory(vae, tuple(video.shape), "encode", cfg, dt), cfg)
            del z
            x, t, peak = clock.timed(lambda: wan_vae.decode(vae, z_c, cfg), a.repeat)
            row("decode", name, t, peak, x, x_ref, wan_vae.working_memory(vae, tuple(z_c.shape), "decode", cfg, dt), cfg)
            del x
        except Exception as e:       # one broken variant must not cost the other rows: recorded and shown
            rows.append({"variant": name, "error": f"{type(e).__name__}: {e}", "config": dataclasses.asdict(cfg)})
            print(f"  {name}: FAILED {type(e).__name__}: {e}", flush=True)
    checks = {"fused_norm": fused_norm_check(device)}
    profiles = {}
    if clock.cuda and not a.no_profile:
        profiles["comfy_decode"] = kernel_profile(lambda: vae.decode(z_c))
        profiles["lipar_default_decode"] = kernel_profile(lambda: wan_vae.decode(vae, z_c, DEFAULT))
        for name, p in profiles.items():
            print(f"\n{name}: {p['total_ms']:.1f} ms of kernels")
            for k, ms, n in p["top"]:
                print(f"  {ms:8.1f} ms {n:6d}x  {k}")
    print(f"\nfused norm check: {json.dumps(checks['fused_norm'])}")
    res = {"gpu": torch.cuda.get_device_name() if clock.cuda else "cpu", "torch": torch.__version__,
           "python": platform.python_version(), "command": " ".join(sys.argv), "size": [a.frames, a.height, a.width],
           "dtype": "bfloat16", "repeat": a.repeat, "cudnn_benchmark": torch.backends.cudnn.benchmark,
           "comfy_bf16_vs_fp32": base_err, "rows": rows, "checks": checks, "profiles": profiles,
           "wall_seconds": time.perf_counter() - t_start}
    save_result(res, a.out)
    print(f"[wan_vae] wrote {a.out} ({res['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
