"""Per-chunk token layouts: which tokens a chunk pass computes, and attention recovery.

For chunk ``c`` the attention keys live in one buffer per layer (see ``lipar.causal``):

    [ kept tokens of earlier chunks (L_c) | kept tokens of this chunk (N_k) | duplicates (N_d) ]

Every pruned token visible to the chunk (all pruned tokens of earlier chunks and of
this chunk) needs a stand-in key/value so the softmax sees the full sequence
(paper Eq. 3-4). Its stand-in is a kept token at the same (y, x):

* earlier chunks: the pruned token's *source* (latest kept frame before it); its clean
  key/value is in the cache (written by the clean cache-update pass).
* this chunk, ``m_degree``: the source too, which may be a *noisy* token of this chunk.
* this chunk, ``noise_aware``: the *anchor*, the latest kept token of an earlier chunk,
  whose key/value is clean (paper 2.4.1). The plan only prunes tokens that have one.

Two forms of the same recovery, both FlashAttention-compatible (they change keys, or
add one per-key score term; no per-pair matrices):

* ``exact``: duplicates are materialised: the stand-in's RoPE'd key is rotated along
  the frame axis by (t_pruned - t_standin), which places it at the pruned token's own
  position (RoPE rotations compose), and its value is copied. With exactly duplicated
  tokens this reproduces full attention exactly (Eq. 4).
* ``compressed``: no duplicates; each key gets a score bias ``log(1 + m)`` where ``m``
  counts the pruned tokens it stands for. Exact when the frame rotation of the
  duplicates does not matter; the key length stays at the kept count.

  The compressed form splits the cache into two regions so the bias costs only where it
  is needed: tokens that stand in for a pruned token in any chunk ("biased" tokens,
  known from the plan before sampling) have slots below a split point X (newest lowest),
  all other kept tokens from X up. A chunk's keys are one contiguous range
  ``[key_start, key_end)`` whose first ``num_biased`` keys may carry a bias and the rest
  never do, so attention can run the rest with a plain kernel. A chunk lists its
  unbiased kept tokens first and its ``num_f`` biased ones last (newest first), so every
  cache write is a contiguous copy. With ``noise_aware`` a chunk's own tokens are never
  stand-ins for that chunk (its pruned tokens borrow from earlier chunks), so its biased
  tokens are also written right after its unbiased ones, inside the plain part
  (``f_in_plain``), while their own slots below X keep them for later chunks.

Mode ``none`` is naive pruning: kept keys only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lipar.config import WanConfig
from lipar.errors import LiparError
from lipar.plan import PruningPlan
from lipar.rope import apply_rope, frame_shift_angles, rope_angles, rope_table, token_positions

RECOVERY_MODES = ("none", "m_degree", "noise_aware")
RECOVERY_FORMS = ("exact", "compressed")


def check_recovery(mode: str, form: str) -> None:
    if mode not in RECOVERY_MODES:
        raise LiparError(f"Unknown recovery mode {mode!r}; choose one of {list(RECOVERY_MODES)}.")
    if form not in RECOVERY_FORMS:
        raise LiparError(f"Unknown recovery form {form!r}; choose one of {list(RECOVERY_FORMS)}.")


@dataclass
class ChunkLayout:
    """What one chunk pass computes. Shapes: Nk kept tokens, Nd duplicates, D head dim."""

    index: int
    frame_start: int
    frames: int
    grid: tuple[int, int]                 # (Hp, Wp) tokens per frame
    cache_len: int                        # slot of this chunk's first unbiased kept token (one region:
                                          # L_c, the kept tokens of earlier chunks)
    num_kept: int                         # Nk
    kept_idx: torch.Tensor | None         # [Nk] flat index into the chunk's F*Hp*Wp grid; None = all
    token_frame: torch.Tensor             # [Nk] local frame of each kept token
    rope: torch.Tensor                    # [Nk, D/2] complex RoPE rotations of kept tokens
    dup_src: torch.Tensor | None = None   # [Nd] key-buffer index of each duplicate's stand-in
    dup_rope: torch.Tensor | None = None  # [Nd, D/2] complex frame-axis rotation of the duplicate
    key_bias: torch.Tensor | None = None  # [key_len] log-multiplicity per key (compressed form)
    key_start: int = 0                    # first cache slot of the keys this chunk attends to
    num_biased: int = 0                   # keys at the start of that range that may carry a bias
    num_f: int = 0                        # the last num_f kept tokens are biased ones: slots [f_slot, +num_f)
    f_slot: int = 0
    f_in_plain: bool = False              # those are also written after the unbiased ones (in range)

    @property
    def num_dups(self) -> int:
        return 0 if self.dup_src is None else int(self.dup_src.numel())

    @property
    def key_len(self) -> int:
        """Keys this chunk attends to: ``[key_start, cache_len)``, then its unbiased kept tokens
        (and with f_in_plain its biased ones) from cache_len, then duplicates (exact form)."""
        return self.cache_len - self.key_start + self.own_len + self.num_dups

    @property
    def own_len(self) -> int:
        """This chunk's kept tokens written contiguously from cache_len (in kept order)."""
        return self.num_kept if self.f_in_plain else self.num_kept - self.num_f

    @property
    def key_end(self) -> int:
        return self.key_start + self.key_len

    @property
    def tokens(self) -> int:
        return self.frames * self.grid[0] * self.grid[1]


def build_layouts(latent_shape: tuple[int, ...], cfg: WanConfig, chunk_frames: int, *,
                  plan: PruningPlan | None = None, mode: str = "noise_aware", form: str = "exact",
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[ChunkLayout]:
    """Layouts of all chunks of one sample (``plan`` must hold one sample, or be None).

    All index work runs on ``device``; the only host reads are the per-chunk counts,
    made once here before sampling starts. ``dtype`` is that of the RoPE tables (float32,
    or float64 for float64 runs).
    """
    check_recovery(mode, form)
    _, _, t, h, w = latent_shape
    hp, wp = h // 2, w // 2
    hw = hp * wp
    device = torch.device(device)
    n_chunks = t // chunk_frames
    pos_all = token_positions(t, hp, wp, device=device)       # [T*HW, 3]
    layouts: list[ChunkLayout] = []
    if plan is None:
        n = chunk_frames * hw
        local_frame = torch.arange(chunk_frames, device=device).repeat_interleave(hw)
        for c in range(n_chunks):
            pos = pos_all[c * n:(c + 1) * n]
            layouts.append(ChunkLayout(c, c * chunk_frames, chunk_frames, (hp, wp), c * n, n, None,
                                       local_frame, rope_table(rope_angles(pos, cfg), dtype)))
        return layouts

    if plan.batch != 1:
        raise LiparError("build_layouts takes a one-sample plan; use plan.select(i).")
    plan.check_fits(tuple(latent_shape), chunk_frames)
    keep = plan.keep[0].to(device).flatten()                   # [T*HW]
    src = plan.source_frame[0].to(device).flatten()
    anc = plan.anchor_frame[0].to(device).flatten()
    yx = torch.arange(t * hw, device=device) % hw
    frame_of = torch.arange(t * hw, device=device) // hw
    bounds = [(c * chunk_frames * hw, (c + 1) * chunk_frames * hw) for c in range(n_chunks)]

    # Stand-in of every pruned token visible to each chunk (a flat token index).
    stands: list[tuple[torch.Tensor, torch.Tensor]] = []
    for g0, g1 in (bounds if mode != "none" else []):
        pruned = torch.nonzero(~keep[:g1]).squeeze(1)             # all pruned tokens visible to the chunk
        stand_frame = src[pruned]
        if mode == "noise_aware":
            stand_frame = torch.where(pruned >= g0, anc[pruned], stand_frame)
        stands.append((pruned, stand_frame * hw + yx[pruned]))

    # Cache slots. One region in kept order, or (compressed form) two: biased tokens below X
    # (newest lowest), the rest from X up.
    biased = torch.zeros_like(keep)
    if mode != "none" and form == "compressed":
        for _, tok in stands:
            biased[tok] = True
        biased &= keep    # stand-ins are kept tokens by the plan's construction
    unbiased = keep & ~biased
    x_split = int(biased.sum())                                 # host reads, before sampling
    slot = torch.where(biased, x_split - torch.cumsum(biased.long(), 0),
                       x_split + torch.cumsum(unbiased.long(), 0) - 1)
    n_f = biased.view(n_chunks, -1).sum(1).tolist()
    n_p = unbiased.view(n_chunks, -1).sum(1).tolist()
    f_before = p_before = 0
    for c, (g0, g1) in enumerate(bounds):
        # unbiased tokens first, then biased ones newest (lowest slot) first: contiguous writes
        kept_idx = torch.cat([torch.nonzero(unbiased[g0:g1]).squeeze(1),
                              torch.nonzero(biased[g0:g1]).squeeze(1).flip(0)])
        pos = pos_all[g0:g1][kept_idx]
        f_slot = x_split - f_before - n_f[c]
        own_plain = mode == "noise_aware"
        start = x_split - f_before if own_plain else f_slot
        lay = ChunkLayout(c, c * chunk_frames, chunk_frames, (hp, wp), x_split + p_before, n_f[c] + n_p[c], kept_idx,
                          kept_idx // hw, rope_table(rope_angles(pos, cfg), dtype), key_start=start,
                          num_biased=x_split - start, num_f=n_f[c], f_slot=f_slot, f_in_plain=own_plain and n_f[c] > 0)
        f_before += n_f[c]
        p_before += n_p[c]
        if mode != "none":
            pruned, stand_tok = stands[c]
            stand_pos = slot[stand_tok]
            delta = frame_of[pruned] - stand_tok // hw
            if form == "exact":
                lay.dup_src = stand_pos
                lay.dup_rope = rope_table(frame_shift_angles(delta, cfg), dtype)
            elif pruned.numel():   # no pruned token visible (e.g. chunk 0): plain attention
                m = torch.bincount(stand_pos - lay.key_start, minlength=lay.key_len)
                lay.key_bias = torch.log1p(m.to(dtype))
        layouts.append(lay)
    return layouts


def fill_keys(kb: torch.Tensor, vb: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              lay: ChunkLayout, scratch: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Write a chunk's keys/values into one layer's cache and add its duplicates.

    kb, vb: key [B, capacity, H, W] and value [B, capacity, H, D] cache of one layer;
            W = D, or the folded width (channel D then carries the chunk's key bias,
            written by ``CausalWan.begin_chunk``; only channels < D here).
    k, v:   [B, Nk, H, D] this chunk's RoPE'd keys and values, in the layout's kept order:
            the first ``own_len`` go to ``[cache_len, cache_len + own_len)``, the last
            ``num_f`` (biased tokens) also to their own slots ``[f_slot, f_slot + num_f)``.
    scratch: optional [B, >= key_len, H, D] buffers shared by all layers; with it,
            duplicates (exact form, one cache region) are assembled there with a copy of
            the cached keys, so the cache itself holds kept tokens only. Without it they go
            after the chunk in kb/vb.
    Returns views ``[B, key_len, H, W]`` of the keys/values the chunk attends to.
    """
    d = k.shape[-1]
    nf = lay.num_f
    c0, c1 = lay.cache_len, lay.cache_len + lay.own_len
    kb[:, c0:c1, :, :d] = k[:, :lay.own_len]
    vb[:, c0:c1] = v[:, :lay.own_len]
    if nf:    # biased tokens' own slots, read by later chunks
        kb[:, lay.f_slot:lay.f_slot + nf, :, :d] = k[:, -nf:]
        vb[:, lay.f_slot:lay.f_slot + nf] = v[:, -nf:]
    if lay.num_dups:
        dk = apply_rope(kb[:, lay.dup_src, :, :d], lay.dup_rope)
        dv = vb[:, lay.dup_src]
        if scratch is not None:
            sk, sv = scratch
            sk[:, :c1] = kb[:, :c1]
            sv[:, :c1] = vb[:, :c1]
            kb, vb = sk, sv
        kb[:, c1:lay.key_len, :, :d] = dk
        vb[:, c1:lay.key_len] = dv
    return kb[:, lay.key_start:lay.key_end], vb[:, lay.key_start:lay.key_end]
