"""Process setup of one worker of the GPU real-host tier: ComfyUI 0.8 as a library, in-process.

Order matters and is the reason each VRAM mode runs in its own process:

1. ``install_import_rules`` (before anything imports them): ``sys.modules["triton"] = None`` makes
   Triton look uninstalled (``import triton`` and ``triton.*`` raise ModuleNotFoundError,
   ``importlib.util.find_spec`` says None), as on a CUDA machine without Triton (case 5); a
   meta-path finder first in ``sys.meta_path`` serves an inert stand-in module for ``av``: ComfyUI 0.8 imports PyAV
   at import time through ``comfy_api``, the GPU machine has no PyAV, and this tier opens no video
   file. ``av`` is replaced on every machine, so what is verified on CPU is what runs on the GPU.
2. ``comfy.cli_args.args`` fields are set (``--cpu``, ``--lowvram``, ``--reserve-vram`` ...) before
   ``comfy.model_management`` is imported: it reads them once, at import.
3. ``folder_paths`` gets this run's model folders (``add_model_folder_path``) and temp/output/input
   folders; ComfyUI's ``nodes`` module is imported; the pack is loaded by ComfyUI's own
   ``nodes.load_custom_node`` from ``<work>/custom_nodes/comfyui-lipar`` (a link to this checkout),
   exactly as ComfyUI loads custom nodes at start-up. The checkout's root never goes on ``sys.path``:
   its ``nodes/`` package would shadow ComfyUI's ``nodes`` module.
"""
from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_LINK = "comfyui-lipar"


# ---- import-system helpers ------------------------------------------------------------------------

_PACK_ROOT: list[str] = []   # the package name ComfyUI's loader gave the pack (its path, dots replaced)


def pack_lipar(sub: str | None = None):
    """The pack's own ``lipar`` (or ``lipar.<sub>``), as its nodes import it relatively: the package
    ``<pack>.lipar`` that ComfyUI's loader created (no top-level ``lipar`` exists in the process).
    Available once ``setup_comfy`` has loaded the pack."""
    if not _PACK_ROOT:
        raise RuntimeError("pack_lipar() before setup_comfy() loaded the pack")
    return importlib.import_module(f"{_PACK_ROOT[0]}.lipar" + (f".{sub}" if sub else ""))


class _Placeholder:
    """What a stubbed module hands out for any attribute: a class usable in annotations and
    isinstance checks; creating or calling one says the package is missing."""

    def __init__(self, *a, **k):
        raise ImportError(f"{type(self).__module__} is not installed (stubbed by the GPU real-host tier)")


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (_Placeholder,), {"__module__": self.__name__})
        setattr(self, name, cls)
        return cls


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        mod = _StubModule(spec.name)
        mod.__path__ = []          # a package: submodules (av.container ...) are stubbed too
        mod.__lipar_stub__ = True
        return mod

    def exec_module(self, module):
        pass


class _Stubs(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: the stubbed packages (and their submodules) get the stand-in."""

    def __init__(self, stub):
        self.stub = tuple(stub)
        self.used: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.split(".")[0]
        if top in self.stub:
            self.used.add(top)
            return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
        return None


_RULES: _Stubs | None = None


def install_import_rules(hide=(), stub=()) -> None:
    """Before anything imports them: make ``hide`` unimportable exactly as an absent package is
    (``sys.modules[name] = None``: ``import`` raises ModuleNotFoundError, ``importlib.util.find_spec``
    returns None, submodules fail with their parent), and serve ``stub`` as stand-ins."""
    global _RULES
    names = set(hide) | set(stub)
    loaded = [m for m in sys.modules if m.split(".")[0] in names]
    if loaded:
        raise RuntimeError(f"cannot hide or stub {sorted(names)}: already imported ({loaded[:3]})")
    for name in hide:
        sys.modules[name] = None
    _RULES = _Stubs(stub)
    sys.meta_path.insert(0, _RULES)


def stubs_used() -> list[str]:
    return sorted(_RULES.used) if _RULES else []


# ---- ComfyUI in-process ---------------------------------------------------------------------------

class Comfy:
    """Handles to the ComfyUI modules and the pack's node classes, once set up."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def setup_comfy(spec: dict) -> Comfy:
    """Import ComfyUI 0.8 with the VRAM mode of ``spec`` and load the pack as a custom node."""
    comfy_dir = os.path.abspath(spec["comfyui"])
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    overlay = spec.get("overlay")
    if overlay and os.path.isdir(overlay) and overlay not in sys.path:
        # after ComfyUI's own tree: only modules 0.8 lacks resolve there (comfy.* are namespace packages)
        sys.path.append(os.path.abspath(overlay))

    import comfy.options  # noqa: F401  (args parsing stays off: parse_args([]) gives the defaults)
    import comfy.cli_args as cli_args
    args = cli_args.args
    for key, value in (spec.get("comfy_args") or {}).items():
        if not hasattr(args, key):
            raise RuntimeError(f"ComfyUI's args have no field {key!r}")
        setattr(args, key, value)
    if spec["device"] == "cpu":
        args.cpu = True

    import torch
    fraction = spec.get("memory_fraction")
    if fraction:
        torch.cuda.set_per_process_memory_fraction(float(fraction), 0)
    if spec.get("emulate_gpu_gib"):
        emulate_gpu_size(torch, float(spec["emulate_gpu_gib"]))

    import comfy.model_management as mm
    import comfy.utils
    import folder_paths

    work = spec["work"]
    models = os.path.join(work, "models")
    for kind in ("diffusion_models", "loras", "vae"):
        os.makedirs(os.path.join(models, kind), exist_ok=True)
        folder_paths.add_model_folder_path(kind, os.path.join(models, kind), is_default=True)
    for sub, setter in (("output", folder_paths.set_output_directory), ("temp", folder_paths.set_temp_directory),
                        ("input", folder_paths.set_input_directory)):
        os.makedirs(os.path.join(work, sub), exist_ok=True)
        setter(os.path.join(work, sub))

    import nodes as comfy_nodes   # ComfyUI's nodes.py (the checkout's root is not on sys.path)
    if not os.path.abspath(comfy_nodes.__file__).startswith(comfy_dir):
        raise RuntimeError(f"'nodes' resolved to {comfy_nodes.__file__}, not ComfyUI's nodes.py")

    custom = os.path.join(work, "custom_nodes")
    os.makedirs(custom, exist_ok=True)
    link = os.path.join(custom, PACK_LINK)
    pack = os.path.abspath(spec.get("pack") or ROOT)
    if os.path.islink(link) and os.readlink(link) != pack:
        os.unlink(link)
    if not os.path.islink(link):
        os.symlink(pack, link)
    if not asyncio.run(comfy_nodes.load_custom_node(link)):
        raise RuntimeError(f"ComfyUI could not load the pack from {link} (see the log above)")
    mapping = comfy_nodes.NODE_CLASS_MAPPINGS
    sampler_cls = mapping["LIPAR_SelfForcingSampler"]
    pack_pkg = sampler_cls.__module__.rsplit(".", 1)[0]        # <pack>.nodes
    _PACK_ROOT[:] = [pack_pkg.rsplit(".", 1)[0]]
    patch_mod = importlib.import_module(pack_pkg + ".patch")
    lipar = pack_lipar()                                       # the library the pack's nodes import
    for sub in ("clips", "latents", "schedule", "attention", "kernels"):
        pack_lipar(sub)

    return Comfy(torch=torch, args=args, mm=mm, utils=comfy.utils, folder_paths=folder_paths, nodes=comfy_nodes,
                 pruner=mapping["LIPAR_LatentInterFramePruner"], sampler=sampler_cls,
                 restore=mapping["LIPAR_TokenRestore"], default_options=dict(patch_mod.DEFAULT_OPTIONS),
                 vae_encode=mapping.get("LIPAR_WanVAEEncode"), vae_decode=mapping.get("LIPAR_WanVAEDecode"),
                 lipar=lipar, pack_module=pack_pkg, comfy_dir=comfy_dir)


def emulate_gpu_size(torch, gib: float) -> None:
    """Make this process see a GPU of ``gib`` GiB: ``torch.cuda.mem_get_info`` (what ComfyUI sizes
    everything by: total VRAM at import, free memory before loading, VAE batch sizes, and the pack's
    decision to keep its CUDA graphs) reports that total, and as free memory what is left of it next
    to what PyTorch's allocator holds. Together with a memory fraction of the same size (which makes
    the limit real) this is a small card, not a large one with a ``--reserve-vram``: that option is
    only subtracted in ComfyUI's model-loading arithmetic, while its free-memory readings elsewhere
    would still show the whole GPU."""
    cap = int(gib * 2**30)
    real = torch.cuda.mem_get_info

    def mem_get_info(device=None):
        free, _ = real(device)
        held = torch.cuda.memory_reserved(device)
        return max(0, min(free, cap - held)), cap

    mem_get_info.__lipar_emulated_gib__ = gib
    torch.cuda.mem_get_info = mem_get_info
    if hasattr(torch.cuda, "memory") and hasattr(torch.cuda.memory, "mem_get_info"):
        torch.cuda.memory.mem_get_info = mem_get_info


def comfy_version(comfy_dir: str) -> str | None:
    path = os.path.join(comfy_dir, "comfyui_version.py")
    try:
        text = open(path).read()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return None
