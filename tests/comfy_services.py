"""Stand-ins for the ComfyUI services the nodes use (``comfy.model_management``, ``comfy.utils.ProgressBar``),
put into ``sys.modules`` for one test: what the nodes ask of them is recorded."""
from __future__ import annotations

import sys
import types


class Interrupted(Exception):
    """What the stand-in interrupt check raises (ComfyUI raises its own InterruptProcessingException)."""


def install(monkeypatch, **model_management) -> dict:
    """Install the stand-ins; returns the record ``{"load": [(models, memory_required, force_full_load)],
    "progress": [(value, total)], "interrupt": checks so far}``. Set ``record["stop_at"] = n`` to make the
    n-th interrupt check raise ``Interrupted``. ``model_management``: more attributes of that module."""
    calls = {"load": [], "progress": [], "interrupt": 0}

    class ProgressBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls["progress"].append((value, total))

    def interrupt():
        calls["interrupt"] += 1
        if calls.get("stop_at") == calls["interrupt"]:
            raise Interrupted()

    mm = types.ModuleType("comfy.model_management")
    mm.load_models_gpu = lambda models, memory_required=0, force_full_load=False: calls["load"].append(
        (models, memory_required, force_full_load))
    mm.throw_exception_if_processing_interrupted = interrupt
    for name, value in model_management.items():
        setattr(mm, name, value)
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = mm, utils
    for name, mod in (("comfy", comfy), ("comfy.model_management", mm), ("comfy.utils", utils)):
        monkeypatch.setitem(sys.modules, name, mod)
    return calls
