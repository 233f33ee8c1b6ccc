"""LIPAR for ComfyUI: latent inter-frame pruning with attention recovery for Self-Forcing (Wan2.1).

ComfyUI entry point only. ComfyUI imports this folder as a package, so the nodes are
imported relatively (a plain ``import nodes`` would be ComfyUI's own ``nodes.py``).
"""

WEB_DIRECTORY = "./web"

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    # Imported as a plain module, not as the pack's package (pytest does this when the
    # checkout's folder name is not a Python identifier): nothing to register.
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
