"""CUDA-graph replay of chunk passes, bucketed by kept-token count (issue: launch floor).

Eagerly, one 1.3B chunk pass issues ~1,200 small kernels; below ~3,000 tokens the GPU
waits on the CPU. Here the dense work of each block (everything but self-attention)
is captured once per *token bucket* as CUDA graphs and replayed:

    G_0 = pre-attention(block 0)
    G_i = post-attention(block i-1) + pre-attention(block i)      i = 1..L-1
    G_L = post-attention(block L-1) + head

Between graphs, self-attention runs eagerly with exact shapes (the chunk's kept
queries against the cache plus the chunk's kept keys and any recovery duplicates), so
padding a chunk's tokens up to its bucket never enters the softmax. Padded rows are
zeros at the start of every pass and their outputs are dropped.

Graphs, their static buffers and the text cross-attention buffers are cached per
model and reused by later runs while the model's weights stay where they are.
"""

from __future__ import annotations

import functools
import time
import weakref
from dataclasses import dataclass, field

import torch

from .causal import CausalWan
from .recovery import ChunkLayout


def choose_buckets(needs: list[int], existing: list[int] = (), granularity: int = 8,
                   max_waste: float = 0.1) -> dict[int, int]:
    """Map each token count to a bucket size: an existing bucket (e.g. graphs captured by an
    earlier run) or one made here (the count rounded up to ``granularity``), sharing a
    bucket whenever its padding stays within ``max_waste`` of the real count.

    Padding is paid in every pass of the chunk, a bucket's capture and memory once: on the
    H100, allowing only 4% padding (one more bucket) saved 0.8% of the pruned time and
    cost 2% more peak memory, so 10% it is; granularity 8 keeps a full 832x480 chunk
    (4680 tokens) unpadded."""
    buckets: list[int] = list(existing)
    out: dict[int, int] = {}
    for n in sorted(set(needs), reverse=True):
        fit = [b for b in buckets if b >= n and (b - n) <= max_waste * n]
        if fit:
            out[n] = min(fit)
        else:
            b = -(-n // granularity) * granularity
            buckets.append(b)
            out[n] = b
    return out


@dataclass
class _GraphSet:
    """Captured graphs for one bucket of N tokens, and the views of the shared static
    buffers they read and write."""

    n: int
    x: torch.Tensor            # [1, N, dim]
    e: torch.Tensor            # [1, 1, dim]
    e0: torch.Tensor           # [1, 1, 6, dim]
    rope: torch.Tensor         # [N, D/2] complex
    q: torch.Tensor            # [1, N, H, D]
    k: torch.Tensor
    v: torch.Tensor
    attn: torch.Tensor         # [1, N, H, D]
    out: torch.Tensor          # [1, N, 4*C]
    graphs: list = field(default_factory=list)


class _ModelGraphs:
    """What is cached for one model: signature, text buffers, graph sets per bucket.

    Passes never overlap, so every bucket's graphs use the first N rows of one set of
    static buffers sized for the largest bucket (and one memory pool): the graphs of a
    pruned run's several buckets cost no more static memory than its largest one."""

    def __init__(self, signature):
        self.signature = signature
        self.text: tuple[torch.Tensor, torch.Tensor] | None = None
        self.sets: dict[int, _GraphSet] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.fp8 = None            # lipar.fp8.Fp8Linears whose weight tensors the graphs read
        self.pool = torch.cuda.graph_pool_handle()

    @property
    def capacity(self) -> int:
        return self.buffers["x"].shape[1] if self.buffers else 0


_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, _ModelGraphs]" = weakref.WeakKeyDictionary()


def _tensor_identity(t: torch.Tensor) -> tuple:
    """Where a tensor's data lives and how it is laid out. Tensor subclasses that wrap other
    tensors (e.g. ComfyUI's quantized fp8 weights with their scales) are identified by their
    inner tensors."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
        names, _ = t.__tensor_flatten__()
        return (type(t).__name__,) + tuple(_tensor_identity(getattr(t, n)) for n in names)
    return (t.data_ptr(), t.dtype, tuple(t.shape), t.stride(), t.device)


def weights_signature(module: torch.nn.Module) -> tuple:
    """The identity of every tensor a captured graph of ``module`` reads: address, dtype, shape,
    strides and device of each parameter and buffer, plus each submodule's ComfyUI cast flag.

    A CUDA graph reads its weights from the addresses it was captured with. Hosts change
    weights between runs by putting new tensors into the module (ComfyUI's ModelPatcher sets
    a LoRA-patched copy with ``set_attr_param`` and restores the original the same way;
    offloading and reloading moves every tensor), so graphs stay valid exactly while every
    tensor is where it was: values written in place are read by the next replay as they are.
    Costs one pass over the parameters (~0.5 ms for the 1.3B model, measured in
    benchmarks/results; tests/test_graph_signature.py shows what changes it)."""
    tensors = tuple(_tensor_identity(t) for t in module.parameters())
    buffers = tuple(_tensor_identity(t) for t in module.buffers())
    casts = tuple(i for i, m in enumerate(module.modules()) if getattr(m, "comfy_cast_weights", False))
    return tensors, buffers, casts


def has_weight_hooks(module: torch.nn.Module) -> bool:
    """True when some submodule computes its weights on the fly from patches (ComfyUI's
    ``weight_function``/``bias_function``, used for LoRAs on partly loaded models): those
    patches are not module tensors, so a captured graph could not see them change."""
    return any(getattr(m, "weight_function", None) or getattr(m, "bias_function", None) for m in module.modules())


def _signature(runner: CausalWan) -> tuple:
    return (runner.dtype, runner.device, runner.attn.name, weights_signature(runner.module))


@functools.lru_cache(maxsize=None)
def _warmup_stream(device_index: int) -> torch.cuda.Stream:
    """One side stream per device for the warm-up passes before capture. cuBLAS keeps a
    workspace (~35 MB on an H100) for every stream it has run on, for the life of the
    process: a new stream per capture leaked one per captured bucket."""
    return torch.cuda.Stream(torch.device("cuda", device_index))


def clear_graph_cache() -> None:
    _CACHE.clear()


def release_graphs(module: torch.nn.Module) -> bool:
    """Drop the graphs, static buffers and memory pool kept for ``module`` (the next run
    captures again). Hosts call this when they need the memory; True if something was held."""
    return _CACHE.pop(module, None) is not None


class GraphedCausalWan(CausalWan):
    """``CausalWan`` whose chunk passes replay CUDA graphs (B = 1, one timestep per chunk).

    Falls back to the eager pass for per-frame timesteps or batch > 1.
    """

    MAX_SETS = 6   # graph sets kept per model (least recently used go first)

    def __init__(self, *args, granularity: int = 8, fp8: str = "off", **kw):
        super().__init__(*args, **kw)
        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        sig = _signature(self) + (fp8,)
        entry = _CACHE.get(self.module)
        if entry is None or entry.signature != sig:
            entry = _ModelGraphs(sig)
            _CACHE[self.module] = entry
        self.entry = entry
        if fp8 != "off":      # the graphs read the fp8 weights: keep them with the graphs, refreshed in place
            if entry.fp8 is None or not entry.fp8.current():
                entry.sets.clear()
                entry.fp8 = self._fp8_linears(fp8)
            else:
                entry.fp8.refresh()
            self.fp8 = entry.fp8
        self.granularity = granularity
        self.bucket_of: dict[int, int] = {}
        self.capture_seconds = 0.0

    # text buffers live in the cache so captured graphs keep valid addresses
    def encode_text(self, context, out=None):
        cfg = self.cfg
        shape = (cfg.num_layers, context.shape[0], cfg.text_len, cfg.num_heads, cfg.head_dim)
        if self.entry.text is None or self.entry.text[0].shape != shape:
            self.entry.text = (torch.empty(shape, device=self.device, dtype=self.dtype),
                               torch.empty(shape, device=self.device, dtype=self.dtype))
            self.entry.sets.clear()   # graphs captured against the old buffers
        super().encode_text(context, out=self.entry.text)

    def plan_buckets(self, layouts: list[ChunkLayout]) -> None:
        needs = [lay.num_kept for lay in layouts if lay.num_kept]
        self.bucket_of = choose_buckets(needs, list(self.entry.sets), self.granularity)
        self._reserve(max(self.bucket_of.values(), default=0))

    def _reserve(self, n: int) -> None:
        """Static buffers for buckets of up to ``n`` tokens; growing them drops the graphs
        captured against the old ones."""
        if n <= self.entry.capacity:
            return
        cfg, dev, dt = self.cfg, self.device, self.dtype
        h, hd = cfg.num_heads, cfg.head_dim
        self.entry.sets.clear()
        self.entry.buffers = {}      # free the old buffers before taking the new ones
        self.entry.buffers = {
            "x": torch.zeros(1, n, cfg.dim, device=dev, dtype=dt),
            "e": torch.zeros(1, 1, cfg.dim, device=dev, dtype=dt),
            "e0": torch.zeros(1, 1, 6, cfg.dim, device=dev, dtype=dt),
            "rope": torch.ones(n, hd // 2, device=dev, dtype=torch.complex64),
            "q": torch.zeros(1, n, h, hd, device=dev, dtype=dt),
            "k": torch.zeros(1, n, h, hd, device=dev, dtype=dt),
            "v": torch.zeros(1, n, h, hd, device=dev, dtype=dt),
            "attn": torch.zeros(1, n, h, hd, device=dev, dtype=dt),
            "out": torch.zeros(1, n, cfg.out_dim * 4, device=dev, dtype=dt),
        }

    def forward_chunk(self, latent, timestep, layout):
        if latent.shape[0] != 1 or timestep.shape[1] != 1 or layout.num_kept == 0:
            return super().forward_chunk(latent, timestep, layout)
        n = layout.num_kept
        gs = self._graph_set(self.bucket_of.get(n) or -(-n // self.granularity) * self.granularity)
        x, e, e0 = self.embed(latent, timestep, layout)
        gs.x[:, :n] = x
        gs.x[:, n:] = 0
        gs.e.copy_(e)
        gs.e0.copy_(e0)
        gs.rope[:n] = layout.rope
        with self.attn.context():
            gs.graphs[0].replay()
            for i in range(self.cfg.num_layers):
                a = self.self_attention(i, gs.q[:, :n], gs.k[:, :n], gs.v[:, :n], layout)
                gs.attn[:, :n] = a
                gs.graphs[i + 1].replay()
        return self.unpatchify(gs.out[:, :n], layout, 1)

    # ---- capture -----------------------------------------------------------------
    def _graph_set(self, n: int) -> _GraphSet:
        gs = self.entry.sets.pop(n, None)
        if gs is not None:
            self.entry.sets[n] = gs     # most recently used last
            return gs
        while len(self.entry.sets) >= self.MAX_SETS:
            self.entry.sets.pop(next(iter(self.entry.sets)))
        t0 = time.perf_counter()
        self._reserve(n)
        cfg, dev = self.cfg, self.device
        buf = self.entry.buffers
        gs = _GraphSet(n=n, e=buf["e"], e0=buf["e0"], rope=buf["rope"][:n],
                       **{name: buf[name][:, :n] for name in ("x", "q", "k", "v", "attn", "out")})
        segs = [lambda j=j: self._segment(gs, j) for j in range(cfg.num_layers + 1)]
        side = _warmup_stream(dev.index if dev.index is not None else torch.cuda.current_device())
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side), self.attn.context():
            for seg in segs:          # warm-up: lazy inits happen outside capture
                seg()
        torch.cuda.current_stream(dev).wait_stream(side)
        with self.attn.context():
            for seg in segs:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=self.entry.pool):
                    seg()
                gs.graphs.append(g)
        torch.cuda.synchronize(dev)
        self.entry.sets[n] = gs
        self.capture_seconds += time.perf_counter() - t0
        return gs

    def _segment(self, gs: _GraphSet, j: int) -> None:
        """Graph j: post-attention of block j-1 (j > 0), then pre-attention of block j or the head."""
        if j > 0:
            gs.x.copy_(self.post_attention(j - 1, gs.x, gs.attn, gs.e0))
        if j < self.cfg.num_layers:
            self.pre_attention(j, gs.x, gs.e0, gs.rope, out=(gs.q, gs.k, gs.v))
        else:
            gs.out.copy_(self.head(gs.x, gs.e))
