"""Chunk-wise causal forward of a Wan2.1 DiT with a KV cache (Self-Forcing style).

``CausalWan`` drives any module tree with Wan's parameter names (lipar's ``WanDiT`` or
ComfyUI's ``WanModel``): it calls the submodules (``block.self_attn.q`` ...) and never
patches or mutates them, so an interrupted run leaves the model as it was.

One chunk pass takes the chunk's latent ``[B, 16, F, H, W]`` and timesteps ``[B, F]``
(or ``[B, 1]`` when all frames share one), computes only the kept tokens of its
``ChunkLayout``, attends to the cache (earlier chunks) plus itself (block-causal), and
returns the flow prediction ``[B, 16, F, H, W]`` (zeros at pruned positions).

Every pass writes its keys/values into the cache slots ``[L_c, L_c + N_k)`` of its
chunk; later chunks' layouts start after them, so whatever pass ran last for a chunk
(the clean cache-update pass at timestep 0) is what later chunks see.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, choose_attention
from .config import WanConfig, infer_config
from .errors import LiparError
from .fp8 import Fp8Linears
from .recovery import ChunkLayout, build_layouts, fill_keys, move_visible
from .rope import apply_rope

log = logging.getLogger("lipar")

WAN_PARAMETERS = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
                  "time_projection.1.weight", "blocks.0.self_attn.q.weight", "blocks.0.cross_attn.k.weight",
                  "blocks.0.ffn.0.weight", "blocks.0.modulation", "head.head.weight", "head.modulation")


class NotWanError(LiparError):
    """A module that is not a Wan2.1 text-to-video DiT; ``reason`` says what it lacks."""

    def __init__(self, module: object, reason: str):
        self.reason = reason
        super().__init__(f"The connected model ({type(module).__name__}) is not a Wan2.1 text-to-video DiT: {reason} "
                         "Load a Self-Forcing or Wan2.1-T2V-1.3B diffusion model.")


def check_wan_module(module: object) -> WanConfig:
    """Return the config of a Wan2.1 DiT module tree, or raise ``NotWanError`` naming what was passed."""
    if not isinstance(module, nn.Module):
        raise NotWanError(module, "it is not a torch module.")
    params = dict(module.named_parameters())
    missing = [p for p in WAN_PARAMETERS if p not in params]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise NotWanError(module, f"it lacks Wan's {', '.join(missing[:3])}{more}.")
    if "img_emb.proj.0.weight" in params or params["patch_embedding.weight"].shape[1] != 16:
        raise NotWanError(module, "it is a Wan image-to-video or control variant; LIPAR's causal sampler needs a "
                                  "text-to-video model (Self-Forcing).")
    cfg = infer_config(params)
    text_len = getattr(module, "text_len", None) or getattr(getattr(module, "config", None), "text_len", None)
    if text_len:
        cfg = WanConfig(**{**cfg.__dict__, "text_len": int(text_len)})
    return cfg


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [N] -> [N, dim] = [cos, sin] of t * 10000^(-i/half) (float64)."""
    half = dim // 2
    pos = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    s = torch.outer(pos, freqs)
    return torch.cat([torch.cos(s), torch.sin(s)], dim=1)


def modulated_norm(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` for Wan's affine-free LayerNorms.

    x [B, N, dim]; shift, scale [B, 1|N, dim]. With one modulation for all tokens (B = 1,
    one timestep per chunk) the modulation is the LayerNorm's own affine: one fused pass
    instead of a norm and a broadcast multiply-add."""
    if (shift.shape[0] == 1 and shift.shape[1] == 1 and isinstance(norm, nn.LayerNorm)
            and not norm.elementwise_affine and norm.normalized_shape == (x.shape[-1],)):
        return F.layer_norm(x, norm.normalized_shape, (1 + scale).view(-1), shift.view(-1), norm.eps)
    return torch.addcmul(shift, norm(x), 1 + scale)


def _plain_linear(lin: nn.Module, like: torch.Tensor) -> bool:
    """A Linear whose weight and bias can be used as they are: on ``like``'s device and in its
    dtype, with no on-the-fly casting or patching (ComfyUI's low-VRAM and LoRA hooks)."""
    return (isinstance(lin, nn.Linear) and lin.bias is not None and lin.weight.device == like.device
            and lin.weight.dtype == like.dtype and lin.bias.dtype == like.dtype
            and not getattr(lin, "comfy_cast_weights", False)
            and not getattr(lin, "weight_function", None) and not getattr(lin, "bias_function", None))


def feed_forward(ffn: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Wan's FFN ``Linear -> GELU(tanh) -> Linear`` on y [B, N, dim]. On CUDA the GELU runs in
    the first matrix product's epilogue (cuBLASLt), saving a pass over the [N, ffn_dim]
    activations; anything else runs the module as it is."""
    if (y.is_cuda and isinstance(ffn, nn.Sequential) and len(ffn) == 3 and isinstance(ffn[1], nn.GELU)
            and ffn[1].approximate == "tanh" and _plain_linear(ffn[0], y) and y.shape[1] > 0):
        first = ffn[0]
        h = torch._addmm_activation(first.bias, y.reshape(-1, y.shape[-1]), first.weight.t(), use_gelu=True)
        return ffn[2](h.view(*y.shape[:-1], h.shape[-1]))
    return ffn(y)


class CausalWan:
    """Chunk-by-chunk Wan forward with a preallocated KV cache.

    module: a Wan module tree (already on ``device``, any dtype ComfyUI or lipar uses).
    dtype: compute dtype of activations and the KV cache.
    backend: the user's attention option (``lipar.attention.BACKENDS``), or ``attention``: a strategy
    object (tests and benchmarks pass one to compare kernels); either way it is prepared once here.
    fp8: "off", or the ``lipar.fp8`` policy ("ffn" or "all") whose linear layers run as fp8 products.
    """

    def __init__(self, module: nn.Module, *, device: torch.device | str, dtype: torch.dtype,
                 backend: str = "auto", attention: Attention | None = None, fp8: str = "off"):
        self.cfg = check_wan_module(module)
        self.module = module
        self.device = torch.device(device)
        self.dtype = dtype
        self.backend = backend
        self.attn = (attention or choose_attention(self.device, backend)).prepare(
            dtype, self.cfg.num_heads, self.cfg.head_dim, self.device)
        self._dup_scratch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.fp8 = None if fp8 == "off" else self._fp8_linears(fp8)
        self.text_k: torch.Tensor | None = None   # [layers, B, Ltext, H, D]
        self.text_v: torch.Tensor | None = None
        self.cache_k: torch.Tensor | None = None  # [layers, B, capacity, H, D]
        self.cache_v: torch.Tensor | None = None
        self._mods = [b.modulation for b in module.blocks]
        self._head_mod = module.head.modulation

    # ---- per-run setup -----------------------------------------------------------
    def _fp8_linears(self, which: str) -> Fp8Linears | None:
        """The run's fp8 weights (``GraphedCausalWan`` keeps them with its graphs); None, with a
        warning, when they cannot be prepared here (the run then computes in its own dtype)."""
        try:
            return Fp8Linears(self.module, dtype=self.dtype, device=self.device, which=which)
        except (LiparError, RuntimeError) as e:
            log.warning("fp8 compute unavailable (%s); computing in %s.", e, self.dtype)
            return None

    def _linear(self, lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return lin(x) if self.fp8 is None else self.fp8.linear(lin, x)

    def encode_text(self, context: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Cross-attention keys/values of the text, once per run.

        context: [B, L <= text_len, text_dim] umt5 embedding; zero-padded to text_len.
        out: optional preallocated ``[layers, B, text_len, H, D]`` buffers to fill (CUDA graphs
        keep their addresses).
        """
        cfg = self.cfg
        b, l, d = context.shape
        if d != cfg.text_dim:
            raise LiparError(f"The text embedding has width {d}; this Wan model expects {cfg.text_dim} "
                             "(umt5-xxl). Encode the prompt with the umt5-xxl text encoder (CLIP type 'wan').")
        if l > cfg.text_len:
            raise LiparError(f"The text embedding has {l} tokens; Wan takes at most {cfg.text_len}.")
        ctx = torch.zeros(b, cfg.text_len, d, device=self.device, dtype=self.dtype)
        ctx[:, :l] = context.to(self.device, self.dtype)
        ctx = self.module.text_embedding(ctx)
        h, hd = cfg.num_heads, cfg.head_dim
        if out is None:
            shape = (cfg.num_layers, b, cfg.text_len, h, hd)
            out = (torch.empty(shape, device=self.device, dtype=self.dtype),
                   torch.empty(shape, device=self.device, dtype=self.dtype))
        for i, blk in enumerate(self.module.blocks):
            ca = blk.cross_attn
            out[0][i] = ca.norm_k(ca.k(ctx)).view(b, -1, h, hd)
            out[1][i] = ca.v(ctx).view(b, -1, h, hd)
        self.text_k, self.text_v = out

    def allocate_cache(self, batch: int, capacity: int, scratch: int = 0) -> None:
        """KV cache buffers: keys and values ``[layers, B, capacity, H, head_dim]``. ``scratch``:
        token length of the one-layer buffers where materialised duplicates are assembled."""
        cfg = self.cfg
        shape = (cfg.num_layers, batch, capacity, cfg.num_heads, cfg.head_dim)
        self.cache_k = torch.empty(shape, device=self.device, dtype=self.dtype)
        self.cache_v = torch.empty(shape, device=self.device, dtype=self.dtype)
        self._dup_scratch = None
        if scratch:
            self._dup_scratch = (torch.empty((batch, scratch) + shape[3:], device=self.device, dtype=self.dtype),
                                 torch.empty((batch, scratch) + shape[3:], device=self.device, dtype=self.dtype))

    def begin_chunk(self, lay: ChunkLayout) -> None:
        """Before a chunk's passes, once for all layers: when the KV window has moved, gather
        the tokens the chunk still sees into place (one layer at a time, so the temporary is one
        layer's keys); then the attention strategy's per-chunk state (the bias in its units)."""
        for i in range(self.cfg.num_layers if lay.gather_src is not None else 0):
            move_visible(self.cache_k[i], self.cache_v[i], lay)
        self.attn.begin_chunk(lay)

    def plan_buckets(self, layouts: list[ChunkLayout]) -> None:
        """Eager passes take any shape; ``GraphedCausalWan`` picks its CUDA-graph buckets here."""

    def cache_bytes(self) -> int:
        """Bytes of the KV cache (keys and values of all layers) this run allocated."""
        return sum(t.numel() * t.element_size() for t in (self.cache_k, self.cache_v) if t is not None)

    def release(self) -> None:
        self.text_k = self.text_v = self.cache_k = self.cache_v = self._dup_scratch = None

    # ---- one pass ----------------------------------------------------------------
    def time_embeddings(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep [B, F] -> (e [B, F, dim], e0 [B, F, 6, dim]) in the compute dtype."""
        b, f = timestep.shape
        m = self.module
        sin = sinusoidal_embedding(self.cfg.freq_dim, timestep.flatten()).to(self.dtype)
        e = m.time_embedding(sin)
        e0 = m.time_projection(e).view(b, f, 6, self.cfg.dim)
        return e.view(b, f, self.cfg.dim), e0

    def embed(self, latent: torch.Tensor, timestep: torch.Tensor, layout: ChunkLayout):
        """Kept tokens and time embeddings of a chunk: x [B, Nk, dim], e [B, 1|Nk, dim], e0 [B, 1|Nk, 6, dim]."""
        # ComfyUI's WanModel keeps the patch embedding in float32 while the rest is bf16/fp16:
        # feed it its own (float) weight dtype, then continue in the compute dtype.
        pe = self.module.patch_embedding
        w = getattr(pe, "weight", None)
        in_dtype = w.dtype if w is not None and w.dtype in (torch.float32, torch.float16, torch.bfloat16) else self.dtype
        x = pe(latent.to(in_dtype)).to(self.dtype)                # [B, dim, F, Hp, Wp]
        x = x.flatten(2).transpose(1, 2)                         # [B, F*Hp*Wp, dim]
        if layout.kept_idx is not None:
            x = x[:, layout.kept_idx]
        e, e0 = self.time_embeddings(timestep)                   # [B, 1|F, dim], [B, 1|F, 6, dim]
        if timestep.shape[1] > 1:                                # per-frame timesteps -> per token
            e, e0 = e[:, layout.token_frame], e0[:, layout.token_frame]
        return x, e, e0

    def forward_chunk(self, latent: torch.Tensor, timestep: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
        """Flow prediction for one chunk. latent [B, 16, F, H, W], timestep [B, F] or [B, 1]."""
        if layout.num_kept == 0:   # every token pruned: nothing to compute, nothing to cache
            return latent.new_zeros(latent.shape, dtype=self.dtype)
        x, e, e0 = self.embed(latent, timestep, layout)
        with self.attn.context():
            for i in range(self.cfg.num_layers):
                q, k, v = self.pre_attention(i, x, e0, layout.rope)
                x = self.post_attention(i, x, self.self_attention(i, q, k, v, layout), e0)
        return self.unpatchify(self.head(x, e), layout, latent.shape[0])

    def pre_attention(self, i: int, x: torch.Tensor, e0: torch.Tensor, rope: torch.Tensor,
                      out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
        """Block i up to self-attention: RoPE'd q, k and v, each [B, N, H, D] (written into
        ``out`` when given)."""
        cfg = self.cfg
        b, n, _ = x.shape
        h, hd = cfg.num_heads, cfg.head_dim
        blk = self.module.blocks[i]
        mod = (self._mods[i].to(self.device, self.dtype).unsqueeze(0) + e0).unbind(2)  # 6 x [B, 1|N, dim]
        sa = blk.self_attn
        y = modulated_norm(blk.norm1, x, mod[0], mod[1])
        qo, ko, vo = out if out is not None else (None, None, None)
        q, k, v = (self.fp8.linears([sa.q, sa.k, sa.v], y) if self.fp8 is not None else (sa.q(y), sa.k(y), sa.v(y)))
        q = apply_rope(sa.norm_q(q).view(b, n, h, hd), rope, out=qo)
        k = apply_rope(sa.norm_k(k).view(b, n, h, hd), rope, out=ko)
        v = v.view(b, n, h, hd)
        return q, k, (v if vo is None else vo.copy_(v))

    def self_attention(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lay: ChunkLayout) -> torch.Tensor:
        """Store this chunk's k/v in layer i's cache, add recovery keys, attend: [B, Nk, H, D]."""
        keys, values = fill_keys(self.cache_k[i], self.cache_v[i], k, v, lay, scratch=self._dup_scratch)
        return self.attn(q, keys, values, lay)

    def post_attention(self, i: int, x: torch.Tensor, a: torch.Tensor, e0: torch.Tensor) -> torch.Tensor:
        """Block i after self-attention (output projection, cross-attention, FFN)."""
        cfg = self.cfg
        b, n, _ = x.shape
        blk = self.module.blocks[i]
        mod = (self._mods[i].to(self.device, self.dtype).unsqueeze(0) + e0).unbind(2)
        x = torch.addcmul(x, self._linear(blk.self_attn.o, a.flatten(2)), mod[2])
        ca = blk.cross_attn
        qc = ca.norm_q(self._linear(ca.q, blk.norm3(x))).view(b, n, cfg.num_heads, cfg.head_dim)
        x = x + self._linear(ca.o, self.attn.cross(qc, self.text_k[i], self.text_v[i]).flatten(2))
        y = modulated_norm(blk.norm2, x, mod[3], mod[4])
        ffn = feed_forward(blk.ffn, y) if self.fp8 is None else self.fp8.ffn(blk.ffn, y, fallback=feed_forward)
        return torch.addcmul(x, ffn, mod[5])

    def head(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Output head: [B, N, dim] -> [B, N, 4 * out_dim]."""
        head = self.module.head
        hm = (self._head_mod.to(self.device, self.dtype).unsqueeze(0) + e.unsqueeze(2)).unbind(2)  # 2 x [B, *, dim]
        return head.head(modulated_norm(head.norm, x, hm[0], hm[1]))

    def unpatchify(self, out: torch.Tensor, lay: ChunkLayout, b: int) -> torch.Tensor:
        """[B, Nk, 4*C] token predictions -> [B, C, F, H, W] (zeros at pruned positions)."""
        hp, wp = lay.grid
        c = self.cfg.out_dim
        if lay.kept_idx is not None:
            full = out.new_zeros(b, lay.tokens, out.shape[-1])
            full[:, lay.kept_idx] = out
            out = full
        # token features are laid out (pt=1, ph=2, pw=2, c) as in Wan's head
        x = out.view(b, lay.frames, hp, wp, 2, 2, c)
        return x.permute(0, 6, 1, 2, 4, 3, 5).reshape(b, c, lay.frames, hp * 2, wp * 2)


def forward_once(module: nn.Module, latent: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, *,
                 dtype: torch.dtype | None = None, backend: str = "sdpa") -> torch.Tensor:
    """Plain (non-causal) forward of a whole latent as one chunk with no cache.

    latent [B, 16, F, H, W], timestep [B] or [B, F], context [B, L, text_dim] -> flow [B, 16, F, H, W].
    """
    device = latent.device
    runner = CausalWan(module, device=device, dtype=dtype or latent.dtype, backend=backend)
    b, _, f, h, w = latent.shape
    (lay,) = build_layouts(latent.shape, runner.cfg, f, device=device,
                           dtype=torch.float64 if runner.dtype == torch.float64 else torch.float32)
    runner.allocate_cache(b, lay.key_len)
    runner.encode_text(context)
    ts = timestep.view(b, -1).to(device)
    try:
        runner.begin_chunk(lay)
        return runner.forward_chunk(latent, ts, lay)
    finally:
        runner.release()
