"""Token Restore: fills the pruned positions of a latent that still carries a pruning plan."""

from __future__ import annotations

import torch

from ..lipar.restore import restore_latent
from .common import CATEGORY, PLAN_KEY, latent_plan, latent_samples, user_errors


class TokenRestore:
    DESCRIPTION = (
        "LIPAR token restore (paper 2.4.3): every pruned latent patch takes the denoised patch at the same place in "
        "the latest kept frame before it. The Self-Forcing Causal Sampler now does this itself, so its output goes "
        "straight to VAE Decode; this node passes such a complete latent through unchanged and is kept so that "
        "saved workflows keep working.")
    CATEGORY = CATEGORY
    FUNCTION = "restore"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The full latent, ready for VAE Decode (any pruning plan is removed).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"latent": ("LATENT", {"tooltip": "The output of the Self-Forcing Causal Sampler."})}}

    def restore(self, latent):
        samples = latent_samples(latent)
        plan = latent_plan(latent)
        out = {k: v for k, v in latent.items() if k != PLAN_KEY}
        if plan is not None:
            with user_errors(), torch.no_grad():
                out["samples"] = restore_latent(samples, plan)
        return (out,)
