"""Small random-weight models of the real architectures, and a test clip, for the real-host tier.

Run inside ComfyUI's Python (the VAEs' key sets come from ComfyUI's own ``WanVAE`` and ``TAEHV`` classes;
the clip is written with PyAV, a ComfyUI requirement). Nothing here is committed output:
every file is written at test time into a temporary directory.

* ``tiny_wan_state_dict``: a Wan2.1-T2V DiT built by lipar (``lipar.build_model``) with
  every parameter perturbed, so a norm weight or bias that one implementation forgets
  shows up. ComfyUI's detection derives heads = dim / 128, so dim is a multiple of 128.
* ``tiny_wan_vae_state_dict``: a Wan2.1 VAE with base width ``dim`` (the real one has 96). With
  ``local`` (default) its convolutions only use their centre tap of the current frame, so
  (like the trained VAE, unlike random 3x3x3 stacks whose receptive field spans the whole
  clip) static regions encode to the same latent in every frame and the pruner prunes them.
* ``tiny_taehv_state_dict``: the tiny VAE the fast workflow loads as ``lighttaew2_1.safetensors``
  from ``models/vae_approx/`` (ComfyUI's ``TAEHV`` class, random weights, float32; local in the
  same sense).
* ``write_clip``: an H.264 mp4 with a static textured background and a moving square, so
  the pruner has both static (prunable) and moving (kept) patches.
* ``write_conditioning_shard``: a CONDITIONING for ComfyUI's core ``LoadTrainingDataset``
  node (umt5-xxl-shaped: [1, 512, 4096], zero rows after the "tokens", like the real encoder).
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def comfy_preamble(comfy_dir: str) -> None:
    """Make ComfyUI importable as a library on CPU (it parses sys.argv only when asked)."""
    sys.argv = [sys.argv[0], "--cpu"]
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    import comfy.options
    comfy.options.enable_args_parsing()


def import_lipar():
    if ROOT not in sys.path:
        sys.path.append(ROOT)
    import lipar
    return lipar


def tiny_wan_state_dict(dim: int = 128, layers: int = 2, ffn: int = 256, seed: int = 0):
    import torch

    lipar = import_lipar()
    cfg = lipar.WanConfig(dim=dim, ffn_dim=ffn, num_layers=layers, num_heads=dim // 128)
    model = lipar.build_model(cfg, seed=seed, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    sd = {}
    for k, v in model.state_dict().items():
        noise = torch.randn(v.shape, generator=g)
        if k.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
            v = 1.0 + 0.1 * noise         # norm gains near 1, not exactly 1
        elif k.endswith("bias"):
            v = v + 0.05 * noise
        else:
            v = v + 0.02 * noise
        sd[k] = v.contiguous()
    return sd


def write_tiny_wan(path: str, **kw) -> dict:
    from safetensors.torch import save_file
    sd = tiny_wan_state_dict(**kw)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file(sd, path)
    return sd


def write_official_layout_pt(path: str, sd: dict) -> None:
    """The official Self-Forcing checkpoint layout: {'generator_ema': {'model.<name>': tensor}, 'generator': ...}."""
    import torch
    prefixed = {f"model.{k}": v for k, v in sd.items()}
    torch.save({"generator_ema": prefixed, "generator": prefixed}, path)


def tiny_wan_vae_state_dict(dim: int = 8, seed: int = 0, local: bool = True):
    import torch
    import comfy.ldm.wan.vae as wan_vae

    g = torch.Generator().manual_seed(seed)
    # ComfyUI's loader hard-codes everything but the base width (comfy/sd.py); build the same tree
    net = wan_vae.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True], image_channels=3, dropout=0.0)
    sd = {}
    for k, v in net.state_dict().items():
        if k.endswith("gamma"):
            t = torch.ones(v.shape)
        elif k.endswith("bias"):
            t = torch.zeros(v.shape)
        elif local and v.ndim >= 4:
            # only the current frame's centre tap: each latent sees its own pixels, so a static
            # background encodes to identical latents frame after frame, as with the real VAE
            t = torch.zeros(v.shape)
            centre = (slice(None), slice(None)) + ((v.shape[2] - 1,) if v.ndim == 5 else ()) + \
                (v.shape[-2] // 2, v.shape[-1] // 2)
            t[centre] = torch.randn(v.shape[:2], generator=g) / v.shape[1] ** 0.5
        else:
            fan_in = max(1, v[0].numel())
            t = torch.randn(v.shape, generator=g) / fan_in ** 0.5
        sd[k] = t.float().contiguous()
    return sd


def write_tiny_wan_vae(path: str, dim: int = 8) -> None:
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file(tiny_wan_vae_state_dict(dim), path)


def tiny_taehv_state_dict(seed: int = 0, local: bool = True):
    """A random-weight tiny Wan2.1 VAE of the lighttaew2_1 architecture: ComfyUI's own
    ``comfy.taesd.taehv.TAEHV(latent_channels=16)`` (the architecture is fixed; only the weights
    are made up). Float32: ComfyUI takes a float16 file of this layout for HunyuanVideo's taehv.

    With ``local`` (default), as for the tiny Wan VAE above: 3x3 convolutions use only their
    centre tap and the memory blocks ignore the previous frame, so each latent sees only its
    own pixels and a static background encodes to the same latent in every latent frame (the
    trained tiny VAE does this too; random temporal and spatial mixing would not)."""
    import torch
    import comfy.taesd.taehv as taehv

    g = torch.Generator().manual_seed(seed)
    net = taehv.TAEHV(latent_channels=16)
    mem_inputs = {f"{name}.conv.0.weight" for name, m in net.named_modules() if isinstance(m, taehv.MemBlock)}
    sd = {}
    for k, v in net.state_dict().items():
        if k.endswith("bias"):
            t = torch.zeros(v.shape)
        elif v.ndim == 4:
            fan_in = v.shape[1] * (1 if local else v.shape[2] * v.shape[3])
            t = torch.randn(v.shape, generator=g) / fan_in ** 0.5
            if local and v.shape[-1] == 3:
                centre = t[:, :, 1, 1].clone()
                t.zero_()
                t[:, :, 1, 1] = centre
            if local and k in mem_inputs:
                t[:, v.shape[1] // 2:] = 0          # the half of the input that is the previous frame
        else:
            t = torch.randn(v.shape, generator=g) / max(1, v[0].numel()) ** 0.5
        sd[k] = t.float().contiguous()
    # latents spread like the Wan VAE's (a few units), decoded pixels around mid-grey
    last_enc = f"encoder.{len(net.encoder) - 1}"
    last_dec = f"decoder.{len(net.decoder) - 1}"
    sd[f"{last_enc}.weight"] *= 16.0
    sd[f"{last_dec}.weight"] *= 0.2
    sd[f"{last_dec}.bias"] += 0.5
    return sd


def write_tiny_taehv(path: str) -> None:
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file(tiny_taehv_state_dict(), path)


def clip_frames(frames: int = 21, width: int = 128, height: int = 96):
    """uint8 [frames, height, width, 3]: static textured background, a square moving right."""
    import numpy as np
    yy, xx = np.mgrid[0:height, 0:width]
    bg = np.stack([(xx * 2) % 256, (yy * 3) % 256, ((xx + yy) * 5) % 256], -1).astype(np.uint8)
    out = []
    for i in range(frames):
        a = bg.copy()
        x0 = 8 + i * 3
        a[32:64, x0:x0 + 24] = (255, 255, 0)
        out.append(a)
    return np.stack(out)


def write_clip(path: str, frames: int = 21, width: int = 128, height: int = 96, fps: int = 16) -> None:
    import av
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    c = av.open(path, mode="w")
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = width, height, "yuv420p"
    s.options = {"crf": "12"}
    for a in clip_frames(frames, width, height):
        for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


def probe_video(path: str) -> dict:
    import av
    with av.open(path) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return {"frames": n, "width": s.codec_context.width, "height": s.codec_context.height,
                "codec": s.codec_context.name}


def write_conditioning_shard(output_dir: str, folder: str = "lipar_cond", tokens: int = 12, seed: int = 0) -> str:
    import torch
    g = torch.Generator().manual_seed(seed)
    ctx = torch.zeros(1, 512, 4096)
    ctx[:, :tokens] = torch.randn(1, tokens, 4096, generator=g) * 0.1
    d = os.path.join(output_dir, folder)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "shard_0000.pkl")
    torch.save({"latents": [{"samples": torch.zeros(1, 16, 1, 8, 8)}], "conditioning": [[[ctx, {}]]]}, path)
    return path
