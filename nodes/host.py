"""ComfyUI services the nodes use, imported lazily.

Inside ComfyUI every helper uses the host (model loading, progress bar, interrupts,
temp directory, intermediate device). Outside ComfyUI (host-free tests, scripts) the
``comfy`` modules are not importable and the helpers fall back to doing nothing, or
to the plain equivalent: models are used where they are, previews go to the system
temp directory.
"""

from __future__ import annotations

import importlib
import tempfile
from typing import Any

import torch


def _optional(name: str):
    """The host module ``name``, or None outside ComfyUI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def model_management():
    return _optional("comfy.model_management")


def comfy_utils():
    return _optional("comfy.utils")


def folder_paths():
    return _optional("folder_paths")


def temp_directory() -> str:
    fp = folder_paths()
    if fp is not None and hasattr(fp, "get_temp_directory"):
        return fp.get_temp_directory()
    return tempfile.gettempdir()


def load_model(model: Any, memory_required: int = 0) -> None:
    """Bring a ModelPatcher onto its load device (ComfyUI's model management)."""
    mm = model_management()
    if mm is not None and hasattr(mm, "load_models_gpu"):
        mm.load_models_gpu([model], memory_required=int(memory_required))


def intermediate_device(default: torch.device | str = "cpu") -> torch.device:
    """Where ComfyUI keeps tensors between nodes (CPU unless --gpu-only)."""
    mm = model_management()
    if mm is not None and hasattr(mm, "intermediate_device"):
        return torch.device(mm.intermediate_device())
    return torch.device(default)


def throw_if_interrupted() -> None:
    mm = model_management()
    if mm is not None and hasattr(mm, "throw_exception_if_processing_interrupted"):
        mm.throw_exception_if_processing_interrupted()


class Progress:
    """A ComfyUI progress bar (``comfy.utils.ProgressBar``), or nothing outside ComfyUI."""

    def __init__(self, total: int):
        utils = comfy_utils()
        self.total = max(1, int(total))
        self.bar = utils.ProgressBar(self.total) if utils is not None and hasattr(utils, "ProgressBar") else None

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = max(1, int(total))
        if self.bar is not None:
            self.bar.update_absolute(int(done), self.total)
