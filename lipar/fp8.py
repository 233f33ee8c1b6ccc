"""Linear layers computed in fp8 (e4m3) with per-row activation and per-channel weight scales.

The H200's fp8 tensor cores run twice the bf16 rate. A Linear ``y = x W^T + b`` runs here as

    x8, sx = quantize_rows(x)                      # x ~= x8 * sx, sx [M, 1] (one pass, Triton)
    y = _scaled_mm(x8, W8^T, sx, sw, b)            # W ~= W8 * sw^T, sw [1, N]; see FAST_ACCUM

Scales: every row of the activation gets ``scale = max(amax, 1e-12) / 448`` (448 is e4m3's
largest finite value), so its largest element maps to 448; weights carry one scale per output
channel (a bf16/fp16/fp32 weight is quantised so, once per run), or the checkpoint's per-tensor
``scale_weight`` repeated over the channels (ComfyUI's fp8 and scaled-fp8 weights are used in
place). Activations' rounding alone costs ~2.7% relative L2 per product against bf16 (per-tensor
activation scales: ~4.6%; benchmarks/results/h200_fp8_linear.json); with the weights' own
rounding, ~3.75%.

Why fused kernels: quantising an activation by torch ops (abs, amax, divide, cast: four passes)
costs more than fp8 saves (0.35 ms for the [4680, 8960] FFN activation against 0.05 ms saved on
its product). ``quantize_rows`` is one kernel (43 us for that activation on an H200);
``gelu_quantize_rows`` also applies the FFN's tanh-GELU (63 us), which in bf16 runs in the first
product's cuBLASLt epilogue.

Measured on an H200 (benchmarks/fp8_compute.py, 4680 tokens, CUDA-graph replays, quantisation
included): one FFN 0.348 -> 0.271 ms; the 30 layers' FFNs 12.2 -> 8.2 ms; all 30 layers' linears
(q, k, v, o, cross q, o, FFN) 18.3 -> 14.4 ms ("ffn") or 13.4 ms ("all"); 1536 x 1536 layers
0.035 -> 0.032 ms. Relative L2 against bf16 on random data: 3.75% per product, 5.4% per FFN.

Worked example (a 1536 -> 8960 layer at 4680 tokens, bf16 activations)::

    w = prepare_linear(block.ffn[0], torch.bfloat16, "cuda")   # Fp8Weight(w8 [8960, 1536] fp8, scale [1, 8960])
    y = linear_fp8(x, w, torch.bfloat16)                       # x [1, 4680, 1536] -> y [1, 4680, 8960]

``Fp8Linears`` prepares the linears of a whole Wan module tree for a run and runs them
(``linear``, ``linears``, ``ffn``), leaving every module it cannot handle to its own forward.
On the CPU, or where ``torch._scaled_mm`` or Triton is missing, the same math runs in PyTorch
(the product emulated in float32 on the dequantised operands), so tests check it anywhere.

CUDA graphs: nothing here syncs with the host or allocates outside PyTorch's caching allocator
(``torch.empty``). The Triton kernel takes its tensors as raw addresses: under the
``cudaMallocAsync`` allocator (ComfyUI's) tensors allocated during a capture are not mapped
yet, and Triton's launcher refuses them as tensor arguments (see ``lipar.kernels``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .errors import LiparError
from .kernels import _triton, triton_available

log = logging.getLogger("lipar")

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0            # largest finite e4m3fn value
AMAX_FLOOR = 1e-12         # rows whose largest |value| is below this are scaled as if it were this
ALIGN = 16                 # _scaled_mm needs K and N multiples of 16
QUANTISABLE = (torch.bfloat16, torch.float16, torch.float32)   # weight dtypes quantised per run
COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
POLICIES = ("ffn", "all")
GELU_C = 0.7978845608028654   # sqrt(2 / pi)
# _scaled_mm's use_fast_accum (Hopper: no periodic promotion of the fp8 products' partial sums
# to fp32). H200, 4680 tokens, quantisation included: ffn.0 0.130 -> 0.109 ms, ffn.2 0.147 ->
# 0.137 ms, one FFN 0.305 -> 0.271 ms, the same error against bf16 (3.75% vs 3.76% relative L2
# per product; the operands' rounding dominates).
FAST_ACCUM = True
# Kernel launch shapes by row length: rows up to ONE_PASS_MAX elements are held in registers
# (one read); longer rows are read twice in BLOCK_LONG-wide tiles (amax, then quantise), with L2
# hints (keep after the first read, drop after the second). H200, 4680 rows, graph replays
# (benchmarks/fp8_compute.py --sweep; launch shapes within ~10% of each other are noise):
# K=1536 one pass, 4 warps: 12-15 us; K=8960 two passes of 1024, 4 warps: 43 us (63 us with
# the GELU), against 45-53 us for 2048 or 4096 tiles and 41-49 us (75-136 us with the GELU)
# for the row in registers (16384 wide).
ONE_PASS_MAX = 2048
BLOCK_LONG = 1024
L2_HINTS = True


# ---- support ----------------------------------------------------------------------------------
def fp8_supported(device: torch.device | str) -> bool:
    """True where fp8 products run on tensor cores: a CUDA device of compute capability >= 8.9
    (Ada, Hopper and later) and a torch with ``float8_e4m3fn`` and ``torch._scaled_mm``."""
    device = torch.device(device)
    if device.type != "cuda" or FP8 is None or not hasattr(torch, "_scaled_mm") or not torch.cuda.is_available():
        return False
    return _capability(device.index if device.index is not None else torch.cuda.current_device()) >= (8, 9)


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _require_fp8() -> None:
    if FP8 is None:
        raise LiparError(f"This torch ({torch.__version__}) has no float8_e4m3fn dtype; fp8 compute needs torch >= 2.1.")


# ---- prepared weights -------------------------------------------------------------------------
@dataclass
class Fp8Weight:
    """One Linear's weight in fp8 with per-output-channel scales: W ~= w8 * scale^T.

    w8:     [N, K] float8_e4m3fn, row-major (``w8.t()`` is the column-major operand _scaled_mm takes)
    scale:  [1, N] float32 (a per-tensor checkpoint scale repeated over the N channels)
    bias:   [N] in the compute dtype, or None
    source: "quantized" (lipar quantised a bf16/fp16/fp32 weight: w8 is its own copy) or "fp8"
            (the module's fp8 weight, used in place)
    """

    w8: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None
    source: str = "quantized"

    @property
    def out_features(self) -> int:
        return self.w8.shape[0]

    @property
    def in_features(self) -> int:
        return self.w8.shape[1]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight this stands for: [N, K] = w8 * scale^T (in float32, then ``dtype``)."""
        return (self.w8.float() * self.scale.view(-1, 1)).to(dtype)

    def nbytes(self) -> int:
        """Bytes this holds beyond the module's own tensors (its fp8 copy, when quantised)."""
        own = self.w8.numel() if self.source == "quantized" else 0
        return own + self.scale.numel() * 4 + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)


def _refusal(linear: nn.Module, dtype: torch.dtype) -> str | None:
    """Why ``prepare_linear`` leaves this module to its own forward, or None when it can take it."""
    weight = getattr(linear, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return "no 2-D weight"
    if getattr(linear, "weight_function", None) or getattr(linear, "bias_function", None):
        return "weight patches (ComfyUI LoRA hooks) compute its weight on the fly"
    if getattr(linear, "_full_precision_mm", False):
        return "the checkpoint asks for full-precision products (full_precision_matrix_mult)"
    if dtype not in COMPUTE_DTYPES:
        return f"compute dtype {dtype} (fp8 products output bf16, fp16 or fp32)"
    n, k = weight.shape
    if n % ALIGN or k % ALIGN:
        return f"shape [{n}, {k}] is not a multiple of {ALIGN}"
    return None


def _fp8_parts(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | str:
    """The fp8 data [N, K] and its scale (None: 1.0) of a module whose weight is fp8 already, or
    a reason it is not usable. Two forms: a plain float8_e4m3fn weight with an optional
    ``scale_weight`` (or ``weight_scale``) tensor on the module (ComfyUI's fp8 weight dtypes and
    legacy scaled-fp8 ops), and a quantised tensor subclass holding ``_qdata`` and
    ``_params.scale`` (ComfyUI's QuantizedTensor, what scaled-fp8 files load as now)."""
    weight = linear.weight
    qdata = getattr(weight, "_qdata", None)
    if isinstance(qdata, torch.Tensor):
        params = getattr(weight, "_params", None)
        if qdata.dtype != FP8:
            return f"a quantised weight stored as {qdata.dtype}, not float8_e4m3fn"
        if getattr(params, "transposed", False) or tuple(qdata.shape) != tuple(weight.shape):
            return "a quantised weight stored transposed or padded"
        scale = getattr(params, "scale", None)
        return qdata, scale if isinstance(scale, torch.Tensor) else None
    for name in ("scale_weight", "weight_scale"):
        scale = getattr(linear, name, None)
        if isinstance(scale, torch.Tensor):
            return weight, scale
    return weight, None


def _channel_scale(scale: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
    """A checkpoint scale (none: 1.0; one value; or one per output channel) as [1, N] float32."""
    if scale is None:
        return torch.ones((1, n), device=device, dtype=torch.float32)
    if scale.numel() not in (1, n):
        return None
    return scale.detach().to(device=device, dtype=torch.float32).reshape(1, -1).expand(1, n).contiguous()


def prepare_linear(linear: nn.Module, dtype: torch.dtype, device: torch.device | str) -> Fp8Weight | None:
    """An ``Fp8Weight`` for a Linear-like module (``weight [N, K]``, optional ``bias [N]``), or
    None when it must run its own forward.

    fp8 weights (float8_e4m3fn, as ComfyUI loads ``fp8_e4m3fn``/``_fast`` and scaled-fp8 files)
    are used in place with their scale; bf16/fp16/fp32 weights are quantised per output channel
    (a new [N, K] fp8 tensor, half a bf16 weight's bytes). None for: other weight dtypes
    (e5m2, int8, ...), weights not on ``device`` (offloaded: ComfyUI streams them in per call),
    weight/bias patches (ComfyUI's ``weight_function``/``bias_function``, LoRAs on partly loaded
    models), checkpoints marked for full-precision products, shapes whose N or K is not a
    multiple of 16, compute dtypes other than bf16/fp16/fp32.
    Runs outside CUDA-graph capture (it may allocate and copy).

    Example: ``prepare_linear(nn.Linear(1536, 8960).bfloat16().cuda(), torch.bfloat16, "cuda")``
    -> ``Fp8Weight(w8 [8960, 1536] float8_e4m3fn, scale [1, 8960] float32, bias [8960] bf16)``.
    """
    device = torch.device(device)
    reason = _refusal(linear, dtype)
    if reason is None and FP8 is None:
        reason = "this torch has no float8_e4m3fn"
    if reason is not None:
        log.debug("fp8: %s runs its own forward: %s", type(linear).__name__, reason)
        return None
    weight = linear.weight
    n = weight.shape[0]
    if isinstance(getattr(weight, "_qdata", None), torch.Tensor) or weight.dtype == FP8:
        parts = _fp8_parts(linear)
        if isinstance(parts, str):
            log.debug("fp8: %s runs its own forward: %s", type(linear).__name__, parts)
            return None
        w8, scale = parts[0], _channel_scale(parts[1], n, device)
        source = "fp8"
    elif weight.dtype in QUANTISABLE:
        w8, scale, source = weight, None, "quantized"
    else:
        log.debug("fp8: %s runs its own forward: weight dtype %s", type(linear).__name__, weight.dtype)
        return None
    if not _same_device(w8.device, device):
        log.debug("fp8: %s runs its own forward: its weight is on %s, not %s", type(linear).__name__, w8.device, device)
        return None
    if source == "fp8" and scale is None:
        log.debug("fp8: %s runs its own forward: its weight scale has neither 1 nor %d values", type(linear).__name__, n)
        return None
    if source == "fp8" and not w8.is_contiguous():     # _scaled_mm takes w8.t() as a column-major operand
        log.debug("fp8: %s runs its own forward: its fp8 weight is not contiguous", type(linear).__name__)
        return None
    with torch.no_grad():
        if source == "quantized":
            w8, rows = quantize_rows(w8.detach())
            scale = rows.view(1, -1)
        bias = getattr(linear, "bias", None)
        bias = bias.detach().to(device=device, dtype=dtype) if isinstance(bias, torch.Tensor) else None
    return Fp8Weight(w8=w8.detach(), scale=scale, bias=bias, source=source)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    index = lambda d: d.index if d.index is not None else torch.cuda.current_device()   # noqa: E731
    return index(a) == index(b)


# ---- row quantisation -------------------------------------------------------------------------
def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row fp8 quantisation: x [M, K] (bf16/fp16/fp32, unit stride along K) ->
    (x8 [M, K] float8_e4m3fn contiguous, scale [M, 1] float32) with
    ``scale = max(amax_row, 1e-12) / 448`` and ``x8 = round_to_e4m3(x * (448 / max(amax_row, 1e-12)))``
    (x ~= x8 * scale within e4m3's rounding: 2^-4 relative, 2^-10 * scale near zero).
    One Triton pass on CUDA; PyTorch ops elsewhere.

    Example: x = [[1, -2, 0.5], [0, 0, 0]] -> scale = [[2/448], [1e-12/448]],
    x8 = [[224, -448, 112], [0, 0, 0]]."""
    return _quantize(x, gelu=False)


def gelu_quantize_rows(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tanh-GELU, then ``quantize_rows``, in one pass: h [M, K] -> (x8 [M, K] fp8, scale [M, 1] float32)
    for ``g = gelu_tanh(h)`` computed in float32 (the FFN's ``ffn[1]``, ``nn.GELU(approximate="tanh")``).

    Example: h = [[2, -2]] -> g = [[1.9546, -0.0454]] -> scale = [[1.9546 / 448]], x8 = [[448, -10.4 -> -10]]."""
    return _quantize(h, gelu=True)


def _quantize(x: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _require_fp8()
    if x.ndim != 2:
        raise LiparError(f"quantize_rows takes a 2-D [M, K] tensor; got shape {tuple(x.shape)}.")
    if x.shape[1] == 0:
        raise LiparError("quantize_rows got rows of length 0.")
    if x.stride(1) != 1:
        x = x.contiguous()
    if x.shape[0] == 0:
        return (torch.empty(x.shape, device=x.device, dtype=FP8),
                torch.empty((0, 1), device=x.device, dtype=torch.float32))
    if _triton_ok(x):
        return _quantize_triton(x, gelu)
    return _quantize_torch(x, gelu)


def _triton_ok(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype in QUANTISABLE and triton_available()


def _quantize_torch(x: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference math in PyTorch ops (float32): what the Triton kernel computes."""
    v = x.float()
    if gelu:
        v = _gelu_tanh(v)
    amax = v.abs().amax(dim=1, keepdim=True).clamp_min(AMAX_FLOOR)      # [M, 1]
    fp8_max = torch.full_like(amax, FP8_MAX)       # tensor / tensor: IEEE division on every device
    q = (v * (fp8_max / amax)).clamp_(-FP8_MAX, FP8_MAX).to(FP8)        # (CUDA divides by a scalar
    return q, amax / fp8_max                                            #  as a reciprocal product)


def _gelu_tanh(v: torch.Tensor) -> torch.Tensor:
    """tanh-GELU as ``v * sigmoid(2u)``, u = sqrt(2/pi) (v + 0.044715 v^3): equal to
    ``0.5 v (1 + tanh(u))`` (torch's form) and without its cancellation for negative v (float32
    relative error ~1e-7 where torch's reaches ~1e-4 near v = -3.5); the kernel uses the same form."""
    return v * torch.sigmoid(2 * GELU_C * (v + 0.044715 * v * v * v))


@functools.lru_cache(maxsize=1)
def _quant_kernel():
    triton, tl = _triton()

    @triton.jit
    def gelu_tanh(v):
        # 0.5 v (1 + tanh(u)) == v * sigmoid(2u), u = sqrt(2/pi) (v + 0.044715 v^3)
        u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
        return v * tl.sigmoid(2.0 * u)

    @triton.jit
    def load_row(x_row, cols, n_cols, GELU: tl.constexpr, EVICT: tl.constexpr):
        # EVICT: L2 hint, 0 none, 1 evict_last (read again soon), 2 evict_first (last read)
        if EVICT == 1:
            v = tl.load(x_row + cols, mask=cols < n_cols, other=0.0, eviction_policy="evict_last")
        elif EVICT == 2:
            v = tl.load(x_row + cols, mask=cols < n_cols, other=0.0, eviction_policy="evict_first")
        else:
            v = tl.load(x_row + cols, mask=cols < n_cols, other=0.0)
        v = v.to(tl.float32)
        if GELU:
            v = gelu_tanh(v)
        return v

    @triton.jit
    def store_row(q_row, cols, n_cols, v, inv):
        q = tl.minimum(tl.maximum(v * inv, -448.0), 448.0)
        tl.store(q_row + cols, q.to(tl.float8e4nv), mask=cols < n_cols)

    @triton.jit
    def row_max(x_row, cols, n_cols, BLOCK: tl.constexpr, GELU: tl.constexpr, ABS: tl.constexpr,
                EVICT: tl.constexpr):
        # max(0, v) over a row read in BLOCK-wide tiles; v = |x|, gelu(x) or |gelu(x)|
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for k in range(0, n_cols, BLOCK):
            v = load_row(x_row + k, cols, n_cols - k, GELU, EVICT)
            if ABS:
                v = tl.abs(v)
            acc = tl.maximum(acc, v)
        return tl.max(acc, axis=0)

    @triton.jit
    def quant_rows(x_addr, q_addr, s_addr, n_cols, stride_row, IN_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
                   ONE_PASS: tl.constexpr, GELU: tl.constexpr, HINTS: tl.constexpr, X_ALIGNED: tl.constexpr):
        # One program per row. Tensors come as int64 addresses (mapped only at graph replay when
        # allocated inside a cudaMallocAsync capture); multiple_of restores the 16-byte alignment
        # a pointer argument would carry (without it: 2-byte loads, 1-byte stores).
        # HINTS: L2 eviction hints on two-pass rows (keep after the first read, drop after the second).
        x_base = x_addr.to(tl.pointer_type(IN_DTYPE))
        if X_ALIGNED:
            x_base = tl.multiple_of(x_base, 16)
        q_base = tl.multiple_of(q_addr.to(tl.pointer_type(tl.float8e4nv)), 16)   # fresh torch.empty
        row = tl.program_id(0).to(tl.int64)
        x_row = x_base + row * stride_row
        q_row = q_base + row * n_cols
        cols = tl.arange(0, BLOCK)
        if ONE_PASS:    # the whole row in registers: one read
            v = load_row(x_row, cols, n_cols, GELU, 0)
            amax = tl.max(tl.abs(v), axis=0)
        elif GELU:      # GELU rises for x > -0.75 and |gelu| < 0.170 for x < 0: once gelu(max x) exceeds
            xmax = row_max(x_row, cols, n_cols, BLOCK, False, False, HINTS * 1)  # that, it is the row's amax
            amax = gelu_tanh(xmax)
            if xmax < 0.3:                                                  # (gelu(0.3) = 0.185)
                amax = row_max(x_row, cols, n_cols, BLOCK, True, True, HINTS * 1)
        else:           # tiles of BLOCK: amax over the row, then read it again to quantise
            amax = row_max(x_row, cols, n_cols, BLOCK, False, True, HINTS * 1)
        amax = tl.maximum(amax, 1e-12)
        tl.store(s_addr.to(tl.pointer_type(tl.float32)) + row, tl.math.div_rn(amax, 448.0))
        inv = tl.math.div_rn(448.0, amax)
        if ONE_PASS:
            store_row(q_row, cols, n_cols, v, inv)
        else:
            for k in range(0, n_cols, BLOCK):
                store_row(q_row + k, cols, n_cols - k, load_row(x_row + k, cols, n_cols - k, GELU, HINTS * 2), inv)

    return quant_rows


def _launch_shape(k: int) -> tuple[int, bool, int]:
    """(BLOCK, ONE_PASS, num_warps) for rows of k elements."""
    block = 1 << (k - 1).bit_length()
    if block <= ONE_PASS_MAX:
        return block, True, 4
    return BLOCK_LONG, False, 4


def _quantize_triton(x: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _, tl = _triton()
    m, k = x.shape
    q = torch.empty((m, k), device=x.device, dtype=FP8)
    s = torch.empty((m, 1), device=x.device, dtype=torch.float32)
    block, one_pass, warps = _launch_shape(k)
    in_dtype = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}[x.dtype]
    with torch.cuda.device(x.device.index):
        _quant_kernel()[(m,)](x.data_ptr(), q.data_ptr(), s.data_ptr(), k, x.stride(0), IN_DTYPE=in_dtype,
                              BLOCK=block, ONE_PASS=one_pass, GELU=gelu, HINTS=L2_HINTS,
                              X_ALIGNED=x.data_ptr() % 16 == 0, num_warps=warps)
    return q, s


# ---- products ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _rowwise_any_out(index: int) -> bool:
    """Whether rowwise-scaled ``_scaled_mm`` outputs fp16/fp32 on this device: torch runs cuBLAS
    (built with CUDA >= 12.9) on sm90 there; elsewhere CUTLASS's kernel, which outputs bf16 only."""
    cuda = tuple(int(p) for p in (torch.version.cuda or "0.0").split(".")[:2])
    return _capability(index)[0] == 9 and cuda >= (12, 9)


def _mm(x8: torch.Tensor, sx: torch.Tensor, w: Fp8Weight, out_dtype: torch.dtype,
        fast_accum: bool = FAST_ACCUM) -> torch.Tensor:
    """[M, K] fp8 rows (scales [M, 1]) times w -> [M, N] in out_dtype, plus w's bias."""
    if x8.is_cuda and fp8_supported(x8.device):
        native = out_dtype == torch.bfloat16 or _rowwise_any_out(x8.device.index)
        mm_dtype = out_dtype if native else torch.bfloat16
        bias = w.bias if w.bias is None or w.bias.dtype == mm_dtype else w.bias.to(mm_dtype)
        out = torch._scaled_mm(x8, w.w8.t(), scale_a=sx, scale_b=w.scale, bias=bias, out_dtype=mm_dtype,
                               use_fast_accum=fast_accum)
        return out if native else out.to(out_dtype)
    bias = w.bias if w.bias is None or w.bias.dtype == out_dtype else w.bias.to(out_dtype)
    out = (x8.float() * sx) @ w.dequantize(torch.float32).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def _check(x: torch.Tensor, w: Fp8Weight) -> None:
    if x.shape[-1] != w.in_features:
        raise LiparError(f"fp8 linear: input width {x.shape[-1]} does not match the weight's {w.in_features} "
                         f"(weight [{w.out_features}, {w.in_features}]).")


def linear_fp8(x: torch.Tensor, w: Fp8Weight, out_dtype: torch.dtype, fast_accum: bool = FAST_ACCUM) -> torch.Tensor:
    """``x W^T + b`` in fp8: x [..., K] -> [..., N] in out_dtype. x is quantised per row
    (``quantize_rows``), then one ``torch._scaled_mm`` with rowwise scales (``fast_accum``:
    Hopper's fast accumulation, see FAST_ACCUM; False: fp32 accumulation). On the CPU and where
    _scaled_mm is unavailable the product is emulated in float32 on the dequantised operands.

    Example: x [1, 4680, 1536] bf16, w = prepare_linear(nn.Linear(1536, 1536), ...) -> [1, 4680, 1536]."""
    _check(x, w)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:
        return x.new_empty((*x.shape[:-1], w.out_features), dtype=out_dtype)
    x8, sx = quantize_rows(x2)
    return _mm(x8, sx, w, out_dtype, fast_accum).view(*x.shape[:-1], w.out_features)


def linears_fp8(x: torch.Tensor, ws: Sequence[Fp8Weight], out_dtype: torch.dtype,
                fast_accum: bool = FAST_ACCUM) -> list[torch.Tensor]:
    """Several linears of one input (q, k, v of a block) with one quantisation of x:
    x [..., K] -> [[..., N_i] for each weight]."""
    for w in ws:
        _check(x, w)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:
        return [x.new_empty((*x.shape[:-1], w.out_features), dtype=out_dtype) for w in ws]
    x8, sx = quantize_rows(x2)
    return [_mm(x8, sx, w, out_dtype, fast_accum).view(*x.shape[:-1], w.out_features) for w in ws]


def ffn_fp8(x: torch.Tensor, w0: Fp8Weight, w2: Fp8Weight, out_dtype: torch.dtype,
            fast_accum: bool = FAST_ACCUM) -> torch.Tensor:
    """Wan's FFN ``Linear -> GELU(tanh) -> Linear`` in fp8: x [..., dim] -> [..., dim].
    quantize_rows(x) -> _scaled_mm (w0: dim -> ffn_dim, out_dtype) -> gelu_quantize_rows (one
    pass) -> _scaled_mm (w2: ffn_dim -> dim).

    Example (1.3B): x [1, 4680, 1536] bf16 -> h [4680, 8960] bf16 -> (h8, sh) -> [1, 4680, 1536]."""
    _check(x, w0)
    if w2.in_features != w0.out_features:
        raise LiparError(f"fp8 FFN: the second matrix takes {w2.in_features} features; the first gives "
                         f"{w0.out_features}.")
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:
        return x.new_empty((*x.shape[:-1], w2.out_features), dtype=out_dtype)
    x8, sx = quantize_rows(x2)
    h = _mm(x8, sx, w0, out_dtype, fast_accum)
    h8, sh = gelu_quantize_rows(h)
    return _mm(h8, sh, w2, out_dtype, fast_accum).view(*x.shape[:-1], w2.out_features)


# ---- a run's linears ----------------------------------------------------------------------------
def _is_tanh_ffn(ffn: nn.Module) -> bool:
    return (isinstance(ffn, nn.Sequential) and len(ffn) == 3 and isinstance(ffn[1], nn.GELU)
            and ffn[1].approximate == "tanh")


def _candidates(module: nn.Module, which: str) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of the linears a policy computes in fp8; FFNs as their Sequential."""
    blocks = getattr(module, "blocks", None)
    if blocks is None:
        raise LiparError(f"fp8 compute needs a Wan module tree with .blocks; got {type(module).__name__}.")
    for i, blk in enumerate(blocks):
        yield f"blocks.{i}.ffn", blk.ffn
        if which == "all":
            for part, names in (("self_attn", "qkvo"), ("cross_attn", "qo")):
                for n in names:
                    yield f"blocks.{i}.{part}.{n}", getattr(getattr(blk, part), n)


class Fp8Linears:
    """A run's fp8 weights for a Wan module tree, and the calls that use them.

    which: "ffn" — each block's ``ffn.0`` (dim -> ffn_dim) and ``ffn.2`` (ffn_dim -> dim), the
    matrices that gain most (1.3B, 4680 tokens, H200: 0.179 -> 0.109 and 0.163 -> 0.137 ms with
    quantisation); "all" — also ``self_attn.{q,k,v,o}`` and ``cross_attn.{q,o}`` (0.035 -> 0.032
    ms each; all 30 layers' linears 18.3 ms bf16, 14.4 "ffn", 13.4 "all" under CUDA graphs; but
    an fp8 call costs ~0.05-0.09 ms of Python and Triton launch time, so eager runs of "all" are
    CPU-bound: 25.9 ms against 18.9 bf16 and 15.6 "ffn").
    ``cross_attn.{k,v}`` run once per run on the text and stay as they are.
    Modules ``prepare_linear`` refuses (and FFNs either of whose matrices it refuses, or whose
    activation is not tanh-GELU) run their own forward: ``skipped`` names them.

    Holds the prepared weights (bf16 weights: an fp8 copy, ~0.83 GB for the 1.3B model's FFNs;
    fp8 weights: used in place) and a reference to each module, for the life of a run; captured
    CUDA graphs read these tensors, so keep this object as long as the graphs. ``current()``
    says whether the module still holds the weights it was prepared from (hosts swap tensors
    for LoRAs and offloading); rebuild when it does not.

    Example::

        fp8 = Fp8Linears(model, dtype=torch.bfloat16, device="cuda", which="ffn")
        y = fp8.ffn(block.ffn, x)                        # [B, N, 1536] -> [B, N, 1536], fp8 inside
        q = fp8.linear(block.self_attn.q, x)             # not prepared under "ffn": block.self_attn.q(x)
    """

    def __init__(self, module: nn.Module, *, dtype: torch.dtype, device: torch.device | str, which: str = "ffn",
                 fast_accum: bool = FAST_ACCUM):
        if which not in POLICIES:
            raise LiparError(f"Unknown fp8 policy {which!r}; choose one of {POLICIES}.")
        _require_fp8()
        self.which, self.dtype, self.device, self.fast_accum = which, dtype, torch.device(device), fast_accum
        self._weights: dict[int, tuple[nn.Module, Fp8Weight, tuple]] = {}
        self.skipped: list[str] = []
        if self.device.type == "cuda" and not fp8_supported(self.device):
            log.warning("fp8: %s has no fp8 tensor cores (compute capability < 8.9); fp8 products are emulated "
                        "(slow).", self.device)
        for name, mod in _candidates(module, which):
            self._prepare(name, mod)
        log.info("fp8 compute (%s): %d linears in fp8, %d left as they are%s", which, len(self._weights),
                 len(self.skipped), f" ({', '.join(self.skipped[:4])}{', ...' if len(self.skipped) > 4 else ''})"
                 if self.skipped else "")

    def _prepare(self, name: str, mod: nn.Module) -> None:
        if name.endswith(".ffn"):
            if not _is_tanh_ffn(mod):
                self.skipped.append(name)
                return
            ws = [prepare_linear(mod[j], self.dtype, self.device) for j in (0, 2)]
            if ws[0] is None or ws[1] is None:     # both or neither: a lone fp8 matrix saves nothing
                self.skipped.append(name)
                return
            for j, w in zip((0, 2), ws):
                self._add(mod[j], w)
            return
        w = prepare_linear(mod, self.dtype, self.device)
        if w is None:
            self.skipped.append(name)
        else:
            self._add(mod, w)

    def _add(self, lin: nn.Module, w: Fp8Weight) -> None:
        self._weights[id(lin)] = (lin, w, _identity(lin))

    def __len__(self) -> int:
        return len(self._weights)

    def weight(self, lin: nn.Module) -> Fp8Weight | None:
        entry = self._weights.get(id(lin))
        return entry[1] if entry is not None and entry[0] is lin else None

    def covers(self, mod: nn.Module) -> bool:
        """True when ``linear(mod, ...)`` (a Linear) or ``ffn(mod, ...)`` (an FFN) runs in fp8."""
        if _is_tanh_ffn(mod):
            return self.weight(mod[0]) is not None and self.weight(mod[2]) is not None
        return self.weight(mod) is not None

    def nbytes(self) -> int:
        """Device bytes this holds beyond the module's own tensors."""
        return sum(w.nbytes() for _, w, _ in self._weights.values())

    def current(self) -> bool:
        """True while every prepared module still holds the weight tensors it was prepared from."""
        return all(_identity(lin) == ident for lin, _, ident in self._weights.values())

    def refresh(self) -> None:
        """Re-derive every prepared weight from what its module holds now, in place (the same
        tensors, so captured CUDA graphs stay valid): a host may have changed a weight's values
        without replacing the tensor (ComfyUI's in-place LoRA patching). Needs ``current()``;
        costs one pass over the weights (about 2 ms for the 1.3B model's linears on an H200)."""
        with torch.no_grad():
            for lin, w, _ in self._weights.values():
                fresh = prepare_linear(lin, self.dtype, self.device)
                if fresh is None or fresh.w8.shape != w.w8.shape:
                    raise LiparError(f"fp8: a {type(lin).__name__} can no longer be prepared; rebuild the holder.")
                if fresh.w8.data_ptr() != w.w8.data_ptr():
                    w.w8.copy_(fresh.w8)
                w.scale.copy_(fresh.scale)
                if w.bias is not None and fresh.bias is not None and fresh.bias.data_ptr() != w.bias.data_ptr():
                    w.bias.copy_(fresh.bias)

    def linear(self, lin: nn.Module, x: torch.Tensor,
               fallback: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """lin(x) for x [..., K] -> [..., N]: in fp8 when lin was prepared, else ``fallback(lin, x)``
        (default: ``lin(x)``)."""
        w = self.weight(lin)
        if w is None:
            return fallback(lin, x) if fallback is not None else lin(x)
        return linear_fp8(x, w, self.dtype, self.fast_accum)

    def linears(self, lins: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
        """[lin(x) for lin in lins], quantising x once for the prepared ones (q, k, v of a block)."""
        ws = [self.weight(lin) for lin in lins]
        ready = [w for w in ws if w is not None]
        done = iter(linears_fp8(x, ready, self.dtype, self.fast_accum) if ready else [])
        return [next(done) if w is not None else lin(x) for lin, w in zip(lins, ws)]

    def ffn(self, ffn: nn.Module, y: torch.Tensor,
            fallback: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Wan's FFN on y [B, N, dim] -> [B, N, dim]: ``ffn_fp8`` when both matrices were prepared,
        else ``fallback(ffn, y)`` (default: ``ffn(y)``; lipar.causal passes its ``feed_forward``)."""
        if not self.covers(ffn):
            return fallback(ffn, y) if fallback is not None else ffn(y)
        return ffn_fp8(y, self.weight(ffn[0]), self.weight(ffn[2]), self.dtype, self.fast_accum)


def _identity(lin: nn.Module) -> tuple:
    """The weight and bias tensor objects of a module and where their data lives."""
    out = []
    for name in ("weight", "bias"):
        t = getattr(lin, name, None)
        out.append((id(t), t.data_ptr() if isinstance(t, torch.Tensor) else None))
    return tuple(out)
