"""Load Self-Forcing Checkpoint: reads the official ``self_forcing_dmd.pt`` (and plain Wan files) into a MODEL.

ComfyUI's own loaders cannot read the official file: its weights sit in a nested
``generator_ema`` dict with a ``model.`` prefix. lipar reads and checks it and returns
the prefix-less Wan names ComfyUI's model detection expects.
"""

from __future__ import annotations

import torch

from . import host
from ..lipar.loading import load_state_dict
from .common import CATEGORY, user_errors

WEIGHT_DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def prepare_state_dict(path: str, weight_dtype: str = "default"):
    """Read a checkpoint into ``(state_dict, model_options, config)`` for ComfyUI's
    ``load_diffusion_model_state_dict``. Host-free."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"Unknown weight dtype {weight_dtype!r}; choose one of {list(WEIGHT_DTYPES)}.")
    with user_errors():
        sd, cfg = load_state_dict(path)
    dtype = WEIGHT_DTYPES[weight_dtype]
    model_options = {}
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
        model_options["dtype"] = dtype
    return sd, model_options, cfg


class SelfForcingCheckpointLoader:
    DESCRIPTION = (
        "Loads a Self-Forcing checkpoint as a MODEL: the official self_forcing_dmd.pt (generator_ema weights) or "
        "any Wan2.1-T2V diffusion-model file, from the diffusion_models folder.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The Self-Forcing (Wan2.1-T2V-1.3B) diffusion model.",)

    @classmethod
    def INPUT_TYPES(cls):
        fp = host.folder_paths()
        names = fp.get_filename_list("diffusion_models") if fp is not None else []
        return {
            "required": {
                "ckpt_name": (names, {"tooltip": "A file in models/diffusion_models: self_forcing_dmd.pt (official "
                                                 "Self-Forcing release) or a Wan2.1-T2V .safetensors."}),
                "weight_dtype": (list(WEIGHT_DTYPES), {"default": "default", "tooltip":
                    "Weight dtype: default lets ComfyUI choose for your device; bf16/fp16/fp32 convert the weights."}),
            },
        }

    def load(self, ckpt_name, weight_dtype):
        fp = host.folder_paths()
        try:
            import comfy.sd  # noqa: PLC0415
        except ImportError:
            raise RuntimeError("Load Self-Forcing Checkpoint runs inside ComfyUI only.") from None
        path = fp.get_full_path_or_raise("diffusion_models", ckpt_name)
        sd, model_options, cfg = prepare_state_dict(path, weight_dtype)
        model = comfy.sd.load_diffusion_model_state_dict(sd, model_options=model_options)
        if model is None:
            raise ValueError(f"ComfyUI did not recognise {ckpt_name} as a Wan2.1 model (config {cfg}) after "
                             "conversion; please report this with the file's origin.")
        return (model,)
