"""Loading Wan2.1 / Self-Forcing diffusion-model checkpoints.

Accepted layouts:

* the official Self-Forcing ``.pt``: a dict with ``generator_ema`` (preferred) or
  ``generator``, keys prefixed ``model.`` (loaded with ``weights_only=True``);
* plain Wan / ComfyUI ``.safetensors`` (or ``.pt``), with or without the
  ``model.diffusion_model.`` / ``diffusion_model.`` prefix;

in bf16, fp16 or fp32.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch

from .config import WanConfig, infer_config
from .errors import LiparError
from .model import WanDiT

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "_orig_mod.", "module.")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Read a file into a flat {name: tensor} dict (no prefix handling)."""
    if not os.path.isfile(path):
        raise LiparError(f"Checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise LiparError(f"Could not read {path} as safetensors: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LiparError(f"Could not read {path} as a PyTorch checkpoint (weights_only=True): {e}") from e
    if isinstance(obj, Mapping):
        for key in ("generator_ema", "generator", "state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LiparError(f"{path} does not hold a state dict of tensors (nor generator_ema/generator entries).")
    return dict(obj)


def strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the one prefix under which the Wan names live (repeatedly, e.g. 'model.' + '_orig_mod.')."""
    out = dict(sd)
    changed = True
    while changed:
        changed = False
        if "patch_embedding.weight" in out:
            break
        for p in PREFIXES:
            if f"{p}patch_embedding.weight" in out:
                out = {k[len(p):]: v for k, v in out.items() if k.startswith(p)}
                changed = True
                break
    return out


def expected_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = WanDiT(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict(sd: Mapping[str, torch.Tensor], cfg: WanConfig, path: str = "checkpoint") -> None:
    """One clear error listing missing, unexpected and mis-shaped keys (if any)."""
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    bad = sorted(k for k in set(want) & set(sd) if tuple(sd[k].shape) != want[k])
    nonfloat = sorted(k for k in set(want) & set(sd) if sd[k].dtype not in _FLOAT_DTYPES)
    if missing or unexpected or bad or nonfloat:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        if bad:
            parts.append("mis-shaped keys: " + ", ".join(f"{k} {list(sd[k].shape)} (expected {list(want[k])})" for k in bad[:8]))
        if nonfloat:
            parts.append("keys that are not bf16/fp16/fp32 (quantised checkpoints are not supported): " + ", ".join(nonfloat[:8]))
        raise LiparError(f"{path} is not a Wan2.1 DiT of the inferred config {cfg}: " + "; ".join(parts))


def load_state_dict(path: str) -> tuple[dict[str, torch.Tensor], WanConfig]:
    sd = strip_prefix(read_checkpoint(path))
    cfg = infer_config(sd)
    check_state_dict(sd, cfg, path)
    return sd, cfg


def load_model(path: str, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> WanDiT:
    """Build a WanDiT from a checkpoint file (dtype defaults to the file's)."""
    sd, cfg = load_state_dict(path)
    dtype = dtype or sd["blocks.0.self_attn.q.weight"].dtype
    with torch.device("meta"):
        model = WanDiT(cfg)
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, assign=True)
    return model.to(device).eval().requires_grad_(False)


def convert_checkpoint(src: str, dst: str, *, dtype: torch.dtype = torch.bfloat16) -> WanConfig:
    """Turn an official Self-Forcing ``.pt`` (or any accepted layout) into a plain Wan
    ``.safetensors`` (no prefix) that ComfyUI's Load Diffusion Model reads."""
    from safetensors.torch import save_file
    if not dst.endswith(".safetensors"):
        raise LiparError(f"The output file must end in .safetensors; got {dst}.")
    sd, cfg = load_state_dict(src)
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, dst)
    return cfg
