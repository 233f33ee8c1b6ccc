"""Import the pack's own ``lipar`` library, inside ComfyUI and out.

ComfyUI imports this pack as a package named after its folder path, so the pack
directory is not on ``sys.path`` and ``import lipar`` may fail there. ``lipar`` uses
absolute imports internally (``from lipar.config import ...``), so it must live in
``sys.modules`` under the name ``lipar``. When a plain import does not find it, we load
the pack's ``lipar/`` by file location under that name, without adding the pack
directory to ``sys.path`` (that would expose the pack's top-level ``nodes/``, ``tests/``
... folders as top-level modules and could shadow ComfyUI's own ``nodes`` module).
"""

from __future__ import annotations

import importlib.util
import os
import sys

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_lipar():
    try:
        import lipar  # noqa: PLC0415  (the repo root is on sys.path: tests, CLI)
        return lipar
    except ModuleNotFoundError as e:
        if e.name != "lipar":
            raise
    pkg_dir = os.path.join(PACK_DIR, "lipar")
    init = os.path.join(pkg_dir, "__init__.py")
    if not os.path.isfile(init):
        raise ImportError(f"LIPAR: the pack's library folder {pkg_dir} is missing; reinstall the node pack.")
    spec = importlib.util.spec_from_file_location("lipar", init, submodule_search_locations=[pkg_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules["lipar"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("lipar", None)
        raise
    return module


lipar = _load_lipar()

# Submodules the nodes use (imported here so every node module shares one lipar).
import lipar.causal  # noqa: E402
import lipar.chunks  # noqa: E402
import lipar.graphs  # noqa: E402
import lipar.latents  # noqa: E402
import lipar.loading  # noqa: E402
import lipar.preview  # noqa: E402
import lipar.recovery  # noqa: E402
import lipar.sampler  # noqa: E402
import lipar.schedule  # noqa: E402
import lipar.validate  # noqa: E402

LiparError = lipar.LiparError

__all__ = ["lipar", "LiparError", "PACK_DIR"]
