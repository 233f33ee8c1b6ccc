"""Per-chunk token layouts: which tokens a chunk pass computes, where its keys live in the
KV cache, and attention recovery.

A chunk attends to the kept tokens of the earlier frames its KV window shows
(``lipar.chunks.KVWindow``; all earlier frames unless the video outgrows the window), to
its own kept tokens, and, for every pruned token among those frames and its own, to a
*stand-in*: a kept token at the same (y, x) whose key/value replaces the missing one
(paper Eq. 3-4):

* pruned tokens of earlier chunks: their *source* (latest kept frame before them); its
  clean key/value is in the cache (written by the clean cache-update pass).
* pruned tokens of this chunk, ``m_degree``: the source too, which may be a *noisy* token
  of this chunk.
* pruned tokens of this chunk, ``noise_aware``: the *anchor*, the latest kept token of an
  earlier chunk, whose key/value is clean (paper 2.4.1). The plan only prunes tokens whose
  anchor is in their chunk's window.

A pruned token of an earlier chunk whose stand-in has left the window leaves with it (its
duplicates were copies of the evicted key/value).

Two forms of the same recovery, both FlashAttention-compatible (they change keys, or add
one per-key score term; no per-pair matrices):

* ``exact``: duplicates are materialised: the stand-in's RoPE'd key is rotated along the
  frame axis by (t_pruned - t_standin), which places it at the pruned token's own position
  (RoPE rotations compose), and its value is copied. With exactly duplicated tokens this
  reproduces full attention exactly (Eq. 4).
* ``compressed``: no duplicates; each stand-in key gets a score bias ``log(1 + m)`` where
  ``m`` counts the pruned tokens it stands for. Exact when the frame rotation of the
  duplicates does not matter; the key length stays at the kept count.

Mode ``none`` is naive pruning: kept keys only.

**Where keys live.** Each chunk attends to one contiguous key range ``[key_start, key_end)``
of the cache whose first ``num_biased`` keys may carry a bias and the rest never do, so the
rest runs through a plain attention kernel (see ``lipar.attention``). A pass writes its
keys/values with contiguous copies: its kept tokens in the layout's order, the first
``own_len`` from ``cache_len``, the last ``num_own_biased`` (tokens that are stand-ins for
this same chunk, ``m_degree`` only) also from ``own_biased_slot``.

While every chunk sees every earlier frame, tokens never move: the compressed form gives
the tokens that are ever stand-ins ("biased", known from the plan before sampling) slots
below a split point X (newest lowest) and all others slots from X up. Three chunks, with
``b_c`` / ``p_c`` the biased / plain kept tokens of chunk c::

    slot:      ... | b2 | b1 | b0 | X | p0 | p1 | p2 | own tail
    chunk 0:                      [ p0 + b0 ]                    (own biased written in plain too)
    chunk 1:                 [ b0 | p0 | p1 + b1 ]
    chunk 2:            [ b1 | b0 | p0 | p1 | p2 + b2 ]

(``noise_aware``: a chunk's own biased tokens are also written right after its plain ones,
``own_biased_in_plain``, where the next chunk's plain tokens later go.) ``m_degree`` starts
a chunk's range at its own biased tokens instead.

Once the window evicts frames, a chunk's visible tokens are no longer one range of fixed
slots. Then every chunk starts by gathering its visible tokens (``gather_src``, slots of the
previous arrangement) to ``[gather_dst, ...)``: ``[own biased | biased | plain | own]``, where
"biased" means a stand-in *for this chunk*; the cache holds only what the window holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .chunks import UNBOUNDED, KVWindow, chunk_spans
from .config import WanConfig
from .errors import LiparError
from .plan import PruningPlan
from .rope import apply_rope, frame_shift_angles, rope_angles, rope_table, token_positions

RECOVERY_MODES = ("noise_aware", "m_degree", "none")      # the default first (widget order)
RECOVERY_FORMS = ("compressed", "exact")


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
    cache_len: int                        # slot of this chunk's first plain kept token
    num_kept: int                         # Nk
    kept_idx: torch.Tensor | None         # [Nk] flat index into the chunk's F*Hp*Wp grid; None = all
    token_frame: torch.Tensor             # [Nk] local frame of each kept token
    positions: torch.Tensor               # [Nk, 3] absolute (frame, row, col) of each kept token
    rope_spec: tuple[WanConfig, torch.dtype]  # what the RoPE tables are made with (config, real dtype)
    dup_src: torch.Tensor | None = None   # [Nd] key-buffer index of each duplicate's stand-in
    dup_shift: torch.Tensor | None = None # [Nd] frames from each duplicate's stand-in to its own position
    key_bias: torch.Tensor | None = None  # [key_len] log-multiplicity per key (compressed form)
    key_start: int = 0                    # first cache slot of the keys this chunk attends to
    num_biased: int = 0                   # keys at the start of that range that may carry a bias
    num_own_biased: int = 0               # the last ones of the kept tokens are biased: slots
    own_biased_slot: int = 0              #   [own_biased_slot, + num_own_biased)
    own_biased_in_plain: bool = False     # those are also written after the plain ones (in range)
    gather_src: torch.Tensor | None = None  # [Nv] slots the chunk's visible tokens move from (window)
    gather_dst: int = 0                   # ... to [gather_dst, gather_dst + Nv), before the passes
    gather_down: bool = False             # no token moves to a higher slot (pieces can be moved in order)
    _tables: dict = field(default_factory=dict, repr=False)

    @property
    def rope(self) -> torch.Tensor:
        """[Nk, D/2] complex RoPE rotations of the kept tokens: made when the chunk first needs
        them and dropped by ``drop_tables`` when it is done, so a long video's layouts hold only
        positions (a table is ~2.4 MB for a full 832x480 chunk)."""
        if "rope" not in self._tables:
            cfg, dtype = self.rope_spec
            self._tables["rope"] = rope_table(rope_angles(self.positions, cfg), dtype)
        return self._tables["rope"]

    @property
    def dup_rope(self) -> torch.Tensor | None:
        """[Nd, D/2] complex frame-axis rotation of each duplicate (exact form), made on demand."""
        if self.dup_shift is None:
            return None
        if "dup_rope" not in self._tables:
            cfg, dtype = self.rope_spec
            self._tables["dup_rope"] = rope_table(frame_shift_angles(self.dup_shift, cfg), dtype)
        return self._tables["dup_rope"]

    def drop_tables(self) -> None:
        self._tables.clear()

    @property
    def num_dups(self) -> int:
        return 0 if self.dup_src is None else int(self.dup_src.numel())

    @property
    def key_len(self) -> int:
        """Keys this chunk attends to: ``[key_start, cache_len)``, then its plain kept tokens
        (with own_biased_in_plain also its biased ones) from cache_len, then duplicates (exact form)."""
        return self.cache_len - self.key_start + self.own_len + self.num_dups

    @property
    def own_len(self) -> int:
        """This chunk's kept tokens written contiguously from cache_len (in kept order)."""
        return self.num_kept if self.own_biased_in_plain else self.num_kept - self.num_own_biased

    @property
    def key_end(self) -> int:
        return self.key_start + self.key_len

    @property
    def tokens(self) -> int:
        return self.frames * self.grid[0] * self.grid[1]


@dataclass
class _Grid:
    """Flat token facts of one sample: T*HW tokens in (frame, row, col) order."""

    hw: int
    keep: torch.Tensor            # [T*HW] bool
    source: torch.Tensor          # [T*HW] latest kept frame <= t
    anchor: torch.Tensor          # [T*HW] latest kept frame of an earlier chunk, -1 if none
    pos: torch.Tensor             # [T*HW, 3] positions

    @property
    def yx(self) -> torch.Tensor:
        return torch.arange(self.keep.numel(), device=self.keep.device) % self.hw


def build_layouts(latent_shape: tuple[int, ...], cfg: WanConfig, chunk_frames: int, *,
                  plan: PruningPlan | None = None, mode: str = "noise_aware", form: str = "exact",
                  window: KVWindow = UNBOUNDED, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> list[ChunkLayout]:
    """Layouts of all chunks of one sample (``plan`` must hold one sample, or be None).

    All index work runs on ``device``; the only host reads are the per-chunk counts, made
    once here before sampling starts. ``dtype`` is that of the RoPE tables (float32, or
    float64 for float64 runs). ``window``: the KV window (see ``lipar.chunks``); the plan must
    respect it (``lipar.plan.restrict_to_window``).
    """
    check_recovery(mode, form)
    _, _, t, h, w = latent_shape
    hp, wp = h // 2, w // 2
    hw = hp * wp
    device = torch.device(device)
    spans = chunk_spans(t, chunk_frames)
    if plan is not None:
        if plan.batch != 1:
            raise LiparError("build_layouts takes a one-sample plan; use plan.select(i).")
        plan.check_fits(tuple(latent_shape), chunk_frames)
        keep = plan.keep[0].to(device).flatten()
        source, anchor = plan.source_frame[0].to(device).flatten(), plan.anchor_frame[0].to(device).flatten()
    else:
        keep = torch.ones(t * hw, dtype=torch.bool, device=device)
        source = anchor = torch.arange(t * hw, device=device) // hw
        mode = "none"
    grid = _Grid(hw, keep, source, anchor, token_positions(t, hp, wp, device=device))
    if window.evicts(t, chunk_frames):
        return _windowed_layouts(grid, spans, cfg, (hp, wp), mode, form, window, dtype)
    return _fixed_layouts(grid, spans, cfg, (hp, wp), mode, form, plan is None, dtype)


def _stand_ins(g: _Grid, pruned: torch.Tensor, own_start: int, mode: str) -> torch.Tensor:
    """Flat token index of each pruned token's stand-in: its source, or for tokens of the
    chunk being computed (index >= own_start) under ``noise_aware`` its anchor."""
    frame = g.source[pruned]
    if mode == "noise_aware":
        frame = torch.where(pruned >= own_start, g.anchor[pruned], frame)
    return frame * g.hw + g.yx[pruned]


def _layout(g: _Grid, cfg: WanConfig, c: int, span: tuple[int, int], grid: tuple[int, int], kept_idx, dtype,
            **fields) -> ChunkLayout:
    """A ChunkLayout for the chunk's kept tokens ``kept_idx`` (local flat indices, None = all)."""
    f0, n = span
    g0, g1 = f0 * g.hw, (f0 + n) * g.hw
    local = torch.arange(g1 - g0, device=g.keep.device) if kept_idx is None else kept_idx
    return ChunkLayout(c, f0, n, grid, num_kept=int(local.numel()), kept_idx=kept_idx, token_frame=local // g.hw,
                       positions=g.pos[g0:g1][local], rope_spec=(cfg, dtype), **fields)


def _recovery(lay: ChunkLayout, g: _Grid, pruned: torch.Tensor, stand_tok: torch.Tensor,
              slot_of: torch.Tensor, form: str, dtype) -> None:
    """Fill the layout's duplicates (exact) or key bias (compressed) for the given pruned tokens
    and their stand-ins, whose slots in the chunk's arrangement are ``slot_of[stand_tok]``."""
    stand_slot = slot_of[stand_tok]
    if form == "exact":
        lay.dup_src = stand_slot
        lay.dup_shift = pruned // g.hw - stand_tok // g.hw
    elif pruned.numel():   # no pruned token visible (e.g. chunk 0): plain attention
        m = torch.bincount(stand_slot - lay.key_start, minlength=lay.key_len)
        lay.key_bias = torch.log1p(m.to(dtype))


def _per_chunk(mask: torch.Tensor, bounds: list[tuple[int, int]]) -> list[int]:
    """Count of True in each [g0, g1) of a flat mask (one host read)."""
    edges = torch.tensor([0] + [g1 for _, g1 in bounds], device=mask.device)
    return torch.cat([mask.new_zeros(1, dtype=torch.long), mask.long()]).cumsum(0)[edges].diff().tolist()


def _fixed_layouts(g: _Grid, spans, cfg, grid, mode, form, unpruned: bool, dtype) -> list[ChunkLayout]:
    """Every chunk sees every earlier frame: tokens keep one slot for the whole run."""
    hw = g.hw
    if unpruned:
        return [_layout(g, cfg, c, (f0, n), grid, None, dtype, cache_len=f0 * hw)
                for c, (f0, n) in enumerate(spans)]
    bounds = [(f0 * hw, (f0 + n) * hw) for f0, n in spans]
    stands = []                     # per chunk: every pruned token it sees, and its stand-in
    for g0, g1 in (bounds if mode != "none" else []):
        pruned = torch.nonzero(~g.keep[:g1]).squeeze(1)
        stands.append((pruned, _stand_ins(g, pruned, g0, mode)))
    # One region in kept order, or (compressed form) two: biased tokens below X (newest lowest),
    # the rest from X up.
    biased = torch.zeros_like(g.keep)
    if mode != "none" and form == "compressed":
        for _, tok in stands:
            biased[tok] = True
        biased &= g.keep    # stand-ins are kept tokens by the plan's construction
    plain = g.keep & ~biased
    x_split = int(biased.sum())                                 # host reads, before sampling
    slot = torch.where(biased, x_split - torch.cumsum(biased.long(), 0),
                       x_split + torch.cumsum(plain.long(), 0) - 1)
    n_biased = _per_chunk(biased, bounds)
    n_plain = _per_chunk(plain, bounds)
    layouts = []
    biased_before = plain_before = 0
    own_plain = mode == "noise_aware"
    for c, (g0, g1) in enumerate(bounds):
        # plain tokens first, then biased ones newest (lowest slot) first: contiguous writes
        kept_idx = torch.cat([torch.nonzero(plain[g0:g1]).squeeze(1), torch.nonzero(biased[g0:g1]).squeeze(1).flip(0)])
        own_slot = x_split - biased_before - n_biased[c]
        start = x_split - biased_before if own_plain else own_slot
        lay = _layout(g, cfg, c, spans[c], grid, kept_idx, dtype, cache_len=x_split + plain_before,
                      key_start=start, num_biased=x_split - start, num_own_biased=n_biased[c],
                      own_biased_slot=own_slot, own_biased_in_plain=own_plain and n_biased[c] > 0)
        biased_before += n_biased[c]
        plain_before += n_plain[c]
        if mode != "none":
            _recovery(lay, g, *stands[c], slot, form, dtype)
        layouts.append(lay)
    return layouts


def _windowed_layouts(g: _Grid, spans, cfg, grid, mode, form, window: KVWindow, dtype) -> list[ChunkLayout]:
    """The window evicts frames: each chunk first gathers the tokens it still sees into
    ``[own biased | biased | plain | own plain]`` (see the module docstring)."""
    hw, device = g.hw, g.keep.device
    slot_of = torch.full_like(g.source, -1)          # each kept token's slot in the current arrangement
    layouts = []
    for c, (f0, n) in enumerate(spans):
        g0, g1 = f0 * hw, (f0 + n) * hw
        ranges = [(a * hw, b * hw) for a, b in window.visible(f0, n)]
        seen = torch.zeros_like(g.keep)
        for a, b in ranges:
            seen[a:b] = True
        visible = torch.nonzero(seen & g.keep).squeeze(1)                        # [Nv] kept, earlier frames
        own = torch.nonzero(g.keep[g0:g1]).squeeze(1)                           # local indices
        if mode != "none":
            pruned = torch.nonzero(~g.keep[:g1] & (seen[:g1] | (torch.arange(g1, device=device) >= g0))).squeeze(1)
            stand_tok = _stand_ins(g, pruned, g0, mode)
            ok = seen[stand_tok] | (stand_tok >= g0)                            # the stand-in is still here
            pruned, stand_tok = pruned[ok], stand_tok[ok]
        counts = torch.bincount(stand_tok, minlength=g.keep.numel()) if mode != "none" else None
        if form == "compressed" and counts is not None:
            is_biased = counts > 0
            vis_order = torch.cat([visible[is_biased[visible]], visible[~is_biased[visible]]])
            own_biased = is_biased[g0 + own]
            kept_idx = torch.cat([own[~own_biased], own[own_biased]])
            n_own_biased = int(own_biased.sum())
            n_vis_biased = int(is_biased[visible].sum())
        else:
            vis_order, kept_idx, n_own_biased, n_vis_biased = visible, own, 0, 0
        dst = n_own_biased
        src = slot_of[vis_order]
        assert bool((src >= 0).all()), "a visible token was not in the cache"   # windows only move forward
        identity = bool(torch.equal(src, torch.arange(dst, dst + src.numel(), device=device)))
        lay = _layout(g, cfg, c, (f0, n), grid, kept_idx if mode != "none" or kept_idx.numel() < n * hw else None,
                      dtype, cache_len=dst + vis_order.numel(), key_start=0, num_biased=n_own_biased + n_vis_biased,
                      num_own_biased=n_own_biased, own_biased_slot=0,
                      gather_src=None if identity else src, gather_dst=dst,
                      gather_down=bool((src >= torch.arange(dst, dst + src.numel(), device=device)).all()))
        slot_of[vis_order] = torch.arange(dst, dst + vis_order.numel(), device=device)
        own_tok = g0 + kept_idx
        slot_of[own_tok[:lay.own_len]] = torch.arange(lay.cache_len, lay.cache_len + lay.own_len, device=device)
        if n_own_biased:
            slot_of[own_tok[lay.own_len:]] = torch.arange(n_own_biased, device=device)
        if mode != "none":
            _recovery(lay, g, pruned, stand_tok, slot_of, form, dtype)
        layouts.append(lay)
    return layouts


MOVE_PIECE = 4096   # tokens moved per copy when pieces are safe: a 12.6 MB temporary for 12 x 128 bf16


def move_visible(kb: torch.Tensor, vb: torch.Tensor, lay: ChunkLayout) -> None:
    """Before a chunk's passes, when its KV window has moved (``lay.gather_src``): gather the
    tokens it still sees from their slots to ``[gather_dst, ...)`` in one layer's cache
    kb, vb [B, capacity, H, W]. When no token moves up (``gather_down``, e.g. an unpruned window
    rolling), pieces copied in order never overwrite a slot a later piece reads, so the
    temporary is one piece; otherwise it is the layer's visible keys (or values)."""
    src = lay.gather_src
    if src is None:
        return
    step = MOVE_PIECE if lay.gather_down else src.numel()
    for a in range(0, src.numel(), step):
        piece = src[a:a + step]
        dst = slice(lay.gather_dst + a, lay.gather_dst + a + piece.numel())
        for buf in (kb, vb):
            buf[:, dst] = buf.index_select(1, piece)


def fill_keys(kb: torch.Tensor, vb: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              lay: ChunkLayout, scratch: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Write a chunk's keys/values into one layer's cache and add its duplicates.

    kb, vb: key and value cache of one layer, [B, capacity, H, D].
    k, v:   [B, Nk, H, D] this chunk's RoPE'd keys and values, in the layout's kept order:
            the first ``own_len`` go to ``[cache_len, cache_len + own_len)``, the last
            ``num_own_biased`` also to ``[own_biased_slot, own_biased_slot + num_own_biased)``.
    scratch: optional [B, >= key_len, H, D] buffers shared by all layers; with it,
            duplicates (exact form, one cache region) are assembled there with a copy of
            the cached keys, so the cache itself holds kept tokens only. Without it they go
            after the chunk in kb/vb.
    Returns views ``[B, key_len, H, W]`` of the keys/values the chunk attends to.
    """
    d = k.shape[-1]
    nf = lay.num_own_biased
    c0, c1 = lay.cache_len, lay.cache_len + lay.own_len
    kb[:, c0:c1, :, :d] = k[:, :lay.own_len]
    vb[:, c0:c1] = v[:, :lay.own_len]
    if nf:    # biased tokens' own slots, read by later chunks
        kb[:, lay.own_biased_slot:lay.own_biased_slot + nf, :, :d] = k[:, -nf:]
        vb[:, lay.own_biased_slot:lay.own_biased_slot + nf] = v[:, -nf:]
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
