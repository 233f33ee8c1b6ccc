"""LIPAR's ComfyUI nodes (thin glue over the host-independent ``lipar`` library).

Node ids, input names and output names are a public API saved in users' workflows:
never rename them. ComfyUI modules are imported lazily inside functions, so this
package imports (and its nodes run) outside ComfyUI too.
"""

from .loader import SelfForcingCheckpointLoader
from .patch import AttentionRecoveryPatch
from .pruner import LatentInterFramePruner
from .restore import TokenRestore
from .sampler import SelfForcingSampler
from .vae import WanVAEDecode, WanVAEEncode

NODE_CLASS_MAPPINGS = {
    "LIPAR_LatentInterFramePruner": LatentInterFramePruner,
    "LIPAR_AttentionRecoveryPatch": AttentionRecoveryPatch,
    "LIPAR_SelfForcingSampler": SelfForcingSampler,
    "LIPAR_TokenRestore": TokenRestore,
    "LIPAR_SelfForcingCheckpointLoader": SelfForcingCheckpointLoader,
    "LIPAR_WanVAEEncode": WanVAEEncode,
    "LIPAR_WanVAEDecode": WanVAEDecode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LIPAR_LatentInterFramePruner": "Latent Inter-Frame Pruner",
    "LIPAR_AttentionRecoveryPatch": "Attention Recovery Patch",
    "LIPAR_SelfForcingSampler": "Self-Forcing Causal Sampler",
    "LIPAR_TokenRestore": "Token Restore",
    "LIPAR_SelfForcingCheckpointLoader": "Load Self-Forcing Checkpoint",
    "LIPAR_WanVAEEncode": "Wan VAE Encode (fast)",
    "LIPAR_WanVAEDecode": "Wan VAE Decode (fast)",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
