"""Latent inter-frame pruning plans (paper Eq. 1, 5-6).

A plan says, for every latent token (a 16x1x2x2 patch of a Wan latent), whether the
transformer computes it (kept) or skips it (pruned), and for each pruned token which
kept token stands in for it:

* ``source_frame``: the latest kept frame before ``t`` at the same (y, x). Token restore
  copies the denoised source, and ``m_degree`` recovery duplicates its key.
* ``anchor_frame``: the latest kept frame at (y, x) in an *earlier chunk*, whose clean
  key/value the KV cache holds. ``noise_aware`` recovery duplicates that clean entry.

The paper's Eq. 6 writes the anchor frame as ``t* = t-1 if t = 0 (mod 3) else
3*floor(t/3)``; its indexing is ambiguous (for t = 3c+1 it names a frame of the *same*
chunk, whose clean key the cache does not hold yet). We implement the rule the method
needs: the anchor is the most recent kept patch at the same location from an earlier
chunk. A token is pruned only when such an anchor exists and both distances hold:

    mean|P_t - P_{t-1}| < threshold        (Eq. 1, L1 per element)
    mean|P_t - P_anchor| < anchor_threshold (Eq. 5)

Consequences: frame 0 is never pruned, and neither is any token of chunk 0. With a bounded
KV window (``lipar.chunks.KVWindow``) the anchor must also still be in the window of the
token's chunk (it is in the cache only then); otherwise the token is kept and becomes the
anchor of the frames after it.

A plan is tied to the latent it was made for by a fingerprint (per-frame statistics of the
normalised latent, ``latent_fingerprint``): a plan made for another clip, a trimmed and
re-padded latent or the sum of two latents is refused where it is used, not applied.

Shapes: latent ``[B, C, T, H, W]``; token grid ``[B, T, H/2, W/2]``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .chunks import UNBOUNDED, KVWindow, chunk_spans
from .errors import LiparError
from .validate import check_latent

PLAN_FORMAT = 2          # 2: with the latent's fingerprint; format 1 files still load


@dataclass(frozen=True)
class PlanConfig:
    """Options of the pruner. Defaults: the paper's thresholds; cleanup chosen by measurement
    (benchmarks/NOTES.md, "Mask cleanup"): an opening of radius 1 removed the worst copy
    errors of a camera pan (0.149 -> 0.046, the jitter floor) while keeping the most
    pruning; trimming outliers made edges worse; smoothing and dilation also reached the
    floor but pruned 4-10 points less."""

    threshold: float = 0.15          # Eq. 1: mean |P_t - P_{t-1}| below this -> candidate to prune
    anchor_threshold: float = 0.3    # Eq. 5: mean |P_t - P_anchor| below this too -> pruned
    chunk_frames: int = 3            # latent frames per causal chunk (Self-Forcing: 3)
    trim_outliers: float = 0.0       # fraction of the largest per-element differences ignored (0 = plain mean)
    smooth: int = 1                  # box filter (odd size) over the difference maps; 1 = off
    open_pruned: int = 1             # radius of a morphological opening of the pruned mask (drops pruned specks)
    dilate_kept: int = 0             # radius by which kept regions grow (a margin around moving edges)

    def validate(self) -> "PlanConfig":
        for name in ("threshold", "anchor_threshold"):
            v = getattr(self, name)
            if not (0.0 <= v <= 10.0) or v != v:
                raise LiparError(f"{name} must be within [0, 10] (latent L1 per element); got {v}. "
                                 "The paper uses threshold 0.15 and anchor_threshold 0.3.")
        if not (1 <= self.chunk_frames <= 64):
            raise LiparError(f"chunk_frames must be within [1, 64]; got {self.chunk_frames}. Self-Forcing uses 3.")
        if not (0.0 <= self.trim_outliers < 1.0):
            raise LiparError(f"trim_outliers must be within [0, 1); got {self.trim_outliers}.")
        if self.smooth < 1 or self.smooth % 2 == 0 or self.smooth > 15:
            raise LiparError(f"smooth must be an odd filter size within 1..15 (1 = off); got {self.smooth}.")
        for name in ("open_pruned", "dilate_kept"):
            v = getattr(self, name)
            if not (0 <= v <= 8):
                raise LiparError(f"{name} must be a radius within 0..8 (0 = off); got {v}.")
        return self


@dataclass
class PruningPlan:
    """Which tokens the transformer computes, and who stands in for the others.

    keep:         bool  [B, T, Hp, Wp]
    source_frame: int64 [B, T, Hp, Wp]  frame of the stand-in (== t where kept)
    anchor_frame: int64 [B, T, Hp, Wp]  latest kept frame of an earlier chunk, -1 if none
    """

    keep: torch.Tensor
    source_frame: torch.Tensor
    anchor_frame: torch.Tensor
    latent_shape: tuple[int, ...]
    config: PlanConfig = field(default_factory=PlanConfig)
    fingerprint: torch.Tensor | None = None   # float64 [B, T, 3] of the latent it was made for (CPU)

    # ---- shape facts -------------------------------------------------------------
    @property
    def batch(self) -> int:
        return self.keep.shape[0]

    @property
    def frames(self) -> int:
        return self.keep.shape[1]

    @property
    def tokens_per_frame(self) -> int:
        return self.keep.shape[2] * self.keep.shape[3]

    @property
    def tokens_total(self) -> int:
        return self.keep[0].numel()

    def pixel_mask(self) -> torch.Tensor:
        """Keep mask at latent-pixel resolution: bool [B, 1, T, H, W] (broadcasts over channels)."""
        return self.keep.repeat_interleave(2, 2).repeat_interleave(2, 3).unsqueeze(1)

    # ---- statistics --------------------------------------------------------------
    def prune_ratio(self) -> float:
        """Fraction of all tokens pruned (mean over the batch)."""
        return 1.0 - self.keep.float().mean().item()

    def prune_ratio_per_frame(self) -> list[float]:
        """Fraction pruned in each latent frame (mean over the batch), T values."""
        return (1.0 - self.keep.float().mean(dim=(0, 2, 3))).tolist()

    def kept_per_chunk(self) -> list[list[int]]:
        """Kept tokens per chunk, per sample: B lists of one count per chunk (``chunk_spans``)."""
        counts = self.keep.flatten(2).sum(-1)                                  # [B, T]
        spans = chunk_spans(self.frames, self.config.chunk_frames)
        return torch.stack([counts[:, a:a + n].sum(1) for a, n in spans], 1).tolist()

    def pruned_anything_possible(self) -> bool:
        """False when the latent fits in chunk 0, whose tokens are never pruned (no anchor)."""
        return self.frames > self.config.chunk_frames

    def stats(self) -> dict[str, Any]:
        return {
            "prune_ratio": round(self.prune_ratio(), 6),
            "prune_ratio_per_frame": [round(v, 6) for v in self.prune_ratio_per_frame()],
            "tokens_total": self.tokens_total,
            "tokens_kept": int(self.keep[0].sum().item()) if self.batch == 1 else [int(v) for v in self.keep.flatten(1).sum(1).tolist()],
            "kept_per_chunk": self.kept_per_chunk(),
            "chunk_frames": self.config.chunk_frames,
        }

    # ---- checks ------------------------------------------------------------------
    def check_fits(self, latent_shape: tuple[int, ...], chunk_frames: int | None = None) -> None:
        """Raise a LiparError unless this plan was made for a latent of this shape/chunking."""
        if tuple(latent_shape) != tuple(self.latent_shape):
            raise LiparError(
                f"The pruning plan was made for a latent of shape {list(self.latent_shape)}, but the latent is "
                f"{list(latent_shape)}. Re-run the Latent Inter-Frame Pruner on this latent.")
        if chunk_frames is not None and chunk_frames != self.config.chunk_frames:
            raise LiparError(
                f"The pruning plan was made for {self.config.chunk_frames}-frame chunks but the sampler uses "
                f"{chunk_frames}. Set the same chunk frames on the pruner and the sampler.")

    def check_latent(self, latent: torch.Tensor, chunk_frames: int | None = None) -> None:
        """Raise a LiparError unless this plan is a valid plan made for exactly this (normalised)
        latent: its shape and chunking, its fingerprint, and the plan's own invariants (a
        hand-edited plan is refused here, not deep inside sampling)."""
        self.check_fits(tuple(latent.shape), chunk_frames)
        self.check_consistent()
        if self.fingerprint is None:
            return
        seen = latent_fingerprint(latent)
        if not torch.allclose(seen, self.fingerprint, rtol=1e-4, atol=1e-5):
            frames = (~torch.isclose(seen, self.fingerprint, rtol=1e-4, atol=1e-5)).any(-1).any(0)
            first = int(frames.nonzero()[0])
            raise LiparError(
                f"The pruning plan was made for another latent of the same shape (they differ from latent frame "
                f"{first} on): a plan only fits the latent the Latent Inter-Frame Pruner saw. Connect the pruner's "
                "output straight to the sampler, or re-run the pruner on the latent you sample.")

    def to(self, device: torch.device | str) -> "PruningPlan":
        return PruningPlan(self.keep.to(device), self.source_frame.to(device), self.anchor_frame.to(device),
                           self.latent_shape, self.config, self.fingerprint)

    def select(self, index: int) -> "PruningPlan":
        """The plan of one sample, as a batch of one."""
        sl = slice(index, index + 1)
        shape = (1,) + tuple(self.latent_shape[1:])
        fp = None if self.fingerprint is None else self.fingerprint[sl]
        return PruningPlan(self.keep[sl], self.source_frame[sl], self.anchor_frame[sl], shape, self.config, fp)

    # ---- plain data --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "keep": self.keep.cpu(), "source_frame": self.source_frame.cpu(),
                "anchor_frame": self.anchor_frame.cpu(), "latent_shape": list(self.latent_shape),
                "config": asdict(self.config), "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruningPlan":
        if d.get("format") not in (1, PLAN_FORMAT):
            raise LiparError(f"Unsupported plan format {d.get('format')!r}; this lipar reads formats 1 and "
                             f"{PLAN_FORMAT}.")
        fp = d.get("fingerprint")
        plan = cls(d["keep"].bool(), d["source_frame"].long(), d["anchor_frame"].long(),
                   tuple(int(s) for s in d["latent_shape"]), PlanConfig(**d["config"]).validate(),
                   None if fp is None else fp.double())
        plan.check_consistent()
        return plan

    def save(self, path: str) -> None:
        torch.save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str) -> "PruningPlan":
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=True))

    def check_consistent(self) -> None:
        """Validate the invariants a sampler relies on (after loading, and wherever a plan is used)."""
        if len(self.latent_shape) != 5:
            raise LiparError(f"Invalid plan: latent shape {list(self.latent_shape)} is not [B, C, T, H, W].")
        b, c, t, h, w = self.latent_shape
        grid = (b, t, h // 2, w // 2)
        for name, dtype in (("keep", torch.bool), ("source_frame", torch.int64), ("anchor_frame", torch.int64)):
            v = getattr(self, name)
            if not isinstance(v, torch.Tensor) or v.dtype != dtype or tuple(v.shape) != grid:
                got = f"{v.dtype} {list(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
                raise LiparError(f"Invalid plan: {name} must be {dtype} of shape {list(grid)} for latent shape "
                                 f"{list(self.latent_shape)}; got {got}. Re-run the Latent Inter-Frame Pruner.")
        fp = self.fingerprint
        if fp is not None and not (isinstance(fp, torch.Tensor) and tuple(fp.shape) == (b, t, 3)):
            raise LiparError("Invalid plan: its latent fingerprint does not match the latent shape; re-run the pruner.")
        if not bool(self.keep[:, 0].all()):
            raise LiparError("Invalid plan: frame 0 must be kept.")
        expect = derive_frames(self.keep, self.config.chunk_frames)
        if not (torch.equal(expect[0], self.source_frame.to(expect[0].device))
                and torch.equal(expect[1], self.anchor_frame.to(expect[1].device))):
            raise LiparError("Invalid plan: source/anchor frames do not follow from the keep mask (was the plan "
                             "edited?). Re-run the Latent Inter-Frame Pruner.")
        pruned = ~self.keep
        if bool((self.anchor_frame[pruned] < 0).any()):
            raise LiparError("Invalid plan: a pruned token has no anchor in an earlier chunk.")


# ---------------------------------------------------------------------------------
# building


def patchify(latent: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, T, H/2, W/2, C*4] patches (the 64 values of a Wan token)."""
    b, c, t, h, w = latent.shape
    x = latent.reshape(b, c, t, h // 2, 2, w // 2, 2)
    return x.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t, h // 2, w // 2, c * 4)


def patch_distance(a: torch.Tensor, b: torch.Tensor, trim: float) -> torch.Tensor:
    """Mean |a - b| over the last dim, ignoring the largest ``trim`` fraction of elements."""
    d = (a - b).abs()
    if trim > 0:
        n = d.shape[-1]
        keep_n = max(1, int(round(n * (1.0 - trim))))
        d = d.topk(keep_n, dim=-1, largest=False, sorted=False).values
    return d.mean(-1)


def _box(x: torch.Tensor, size: int) -> torch.Tensor:
    """Box filter over the last two dims of [N, Hp, Wp]."""
    if size <= 1:
        return x
    return F.avg_pool2d(x.unsqueeze(1), size, stride=1, padding=size // 2, count_include_pad=False).squeeze(1)


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Binary dilation (square, radius r) of a bool mask [N, Hp, Wp]."""
    if r <= 0:
        return mask
    return F.max_pool2d(mask.float().unsqueeze(1), 2 * r + 1, stride=1, padding=r).squeeze(1) > 0.5


def _erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    return ~_dilate(~mask, r)


def derive_frames(keep: torch.Tensor, chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and anchor frames that follow from a keep mask [B, T, Hp, Wp].

    source_frame[t] = latest kept frame <= t (== t when kept; frame 0 is kept).
    anchor_frame[t] = latest kept frame < chunk start of t, or -1.
    """
    b, t, hp, wp = keep.shape
    frame_idx = torch.arange(t, device=keep.device).view(1, t, 1, 1)
    last_kept = torch.cummax(torch.where(keep, frame_idx, -1), dim=1).values  # latest kept <= t
    chunk_start = (torch.arange(t, device=keep.device) // chunk_frames) * chunk_frames
    prev = chunk_start - 1  # last frame of the previous chunk, -1 for chunk 0
    anchor = torch.where(prev.view(1, t, 1, 1) >= 0,
                         last_kept[:, prev.clamp(min=0)],
                         torch.full_like(last_kept, -1))
    return last_kept, anchor


def latent_fingerprint(latent: torch.Tensor) -> torch.Tensor:
    """Per-frame statistics that tell latents apart: float64 [B, T, 3] on the CPU (mean, mean
    square, and the mean against a fixed pseudo-random +-1 pattern) of ``latent`` [B, C, T, H, W].
    Rounding differences between hosts' normalisations stay far below the tolerance of
    ``PruningPlan.check_latent``; another clip, frame or sum does not."""
    b, c, t, h, w = latent.shape
    x = latent.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    sign = _sign_pattern(c, h, w).to(x.device, x.dtype)                          # [C, 1, H, W] of +-1
    n = c * h * w
    dims = (1, 3, 4)
    # per-frame sums over [C, H, W], accumulated in float64 (no float64 copy of the latent)
    stats = torch.stack([x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64),
                         (x * sign).sum(dims, dtype=torch.float64)], -1) / n         # [B, T, 3]
    return stats.cpu()


@functools.lru_cache(maxsize=8)
def _sign_pattern(c: int, h: int, w: int) -> torch.Tensor:
    """A fixed pseudo-random +-1 pattern [C, 1, H, W] (float64, CPU) for ``latent_fingerprint``."""
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 2, (c * h * w,), generator=g).double() * 2 - 1).view(c, h, w).unsqueeze(1)


def _anchor_in_window(last_kept: torch.Tensor, window: KVWindow, start: int, count: int) -> torch.Tensor:
    """Where the anchor (latest kept frame before the chunk, [B, Hp, Wp]) is still in the
    chunk's KV window, so its clean key/value is in the cache."""
    return (last_kept >= 0) & window.frame_visible(last_kept, start, count)


def build_plan(latent: torch.Tensor, config: PlanConfig | None = None, window: KVWindow = UNBOUNDED) -> PruningPlan:
    """Make a pruning plan for a Wan latent ``[B, 16, T, H, W]`` (on the latent's device).

    Vectorised over batch, frames and tokens; the only loop is over chunks, since a chunk's
    anchors depend on what earlier chunks kept. No host synchronisation. ``window``: the KV
    window the sampler will run with (a token whose anchor has left it is kept).
    """
    config = (config or PlanConfig()).validate()
    check_latent(latent, what="latent to prune")
    b, c, t, h, w = latent.shape
    p = patchify(latent.float())                                  # [B, T, Hp, Wp, 64]
    hp, wp = p.shape[2], p.shape[3]
    cf = config.chunk_frames

    # Eq. 1 against the previous frame, for all frames at once.
    d_prev = torch.full((b, t, hp, wp), float("inf"), device=latent.device)
    if t > 1:
        d_prev[:, 1:] = patch_distance(p[:, 1:], p[:, :-1], config.trim_outliers)
    d_prev = _box(d_prev.flatten(0, 1), config.smooth).view(b, t, hp, wp)
    candidate = d_prev < config.threshold
    candidate[:, 0] = False

    keep = torch.ones((b, t, hp, wp), dtype=torch.bool, device=latent.device)
    last_kept = torch.zeros((b, hp, wp), dtype=torch.long, device=latent.device)  # frame 0 is kept
    for c0, n in chunk_spans(t, cf)[1:]:
        # Update the anchor (latest kept frame before this chunk) from the previous chunk.
        prev_keep = keep[:, c0 - cf:c0]
        frames = torch.arange(c0 - cf, c0, device=latent.device).view(1, cf, 1, 1)
        last_kept = torch.maximum(last_kept, torch.where(prev_keep, frames, -1).amax(1))
        gather_idx = last_kept.view(b, 1, hp, wp, 1).expand(b, 1, hp, wp, p.shape[-1])
        anchor_patch = torch.gather(p, 1, gather_idx)             # [B, 1, Hp, Wp, 64]
        d_anchor = patch_distance(p[:, c0:c0 + n], anchor_patch, config.trim_outliers)
        d_anchor = _box(d_anchor.flatten(0, 1), config.smooth).view(b, n, hp, wp)
        pruned = candidate[:, c0:c0 + n] & (d_anchor < config.anchor_threshold)
        pruned &= _anchor_in_window(last_kept, window, c0, n).unsqueeze(1)
        pruned = pruned.flatten(0, 1)
        if config.open_pruned > 0:   # opening: drop pruned specks smaller than the structuring element
            pruned = _dilate(_erode(pruned, config.open_pruned), config.open_pruned) & pruned
        if config.dilate_kept > 0:   # grow kept regions (moving edges stay computed)
            pruned = _erode(pruned, config.dilate_kept)
        keep[:, c0:c0 + n] = ~pruned.view(b, n, hp, wp)

    source, anchor = derive_frames(keep, cf)
    return PruningPlan(keep, source, anchor, tuple(latent.shape), config, latent_fingerprint(latent))


def restrict_to_window(plan: PruningPlan, window: KVWindow) -> tuple[PruningPlan, int]:
    """The plan for a sampler whose KV cache rolls with ``window``: every pruned token whose
    anchor has left its chunk's window is kept instead (it then anchors the frames after it).
    Returns (plan, number of tokens newly kept); the same plan when nothing changes."""
    b, t, hp, wp = plan.keep.shape
    cf = plan.config.chunk_frames
    if not window.evicts(t, cf):
        return plan, 0
    keep = plan.keep.clone()
    last_kept = torch.zeros((b, hp, wp), dtype=torch.long, device=keep.device)
    for c0, n in chunk_spans(t, cf)[1:]:
        frames = torch.arange(c0 - cf, c0, device=keep.device).view(1, cf, 1, 1)
        last_kept = torch.maximum(last_kept, torch.where(keep[:, c0 - cf:c0], frames, -1).amax(1))
        keep[:, c0:c0 + n] |= ~_anchor_in_window(last_kept, window, c0, n).unsqueeze(1)
    added = int((keep & ~plan.keep).sum())
    if not added:
        return plan, 0
    source, anchor = derive_frames(keep, cf)
    return PruningPlan(keep, source, anchor, plan.latent_shape, plan.config, plan.fingerprint), added


def empty_plan(latent_shape: tuple[int, ...], chunk_frames: int = 3, device: str | torch.device = "cpu") -> PruningPlan:
    """A plan that keeps every token (prunes nothing)."""
    b, c, t, h, w = latent_shape
    keep = torch.ones((b, t, h // 2, w // 2), dtype=torch.bool, device=device)
    source, anchor = derive_frames(keep, chunk_frames)
    return PruningPlan(keep, source, anchor, tuple(latent_shape), PlanConfig(threshold=0.0, chunk_frames=chunk_frames))
