"""Random-weight model files of the real architectures, written by the tier itself (nothing is downloaded).

* ``write_dit``: a Wan2.1-T2V DiT in ComfyUI's diffusion-model naming (``blocks.N.self_attn.q.weight`` ...,
  the names of lipar's ``WanDiT``), every parameter random: linear/conv weights with the variance of
  PyTorch's default init, biases and norm gains perturbed away from 0 and 1 so a forgotten one shows.
  Saved in bf16 (as the released Self-Forcing conversion). The same weights with safetensors metadata
  ``config = {"transformer": {"causal_ar": true}}`` make the file newer ComfyUI detects as its causal
  ``WAN21_CausalAR`` model.
* ``write_scaled_fp8``: the same weights as a "scaled fp8" checkpoint: each linear weight of the blocks
  stored as float8_e4m3fn with a per-tensor float32 scale (w ~= q * scale), everything else bf16.
  Two layouts ComfyUI 0.8 loads (``comfy.utils.convert_old_quants``): ``legacy`` = a ``scaled_fp8``
  marker tensor and ``<layer>.scale_weight`` keys (the layout of the scaled-fp8 Wan files in
  circulation); ``metadata`` = ``<layer>.weight_scale`` keys and a ``_quantization_metadata`` JSON
  entry in the safetensors metadata (QUANTIZATION.md's current format).
* ``write_lora``: a LoRA in the ``diffusion_model.<layer>.lora_up.weight / lora_down.weight / alpha``
  format (ComfyUI's ``model_lora_keys_unet`` maps ``diffusion_model.<module>`` to the module's weight),
  rank ``rank`` on q/k/v/o of self- and cross-attention and both FFN linears of every block, scaled so
  that ||up @ down * alpha/rank|| is ``rho`` times ||W|| of each target.
* ``write_wan_vae``: a Wan2.1 VAE of base width ``dim`` (96 = the real one) with the key set of
  ComfyUI's own ``WanVAE`` (tests/realhost/tiny_models.py), which ComfyUI's VAE loader detects.
"""
from __future__ import annotations

import json
import math
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LORA_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def _lipar():
    from harness_env import pack_lipar
    return pack_lipar()


def dit_shapes(cfg) -> dict[str, torch.Size]:
    lipar = _lipar()
    with torch.device("meta"):
        model = lipar.WanDiT(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def random_dit(cfg, seed: int = 0, device: str = "cpu", dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    sd = {}
    for name, shape in dit_shapes(cfg).items():
        x = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
        if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
            x = 1.0 + 0.1 * x
        elif name.endswith("modulation"):
            x = x / math.sqrt(cfg.dim)
        elif name.endswith("bias"):
            x = 0.05 * x
        else:   # linear / conv weights: the variance of PyTorch's default (kaiming-uniform) init
            fan_in = math.prod(shape[1:])
            x = x / math.sqrt(3.0 * fan_in)
        sd[name] = x.to(dtype).cpu().contiguous()
    return sd


def save(path: str, sd: dict, metadata: dict | None = None) -> int:
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(sd, path, metadata=metadata)
    return os.path.getsize(path)


def write_dit(path: str, sd: dict, causal_ar: bool = False) -> int:
    meta = {"config": json.dumps({"transformer": {"causal_ar": True}})} if causal_ar else None
    return save(path, sd, meta)


def quantized_layers(sd: dict) -> list[str]:
    """The linear layers of the blocks (what scaled-fp8 Wan files quantize)."""
    out = []
    for k in sd:
        if k.startswith("blocks.") and k.endswith(".weight") and sd[k].ndim == 2:
            out.append(k[:-len(".weight")])
    return out


def quantize_fp8(sd: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-tensor scaled float8_e4m3fn of every block linear weight: layer -> (q, scale), w ~= q * scale."""
    fp8 = torch.float8_e4m3fn
    fmax = torch.finfo(fp8).max
    out = {}
    for layer in quantized_layers(sd):
        w = sd[layer + ".weight"].float()
        scale = (w.abs().amax() / fmax).clamp_min(1e-12)
        out[layer] = ((w / scale).clamp(-fmax, fmax).to(fp8), scale.reshape(()).float())
    return out


def write_scaled_fp8(path: str, sd: dict, layout: str = "legacy", quantized: dict | None = None) -> int:
    quantized = quantized if quantized is not None else quantize_fp8(sd)
    out = dict(sd)
    layers = {}
    for layer, (q, scale) in quantized.items():
        out[layer + ".weight"] = q
        out[layer + (".scale_weight" if layout == "legacy" else ".weight_scale")] = scale
        layers[layer] = {"format": "float8_e4m3fn"}
    meta = None
    if layout == "legacy":
        out["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)   # the marker; 0 elements: fp8 matmul allowed
    elif layout == "metadata":
        meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    else:
        raise ValueError(layout)
    return save(path, out, meta)


def write_lora(path: str, sd: dict, num_layers: int, rank: int = 8, rho: float = 0.5, seed: int = 0) -> int:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(num_layers):
        for t in LORA_TARGETS:
            w = sd[f"blocks.{i}.{t}.weight"].float()
            n_out, n_in = w.shape
            # ||up @ down|| ~= sqrt(n_out * n_in * rank) * a^2 for entries ~ N(0, a^2); aim at rho * ||W||
            a = math.sqrt(rho * w.norm().item() / math.sqrt(n_out * n_in * rank))
            base = f"diffusion_model.blocks.{i}.{t}"
            out[base + ".lora_up.weight"] = (torch.randn(n_out, rank, generator=g) * a).to(torch.bfloat16)
            out[base + ".lora_down.weight"] = (torch.randn(rank, n_in, generator=g) * a).to(torch.bfloat16)
            out[base + ".alpha"] = torch.tensor(float(rank))
    return save(path, out)


def write_wan_vae(path: str, dim: int) -> int:
    sys.path.insert(0, os.path.join(ROOT, "tests", "realhost"))
    try:
        import tiny_models
    finally:
        sys.path.pop(0)
    return save(path, tiny_models.tiny_wan_vae_state_dict(dim=dim, local=True))
