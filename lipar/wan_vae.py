"""Wan2.1 VAE encode and decode from the weights of a module tree with the Wan2.1 VAE's layout.

The runner reads the weights of ComfyUI's loaded ``comfy.ldm.wan.vae.WanVAE`` (or any tree with its
parameter names and sub-modules: ``encoder.conv1``, ``encoder.downsamples.N.residual.0.gamma``,
``decoder.upsamples.N.time_conv``, ``conv1``, ``conv2`` ...) and computes what that module's own
encode/decode computes, faster. It never calls, patches or mutates the modules, with one exception:
a convolution whose weights ComfyUI casts or patches on the fly (``comfy_cast_weights``,
``weight_function``, ``bias_function``: low-VRAM loading, LoRA-style patches) runs through its own
forward, so those casts and patches apply as in ComfyUI.

Why larger chunks give the same result. Every layer of the Wan2.1 VAE is causal in time: a 3x3x3
convolution sees the current frame and the two before it (zeros before the first), so ComfyUI's loop
(encoder: frame 0, then 4 frames per call; decoder: one latent frame per call) carries the last two
input frames of each convolution from call to call. Two layers treat the first call specially: a
temporal downsample passes the first frame through and then convolves frames (2j-2, 2j-1, 2j) for
output j; a temporal upsample passes the first frame through and turns each later frame into two
with a causal convolution that starts from zeros. So the result depends only on the first call
holding the first frame alone; after it any number of frames per call gives the same numbers (4k
video frames per encoder call, so both temporal downsamples see even counts).

Speed switches (``WanVAEConfig``, each measured by ``benchmarks/wan_vae.py``):

- ``encode_chunk`` / ``decode_chunk``: latent frames per call after the first (memory grows with them);
- ``channels_last``: activations and convolution weights in ``channels_last_3d`` (cuDNN then skips
  its layout transposes; per-frame 2-D convolutions read the same memory as ``[T, C, H, W]``);
- ``buffers``: no ``torch.cat``/``F.pad`` copies of whole chunks: each causal convolution reads one
  shared scratch buffer with two history frames in front and a zero spatial border; the op before
  it writes its result straight into the interior, and only the two history frames are copied in
  and out per convolution;
- ``fused_norm``: on CUDA with Triton, one kernel computes RMS_norm (L2-normalise over channels,
  times sqrt(C) * gamma, plus bias) and SiLU and writes into that buffer (PyTorch elsewhere).

All shapes are ``[B, C, T, H, W]``; the runner processes one sample of the batch at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LiparError
from .kernels import _triton, triton_available

log = logging.getLogger("lipar")

_RMS_EPS = 1e-12                  # F.normalize's eps, as ComfyUI's RMS_norm uses it
TIME_DOWN = 4                     # video frames per latent frame (after the first)
SPACE_DOWN = 8                    # pixels per latent pixel
_CL = {4: torch.channels_last, 5: torch.channels_last_3d}


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """How the runner computes (the result is the same for every setting, up to rounding).

    encode_chunk: latent frames per encoder call after the first (4x as many video frames).
    decode_chunk: latent frames per decoder call after the first (4x as many output frames).
    channels_last, buffers, fused_norm: see the module docstring.
    cudnn_benchmark: let cuDNN time its algorithms for each new shape during the call (ComfyUI's
    ``--fast autotune`` turns this on for everything); the first call of each shape pays for it.
    fold_bias: with the fused kernel, the bias of each residual block's first convolution is added by the
    norm kernel that reads its output, instead of by a separate pass over it (PyTorch adds a convolution's
    bias in a pass of its own).

    Defaults measured on an H200 at 832x480x81 (benchmarks/wan_vae.py): 1 and 2 chunks run within
    2% of 2 and 4 with about 60% of the memory."""

    encode_chunk: int = 1
    decode_chunk: int = 2
    channels_last: bool = True
    buffers: bool = True
    fused_norm: bool = True
    cudnn_benchmark: bool = False
    fold_bias: bool = False

    def __post_init__(self):
        for name in ("encode_chunk", "decode_chunk"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise LiparError(f"WanVAEConfig.{name} must be a whole number >= 1; got {v!r}.")


# ComfyUI's own schedule and memory layout, computed by this runner (the benchmark's baseline for the switches).
COMFY_LOOP = WanVAEConfig(encode_chunk=1, decode_chunk=1, channels_last=False, buffers=False, fused_norm=False)


# ---------------------------------------------------------------- structure: what the module tree must be


class NotWanVAEError(LiparError):
    """A VAE module tree the runner cannot compute; ``reason`` says what it lacks."""

    def __init__(self, module: object, reason: str):
        self.reason = reason
        super().__init__(f"The VAE ({type(module).__name__}) is not a Wan2.1 VAE the fast path can run: {reason} "
                         "The fast Wan VAE nodes compute the Wan2.1 VAE (wan_2.1_vae.safetensors); other VAEs go "
                         "through ComfyUI's own VAE encode/decode.")


@dataclasses.dataclass(frozen=True)
class _ConvSpec:
    module: nn.Module
    path: str
    kernel: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _NormSpec:
    module: nn.Module
    channels: int


@dataclasses.dataclass(frozen=True)
class _ResidualSpec:
    norm1: _NormSpec
    conv1: _ConvSpec
    norm2: _NormSpec
    conv2: _ConvSpec
    shortcut: _ConvSpec | None


@dataclasses.dataclass(frozen=True)
class _AttentionSpec:
    norm: _NormSpec
    qkv: _ConvSpec
    proj: _ConvSpec


@dataclasses.dataclass(frozen=True)
class _ResampleSpec:
    mode: str
    conv: _ConvSpec
    time_conv: _ConvSpec | None


@dataclasses.dataclass(frozen=True)
class _Stack:
    """One encoder or decoder: input conv, layers (residual / attention / resample), head norm + conv."""
    conv_in: _ConvSpec
    layers: tuple
    head_norm: _NormSpec
    head_conv: _ConvSpec


@dataclasses.dataclass(frozen=True)
class WanVAEInfo:
    """What ``check`` found: base width, latent channels, image channels, and the parsed layers."""
    dim: int
    z_dim: int
    image_channels: int
    encoder: _Stack = dataclasses.field(repr=False)
    decoder: _Stack = dataclasses.field(repr=False)
    post_encode: _ConvSpec = dataclasses.field(repr=False)     # WanVAE.conv1 (mu = first z channels)
    pre_decode: _ConvSpec = dataclasses.field(repr=False)      # WanVAE.conv2


class _Parser:
    """Walks a module tree, checking every layer the runner relies on; raises NotWanVAEError."""

    def __init__(self, root: object):
        self.root = root

    def fail(self, reason: str):
        raise NotWanVAEError(self.root, reason)

    def get(self, obj, path: str, attr: str):
        if not hasattr(obj, attr):
            self.fail(f"it has no `{path}.{attr}`." if path else f"it has no `{attr}`.")
        return getattr(obj, attr)

    def item(self, seq, path: str, i: int):
        try:
            return seq[i]
        except (TypeError, IndexError):
            self.fail(f"`{path}` has no layer {i}.")

    def conv(self, m, path: str, cin: int, cout: int, kernel: tuple[int, ...], stride: tuple[int, ...] | None = None,
             pad: tuple[int, ...] | None = None) -> _ConvSpec:
        """A convolution with weight [cout, cin, *kernel]; ``pad``: ComfyUI's causal ``_padding`` (3-D) or
        ``padding`` (2-D) when the module has it."""
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor):
            self.fail(f"`{path}` is not a convolution (no weight).")
        if tuple(w.shape) != (cout, cin, *kernel):
            self.fail(f"`{path}.weight` has shape {tuple(w.shape)}, expected {(cout, cin, *kernel)}.")
        n = len(kernel)
        stride = stride or (1,) * n
        if tuple(getattr(m, "stride", stride)) != stride:
            self.fail(f"`{path}` has stride {tuple(m.stride)}, expected {stride}.")
        if getattr(m, "groups", 1) != 1 or tuple(getattr(m, "dilation", (1,) * n)) != (1,) * n:
            self.fail(f"`{path}` is a grouped or dilated convolution.")
        if n == 3 and hasattr(m, "_padding") and pad is not None and tuple(m._padding) != pad:
            self.fail(f"`{path}` pads {tuple(m._padding)}, expected the causal padding {pad}.")
        if n == 3 and hasattr(m, "padding") and hasattr(m, "_padding") and tuple(m.padding) != (0, 0, 0):
            self.fail(f"`{path}` pads {tuple(m.padding)} inside the convolution; expected ComfyUI's CausalConv3d.")
        if n == 2 and pad is not None and tuple(getattr(m, "padding", pad)) != pad:
            self.fail(f"`{path}` pads {tuple(m.padding)}, expected {pad}.")
        return _ConvSpec(m, path, tuple(kernel))

    def causal3(self, m, path: str, cin: int, cout: int) -> _ConvSpec:
        return self.conv(m, path, cin, cout, (3, 3, 3), pad=(1, 1, 1, 1, 2, 0))

    def point(self, m, path: str, cin: int, cout: int) -> _ConvSpec:
        return self.conv(m, path, cin, cout, (1, 1, 1), pad=(0, 0, 0, 0, 0, 0))

    def norm(self, m, path: str, channels: int) -> _NormSpec:
        g = getattr(m, "gamma", None)
        if not isinstance(g, torch.Tensor) or g.numel() != channels:
            self.fail(f"`{path}` is not an RMS norm over {channels} channels (no `gamma` of that size).")
        b = getattr(m, "bias", None)
        if b is not None and (not isinstance(b, torch.Tensor) or b.numel() != channels):
            self.fail(f"`{path}.bias` does not have {channels} values.")
        return _NormSpec(m, channels)

    def silu(self, m, path: str):
        if not isinstance(m, nn.SiLU):
            self.fail(f"`{path}` is {type(m).__name__}, expected SiLU.")

    def residual(self, m, path: str, cin: int) -> tuple[_ResidualSpec, int]:
        r = self.get(m, path, "residual")
        conv_b = self.item(r, f"{path}.residual", 6)
        cout = getattr(conv_b, "weight", torch.empty(0, 0)).shape[0]
        self.silu(self.item(r, f"{path}.residual", 1), f"{path}.residual.1")
        self.silu(self.item(r, f"{path}.residual", 4), f"{path}.residual.4")
        sc = self.get(m, path, "shortcut")
        if isinstance(getattr(sc, "weight", None), torch.Tensor):
            shortcut = self.point(sc, f"{path}.shortcut", cin, cout)
        elif cin != cout:
            self.fail(f"`{path}` changes {cin} to {cout} channels without a shortcut convolution.")
        else:
            shortcut = None
        spec = _ResidualSpec(self.norm(self.item(r, f"{path}.residual", 0), f"{path}.residual.0", cin),
                             self.causal3(self.item(r, f"{path}.residual", 2), f"{path}.residual.2", cin, cout),
                             self.norm(self.item(r, f"{path}.residual", 3), f"{path}.residual.3", cout),
                             self.causal3(conv_b, f"{path}.residual.6", cout, cout), shortcut)
        return spec, cout

    def attention(self, m, path: str, c: int) -> _AttentionSpec:
        return _AttentionSpec(self.norm(self.get(m, path, "norm"), f"{path}.norm", c),
                              self.conv(self.get(m, path, "to_qkv"), f"{path}.to_qkv", c, 3 * c, (1, 1), pad=(0, 0)),
                              self.conv(self.get(m, path, "proj"), f"{path}.proj", c, c, (1, 1), pad=(0, 0)))

    def resample(self, m, path: str, c: int) -> tuple[_ResampleSpec, int]:
        mode = getattr(m, "mode", None)
        seq = self.get(m, path, "resample")
        first = self.item(seq, f"{path}.resample", 0)
        conv = self.item(seq, f"{path}.resample", 1)
        if mode in ("upsample2d", "upsample3d"):
            if (not isinstance(first, nn.Upsample) or first.mode not in ("nearest", "nearest-exact")
                    or tuple(float(s) for s in _pair(first.scale_factor)) != (2.0, 2.0)):
                self.fail(f"`{path}.resample.0` is not a nearest 2x upsample.")
            spec = self.conv(conv, f"{path}.resample.1", c, c // 2, (3, 3), pad=(1, 1))
            time = (self.conv(self.get(m, path, "time_conv"), f"{path}.time_conv", c, 2 * c, (3, 1, 1),
                              pad=(0, 0, 0, 0, 2, 0)) if mode == "upsample3d" else None)
            return _ResampleSpec(mode, spec, time), c // 2
        if mode in ("downsample2d", "downsample3d"):
            if not isinstance(first, nn.ZeroPad2d) or tuple(first.padding) != (0, 1, 0, 1):
                self.fail(f"`{path}.resample.0` is not the (0, 1, 0, 1) zero padding of a downsample.")
            spec = self.conv(conv, f"{path}.resample.1", c, c, (3, 3), stride=(2, 2), pad=(0, 0))
            time = (self.conv(self.get(m, path, "time_conv"), f"{path}.time_conv", c, c, (3, 1, 1),
                              stride=(2, 1, 1), pad=(0, 0, 0, 0, 0, 0)) if mode == "downsample3d" else None)
            return _ResampleSpec(mode, spec, time), c
        self.fail(f"`{path}` is a resample of unknown mode {mode!r}.")

    def layer(self, m, path: str, c: int) -> tuple[object, int]:
        if hasattr(m, "residual"):
            return self.residual(m, path, c)
        if hasattr(m, "to_qkv"):
            return self.attention(m, path, c), c
        if hasattr(m, "resample"):
            return self.resample(m, path, c)
        if hasattr(m, "upsamples") or hasattr(m, "downsamples"):
            self.fail(f"`{path}` is a {type(m).__name__} with nested up/down-sampling blocks: the layout of "
                      "Wan2.2's 48-channel VAE, which the fast path does not compute.")
        self.fail(f"`{path}` is a {type(m).__name__}, not a residual, attention or resample block.")

    def stack(self, m, path: str, cin: int, width: int, groups: tuple[str, ...]) -> tuple[_Stack, int]:
        conv_in = self.causal3(self.get(m, path, "conv1"), f"{path}.conv1", cin, width)
        c, layers = width, []
        for group in groups:
            seq = self.get(m, path, group)
            if not isinstance(seq, (nn.Sequential, nn.ModuleList)):
                self.fail(f"`{path}.{group}` is not a sequence of blocks.")
            for i, layer in enumerate(seq):
                spec, c = self.layer(layer, f"{path}.{group}.{i}", c)
                layers.append(spec)
        head = self.get(m, path, "head")
        self.silu(self.item(head, f"{path}.head", 1), f"{path}.head.1")
        head_conv = self.item(head, f"{path}.head", 2)
        cout = getattr(head_conv, "weight", torch.empty(0)).shape[0]
        stack = _Stack(conv_in, tuple(layers), self.norm(self.item(head, f"{path}.head", 0), f"{path}.head.0", c),
                       self.causal3(head_conv, f"{path}.head.2", c, cout))
        return stack, cout

    def check_resamples(self, stack: _Stack, path: str, kind: str):
        modes = [s.mode for s in stack.layers if isinstance(s, _ResampleSpec)]
        if any(not m.startswith(kind) for m in modes) or len(modes) != 3 or sum(m.endswith("3d") for m in modes) != 2:
            self.fail(f"`{path}` has resamples {modes}; a Wan2.1 VAE {kind}s 3 times in space and 2 times in time.")

    def middle(self, stack: _Stack, path: str, start: int):
        kinds = [type(s) for s in stack.layers[start:start + 3]]
        if kinds != [_ResidualSpec, _AttentionSpec, _ResidualSpec]:
            self.fail(f"`{path}.middle` is not residual, attention, residual.")

    def parse(self) -> WanVAEInfo:
        root = self.root
        if not isinstance(root, nn.Module):
            self.fail("it is not a torch module.")
        for name in ("encoder", "decoder", "conv1", "conv2"):
            self.get(root, "", name)
        enc, dec = root.encoder, root.decoder
        ups = getattr(dec, "upsamples", None)
        if isinstance(ups, (nn.Sequential, nn.ModuleList)) and len(ups) and hasattr(ups[0], "upsamples"):
            self.fail("its decoder has nested up-sampling blocks (`decoder.upsamples.0.upsamples`): this is Wan2.2's "
                      "48-channel VAE, which the fast path does not compute.")
        for path, m in (("encoder.middle", getattr(enc, "middle", None)),
                        ("decoder.middle", getattr(dec, "middle", None))):
            if not isinstance(m, (nn.Sequential, nn.ModuleList)) or len(m) != 3:
                self.fail(f"`{path}` is not a sequence of three blocks (residual, attention, residual).")
        w1 = self.get(self.get(enc, "encoder", "conv1"), "encoder.conv1", "weight")
        w2 = self.get(root.conv2, "conv2", "weight")
        if not isinstance(w1, torch.Tensor) or w1.ndim != 5 or not isinstance(w2, torch.Tensor) or w2.ndim != 5:
            self.fail("`encoder.conv1` / `conv2` are not 3-D convolutions.")
        dim, image_channels, z = w1.shape[0], w1.shape[1], w2.shape[0]
        encoder, c = self.stack(enc, "encoder", image_channels, dim, ("downsamples", "middle"))
        if c != 2 * z:
            self.fail(f"the encoder gives {c} channels; `conv2` says the latent has {z} (the encoder gives 2 x z).")
        self.check_resamples(encoder, "encoder.downsamples", "down")
        self.middle(encoder, "encoder", len(encoder.layers) - 3)
        dec_width = self.get(self.get(dec, "decoder", "conv1"), "decoder.conv1", "weight").shape[0]
        decoder, c = self.stack(dec, "decoder", z, dec_width, ("middle", "upsamples"))
        if c != image_channels:
            self.fail(f"the decoder gives {c} image channels, the encoder takes {image_channels}.")
        self.check_resamples(decoder, "decoder.upsamples", "up")
        self.middle(decoder, "decoder", 0)
        return WanVAEInfo(dim, z, image_channels, encoder, decoder,
                          self.point(root.conv1, "conv1", 2 * z, 2 * z), self.point(root.conv2, "conv2", z, z))


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def check(vae: object) -> WanVAEInfo:
    """The Wan2.1 VAE layout of ``vae`` (ComfyUI's ``first_stage_model``), or NotWanVAEError naming what differs."""
    return _Parser(vae).parse()


def supported(vae: object) -> bool:
    """Whether ``check(vae)`` passes (the nodes fall back to ComfyUI's VAE otherwise)."""
    try:
        check(vae)
    except NotWanVAEError:
        return False
    return True


# ---------------------------------------------------------------- fused RMS_norm + SiLU (Triton)


@functools.lru_cache(maxsize=1)
def _rms_act_kernel():
    triton, tl = _triton()

    @triton.jit
    def rms_act(x_ptr, o_ptr, g_ptr, b_ptr, ib_ptr, n_pos, C, H, W, sxc, sxt, sxh, sxw, soc, sot, soh, sow, eps,
                HAS_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr, ACT: tl.constexpr, BLOCK_P: tl.constexpr,
                BLOCK_C: tl.constexpr):
        # a tile of BLOCK_P positions (t, h, w) x all C channels; float32 inside, one rounding at the store;
        # HAS_IN_BIAS: x + in_bias is normalised (the bias of the convolution that made x)
        p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.arange(0, BLOCK_C).to(tl.int64)
        pw = p % W
        ph = (p // W) % H
        pt = p // (W * H)
        cmask = c < C
        mask = (p < n_pos)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + (pt * sxt + ph * sxh + pw * sxw)[:, None] + c[None, :] * sxc, mask=mask,
                    other=0.0).to(tl.float32)
        if HAS_IN_BIAS:
            x += tl.load(ib_ptr + c, mask=cmask, other=0.0)[None, :]
        inv = 1.0 / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), eps)
        y = x * inv[:, None] * tl.load(g_ptr + c, mask=cmask, other=0.0)[None, :]
        if HAS_BIAS:
            y += tl.load(b_ptr + c, mask=cmask, other=0.0)[None, :]
        if ACT:
            y = y * tl.sigmoid(y)
        tl.store(o_ptr + (pt * sot + ph * soh + pw * sow)[:, None] + c[None, :] * soc,
                 y.to(o_ptr.dtype.element_ty), mask=mask)

    return rms_act


def _rms_act_triton(x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor | None, act: bool,
                    out: torch.Tensor, in_bias: torch.Tensor | None = None) -> torch.Tensor:
    """x, out [1, C, T, H, W] (any strides, CUDA); gain, bias, in_bias [C] float32 (gain = sqrt(C) * gamma;
    in_bias is added to x before the norm)."""
    triton, _ = _triton()
    _, c, t, h, w = x.shape
    n = t * h * w
    block_c = triton.next_power_of_2(c)
    block_p = max(1, min(128, 4096 // block_c))
    _rms_act_kernel()[(triton.cdiv(n, block_p),)](
        x, out, gain, bias if bias is not None else gain, in_bias if in_bias is not None else gain, n, c, h, w,
        *x.stride()[1:], *out.stride()[1:], _RMS_EPS, HAS_BIAS=bias is not None, HAS_IN_BIAS=in_bias is not None,
        ACT=act, BLOCK_P=block_p, BLOCK_C=block_c)
    return out


# ---------------------------------------------------------------- the runner


class _Run:
    """Per-call state: device, dtype, switches and the shared scratch buffers (keyed by role and shape)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, config: WanVAEConfig):
        self.device, self.dtype, self.config = device, dtype, config
        self.channels_last = config.channels_last
        self.fused = config.fused_norm and device.type == "cuda" and triton_available()
        self._scratch: dict[tuple, list] = {}

    def scratch(self, key: tuple, c: int, frames: int, h: int, w: int) -> torch.Tensor:
        """A [1, c, frames, h, w] buffer in the run's layout whose cells the caller does not write are zero.
        One per key, grown when needed; in channels_last a cell's place does not depend on ``frames``, else the
        buffer is zeroed whenever ``frames`` changes."""
        slot = self._scratch.setdefault(key, [None, None])
        n = c * frames * h * w
        if slot[0] is None or slot[0].numel() < n:
            slot[0] = None
            slot[0] = torch.zeros(n, device=self.device, dtype=self.dtype)
        elif not self.channels_last and slot[1] != frames:
            slot[0][:n].zero_()
        slot[1] = frames
        strides = (n, 1, h * w * c, w * c, c) if self.channels_last else (n, frames * h * w, h * w, w, 1)
        return slot[0].as_strided((1, c, frames, h, w), strides)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        fmt = _CL.get(x.ndim) if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)


def _casts_on_the_fly(m: nn.Module) -> bool:
    """ComfyUI casts (low-VRAM) or patches this module's weights inside its forward."""
    return bool(getattr(m, "comfy_cast_weights", False) or getattr(m, "weight_function", None)
                or getattr(m, "bias_function", None))


class _Conv:
    """A convolution's weights for this run (device, dtype, layout), or its module when ComfyUI casts on the fly."""

    def __init__(self, run: _Run, spec: _ConvSpec, out_channels: int | None = None, defer_bias: bool = False):
        """``defer_bias``: leave the bias out of the convolution; ``deferred`` holds it (float32) for the consumer."""
        self.module = spec.module
        self.direct = not _casts_on_the_fly(spec.module)
        self.out_channels = out_channels
        self.weight = self.bias = self.deferred = None
        if self.direct:
            w = spec.module.weight.detach().to(run.device, run.dtype)
            b = spec.module.bias.detach().to(run.device, run.dtype) if spec.module.bias is not None else None
            if out_channels is not None:
                w, b = w[:out_channels], (b[:out_channels] if b is not None else None)
            self.weight = run.layout(w) if max(spec.kernel) > 1 else w.contiguous()
            if defer_bias and b is not None:
                self.deferred = spec.module.bias.detach().to(run.device, torch.float32)
            else:
                self.bias = b

    def conv3d(self, x: torch.Tensor, stride=1) -> torch.Tensor:
        """Direct: x already padded [1, C, T, H, W] -> [1, C', T', H', W']."""
        return F.conv3d(x, self.weight, self.bias, stride)

    def point(self, x: torch.Tensor) -> torch.Tensor:
        """A 1x1x1 convolution (the module's own forward pads by zero)."""
        y = F.conv3d(x, self.weight, self.bias) if self.direct else self.module(x)
        return y if self.direct or self.out_channels is None else y[:, :self.out_channels]

    def frames2d(self, x: torch.Tensor, stride: int = 1, padding: int = 0,
                 pre: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The 2-D convolution on every frame: x [1, C, T, H, W] -> [1, C', T, H', W'] (the module's own
        ``padding`` applies when it runs its forward; ``pre`` is applied to the [T, C, H, W] frames first)."""
        x4 = x[0].transpose(0, 1)
        if pre is not None:
            x4 = pre(x4)
        y4 = F.conv2d(x4, self.weight, self.bias, stride, padding) if self.direct else self.module(x4)
        return y4.transpose(0, 1).unsqueeze(0)

    def linear(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """A 1x1 2-D convolution on tokens [T, H*W, C] -> [T, H*W, C']."""
        if self.direct:
            return F.linear(tokens, self.weight.reshape(self.weight.shape[0], -1), self.bias)
        t, _, c = tokens.shape
        y4 = self.module(tokens.reshape(t, h, w, c).permute(0, 3, 1, 2))
        return y4.permute(0, 2, 3, 1).reshape(t, h * w, y4.shape[1])


class _Norm:
    """RMS_norm (L2-normalise over channels, times sqrt(C) * gamma, plus bias), optionally followed by SiLU."""

    def __init__(self, run: _Run, spec: _NormSpec):
        self.run = run
        m, c = spec.module, spec.channels
        wide = torch.float64 if run.dtype == torch.float64 else torch.float32
        gain = m.gamma.detach().reshape(c).to(run.device, wide) * c ** 0.5
        bias = m.bias.detach().reshape(c).to(run.device, wide) if m.bias is not None else None
        self.gain32 = gain.float()                                   # the fused kernel's (float32 inside)
        self.bias32 = bias.float() if bias is not None else None
        self.gain = gain.to(run.dtype).reshape(1, c, 1, 1, 1)        # PyTorch's, in the compute dtype
        self.bias = bias.to(run.dtype).reshape(1, c, 1, 1, 1) if bias is not None else None

    def __call__(self, x: torch.Tensor, act: bool, out: torch.Tensor | None = None,
                 in_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [1, C, T, H, W] (plus ``in_bias`` [C], a convolution's deferred bias) -> normalised (and SiLU'd)
        values, written into ``out`` when given (any strides)."""
        if out is None:
            out = torch.empty_like(x)
        if self.run.fused and x.is_cuda:
            return _rms_act_triton(x, self.gain32, self.bias32, act, out, in_bias)
        if in_bias is not None:
            x = x + in_bias.to(x.dtype).reshape(1, -1, 1, 1, 1)
        torch.mul(F.normalize(x, dim=1, eps=_RMS_EPS), self.gain, out=out)
        if self.bias is not None:
            out.add_(self.bias)
        return F.silu(out, inplace=True) if act else out


def _copy_into(x: torch.Tensor) -> Callable[[torch.Tensor | None], torch.Tensor]:
    return lambda out: x if out is None else out.copy_(x)


class _CausalConv:
    """A causal convolution with time kernel 3, stride 1 (two history frames, zeros before the first)."""

    def __init__(self, run: _Run, spec: _ConvSpec, defer_bias: bool = False):
        self.run, self.conv = run, _Conv(run, spec, defer_bias=defer_bias)
        self.pad = spec.kernel[-1] // 2
        self.cache: torch.Tensor | None = None

    def __call__(self, produce: Callable[[torch.Tensor | None], torch.Tensor], shape: tuple[int, int, int, int]):
        """``produce(out)`` writes the input [1, C, T, H, W] (``shape`` = (C, T, H, W)) into ``out``, or returns
        it when ``out`` is None -> the convolution's output [1, C', T, H, W]."""
        if self.run.config.buffers and self.conv.direct:
            return self._buffered(produce, shape)
        x = produce(None)
        cache = self.cache if self.cache is not None else x.new_zeros(x.shape[:2] + (2,) + x.shape[3:])
        if not self.conv.direct:
            y = self.conv.module(x, cache)                   # ComfyUI's CausalConv3d.forward(x, cache_x)
        elif self.cache is None:
            y = self.conv.conv3d(F.pad(x, (self.pad,) * 4 + (2, 0)))
        else:
            full = torch.cat([cache, x], 2)
            y = self.conv.conv3d(F.pad(full, (self.pad,) * 4) if self.pad else full)
        self.cache = (x[:, :, -2:] if x.shape[2] >= 2 else torch.cat([cache[:, :, 1:], x], 2)).clone()
        return y

    def _buffered(self, produce, shape):
        c, t, h, w = shape
        p = self.pad
        buf = self.run.scratch(("causal", p, c, h, w), c, t + 2, h + 2 * p, w + 2 * p)
        if self.cache is None:
            buf[:, :, :2].zero_()
            self.cache = torch.empty_like(buf[:, :, :2])
        else:
            buf[:, :, :2].copy_(self.cache)
        produce(buf[:, :, 2:, p:p + h, p:p + w])
        y = self.conv.conv3d(buf)
        self.cache.copy_(buf[:, :, t:t + 2])
        return y


class _Residual:
    """norm, SiLU, causal conv, norm, SiLU, causal conv, plus the (1x1x1) shortcut of the input."""

    def __init__(self, run: _Run, spec: _ResidualSpec):
        self.norm1, self.norm2 = _Norm(run, spec.norm1), _Norm(run, spec.norm2)
        fold = run.config.fold_bias and run.fused          # conv1's bias goes into norm2's kernel
        self.conv1, self.conv2 = _CausalConv(run, spec.conv1, defer_bias=fold), _CausalConv(run, spec.conv2)
        self.shortcut = _Conv(run, spec.shortcut) if spec.shortcut is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _, c, t, h, w = x.shape
        mid = [self.conv1(lambda out: self.norm1(x, True, out), (c, t, h, w))]
        cout = mid[0].shape[1]
        deferred = self.conv1.conv.deferred
        y = self.conv2(lambda out: self.norm2(mid.pop(), True, out, deferred), (cout, t, h, w))   # pop: freed once read
        return y.add_(x if self.shortcut is None else self.shortcut.point(x))


class _Attention:
    """Single-head self-attention within each frame, plus the input."""

    def __init__(self, run: _Run, spec: _AttentionSpec):
        self.run = run
        self.norm, self.qkv, self.proj = _Norm(run, spec.norm), _Conv(run, spec.qkv), _Conv(run, spec.proj)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _, c, t, h, w = x.shape

        def tokens(v):                                   # [1, C, T, H, W] -> [T, H*W, C] (a view in channels_last)
            return v[0].permute(1, 2, 3, 0).reshape(t, h * w, c)

        q, k, v = self.qkv.linear(tokens(self.norm(x, False)), h, w).unflatten(-1, (3, c)).unbind(-2)
        a = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        y = self.proj.linear(a, h, w).add_(tokens(x))
        y = y.reshape(t, h, w, c).permute(3, 0, 1, 2).unsqueeze(0)
        return y if self.run.channels_last else y.contiguous()


class _Resample:
    """Spatial 2x up/down-sampling per frame, with the temporal 2x of the 3-D modes (first call: frame passes)."""

    def __init__(self, run: _Run, spec: _ResampleSpec):
        self.run, self.mode = run, spec.mode
        self.conv = _Conv(run, spec.conv)
        self.time_up = _CausalConv(run, spec.time_conv) if spec.mode == "upsample3d" else None
        self.time_down = _Conv(run, spec.time_conv) if spec.mode == "downsample3d" else None
        self.calls = 0
        self.last: torch.Tensor | None = None              # downsample3d: the previous chunk's last frame

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self._up(x) if self.mode.startswith("up") else self._down(x)

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        _, c, t, h, w = x.shape
        if self.time_up is not None and self.calls > 1:
            y = self.time_up(_copy_into(x), (c, t, h, w))                     # [1, 2C, T, H, W]
            src = y.unflatten(1, (2, c)).permute(0, 2, 3, 1, 4, 5)            # frame 2i+j = channel half j of i
        else:
            src = x.unsqueeze(3)                                              # [1, C, T, 1, H, W]
        r = src.shape[3]
        if self.run.config.buffers and self.conv.direct:
            # nearest 2x (and the time interleave) in one copy into the zero-bordered buffer's interior
            buf = self.run.scratch(("up", c, h, w), c, t * r, 2 * h + 2, 2 * w + 2)
            dst = buf[:, :, :, 1:2 * h + 1, 1:2 * w + 1].unflatten(2, (t, r)).unflatten(4, (h, 2)).unflatten(6, (w, 2))
            dst.copy_(src[:, :, :, :, :, None, :, None].expand(dst.shape))
            y = self.conv.frames2d(buf)
        else:
            y = self.conv.frames2d(src.reshape(1, c, t * r, h, w), padding=1,
                                   pre=lambda f: F.interpolate(f, scale_factor=(2.0, 2.0), mode="nearest-exact"))
        return y if self.run.channels_last else y.contiguous()

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        _, c, t, h, w = x.shape
        if self.run.config.buffers and self.conv.direct:
            buf = self.run.scratch(("down", c, h, w), c, t, h + 1, w + 1)
            buf[:, :, :, :h, :w].copy_(x)
            y = self.conv.frames2d(buf, stride=2)
        else:
            y = self.conv.frames2d(x, stride=2, pre=lambda f: F.pad(f, (0, 1, 0, 1)))
        if not self.run.channels_last:
            y = y.contiguous()
        if self.time_down is None:
            return y
        last, self.last = self.last, y[:, :, -1:].clone()
        if last is None:
            return y
        full = torch.cat([last, y], 2)
        return self.time_down.conv3d(full, stride=(2, 1, 1)) if self.time_down.direct else self.time_down.module(full)


class _Chain:
    """One encoder or decoder of one sample, called chunk after chunk."""

    def __init__(self, run: _Run, stack: _Stack):
        self.run = run
        self.conv_in = _CausalConv(run, stack.conv_in)
        self.layers = [(_Residual if isinstance(s, _ResidualSpec) else _Attention if isinstance(s, _AttentionSpec)
                        else _Resample)(run, s) for s in stack.layers]
        self.head_norm, self.head_conv = _Norm(run, stack.head_norm), _CausalConv(run, stack.head_conv)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _, c, t, h, w = x.shape
        x = self.conv_in(_copy_into(x if self.run.config.buffers else self.run.layout(x)), (c, t, h, w))
        for layer in self.layers:
            x = layer(x)
        _, c, t, h, w = x.shape
        held = [x]
        del x
        return self.head_conv(lambda out: self.head_norm(held.pop(), True, out), (c, t, h, w))


@contextlib.contextmanager
def _cudnn_benchmark(on: bool):
    """cuDNN's algorithm timing on for the block when ``on`` (the global flag is restored after)."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = old or on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def _spans(frames: int, step: int) -> list[tuple[int, int]]:
    """[0, 1) alone, then ``step`` frames per span: the calls' frame ranges."""
    return [(0, 1)] + [(s, min(s + step, frames)) for s in range(1, frames, step)]


def _check_input(x: object, what: str, channels: int, multiple: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 5:
        raise LiparError(f"The {what} must be a [B, C, T, H, W] tensor; got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}.")
    b, c, t, h, w = x.shape
    if c != channels or b < 1 or t < 1:
        raise LiparError(f"The {what} has shape {tuple(x.shape)}; this VAE needs {channels} channels and at least one "
                         "frame.")
    if h < multiple or w < multiple or h % multiple or w % multiple:
        raise LiparError(f"The {what} is {h}x{w}; the Wan VAE needs height and width that are multiples of "
                         f"{multiple} (VAE Encode crops images to multiples of 8).")
    if not x.is_floating_point():
        raise LiparError(f"The {what} must be floating point; got {x.dtype}.")
    return x


OnChunk = Callable[[int, int], None]


@torch.no_grad()
def encode(vae: nn.Module, x: torch.Tensor, config: WanVAEConfig | None = None,
           on_chunk: OnChunk | None = None) -> torch.Tensor:
    """Wan2.1 VAE encode, as ``WanVAE.encode`` computes it (the latent mean).

    x [B, C, T, H, W] in [-1, 1], in the dtype and on the device to compute in (ComfyUI's VAE dtype and
    device); H, W multiples of 8. Frames after the last 4k+1 are dropped, as ComfyUI's loop drops them.
    Returns mu [B, z, 1 + (T-1)//4, H/8, W/8] in x's dtype. ``on_chunk(done, total)`` runs after each call."""
    info = check(vae)
    config = config or WanVAEConfig()
    _check_input(x, "video to encode", info.image_channels, SPACE_DOWN)
    frames = 1 + TIME_DOWN * ((x.shape[2] - 1) // TIME_DOWN)
    spans = _spans(frames, TIME_DOWN * config.encode_chunk)
    b, _, _, h, w = x.shape
    out = x.new_empty(b, info.z_dim, 1 + (frames - 1) // TIME_DOWN, h // SPACE_DOWN, w // SPACE_DOWN)
    with _cudnn_benchmark(config.cudnn_benchmark):
        for i in range(b):
            run = _Run(x.device, x.dtype, config)
            chain, post = _Chain(run, info.encoder), _Conv(run, info.post_encode, out_channels=info.z_dim)
            done = 0
            for n, (s, e) in enumerate(spans):
                mu = post.point(chain(x[i:i + 1, :, s:e]))
                out[i:i + 1, :, done:done + mu.shape[2]].copy_(mu)
                done += mu.shape[2]
                if on_chunk is not None:
                    on_chunk(i * len(spans) + n + 1, b * len(spans))
    return out


@torch.no_grad()
def decode(vae: nn.Module, z: torch.Tensor, config: WanVAEConfig | None = None,
           on_chunk: OnChunk | None = None) -> torch.Tensor:
    """Wan2.1 VAE decode, as ``WanVAE.decode`` computes it (not clamped).

    z [B, z, T, h, w] in the dtype and on the device to compute in -> video [B, C, 1 + 4(T-1), 8h, 8w] in
    z's dtype. ``on_chunk(done, total)`` runs after each call."""
    info = check(vae)
    config = config or WanVAEConfig()
    _check_input(z, "latent to decode", info.z_dim, 1)
    b, _, t, h, w = z.shape
    spans = _spans(t, config.decode_chunk)
    out = z.new_empty(b, info.image_channels, 1 + TIME_DOWN * (t - 1), h * SPACE_DOWN, w * SPACE_DOWN)
    with _cudnn_benchmark(config.cudnn_benchmark):
        for i in range(b):
            run = _Run(z.device, z.dtype, config)
            pre, chain = _Conv(run, info.pre_decode), _Chain(run, info.decoder)
            done = 0
            for n, (s, e) in enumerate(spans):
                video = chain(pre.point(z[i:i + 1, :, s:e]))
                out[i:i + 1, :, done:done + video.shape[2]].copy_(video)
                done += video.shape[2]
                if on_chunk is not None:
                    on_chunk(i * len(spans) + n + 1, b * len(spans))
    return out


def working_memory(vae: nn.Module, shape: tuple[int, ...], stage: str, config: WanVAEConfig | None = None,
                   dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes the runner needs besides the weights for one sample of ``shape`` (the video [B, C, T, H, W] for
    ``stage`` 'encode', the latent for 'decode'): full-resolution activations at the base width for the
    frames of one call plus a few, and the input/output video. Fitted to the peaks measured on an H200
    (832x480x81, benchmarks/wan_vae.py: encode 3.1-9.5 GiB, decode 6.5-42.5 GiB for 1-20 latent frames
    per call); the layouts without channels_last need about 1.5x."""
    info = check(vae)
    config = config or WanVAEConfig()
    item = torch.empty((), dtype=dtype).element_size()
    layout = 1.0 if config.channels_last or not config.buffers else 1.5
    if stage == "encode":
        _, c, t, h, w = shape
        frames = min(t, TIME_DOWN * config.encode_chunk) + 3
        return int(layout * 6 * info.dim * frames * h * w * item + c * t * h * w * item)
    if stage == "decode":
        _, _, t, h, w = shape
        h, w = h * SPACE_DOWN, w * SPACE_DOWN
        frames = TIME_DOWN * min(t, config.decode_chunk) + 5
        video = info.image_channels * (1 + TIME_DOWN * (t - 1)) * h * w * item
        return int(layout * 7 * info.dim * frames * h * w * item + video)
    raise LiparError(f"working_memory: stage must be 'encode' or 'decode'; got {stage!r}.")
