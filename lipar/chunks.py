"""How a video is cut into causal chunks, and which earlier frames a chunk's attention sees.

Chunks hold ``chunk_frames`` latent frames (Self-Forcing: 3); the last one may be shorter
(a 17-latent-frame video is chunks of 3, 3, 3, 3, 3, 2), and a video shorter than one chunk
is one short chunk. Chunk 0 is always whole when the video has enough frames.

``KVWindow`` bounds the KV cache as Self-Forcing's ``local_attn_size`` / ``sink_size`` do
(``CausalInferencePipeline``): the cache holds at most ``frames`` latent frames; once it is
full, each new chunk evicts the oldest frames except the first ``sink`` ones (the attention
sink), which stay for the whole video. RoPE frame indices stay absolute. A chunk of ``n``
frames starting at frame ``f0`` therefore attends to

    all earlier frames                         when f0 + n <= frames
    frames [0, sink) and [f0 - r, f0), r = frames - sink - n   otherwise

plus itself. Example, frames 21, sink 3, chunks of 3: chunk 7 (frames 21-23) sees frames
0-2 and 6-20; chunk 8 sees 0-2 and 9-23.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LiparError


def chunk_spans(frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """(first frame, frame count) of every chunk of a ``frames``-frame latent."""
    return [(s, min(chunk_frames, frames - s)) for s in range(0, frames, chunk_frames)]


@dataclass(frozen=True)
class KVWindow:
    """A rolling KV cache of ``frames`` latent frames whose first ``sink`` frames never leave.

    frames 0 means unbounded (every earlier frame stays, as for a video that fits the window).
    Self-Forcing was trained on 21 latent frames (81 video frames); 21 with a sink of 3 (the
    first chunk) keeps every run of up to 21 latent frames exactly as without a window.
    """

    frames: int = 21
    sink: int = 3

    def validate(self, chunk_frames: int) -> "KVWindow":
        if self.frames < 0 or self.sink < 0:
            raise LiparError(f"The KV window ({self.frames}) and sink ({self.sink}) must not be negative.")
        if self.frames and self.frames < self.sink + chunk_frames:
            raise LiparError(
                f"A KV window of {self.frames} latent frames cannot hold the {self.sink}-frame sink plus a "
                f"{chunk_frames}-frame chunk; use a window of at least {self.sink + chunk_frames} (Self-Forcing "
                "is trained on 21), a smaller sink, or window 0 (no limit).")
        return self

    def bounded(self) -> bool:
        return self.frames > 0

    def evicts(self, frames: int, chunk_frames: int) -> bool:
        """True when some chunk of a ``frames``-frame latent does not see every earlier frame."""
        return self.bounded() and frames > self.frames

    def visible(self, start: int, count: int) -> list[tuple[int, int]]:
        """Earlier frames a chunk of ``count`` frames starting at ``start`` attends to, as
        half-open ranges [a, b)."""
        if not self.bounded() or start + count <= self.frames:
            return [(0, start)] if start else []
        recent = start - (self.frames - self.sink - count)
        if recent <= self.sink:
            return [(0, start)]
        return ([(0, self.sink)] if self.sink else []) + [(recent, start)]

    def frame_visible(self, frame, start: int, count: int):
        """Elementwise: is ``frame`` (an int tensor of earlier frame indices) visible to the chunk?"""
        vis = frame < 0          # all False, same shape/device
        for a, b in self.visible(start, count):
            vis = vis | ((frame >= a) & (frame < b))
        return vis


UNBOUNDED = KVWindow(0, 0)
