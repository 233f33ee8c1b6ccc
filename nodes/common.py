"""Conversions between ComfyUI values (LATENT, MODEL, CONDITIONING) and lipar's inputs.

Every check raises ``ValueError`` with a message a ComfyUI user can act on; lipar's own
``LiparError`` messages are passed on unchanged (see ``user_errors``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from ..lipar.causal import check_wan_module
from ..lipar.errors import LiparError
from ..lipar.plan import PruningPlan

CATEGORY = "LIPAR"
PLAN_KEY = "lipar_plan"
log = logging.getLogger("lipar")


@contextlib.contextmanager
def user_errors():
    """Re-raise lipar's input errors as a plain ValueError with the same message (ComfyUI shows it)."""
    try:
        yield
    except LiparError as e:
        raise ValueError(str(e)) from None


def latent_samples(latent: Any, what: str = "latent") -> torch.Tensor:
    """The ``samples`` tensor of a ComfyUI LATENT dict."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError(f"The {what} input must be a ComfyUI LATENT (a dict with 'samples'); got {type(latent).__name__}.")
    samples = latent["samples"]
    if not isinstance(samples, torch.Tensor):
        raise ValueError(f"The {what}'s samples must be a tensor; got {type(samples).__name__}.")
    return samples


def latent_plan(latent: dict) -> Any:
    """The pruning plan carried by a LATENT dict, or None."""
    plan = latent.get(PLAN_KEY)
    if plan is not None and not isinstance(plan, PruningPlan):
        raise ValueError(f"The latent carries a '{PLAN_KEY}' entry that is not a LIPAR pruning plan "
                         f"({type(plan).__name__}); re-run the Latent Inter-Frame Pruner.")
    return plan


def model_type_name(model: Any) -> str | None:
    """ComfyUI's name for the model's type (its supported-model config class: SD15, SDXL,
    WAN21_T2V, ...), or None outside ComfyUI."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    return type(config).__name__ if config is not None else None


def diffusion_model(model: Any) -> torch.nn.Module:
    """``model.model.diffusion_model`` of a ComfyUI MODEL (ModelPatcher), checked to be a Wan2.1 T2V DiT."""
    inner = getattr(model, "model", None)
    module = getattr(inner, "diffusion_model", None)
    if module is None:
        raise ValueError(
            f"The model input is not a ComfyUI diffusion MODEL (got {type(model).__name__}). Connect the MODEL "
            "output of Load Diffusion Model or Load Self-Forcing Checkpoint (Wan2.1-T2V-1.3B / Self-Forcing).")
    try:
        check_wan_module(module)
    except LiparError as e:
        kind = model_type_name(model)
        what = f"a {kind} model (network {type(module).__name__})" if kind else f"a {type(module).__name__}"
        raise ValueError(f"The connected model is {what}, not a Wan2.1 text-to-video model: {e.reason} Load "
                         "Self-Forcing (a Wan2.1-T2V-1.3B model) with Load Diffusion Model or Load Self-Forcing "
                         "Checkpoint.") from None
    return module


def lipar_options(model: Any) -> dict[str, str] | None:
    """The options the Attention Recovery Patch stored on the model, or None."""
    opts = getattr(model, "model_options", None) or {}
    to = opts.get("transformer_options") or {}
    lo = to.get("lipar")
    return dict(lo) if isinstance(lo, dict) else None


def conditioning_context(positive: Any) -> torch.Tensor:
    """The text embedding ``[B, L, 4096]`` of the first CONDITIONING entry."""
    if not isinstance(positive, (list, tuple)) or len(positive) == 0:
        raise ValueError("The positive input must be a CONDITIONING (from CLIP Text Encode with the umt5-xxl "
                         f"text encoder); got {type(positive).__name__ if positive is not None else 'nothing'}.")
    entry = positive[0]
    tensor = entry[0] if isinstance(entry, (list, tuple)) and len(entry) > 0 else None
    if not isinstance(tensor, torch.Tensor):
        raise ValueError("The positive CONDITIONING has no text embedding tensor; connect CLIP Text Encode "
                         "(Load CLIP with type 'wan').")
    if len(positive) > 1:
        log.warning("positive has %d conditioning entries; the Self-Forcing sampler uses the first.", len(positive))
    return tensor


def compute_dtype(model: Any, module: torch.nn.Module) -> torch.dtype:
    """ComfyUI's compute dtype for the model: its manual-cast dtype or weight dtype; fp8 weights compute in bf16."""
    inner = getattr(model, "model", None)
    dtype = getattr(inner, "manual_cast_dtype", None)
    if dtype is None:
        get = getattr(inner, "get_dtype", None)
        dtype = get() if callable(get) else None
    if dtype is None:
        dtype = next(module.parameters()).dtype
    if dtype not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        dtype = torch.bfloat16
    return dtype


def model_device(model: Any, module: torch.nn.Module) -> torch.device:
    dev = getattr(model, "load_device", None)
    if dev is None:
        dev = next(module.parameters()).device
    return torch.device(dev)


def cuda_graphs_allowed(model: Any) -> bool | None:
    """None (lipar's default: CUDA graphs on CUDA devices) unless ComfyUI loaded the model only
    partly (lowvram): then weights stream in per call, which CUDA graphs cannot capture."""
    inner = getattr(model, "model", None)
    if getattr(inner, "model_lowvram", False):
        return False
    return None
