"""Whole clips between host memory and a GPU: pieces through two pinned buffers.

A plain ``.to("cuda")`` of pageable host memory, or ``.cpu()`` into it, runs through the CUDA driver's small
staging buffer on one host thread (an 832x480x81 IMAGE, 388 MB: ~50 ms up and ~30 ms down on the H200's
host, even into pre-faulted memory). Here each piece of at most ``STAGING_BYTES`` goes through one of two
pinned buffers: all of PyTorch's host threads copy into (or out of) one while the GPU reads (or writes) the
other without blocking. Measured in the whole graph: 44-54 -> 11-18 ms up, 27-31 -> 17-19 ms down
(benchmarks/NOTES.md, session 7).

    for start, piece in to_device_in_pieces(frames, 1, torch.device("cuda")):   # frames [b, T, H, W, C] on the host
        x[:, :, start:start + piece.shape[1]] = piece.movedim(-1, 1)             # piece [b, f, H, W, C] on the GPU
    to_host_in_pieces(((t, y[:, t:t + 6]) for t in range(0, T, 6)), dest, 1)    # y on the GPU -> dest on the host

Tests: tests/test_transfer.py (both directions, a lagging GPU, strided destinations).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

STAGING_BYTES = 32 << 20     # each of the two pinned buffers host<->GPU copies of whole clips go through


def piece_length(x: torch.Tensor, dim: int) -> int:
    """How many indices of ``x`` along ``dim`` fit in ``STAGING_BYTES`` (at least one)."""
    per_index = x.numel() // max(1, x.shape[dim]) * x.element_size()
    return max(1, min(x.shape[dim], STAGING_BYTES // max(1, per_index)))


def _staging(nbytes: int) -> torch.Tensor:
    """A pinned byte buffer from PyTorch's host cache (freed there only once the copies that used it ran)."""
    return torch.empty((nbytes,), dtype=torch.uint8, pin_memory=True)


def _view(raw: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return raw[:like.numel() * like.element_size()].view(like.dtype).view(like.shape)


def to_device_in_pieces(x: torch.Tensor, dim: int, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, x.narrow(dim, start, n).to(device))`` for consecutive pieces of ``x`` along ``dim`` (each at most
    ``STAGING_BYTES``). From pageable host memory to a CUDA device through the two pinned buffers; each piece
    is a new device tensor, ready for work queued after it on the current stream. Elsewhere (CPU, pinned or
    GPU sources) plain ``.to(device)``."""
    length, step = x.shape[dim], piece_length(x, dim)
    staged_path = device.type == "cuda" and x.device.type == "cpu" and not x.is_pinned()
    buffers: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []
    for k, start in enumerate(range(0, length, step)):
        piece = x.narrow(dim, start, min(step, length - start))
        if not staged_path:
            yield start, piece.to(device)
            continue
        if len(buffers) < 2:
            buffers.append((_staging(piece.numel() * piece.element_size()), None))
        raw, used = buffers[k % 2]
        if used is not None:
            used.synchronize()                       # the GPU has read this buffer's previous piece
        staged = _view(raw, piece)
        staged.copy_(piece)
        out = torch.empty(piece.shape, dtype=piece.dtype, device=device)
        out.copy_(staged, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(out.device))         # the stream that copy ran on
        buffers[k % 2] = (raw, done)
        yield start, out


def to_host_in_pieces(pieces: Iterable[tuple[int, torch.Tensor]], dest: torch.Tensor, dim: int) -> None:
    """Copy ``pieces`` ``(start, piece)`` into ``dest`` at ``dest.narrow(dim, start, n)``; returns when all are
    there. GPU pieces into pageable host memory go through the two pinned buffers (make them at most
    ``STAGING_BYTES``, see ``piece_length``); anything else is a plain ``copy_``."""
    pending: list[tuple[int, torch.Tensor, torch.cuda.Event]] = []
    buffers: list[torch.Tensor] = []

    def drain() -> None:
        start, staged, done = pending.pop(0)
        done.synchronize()
        dest.narrow(dim, start, staged.shape[dim]).copy_(staged)

    for k, (start, piece) in enumerate(pieces):
        if not piece.is_cuda or dest.device.type != "cpu" or dest.is_pinned():
            dest.narrow(dim, start, piece.shape[dim]).copy_(piece)
            continue
        nbytes = piece.numel() * piece.element_size()
        if len(pending) == 2:
            drain()                                  # frees the slot this piece goes to
        slot = k % 2
        if len(buffers) <= slot:
            buffers.append(_staging(nbytes))
        elif buffers[slot].numel() < nbytes:
            buffers[slot] = _staging(nbytes)
        staged = _view(buffers[slot], piece)
        staged.copy_(piece, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(piece.device))       # the stream that copy ran on
        pending.append((start, staged, done))
    while pending:
        drain()
