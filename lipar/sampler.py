"""Self-Forcing chunk-wise sampling, with or without a LIPAR pruning plan.

Per chunk of ``chunk_frames`` latent frames (the last one may be shorter, see
``lipar.chunks``): start from noise (generation) or from the
source latent noised to the first step (SDEdit editing); for each step predict the
flow, take ``x0 = x_t - s v`` and re-noise to the next step with fresh noise; then run
one clean pass at timestep 0 over ``x0`` whose keys/values become the chunk's KV cache
(skipped after the last chunk, where nothing reads it).

Without a plan every token is computed: this is the unpruned baseline. With a plan only
kept tokens are computed; the returned latent holds zeros at pruned positions until
``lipar.restore.restore_latent`` fills them. The KV cache rolls with ``window_frames`` /
``sink_frames`` (Self-Forcing's ``local_attn_size`` / ``sink_size``) once a video outgrows it.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .attention import BACKENDS, Attention, check_backend
from .causal import CausalWan
from .chunks import KVWindow, chunk_spans
from .errors import LiparError
from .plan import PruningPlan, restrict_to_window
from .recovery import build_layouts, check_recovery
from .schedule import EDITING_STEPS, GENERATION_STEPS, check_shift, parse_steps, sigmas
from .validate import check_latent

MODES = ("edit", "generate")
FP8_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class SamplerConfig:
    mode: str = "edit"                     # "edit": SDEdit from the source latent; "generate": from noise
    steps: tuple[int, ...] | None = None   # None: (400, 350, 250) for edit, (1000, 750, 500, 250) for generate
    shift: float = 5.0
    chunk_frames: int = 3
    seed: int = 0
    recovery: str = "noise_aware"          # none | m_degree | noise_aware
    recovery_form: str = "compressed"      # compressed (log-multiplicity) | exact (materialised duplicates)
    backend: str = "auto"                  # attention: auto | sdpa | cudnn | flash_attn (lipar.attention.BACKENDS)
    dtype: torch.dtype | None = None       # compute dtype; None: bfloat16 on CUDA, float32 elsewhere
    fp8: str = "auto"                      # fp8 linear layers: auto (when the model's weights are fp8) | on | off
    cuda_graphs: bool | None = None        # replay passes as CUDA graphs; None: on for CUDA devices
    window_frames: int = 21                # KV cache / attention window in latent frames (0: no limit)
    sink_frames: int = 3                   # first frames kept for the whole video once the window rolls

    @property
    def window(self) -> KVWindow:
        return KVWindow(self.window_frames, self.sink_frames)

    def resolved_steps(self) -> tuple[int, ...]:
        if self.steps is None:
            return EDITING_STEPS if self.mode == "edit" else GENERATION_STEPS
        return parse_steps(self.steps)

    def validate(self) -> "SamplerConfig":
        if self.mode not in MODES:
            raise LiparError(f"Unknown sampling mode {self.mode!r}; choose 'edit' or 'generate'.")
        self.resolved_steps()
        check_shift(self.shift)
        if not (1 <= self.chunk_frames <= 64):
            raise LiparError(f"chunk_frames must be within [1, 64]; got {self.chunk_frames}. Self-Forcing uses 3.")
        check_recovery(self.recovery, self.recovery_form)
        if self.fp8 not in FP8_MODES:
            raise LiparError(f"Unknown fp8 setting {self.fp8!r}; choose one of {list(FP8_MODES)}.")
        if self.backend not in BACKENDS:
            raise LiparError(f"Unknown attention backend {self.backend!r}; choose one of {list(BACKENDS)}.")
        self.window.validate(self.chunk_frames)
        return self


@dataclass(frozen=True)
class PassInfo:
    """Where sampling is, handed to ``on_pass`` before each transformer pass."""

    sample: int
    chunk: int
    num_chunks: int
    step: int           # 0..len(steps)-1 for denoising, len(steps) for the cache-update pass
    num_steps: int
    done: int           # passes finished so far (all samples)
    total: int          # passes in the whole run


@dataclass
class SampleResult:
    latent: torch.Tensor                  # [B, 16, T, H, W]; zeros at pruned positions
    seconds: float                        # wall time of sampling (device synchronised)
    passes: int
    tokens_computed: int                  # sum over passes of query tokens through the transformer
    tokens_full: int                      # the same for an unpruned run
    info: dict[str, Any] = field(default_factory=dict)
    plan: PruningPlan | None = None       # the plan the run used (restricted to its KV window)


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _check_context(context: torch.Tensor, batch: int) -> torch.Tensor:
    if not isinstance(context, torch.Tensor) or context.ndim != 3:
        shape = list(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
        raise LiparError(f"The text conditioning must be a [B, L, 4096] umt5 embedding; got {shape}.")
    if context.shape[0] not in (1, batch):
        raise LiparError(f"The text conditioning has batch {context.shape[0]} but the latent has {batch}.")
    if context.shape[1] == 0:
        raise LiparError("The text conditioning is empty (0 tokens).")
    if not bool(torch.isfinite(context).all()):
        raise LiparError("The text conditioning contains NaN or Inf values.")
    return context


def _graphs_decision(asked: bool | None, module: nn.Module, device: torch.device) -> tuple[bool, str]:
    """Whether passes replay CUDA graphs, and why (for the run's report). ``asked`` None: on
    CUDA unless the model computes weights on the fly from patches (see ``has_weight_hooks``)."""
    if asked is False:
        return False, "eager (CUDA graphs turned off)"
    if device.type != "cuda":
        if asked:
            raise LiparError("cuda_graphs=True needs a CUDA device.")
        return False, f"eager (CUDA graphs need a CUDA device; this run is on {device.type})"
    from .graphs import has_weight_hooks

    if has_weight_hooks(module):
        if asked:
            raise LiparError("CUDA graphs cannot follow weights that are patched on the fly (a LoRA on a partly "
                             "loaded model); run with cuda_graphs=None or False.")
        return False, "eager (weights are patched on the fly, e.g. a LoRA on a partly loaded model)"
    return True, "CUDA graphs"


def _fp8_policy(asked: str, module: nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    """Which linear layers run as fp8 products: "off" or "all" (every block linear; the same with or
    without CUDA graphs, so eager and graph runs compute the same thing). ``asked`` "auto": on where
    the model's block weights are already fp8 (ComfyUI's fp8 weight dtypes, scaled-fp8 checkpoints)
    and the GPU has fp8 tensor cores; "on": also for bf16/fp16 weights (quantised per output channel)."""
    if asked == "off" or dtype not in (torch.bfloat16, torch.float16):
        if asked == "on":
            raise LiparError(f"fp8 compute needs a bf16 or fp16 compute dtype; this run computes in {dtype}.")
        return "off"
    from .fp8 import fp8_supported

    if not fp8_supported(device):
        if asked == "on":
            raise LiparError(f"fp8 compute needs a CUDA GPU with fp8 tensor cores (Ada, Hopper or newer); this run is "
                             f"on {device}. Set fp8 to 'auto' or 'off'.")
        return "off"
    if asked == "auto" and not any(_is_fp8(p) for p in module.blocks.parameters()):
        return "off"
    return "all"


def _is_fp8(t: torch.Tensor) -> bool:
    data = getattr(t, "_qdata", t)       # ComfyUI's QuantizedTensor keeps its fp8 data in _qdata
    return isinstance(data, torch.Tensor) and data.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def sample(module: nn.Module, context: torch.Tensor, latent: torch.Tensor, *,
           plan: PruningPlan | None = None, config: SamplerConfig | None = None,
           device: torch.device | str | None = None,
           on_pass: Callable[[PassInfo], None] | None = None,
           on_chunk: Callable[[int, int, torch.Tensor], None] | None = None,
           attention: Attention | None = None) -> SampleResult:
    """Run Self-Forcing sampling over a whole video latent.

    module:   a Wan2.1 DiT module tree (lipar ``WanDiT`` or ComfyUI ``WanModel``) on ``device`` (default: where
              its parameters are; any GPU, the current one or not).
    context:  [1 or B, L <= 512, 4096] text embedding.
    latent:   [B, 16, T, H, W] source latent (edit) or a latent of the output's shape (generate);
              any T (the last chunk may be short).
    plan:     optional pruning plan made for this latent (see ``lipar.plan.build_plan``).
    on_pass:  called before every transformer pass; raising from it cancels cleanly.
    on_chunk: called as ``on_chunk(sample, chunk, x0)`` with each finished chunk's denoised latent
              x0 [1, 16, F, H, W] on the device (e.g. for previews; do not keep a reference).
    attention: a strategy to use instead of ``choose_attention(device, config.backend)`` (tests and
              benchmarks compare kernels with it; see ``lipar.attention``).
    """
    device = torch.device(device) if device is not None else next(module.parameters()).device
    if device.type == "cuda" and device.index not in (None, torch.cuda.current_device()):
        # Triton kernels, CUDA-graph captures and events go to the current GPU: make it the model's.
        with torch.cuda.device(device):
            return sample(module, context, latent, plan=plan, config=config, device=device, on_pass=on_pass,
                          on_chunk=on_chunk, attention=attention)
    entered = time.perf_counter()
    config = (config or SamplerConfig()).validate()
    check_latent(latent, what="latent")
    b, c, t, h, w = latent.shape
    context = _check_context(context, b)
    dtype = config.dtype or default_dtype(device)
    steps = config.resolved_steps()
    window_kept = 0
    if plan is not None:
        plan.check_latent(latent, config.chunk_frames)
        plan, window_kept = restrict_to_window(plan, config.window)
    use_graphs, graphs_note = _graphs_decision(config.cuda_graphs, module, device)
    check_backend(config.backend, device)
    fp8 = _fp8_policy(config.fp8, module, device, dtype)
    # The noise comes from a seeded CPU generator (the same seed gives the same video on any device),
    # drawn step by step in a worker thread (PyTorch releases the GIL) while the runner is set up and
    # the first passes run.
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    noise = _noise(len(steps), (b, c, t, h, w), int(config.seed), state_dtype, device)
    if use_graphs:
        from .graphs import GraphedCausalWan
        runner = GraphedCausalWan(module, device=device, dtype=dtype, backend=config.backend, attention=attention,
                                  fp8=fp8)
    else:
        runner = CausalWan(module, device=device, dtype=dtype, backend=config.backend, attention=attention, fp8=fp8)
    if runner.cfg.in_dim != c:
        raise LiparError(f"The latent has {c} channels but the model takes {runner.cfg.in_dim}.")

    sig = sigmas(steps, config.shift)
    spans = chunk_spans(t, config.chunk_frames)
    cache_passes = len(spans) - 1      # the last chunk's cache pass would feed no later chunk
    total = b * (len(spans) * len(steps) + cache_passes)
    # Noise, source and output stay on the host (pinned for CUDA); each chunk's slices move to the
    # device as it runs, so device memory does not grow with the video's length.
    src = _host(latent.detach().to("cpu", state_dtype), device)
    out = _host(torch.zeros_like(src), device)
    noise.step(0)      # sampling starts once the first step's noise is there; the rest follows during it

    progress = _Progress(on_pass, total)
    clock = _ChunkClock(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    finite = []
    try:
        for bi in range(b):
            ctx = context[bi:bi + 1] if context.shape[0] == b else context
            sample_plan = plan.select(bi) if plan is not None else None
            chunk_done = None if on_chunk is None else (lambda ci, x0, bi=bi: on_chunk(bi, ci, x0))
            ok = _sample_one(runner, ctx, src[bi:bi + 1], noise.sample(bi), out[bi:bi + 1], sample_plan, config,
                             sig, cache_passes, progress.at_sample(bi), clock, chunk_done)
            finite.append(ok)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        kv_cache_bytes = runner.cache_bytes()
        runner.release()
    seconds = time.perf_counter() - start
    _check_finite(torch.stack(finite), spans, dtype)
    if plan is not None:
        out = torch.where(plan.pixel_mask().to(out.device), out, torch.zeros_like(out))
    hw = (h // 2) * (w // 2)
    tokens_full = b * sum(n * hw * (len(steps) + (i < cache_passes)) for i, (_, n) in enumerate(spans))
    info = {"steps": list(steps), "sigmas": sig, "chunks": len(spans), "dtype": str(dtype).replace("torch.", ""),
            "backend": config.backend, **runner.attn.describe(),
            "fp8": fp8 if runner.fp8 is not None else "off",
            "fp8_linears": len(runner.fp8) if runner.fp8 is not None else 0,
            "recovery": config.recovery if plan is not None else "unpruned",
            "recovery_form": config.recovery_form, "cuda_graphs": use_graphs, "path": graphs_note,
            "kernels": "triton" if _triton_available() and device.type == "cuda" else "pytorch",
            "capture_seconds": round(getattr(runner, "capture_seconds", 0.0), 4),
            "window_frames": config.window_frames, "sink_frames": config.sink_frames,
            "window_rolls": config.window.evicts(t, config.chunk_frames), "window_kept_tokens": window_kept,
            "kv_cache_bytes": kv_cache_bytes, "chunk_seconds": clock.seconds(),
            "setup_seconds": round(start - entered, 4)}
    if plan is not None:
        info.update(plan.stats())
    return SampleResult(out.to(latent.device, latent.dtype), seconds, total, progress.tokens, tokens_full, info, plan)


_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lipar-noise")


class _Noise:
    """The run's noise, one [B, C, T, H, W] standard normal draw per step from one CPU generator, in
    host memory the device copies from without blocking. Step i is the generator's (i+1)-th draw, so
    with Wan's 16 channels the values equal one [steps, B, C, T, H, W] draw (PyTorch draws normals 16
    at a time), and the same seed gives the same noise on any device. The draws run in order on the
    one worker thread; ``step(i)`` waits for draw i only."""

    def __init__(self, jobs: list[Future], batch: slice = slice(None)):
        self._jobs, self._batch = jobs, batch

    def step(self, i: int) -> torch.Tensor:
        """[B, C, T, H, W] (or [1, ...] for one sample's view) noise of step ``i``."""
        return self._jobs[i].result()[self._batch]

    def sample(self, index: int) -> "_Noise":
        """The same noise seen by sample ``index`` of the batch alone: [1, C, T, H, W] per step."""
        return _Noise(self._jobs, slice(index, index + 1))


def _noise(steps: int, shape: tuple[int, ...], seed: int, dtype: torch.dtype, device: torch.device) -> _Noise:
    """Start drawing ``steps`` noise tensors of ``shape`` [B, C, T, H, W] on the worker thread (see ``_Noise``)."""
    gen = torch.Generator().manual_seed(seed)
    return _Noise([_WORKER.submit(_draw, shape, gen, dtype, device) for _ in range(steps)])


def _draw(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _host(torch.randn(shape, generator=gen).to(dtype), device)


def _host(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` in host memory that ``device`` copies from and to without blocking (pinned for CUDA)."""
    return x.pin_memory() if device.type == "cuda" else x


def _triton_available() -> bool:
    from .kernels import triton_available

    return triton_available()


class _ChunkClock:
    """Per-chunk wall time without a host sync per chunk: CUDA events read once at the end
    (perf_counter on the CPU). Chunks of all samples are listed in order."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append(e)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        pairs = zip(self.marks[0::2], self.marks[1::2])
        if self.cuda:
            return [round(a.elapsed_time(b) / 1000.0, 5) for a, b in pairs]
        return [round(b - a, 5) for a, b in pairs]


def _check_finite(finite: torch.Tensor, spans: list[tuple[int, int]], dtype: torch.dtype) -> None:
    """One host read of the per-chunk flags [B, chunks] the run kept on the device: raise naming
    the first chunk whose output is not finite (later chunks inherit it through the cache)."""
    bad = (~finite).nonzero().tolist()
    if not bad:
        return
    bi, c = bad[0]
    f0, f1 = spans[c][0], spans[c][0] + spans[c][1] - 1
    cause = ("float16 overflows in Wan's activations: set the weight dtype or compute dtype to bf16 (or fp32)"
             if dtype == torch.float16 else
             "check that the model file loads without NaN/Inf weights (a broken or truncated checkpoint), and "
             "that the text conditioning and the latent come from the Wan2.1 text encoder and VAE")
    raise LiparError(f"The model produced NaN or Inf values in chunk {c} (latent frames {f0}-{f1}) of sample {bi}, "
                     f"computed in {str(dtype).replace('torch.', '')}; everything after it would be garbage. "
                     f"Likely fix: {cause}.")


class _Progress:
    """Counts passes and computed tokens, and reports each pass to ``on_pass``."""

    def __init__(self, on_pass: Callable[[PassInfo], None] | None, total: int):
        self.on_pass, self.total = on_pass, total
        self.done = self.tokens = 0
        self.sample = 0

    def at_sample(self, index: int) -> "_Progress":
        self.sample = index
        return self

    def before(self, chunk: int, num_chunks: int, step: int, num_steps: int) -> None:
        if self.on_pass is not None:
            self.on_pass(PassInfo(self.sample, chunk, num_chunks, step, num_steps, self.done, self.total))

    def after(self, tokens: int) -> None:
        self.done += 1
        self.tokens += tokens


def _sample_one(runner: CausalWan, context: torch.Tensor, src: torch.Tensor, noise: _Noise, out: torch.Tensor,
                plan: PruningPlan | None, config: SamplerConfig, sig: list[float], cache_passes: int,
                progress: _Progress, clock: _ChunkClock,
                on_chunk: Callable[[int, torch.Tensor], None] | None) -> torch.Tensor:
    """Sample one video into ``out``. src, out [1, C, T, H, W] and each step of noise [1, C, T, H, W] in host
    memory. Returns finite [chunks] bool on the device: whether each chunk's output is all finite."""
    device = runner.device
    layouts = build_layouts(tuple(src.shape), runner.cfg, config.chunk_frames, plan=plan, mode=config.recovery,
                            form=config.recovery_form, window=config.window, device=device, dtype=src.dtype)
    runner.plan_buckets(layouts)
    # The cache holds kept tokens only; materialised duplicates (exact form) are assembled
    # per layer in one scratch buffer.
    runner.allocate_cache(1, max(lay.key_end - lay.num_dups for lay in layouts),
                          scratch=max(lay.key_len for lay in layouts) if any(lay.num_dups for lay in layouts) else 0)
    runner.encode_text(context)
    n_steps, n_chunks = len(sig), len(layouts)
    finite = torch.ones(n_chunks, dtype=torch.bool, device=device)
    for lay in layouts:
        clock.mark()
        runner.begin_chunk(lay)
        sl = slice(lay.frame_start, lay.frame_start + lay.frames)
        x = noise.step(0)[:, :, sl].to(device, non_blocking=True)         # [1, C, F, H, W]
        if config.mode == "edit":   # SDEdit: the source noised to the first step
            x = (1.0 - sig[0]) * src[:, :, sl].to(device, non_blocking=True) + sig[0] * x
        x0 = x
        for i, s in enumerate(sig):
            progress.before(lay.index, n_chunks, i, n_steps)
            v = runner.forward_chunk(x, torch.full((1, 1), s * 1000.0, device=device), lay).to(src.dtype)
            x0 = x - s * v
            if i + 1 < n_steps:      # re-noise with fresh noise to the next step
                eps = noise.step(i + 1)[:, :, sl].to(device, non_blocking=True)
                x = (1.0 - sig[i + 1]) * x0 + sig[i + 1] * eps
            progress.after(lay.num_kept)
        out[:, :, sl].copy_(x0, non_blocking=True)
        finite[lay.index] = torch.isfinite(x0).all()      # stays on the device: no sync per chunk
        if on_chunk is not None:
            on_chunk(lay.index, x0)
        if lay.index < cache_passes:  # clean pass at t=0: its keys/values become this chunk's cache
            progress.before(lay.index, n_chunks, n_steps, n_steps)
            runner.forward_chunk(x0, torch.zeros((1, 1), device=device), lay)
            progress.after(lay.num_kept)
        lay.drop_tables()
        clock.mark()
    return finite
