"""LIPAR for ComfyUI: latent inter-frame pruning with attention recovery for Self-Forcing (Wan2.1).

ComfyUI entry point only. ComfyUI imports this folder as a package, so the nodes are
imported relatively (a plain ``import nodes`` would be ComfyUI's own ``nodes.py``).
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
