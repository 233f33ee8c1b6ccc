"""Attention Recovery Patch: stores LIPAR's attention options on a clone of the model."""

from __future__ import annotations

from ..lipar.attention import BACKENDS
from ..lipar.recovery import RECOVERY_FORMS, RECOVERY_MODES, check_recovery
from ..lipar.sampler import FP8_MODES, SamplerConfig
from .common import CATEGORY, diffusion_model, user_errors

_DEFAULTS = SamplerConfig()
# What the sampler uses when no patch is connected: the library's default recovery, so a
# forgotten (or bypassed) patch never silently gives the naive-pruning ablation.
DEFAULT_OPTIONS = {"recovery": _DEFAULTS.recovery, "recovery_form": _DEFAULTS.recovery_form,
                   "attention_backend": _DEFAULTS.backend, "fp8_compute": _DEFAULTS.fp8}


class AttentionRecoveryPatch:
    DESCRIPTION = (
        "Sets how the Self-Forcing Causal Sampler corrects self-attention for pruned tokens (LIPAR attention "
        "recovery) and which attention kernel it uses. Without this patch the sampler uses the defaults "
        "(noise_aware, compressed, auto). Returns a patched copy of "
        "the model; the input model is not changed.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with LIPAR attention-recovery options; connect it to the Self-Forcing Causal Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A Wan2.1-T2V / Self-Forcing diffusion model."}),
                "recovery": (list(RECOVERY_MODES), {"default": _DEFAULTS.recovery, "tooltip":
                    "noise_aware (default): pruned tokens borrow the clean key/value of their location from the KV "
                    "cache, re-rotated to their own position (paper 2.4.1). m_degree: a kept token's key counts once "
                    "per pruned token it stands for (Eq. 4). none: naive pruning (ablation)."}),
                "recovery_form": (list(RECOVERY_FORMS), {"default": _DEFAULTS.recovery_form, "tooltip":
                    "compressed (default): no duplicates; each stand-in key gets a log-multiplicity score bias "
                    "(shorter keys, less memory, faster). exact: duplicated keys/values are materialised at their "
                    "own RoPE positions (exact for identical tokens; more attention work)."}),
                "attention_backend": (list(BACKENDS), {"default": _DEFAULTS.backend, "tooltip":
                    "Attention kernel: auto (FlashAttention-4 on Hopper GPUs where it is installed, else cuDNN on "
                    "CUDA, PyTorch SDPA elsewhere), sdpa, cudnn (CUDA only), flash_attn (FlashAttention-4 or "
                    "flash-attn 2.x, whichever is installed)."}),
            },
            "optional": {
                "fp8_compute": (list(FP8_MODES), {"default": _DEFAULTS.fp8, "advanced": True, "tooltip":
                    "Linear layers as fp8 matrix products (GPUs with fp8 tensor cores: Ada, Hopper or newer). auto "
                    "(default): when the model's weights are fp8 (weight_dtype fp8_e4m3fn / _fast, scaled-fp8 "
                    "files). on: also for bf16/fp16 weights (quantised per output channel each run; faster, "
                    "slightly less exact). off: never."}),
            },
        }

    def patch(self, model, recovery, recovery_form, attention_backend, fp8_compute=_DEFAULTS.fp8):
        diffusion_model(model)   # clear error for a non-Wan model, before anything else
        with user_errors():
            check_recovery(recovery, recovery_form)
        if attention_backend not in BACKENDS:
            raise ValueError(f"Unknown attention backend {attention_backend!r}; choose one of {list(BACKENDS)}.")
        if fp8_compute not in FP8_MODES:
            raise ValueError(f"Unknown fp8_compute {fp8_compute!r}; choose one of {list(FP8_MODES)}.")
        m = model.clone()
        options = dict(getattr(m, "model_options", None) or {})
        transformer_options = dict(options.get("transformer_options") or {})
        transformer_options["lipar"] = {"recovery": recovery, "recovery_form": recovery_form,
                                        "attention_backend": attention_backend, "fp8_compute": fp8_compute}
        options["transformer_options"] = transformer_options
        m.model_options = options
        return (m,)
