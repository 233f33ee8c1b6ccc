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
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ..lipar.transfer import piece_length, to_host_in_pieces


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


def output_tensor(shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """A tensor to copy a node's output into, on ``device`` (default: ComfyUI's intermediate device).

    On the CPU it is ``torch.zeros``: PyTorch's threads touch its fresh pages in parallel. A GPU-to-host
    copy into ``torch.empty`` memory faults them in one at a time on the copying thread, which made
    the copy the slowest part of a node (a 388 MB IMAGE, 832x480x81: ~0.15 s of page faults on one
    thread, ~8x less spread over 16)."""
    device = intermediate_device() if device is None else torch.device(device)
    if device.type == "cpu":
        return torch.zeros(shape, dtype=dtype)
    return torch.empty(shape, dtype=dtype, device=device)


_ALLOCATOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lipar-host")


def output_tensor_later(shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> Future:
    """``output_tensor(shape, dtype, device)`` made on a worker thread (PyTorch's threads fill its pages while
    the caller's GPU work runs); ``.result()`` gives the tensor."""
    device = intermediate_device() if device is None else torch.device(device)
    return _ALLOCATOR.submit(output_tensor, shape, dtype, device)


def to_intermediate(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x.to(intermediate_device(), dtype)``, copied into an ``output_tensor`` (see there) when it moves; from a
    GPU to the host in pieces along the first axis through pinned buffers (``to_host_in_pieces``)."""
    device, dtype = intermediate_device(), dtype or x.dtype
    if x.device == device:
        return x.to(dtype)
    dest = output_tensor(tuple(x.shape), dtype, device)
    if x.ndim == 0:
        return dest.copy_(x)
    x = x.to(dtype)                      # on its own device
    step = piece_length(x, 0)
    to_host_in_pieces(((s, x[s:s + step]) for s in range(0, x.shape[0], step)), dest, 0)
    return dest


def compute_device() -> torch.device:
    """ComfyUI's main compute device (its GPU), or the CPU outside ComfyUI."""
    mm = model_management()
    if mm is not None and hasattr(mm, "get_torch_device"):
        return torch.device(mm.get_torch_device())
    return torch.device("cpu")


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

    def update(self, done: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = max(1, int(total))
        if self.bar is not None:
            self.bar.update_absolute(int(done), self.total, preview)


def latent_previewer(model: Any):
    """ComfyUI's latent previewer for the model's latent format, as its KSampler uses it (the
    tiny video VAE from models/vae_approx with --preview-method taesd, its latent-to-RGB
    factors otherwise), or None (no ComfyUI, or previews turned off)."""
    preview = _optional("latent_preview")
    latent_format = getattr(getattr(model, "model", None), "latent_format", None)
    if preview is None or latent_format is None:
        return None
    return preview.get_previewer(getattr(model, "load_device", "cpu"), latent_format)


class ChunkPreviews:
    """Latent previews of each finished chunk (its last frame), sent with the progress bar.

    Nothing here waits for the GPU: a finished chunk's frame is copied to (pinned) host
    memory without blocking and turned into a preview at a later pass, once the copy is done."""

    def __init__(self, model: Any):
        self.previewer = latent_previewer(model)
        self.pending: tuple[torch.Tensor, Any] | None = None

    def chunk_done(self, sample: int, chunk: int, x0: torch.Tensor) -> None:
        """lipar's ``on_chunk``: x0 [1, C, F, H, W] in the model's latent space, on its device."""
        if self.previewer is None or sample != 0:
            return
        frame = x0[:, :, -1:]
        if frame.is_cuda:
            host = torch.empty(frame.shape, dtype=frame.dtype, pin_memory=True)
            host.copy_(frame, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self.pending = (host, done)
        else:
            self.pending = (frame.clone(), None)

    def ready(self, wait: bool = False) -> Any:
        """The preview of the latest finished chunk if its copy has arrived (``wait``: once it has)."""
        if self.pending is None:
            return None
        frame, done = self.pending
        if done is not None and not (wait or done.query()):
            return None
        if done is not None and wait:
            done.synchronize()
        self.pending = None
        return self.previewer.decode_latent_to_preview_image("JPEG", frame)


def keep_graphs(model: Any, device: torch.device, run_bytes: int) -> bool:
    """Whether the sampler may keep its CUDA graphs (static buffers and memory pool) for the
    next run of this model. ComfyUI cannot free that memory itself, so it is kept only while
    ComfyUI has the model fully loaded in a normal or high VRAM state and the GPU could still
    hold another run's working memory twice over; otherwise it goes back now, before the next
    node (VAE Decode) asks for room. Outside ComfyUI: kept."""
    mm = model_management()
    if mm is None or device.type != "cuda":
        return True
    if getattr(getattr(model, "model", None), "model_lowvram", False):
        return False
    state = getattr(mm, "vram_state", None)
    states = getattr(mm, "VRAMState", None)
    if states is not None and state not in (states.HIGH_VRAM, states.NORMAL_VRAM):
        return False
    free = mm.get_free_memory(device) if hasattr(mm, "get_free_memory") else 0
    reserved = mm.extra_reserved_memory() if hasattr(mm, "extra_reserved_memory") else 0   # --reserve-vram
    return free - reserved >= 2 * run_bytes
