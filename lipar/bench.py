"""``python -m lipar bench``: time the sampler, unpruned vs pruned, on a synthetic clip.

Without ``--model`` the model is randomly initialised with the real architecture
(speed does not depend on weight values); the JSON says so under ``weights``.

Every option is checked by ``BenchOptions.validate()`` before any model is built or any
sampling runs; it returns a ``BenchSetup`` (the options resolved and typed) that
``run_bench`` works from. A new option needs a field on ``BenchOptions`` and, if it can
be wrong, a check in ``validate()``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

import torch

from .attention import BACKENDS, check_backend
from .clips import KINDS as CLIP_KINDS
from .chunks import UNBOUNDED, KVWindow, chunk_spans
from .clips import ClipSpec, make_clip
from .config import PRESETS, WAN_1_3B, WanConfig, preset
from .errors import LiparError
from .model import build_model
from .plan import PlanConfig, PruningPlan, build_plan, restrict_to_window
from .recovery import RECOVERY_FORMS, RECOVERY_MODES
from .restore import restore_latent
from .sampler import FP8_MODES, PassInfo, SamplerConfig, default_dtype, sample
from .schedule import parse_steps

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GRAPHS = {"auto": None, "on": True, "off": False}
MAX_SEED = 2 ** 63 - 1
MAX_REPEAT = 1000
MAX_TARGET_PRUNE = 0.95
TARGET_TOLERANCE = 0.02         # largest |achieved - target| prune ratio accepted by --target-prune
FIT_THRESHOLD_RANGE = (0.0, 4.0)
# Options that only mean something with --compare, and their values when not given.
COMPARE_DEFAULTS = {"threshold": 0.15, "anchor_threshold": 0.3, "target_prune": None,
                    "forms": "exact,compressed", "modes": "none,m_degree,noise_aware"}


@dataclass
class BenchOptions:
    """The options as given; ``None`` for the --compare options means 'not given'."""

    config: str = "tiny"
    device: str = "cpu"
    frames: int = 81
    height: int = 480
    width: int = 832
    steps: str | None = None
    mode: str = "edit"
    clip: str = "objects"
    model: str | None = None
    dtype: str | None = None
    compare: bool = False
    recovery: str = "noise_aware"  # unused (the runs come from modes/forms); kept for existing callers
    forms: str | None = None
    threshold: float | None = None
    anchor_threshold: float | None = None
    target_prune: float | None = None
    repeat: int = 3
    seed: int = 0
    backend: str = "auto"
    graphs: str = "auto"       # auto | on | off
    fp8: str = "auto"          # fp8 linear layers: auto | on | off (lipar.sampler.FP8_MODES)
    modes: str | None = None
    window_frames: int = 21    # KV window in latent frames (0: no limit); the sampler's default
    sink_frames: int = 3

    def validate(self) -> "BenchSetup":
        """Check every option and resolve defaults; raises LiparError naming the problem and the fix.

        Runs no model and allocates nothing big: call it before any work. A new option gets
        its check here (and, for the sampler, a field in ``_sampler_config``).
        """
        _check_choice("--config", self.config, sorted(PRESETS))
        _check_choice("--mode", self.mode, ["edit", "generate"])
        _check_choice("--clip", self.clip, list(CLIP_KINDS))
        _check_choice("--dtype", self.dtype, [None, *DTYPES])
        _check_choice("--backend", self.backend, list(BACKENDS))
        _check_choice("--graphs", self.graphs, list(GRAPHS))
        _check_choice("--fp8", self.fp8, list(FP8_MODES))
        check_seed(self.seed)
        _check_repeat(self.repeat)
        _check_model_path(self.model)
        device = check_device(self.device)
        dtype = DTYPES[self.dtype] if self.dtype else default_dtype(device)
        sampler = _sampler_config(self, device, dtype)
        dims = video_to_latent_dims(self.frames, self.height, self.width)
        options = _with_compare_defaults(self)
        plan_config, runs = _compare_setup(options, sampler.chunk_frames, forms_given=self.forms is not None)
        model_config = WAN_1_3B if self.model else preset(self.config)   # a checkpoint: Self-Forcing is 1.3B
        check_memory(estimate_bench_memory(model_config, dims, dtype, len(sampler.resolved_steps()),
                                           sampler.chunk_frames, kv_frames=sampler.window_frames,
                                           compare=self.compare), device)
        return BenchSetup(options, device, dtype, dims, sampler, plan_config, runs)


@dataclass(frozen=True)
class BenchSetup:
    """Checked options, ready to run: made only by ``BenchOptions.validate()``."""

    options: BenchOptions                          # as given, with the --compare defaults filled in
    device: torch.device
    dtype: torch.dtype
    latent_dims: tuple[int, int, int]              # T, H, W of the latent
    sampler: SamplerConfig                         # the unpruned baseline's sampler config
    plan_config: PlanConfig | None                 # None without --compare
    runs: tuple[tuple[str, str], ...]              # (recovery mode, form) of each pruned configuration

    @property
    def passes_per_run(self) -> int:
        n_chunks = len(chunk_spans(self.latent_dims[0], self.sampler.chunk_frames))
        return n_chunks * len(self.sampler.resolved_steps()) + n_chunks - 1


# ----------------------------------------------------------------------------- checks

def _check_choice(option: str, value: Any, choices: list) -> None:
    if value not in choices:
        shown = ", ".join(str(c) for c in choices if c is not None)
        raise LiparError(f"{option} {value!r} is not known; choose one of: {shown}.")


def check_seed(seed: int, option: str = "--seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not (0 <= seed <= MAX_SEED):
        raise LiparError(f"{option} must be a whole number within [0, 2**63-1]; got {seed!r}. Use e.g. {option} 0.")
    return seed


def _check_repeat(repeat: int) -> None:
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not (1 <= repeat <= MAX_REPEAT):
        raise LiparError(f"--repeat is how many timed runs to take the median of and must be within "
                         f"[1, {MAX_REPEAT}]; got {repeat!r}. Use e.g. --repeat 3.")


def _check_model_path(path: str | None) -> None:
    if path is not None and not os.path.isfile(path):
        raise LiparError(f"--model {path!r} is not a file; give the path of a Wan2.1 / Self-Forcing checkpoint "
                         "(.safetensors or .pt), or leave --model out to use random weights.")


def check_device(text: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' (an existing GPU) -> torch.device."""
    m = re.fullmatch(r"(cpu|cuda)(?::([0-9]+))?", str(text).strip().lower())
    if m is None or (m.group(1) == "cpu" and m.group(2) not in (None, "0")):
        raise LiparError(f"--device must be 'cpu', 'cuda' or 'cuda:N' (N: a GPU index); got {text!r}.")
    if m.group(1) == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only PyTorch build" if torch.version.cuda is None else "no usable NVIDIA GPU"
        raise LiparError(f"--device {text} was asked for but CUDA is not available ({build}); use --device cpu.")
    if m.group(2) is None:
        return torch.device("cuda")
    index, count = int(m.group(2)), torch.cuda.device_count()
    if index >= count:
        raise LiparError(f"--device {text}: there is no GPU {index}; this machine has {count} "
                         f"(cuda:0 .. cuda:{count - 1}).")
    return torch.device("cuda", index)


def video_to_latent_dims(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Video frames / height / width -> latent (T, H, W); Wan's VAE maps 4k+1 frames to k+1."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % 4:
        raise LiparError(f"--frames must be 4k+1 (e.g. 21 or 81); got {frames!r}.")
    for option, v in (("--height", height), ("--width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % 16:
            raise LiparError(f"{option} must be a positive multiple of 16 (e.g. --width 832 --height 480); got {v!r}.")
    return (frames - 1) // 4 + 1, height // 8, width // 8


def _sampler_config(o: BenchOptions, device: torch.device, dtype: torch.dtype) -> SamplerConfig:
    graphs = GRAPHS[o.graphs]
    if graphs and device.type != "cuda":
        raise LiparError(f"--graphs on needs a CUDA device; got --device {o.device}. Use --graphs auto or off.")
    check_backend(o.backend, device)
    steps = parse_steps(o.steps) if o.steps is not None else None
    return SamplerConfig(mode=o.mode, steps=steps, seed=o.seed, backend=o.backend, dtype=dtype,
                         cuda_graphs=graphs, fp8=o.fp8, window_frames=o.window_frames,
                         sink_frames=o.sink_frames).validate()


def _with_compare_defaults(o: BenchOptions) -> BenchOptions:
    given = [name for name in COMPARE_DEFAULTS if getattr(o, name) is not None]
    if given and not o.compare:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        verb = "needs" if len(given) == 1 else "need"
        raise LiparError(f"{flags} {verb} --compare (only the pruned runs use {'it' if len(given) == 1 else 'them'}); "
                         f"add --compare, or leave {flags} out.")
    if o.target_prune is not None and (o.threshold is not None or o.anchor_threshold is not None):
        raise LiparError("--target-prune fits --threshold and --anchor-threshold itself; give either "
                         "--target-prune or the thresholds, not both.")
    filled = {name: default for name, default in COMPARE_DEFAULTS.items() if getattr(o, name) is None}
    return dataclasses.replace(o, **filled)


def parse_names(option: str, text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'): known names, no empty items, no repeats."""
    names = tuple(item.strip() for item in str(text).split(","))
    unknown = [n for n in names if n not in allowed]
    if unknown or len(set(names)) != len(names):
        problem = f"{unknown[0]!r} is not one of them" if unknown else "a name is repeated"
        raise LiparError(f"{option} takes a comma-separated list of {', '.join(allowed)}; {problem} "
                         f"(got {text!r}). Use e.g. {option} {','.join(allowed)}.")
    return names


def _compare_setup(o: BenchOptions, chunk_frames: int, *,
                   forms_given: bool) -> tuple[PlanConfig | None, tuple[tuple[str, str], ...]]:
    if not o.compare:
        return None, ()
    forms = parse_names("--forms", o.forms, RECOVERY_FORMS)
    modes = parse_names("--modes", o.modes, RECOVERY_MODES)
    if forms_given and modes == ("none",):
        raise LiparError("--forms chooses the form of m_degree/noise_aware recovery, but --modes has neither; "
                         "add one to --modes or leave --forms out.")
    if o.target_prune is not None:
        t = o.target_prune
        if not (isinstance(t, (int, float)) and 0.0 <= t <= MAX_TARGET_PRUNE):
            raise LiparError(f"--target-prune is the fraction of tokens to prune and must be within "
                             f"[0, {MAX_TARGET_PRUNE}]; got {t!r}. Use e.g. --target-prune 0.338.")
    for option, v in (("--threshold", o.threshold), ("--anchor-threshold", o.anchor_threshold)):
        if not (isinstance(v, (int, float)) and 0.0 <= v <= 10.0):      # also refuses nan
            raise LiparError(f"{option} must be within [0, 10] (mean latent change per element); got {v}. "
                             "The paper uses --threshold 0.15 --anchor-threshold 0.3.")
    plan_config = PlanConfig(threshold=o.threshold, anchor_threshold=o.anchor_threshold,
                             chunk_frames=chunk_frames).validate()
    runs = [("none", "exact")] if "none" in modes else []
    runs += [(m, f) for f in forms for m in ("m_degree", "noise_aware") if m in modes]
    return plan_config, tuple(runs)


# ----------------------------------------------------------------------------- memory

def estimate_bench_memory(cfg: WanConfig, dims: tuple[int, int, int], dtype: torch.dtype, n_steps: int,
                          chunk_frames: int, *, kv_frames: int = 0, compare: bool = False) -> dict[str, int]:
    """A lower estimate of the bytes a bench run holds at once on its device, by part.

    kv_frames: latent frames the KV cache holds at most (the sampler's window; 0: all)."""
    t, h, w = dims
    item = torch.empty((), dtype=dtype).element_size()
    cached = min(t, kv_frames) if kv_frames else t
    tokens, chunk_tokens = cached * (h // 2) * (w // 2), min(t, chunk_frames) * (h // 2) * (w // 2)
    latent = 16 * t * h * w * 4                                  # one float32 latent
    return {
        "weights": _param_count(cfg) * item,
        "kv_cache": 2 * cfg.num_layers * tokens * cfg.dim * item,
        "activations": chunk_tokens * (2 * cfg.ffn_dim + 8 * cfg.dim) * item,
        # noise for every step, source, output, clip; --compare keeps the reference and a restored copy
        "latents": latent * (n_steps + 3 + (2 if compare else 0)),
    }


@functools.lru_cache(maxsize=8)
def _param_count(cfg: WanConfig) -> int:
    with torch.device("meta"):
        from .model import WanDiT
        return sum(p.numel() for p in WanDiT(cfg).parameters())


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on the device: CUDA's free bytes, or the RAM available to this process; None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    known = [v for v in (_psutil_available(), _meminfo_available(), _cgroup_available()) if v is not None]
    return min(known) if known else None


def _psutil_available() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """Room left under a container's memory limit (cgroup v2, then v1), if there is one."""
    for limit_path, used_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                   "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_path) as f:
                limit = f.read().strip()
            with open(used_path) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2 ** 60:
            return max(0, int(limit) - used)
    return None


def gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def check_memory(parts: dict[str, int], device: torch.device,
                 fix: str = "Use smaller --frames/--height/--width (or --config tiny, --dtype bf16).") -> None:
    """Refuse up front when the estimate does not fit in the device's free memory."""
    need = sum(parts.values())
    free = free_memory_bytes(device)
    if free is None or need <= free:
        return
    detail = ", ".join(f"{name.replace('_', ' ').replace('kv', 'KV')} {gib(v)}" for name, v in parts.items())
    raise LiparError(f"This run needs about {gib(need)} on {device} ({detail}) but only {gib(free)} is free. {fix}")


# ----------------------------------------------------------------------------- progress

class BenchProgress:
    """Reports each configuration on ``stream`` (stderr): a line when it starts and when it ends,
    and, when the stream is a terminal, a bar of transformer passes in between."""

    def __init__(self, stream: TextIO | None = None, bar: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.bar_wanted = _isatty(self.stream) if bar is None else bar
        self._bar = None
        self._name = ""
        self._start = 0.0
        self.passes = 0

    def say(self, text: str) -> None:
        print(f"lipar: {text}", file=self.stream, flush=True)

    def start(self, name: str, repeat: int, passes_per_run: int) -> Callable[[PassInfo], None]:
        """Begin a configuration (a warm-up run, then ``repeat`` timed runs); returns the
        ``on_pass`` callback for its sampling calls."""
        self._name, self._start, self.passes = name, time.perf_counter(), 0
        self.say(f"{name}: 1 warm-up + {repeat} timed run{'s' if repeat > 1 else ''}, "
                 f"{passes_per_run} transformer passes each ...")
        self._bar = _make_bar(name, (repeat + 1) * passes_per_run, self.stream) if self.bar_wanted else None
        return self._on_pass

    def _on_pass(self, info: PassInfo) -> None:
        self.passes += 1
        if self._bar is not None:
            self._bar.update(1)

    def end(self, summary: str) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.say(f"{self._name}: {summary} ({time.perf_counter() - self._start:.1f} s in all)")


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _make_bar(name: str, total: int, stream: TextIO):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=f"lipar: {name}", unit="pass", file=stream, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------- JSON

def json_safe(value: Any) -> Any:
    """Non-finite floats (inf from identical outputs, nan) -> None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def to_json(value: Any, indent: int | None = None) -> str:
    """Strict JSON: never Infinity or NaN (those become null)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


# ----------------------------------------------------------------------------- measuring

def pass_flops(cfg: WanConfig, n_q: int, n_k: int) -> float:
    """Multiply-add FLOPs (x2) of one chunk pass through all blocks (head/embeddings ignored)."""
    d = cfg.dim
    linear = 2 * n_q * (4 * d * d + 2 * d * d + 2 * d * cfg.ffn_dim)
    attn = 4 * n_q * n_k * d + 4 * n_q * cfg.text_len * d
    return cfg.num_layers * (linear + attn)


def run_flops(cfg: WanConfig, plan: PruningPlan | None, t: int, hw: int, chunk: int, n_steps: int,
              recovery: str, form: str, cache_last: bool = False, window: KVWindow = UNBOUNDED) -> float:
    """Total FLOPs of a sampling run as executed (keys include materialised duplicates).

    Chunks as the sampler cuts them (the last may be short); keys limited by the KV window."""
    from .recovery import build_layouts

    spans = chunk_spans(t, chunk)
    last = len(spans) - 1
    total = 0.0
    if plan is None:
        for c, (start, count) in enumerate(spans):
            passes = n_steps + (1 if (c < last or cache_last) else 0)
            seen = sum(b - a for a, b in window.visible(start, count))
            total += passes * pass_flops(cfg, count * hw, (seen + count) * hw)
        return total
    plan = restrict_to_window(plan.select(0), window)[0]
    lays = build_layouts(plan.latent_shape, cfg, chunk, plan=plan, mode=recovery, form=form, window=window)
    for lay in lays:
        passes = n_steps + (1 if (lay.index < last or cache_last) else 0)
        total += passes * pass_flops(cfg, lay.num_kept, lay.key_len)
    return total


def _plan_with(latent: torch.Tensor, base: PlanConfig, threshold: float,
               window: KVWindow = UNBOUNDED) -> PruningPlan:
    """A plan at ``threshold`` (anchor threshold = 2x, the paper's ratio)."""
    config = dataclasses.replace(base, threshold=threshold, anchor_threshold=min(10.0, 2 * threshold))
    return build_plan(latent, config, window)


def fit_threshold(latent: torch.Tensor, target: float, base: PlanConfig,
                  window: KVWindow = UNBOUNDED) -> PruningPlan:
    """Bisect the threshold (anchor threshold = 2x, the paper's ratio) to hit a prune ratio."""
    lo, hi = FIT_THRESHOLD_RANGE
    best = None
    for _ in range(30):
        mid = (lo + hi) / 2
        plan = _plan_with(latent, base, mid, window)
        r = plan.prune_ratio()
        if best is None or abs(r - target) < abs(best.prune_ratio() - target):
            best = plan
        if abs(r - target) < 0.002:
            break
        lo, hi = (mid, hi) if r < target else (lo, mid)
    return best


def fit_threshold_checked(latent: torch.Tensor, target: float, base: PlanConfig, what: str,
                          window: KVWindow = UNBOUNDED) -> PruningPlan:
    """``fit_threshold``, refusing when the clip cannot get within TARGET_TOLERANCE of the target."""
    plan = fit_threshold(latent, target, base, window)
    got = plan.prune_ratio()
    if abs(got - target) <= TARGET_TOLERANCE:
        return plan
    lo, hi = sorted(_plan_with(latent, base, x, window).prune_ratio() for x in FIT_THRESHOLD_RANGE)
    raise LiparError(f"--target-prune {target} is out of reach for {what}: the closest it gets is {got:.3f} "
                     f"(thresholds {FIT_THRESHOLD_RANGE[0]}..{FIT_THRESHOLD_RANGE[1]} prune between {lo:.3f} and "
                     f"{hi:.3f}, not every ratio in between; a single chunk of frames prunes nothing). "
                     f"Ask for about {got:.3f}, or try another --clip, --frames or size.")


def _psnr(out: torch.Tensor, ref: torch.Tensor) -> float | None:
    """PSNR in dB; None when the outputs are identical (infinite PSNR)."""
    mse = (out.double() - ref.double()).pow(2).mean().item()
    peak = (ref.max() - ref.min()).item()
    return None if mse == 0 else 10 * math.log10(peak * peak / mse)


def _rel(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        out, ref = out[mask], ref[mask]
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


def _fresh(device) -> None:
    """Drop cached CUDA graphs and free cached blocks, so each configuration's memory is its own."""
    if device.type == "cuda":
        from .graphs import clear_graph_cache

        clear_graph_cache()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _time_call(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _timed(model, ctx, latent, plan, cfg, repeat, device, on_pass=None) -> tuple[Any, list[float], int | None]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, res = [], None
    for _ in range(max(1, repeat)):
        res = sample(model, ctx, latent, plan=plan, config=cfg, on_pass=on_pass)
        times.append(res.seconds)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return res, times, peak


# ----------------------------------------------------------------------------- the run

def _build_model(s: BenchSetup, progress: BenchProgress):
    o = s.options
    if o.model:
        from .loading import load_model
        progress.say(f"loading {o.model} ({str(s.dtype).replace('torch.', '')} on {s.device}) ...")
        return load_model(o.model, dtype=s.dtype, device=s.device), o.model
    progress.say(f"no --model given: using a randomly initialised {o.config} Wan2.1 model "
                 "(real architecture; timings are meaningful, images are not).")
    return build_model(preset(o.config), seed=o.seed, dtype=s.dtype, device=s.device), "random"


def _make_plan(s: BenchSetup, latent: torch.Tensor) -> PruningPlan | None:
    o = s.options
    if s.plan_config is None:
        return None
    if o.target_prune is None:
        return build_plan(latent, s.plan_config, s.sampler.window)
    what = f"the {o.clip} clip at {o.width}x{o.height}, {o.frames} frames"
    return fit_threshold_checked(latent, o.target_prune, s.plan_config, what, s.sampler.window)


def run_bench(o: BenchOptions | BenchSetup, progress: BenchProgress | None = None) -> dict[str, Any]:
    s = o.validate() if isinstance(o, BenchOptions) else o
    o = s.options
    progress = progress or BenchProgress()
    device, dtype, scfg = s.device, s.dtype, s.sampler
    t, h, w = s.latent_dims
    # the source stays in host memory, as ComfyUI keeps latents: the sampler moves each chunk to the device
    latent = make_clip(ClipSpec(kind=o.clip, latent_frames=t, height=h, width=w, seed=o.seed))
    plan = _make_plan(s, latent)        # before the model: an unreachable --target-prune fails at once
    model, weights = _build_model(s, progress)
    cfg_model = model.config
    ctx = (0.1 * torch.randn(1, 64, cfg_model.text_dim, generator=torch.Generator().manual_seed(o.seed))).to(device)
    hw = (h // 2) * (w // 2)
    n_steps = len(scfg.resolved_steps())
    video_frames = 4 * (t - 1) + 1

    # warm-up (kernels, allocator, cuBLAS handles; CUDA-graph capture) on the same shapes
    on_pass = progress.start("baseline", o.repeat, s.passes_per_run)
    _fresh(device)
    cold = sample(model, ctx, latent, config=scfg, on_pass=on_pass)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    base_res, base_times, base_peak = _timed(model, ctx, latent, None, scfg, o.repeat, device, on_pass)
    base_s = statistics.median(base_times)
    progress.end(f"{base_s:.3f} s median")
    base_flops = run_flops(cfg_model, None, t, hw, scfg.chunk_frames, n_steps, "none", "exact", window=scfg.window)
    result: dict[str, Any] = {
        "command": "python -m lipar " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("__main__.py") else None,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "config": o.config if not o.model else "from checkpoint",
        "weights": weights,
        "dtype": str(dtype).replace("torch.", ""),
        "mode": o.mode,
        "steps": list(scfg.resolved_steps()),
        "clip": o.clip,
        "video_frames": video_frames,
        "latent_frames": t,
        "height": o.height, "width": o.width,
        "tokens_total": t * hw,
        "seconds": round(base_s, 5),
        "seconds_all": [round(x, 5) for x in base_times],
        "fps": round(video_frames / base_s, 3),
        "tflops_effective": round(base_flops / base_s / 1e12, 2),
        "peak_memory_bytes": base_peak,
        "model_bytes": model_bytes,
        "working_memory_bytes": base_peak - model_bytes if base_peak else None,
        "attention_backend": base_res.info["backend"],
        "attention": base_res.info["attention"],
        "attention_compile_seconds": base_res.info["attention_compile_seconds"],
        "fp8": base_res.info["fp8"],
        "cuda_graphs": base_res.info["cuda_graphs"],
        "cold_seconds": round(cold.seconds, 5),
        "capture_seconds": cold.info["capture_seconds"],
        "window_frames": scfg.window_frames, "sink_frames": scfg.sink_frames,
        "kv_cache_bytes": base_res.info["kv_cache_bytes"],
        "chunk_seconds": base_res.info["chunk_seconds"],
    }
    if plan is None:
        return result

    plan_s = statistics.median(_time_call(lambda: build_plan(latent, plan.config, scfg.window), device)
                               for _ in range(5))
    restore_s = statistics.median(_time_call(lambda: restore_latent(base_res.latent, plan), device) for _ in range(5))
    result.update({"prune_ratio": round(plan.prune_ratio(), 5), "tokens_kept": int(plan.keep.sum().item()),
                   "plan_seconds": round(plan_s, 6), "restore_seconds": round(restore_s, 6),
                   "threshold": plan.config.threshold, "anchor_threshold": plan.config.anchor_threshold,
                   "kept_per_chunk": plan.kept_per_chunk()[0]})
    if o.target_prune is not None:
        result["target_prune"] = o.target_prune
    keep_px = plan.pixel_mask().expand_as(base_res.latent)
    ref = base_res.latent
    modes: dict[str, Any] = {}
    for mode, form in s.runs:
        name = f"{mode}/{form}" if mode != "none" else "none"
        cfg = SamplerConfig(**{**scfg.__dict__, "recovery": mode, "recovery_form": form})
        on_pass = progress.start(name, o.repeat, s.passes_per_run)
        _fresh(device)
        cold = sample(model, ctx, latent, plan=plan, config=cfg, on_pass=on_pass)  # warm-up; graph capture
        res, times, peak = _timed(model, ctx, latent, plan, cfg, o.repeat, device, on_pass)
        sec = statistics.median(times)
        progress.end(f"{sec:.3f} s median, {base_s / sec:.2f}x the baseline")
        out = restore_latent(res.latent, plan)   # built for the sampler's KV window, so used as is
        flops = run_flops(cfg_model, plan, t, hw, scfg.chunk_frames, n_steps, mode, form, window=scfg.window)
        modes[name] = {
            "seconds": round(sec, 5), "seconds_all": [round(x, 5) for x in times],
            "speedup": round(base_s / sec, 3), "fps": round(video_frames / sec, 3),
            "tflops_effective": round(flops / sec / 1e12, 2),
            "peak_memory_bytes": peak,
            "memory_ratio": round(peak / base_peak, 4) if peak and base_peak else None,
            "working_memory_ratio": round((peak - model_bytes) / (base_peak - model_bytes), 4) if peak and base_peak else None,
            "cold_seconds": round(cold.seconds, 5), "capture_seconds": cold.info["capture_seconds"],
            "plan_restore_overhead_pct": round(100 * (plan_s + restore_s) / sec, 3),
            "psnr_db": _round(_psnr(out, ref), 3), "rel_l2": _round(_rel(out, ref), 6),
            "rel_l2_kept": _round(_rel(out, ref, keep_px), 6),
            "kv_cache_bytes": res.info["kv_cache_bytes"], "chunk_seconds": res.info["chunk_seconds"],
        }
    result["modes"] = modes
    return result
