"""Where ComfyUI's Wan2.1 VAE spends its time, and what larger time chunks and memory layouts change.

Runs ComfyUI's own ``comfy.ldm.wan.vae.WanVAE`` (the tree given by --comfyui, random weights of the real
Wan2.1 architecture, bf16) on a 832x480x81 clip / its 21-frame latent:

- ``comfy``: ``WanVAE.encode`` / ``decode`` as ComfyUI calls them (1, 4, 4, ... input frames per encoder
  call; one latent frame per decoder call);
- ``chunk<k>``: the same modules called with ``k`` latent frames per call after the first (the
  causal caches make this the same computation; the first call stays one frame);
- ``+cl``: the same with Conv3d weights and activations in channels_last_3d.

Prints one row per variant (seconds, peak memory, max abs diff against ``comfy``) and a kernel profile
of the decode; JSON to --out.

    python benchmarks/vae_profile.py --comfyui .gpu/comfyui --out benchmarks/results/vae_profile.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from bench_io import save_result  # noqa: E402  (benchmarks/bench_io.py)


def make_vae(vae_mod, device, dtype):
    torch.manual_seed(0)
    vae = vae_mod.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True])
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "gamma" in name:
                p.fill_(1.0)
            elif p.ndim == 1:
                p.normal_(0, 0.02)
            else:
                fan_in = p[0].numel()
                p.normal_(0, (1.0 / fan_in) ** 0.5)
    return vae.to(device, dtype).eval()


def encode_chunks(vae, x, k: int):
    """Encoder called on frames [0], then 4k frames per call (same causal caches as ComfyUI's loop)."""
    feat = [None] * 64
    outs = [vae.encoder(x[:, :, :1], feat_cache=feat, feat_idx=[0])]
    t = x.shape[2]
    for s in range(1, t, 4 * k):
        outs.append(vae.encoder(x[:, :, s:s + 4 * k], feat_cache=feat, feat_idx=[0]))
    mu, _ = vae.conv1(torch.cat(outs, 2)).chunk(2, dim=1)
    return mu


def decode_chunks(vae, z, k: int):
    """Decoder called on latent frame 0, then k latent frames per call."""
    feat = [None] * 64
    x = vae.conv2(z)
    outs = [vae.decoder(x[:, :, :1], feat_cache=feat, feat_idx=[0])]
    for s in range(1, z.shape[2], k):
        outs.append(vae.decoder(x[:, :, s:s + k], feat_cache=feat, feat_idx=[0]))
    return torch.cat(outs, 2)


def channels_last(vae):
    for m in vae.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
        elif isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    return vae


def timed(fn, repeat: int):
    times = []
    out = None
    for _ in range(repeat):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() - base
    times.sort()
    return out, times[len(times) // 2], peak


def kernel_profile(fn, top: int = 14):
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = []
    total = 0.0
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t:
            rows.append((ev.key[:90], t / 1e3, ev.count))
    rows = [r for r in rows if not r[0].startswith(("aten::", "cudnn::", "Memcpy"))] or rows
    total = sum(r[1] for r in rows)
    rows.sort(key=lambda r: -r[1])
    return total, rows[:top]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/vae_profile.json")
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.comfyui))
    import comfy.ldm.wan.vae as vae_mod

    dev, dt = torch.device("cuda"), torch.bfloat16
    vae = make_vae(vae_mod, dev, dt)
    torch.manual_seed(1)
    video = torch.rand(1, 3, a.frames, a.height, a.width, device=dev, dtype=dt) * 2 - 1
    rows = []
    z_ref, t, peak = timed(lambda: vae.encode(video), a.repeat)
    rows.append({"stage": "encode", "variant": "comfy", "seconds": t, "peak_bytes": peak, "max_abs_diff": 0.0})
    for k in (2, 5):
        z, t, peak = timed(lambda: encode_chunks(vae, video, k), a.repeat)
        rows.append({"stage": "encode", "variant": f"chunk{4 * k}", "seconds": t, "peak_bytes": peak,
                     "max_abs_diff": (z.float() - z_ref.float()).abs().max().item(), "ref_scale": z_ref.float().abs().max().item()})
    z = z_ref
    x_ref, t, peak = timed(lambda: vae.decode(z), a.repeat)
    rows.append({"stage": "decode", "variant": "comfy", "seconds": t, "peak_bytes": peak, "max_abs_diff": 0.0})
    for k in (2, 4, 7):
        x, t, peak = timed(lambda: decode_chunks(vae, z, k), a.repeat)
        rows.append({"stage": "decode", "variant": f"chunk{k}", "seconds": t, "peak_bytes": peak,
                     "max_abs_diff": (x.float() - x_ref.float()).abs().max().item()})
    prof_comfy = kernel_profile(lambda: vae.decode(z))
    prof_chunk = kernel_profile(lambda: decode_chunks(vae, z, 4))
    channels_last(vae)
    for k in (1, 4):
        x, t, peak = timed(lambda: decode_chunks(vae, z.contiguous(memory_format=torch.channels_last_3d), k), a.repeat)
        rows.append({"stage": "decode", "variant": f"chunk{k}+cl", "seconds": t, "peak_bytes": peak,
                     "max_abs_diff": (x.float() - x_ref.float()).abs().max().item()})
    x, t, peak = timed(lambda: encode_chunks(vae, video.contiguous(memory_format=torch.channels_last_3d), 2), a.repeat)
    rows.append({"stage": "encode", "variant": "chunk8+cl", "seconds": t, "peak_bytes": peak,
                 "max_abs_diff": (x.float() - z_ref.float()).abs().max().item()})
    prof_cl = kernel_profile(lambda: decode_chunks(vae, z.contiguous(memory_format=torch.channels_last_3d), 4))
    for name, (total, top) in (("comfy decode", prof_comfy), ("chunk4 decode", prof_chunk), ("chunk4+cl decode", prof_cl)):
        print(f"\n{name}: {total:.1f} ms of kernels")
        for k_, ms, n in top:
            print(f"  {ms:8.1f} ms {n:6d}x  {k_}")
    print(f"\n{'stage':7s} {'variant':11s} {'seconds':>8s} {'peak GiB':>9s} {'max|diff|':>10s}")
    for r in rows:
        print(f"{r['stage']:7s} {r['variant']:11s} {r['seconds']:8.3f} {r['peak_bytes'] / 2**30:9.2f} {r['max_abs_diff']:10.3g}")
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
           "command": " ".join(sys.argv), "size": [a.frames, a.height, a.width], "dtype": "bfloat16", "rows": rows,
           "profiles": {n: {"total_ms": tot, "top": top} for n, (tot, top) in
                        (("comfy", prof_comfy), ("chunk4", prof_chunk), ("chunk4_cl", prof_cl))}}
    save_result(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
