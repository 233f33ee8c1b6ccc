"""Test-only Wan2.1 VAE module trees and an independent whole-clip reference (no ComfyUI import).

``build_vae`` makes a module tree with the parameter names and sub-module layout of ComfyUI's
``comfy.ldm.wan.vae.WanVAE`` as ComfyUI's loader builds it for Wan2.1 (``dim_mult`` 1,2,4,4, two
residual blocks per stage, no attention outside the middle blocks, temporal downsampling in the
last two stages), at a small width, with random weights. Its modules carry only what
``lipar.wan_vae`` reads (weights, ``_padding``, ``mode``, ``stride``, ``padding``); the causal
convolutions also have a ComfyUI-style ``forward(x, cache_x=None)`` so the runner's "module's own
forward" path (weights cast or patched on the fly) can be exercised.

``reference_encode`` / ``reference_decode`` compute the VAE over the whole clip at once, from the
definition of each causal layer (no chunks, no caches): a causal convolution is a convolution of
the clip with two zero frames in front; a temporal downsample keeps frame 0 and then convolves
frames (2j-2, 2j-1, 2j) for output j >= 1; a temporal upsample keeps frame 0 and turns every later
frame into two with a causal convolution that starts from zeros (it never sees frame 0). ComfyUI's
chunked loop computes the same thing (checked against ComfyUI itself in tests/realhost).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Hooks:
    """ComfyUI's on-the-fly weight hooks: ``comfy_cast_weights`` (a flag), ``weight_function`` and
    ``bias_function`` (lists of functions applied to the weight / bias inside forward); counts forward calls."""

    def init_hooks(self):
        self.calls = 0
        self.comfy_cast_weights = False
        self.weight_function = []
        self.bias_function = []

    def hooked(self):
        self.calls += 1
        w, b = self.weight, self.bias
        for f in self.weight_function:
            w = f(w)
        for f in self.bias_function:
            b = f(b)
        return w, b


class CausalConv3d(nn.Conv3d, _Hooks):
    """A Conv3d whose time padding is all in front (``_padding`` in F.pad order, as ComfyUI keeps it)."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__(cin, cout, kernel, stride=stride, padding=0)
        p = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        self._padding = (p[2], p[2], p[1], p[1], 2 * p[0], 0)
        self.init_hooks()

    def forward(self, x, cache_x=None):
        pad = list(self._padding)
        if cache_x is not None and pad[4] > 0:
            x = torch.cat([cache_x, x], 2)
            pad[4] -= cache_x.shape[2]
        return F.conv3d(F.pad(x, pad), *self.hooked(), self.stride)


class Conv2d(nn.Conv2d, _Hooks):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_hooks()

    def forward(self, x):
        return F.conv2d(x, *self.hooked(), self.stride, self.padding)


class RMSNorm(nn.Module):
    def __init__(self, dim, images=False, bias=False):
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None


class ResidualBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.residual = nn.Sequential(RMSNorm(cin), nn.SiLU(), CausalConv3d(cin, cout, 3, padding=1),
                                      RMSNorm(cout), nn.SiLU(), nn.Dropout(0.0), CausalConv3d(cout, cout, 3, padding=1))
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else nn.Identity()


class AttentionBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = Conv2d(dim, 3 * dim, 1)
        self.proj = Conv2d(dim, dim, 1)


class Resample(nn.Module):
    def __init__(self, dim, mode):
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                          Conv2d(dim, dim // 2, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), Conv2d(dim, dim, 3, stride=(2, 2)))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))


class Encoder3d(nn.Module):
    def __init__(self, dim, z2, cin, mult=(1, 2, 4, 4), down=(False, True, True)):
        super().__init__()
        dims = [dim * m for m in (1,) + tuple(mult)]
        self.conv1 = CausalConv3d(cin, dims[0], 3, padding=1)
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers += [ResidualBlock(a, b), ResidualBlock(b, b)]
            if i != len(mult) - 1:
                layers.append(Resample(b, "downsample3d" if down[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        c = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        self.head = nn.Sequential(RMSNorm(c), nn.SiLU(), CausalConv3d(c, z2, 3, padding=1))


class Decoder3d(nn.Module):
    def __init__(self, dim, z, cout, mult=(1, 2, 4, 4), up=(True, True, False)):
        super().__init__()
        dims = [dim * m for m in (mult[-1],) + tuple(mult[::-1])]
        self.conv1 = CausalConv3d(z, dims[0], 3, padding=1)
        c = dims[0]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            a = a // 2 if i > 0 else a
            layers += [ResidualBlock(a, b), ResidualBlock(b, b), ResidualBlock(b, b)]
            if i != len(mult) - 1:
                layers.append(Resample(b, "upsample3d" if up[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], cout, 3, padding=1))


class WanVAE(nn.Module):
    def __init__(self, dim=8, z_dim=16, image_channels=3):
        super().__init__()
        self.encoder = Encoder3d(dim, 2 * z_dim, image_channels)
        self.conv1 = CausalConv3d(2 * z_dim, 2 * z_dim, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, image_channels)


def build_vae(dim: int = 8, z_dim: int = 16, seed: int = 0, dtype=torch.float64, norm_bias: bool = False) -> WanVAE:
    """A random Wan2.1-architecture VAE; gains near 1 and small biases so every parameter matters.
    ``norm_bias`` gives every RMS norm a bias (Wan2.1's have none; the runner supports one)."""
    vae = WanVAE(dim, z_dim)
    if norm_bias:
        for m in vae.modules():
            if isinstance(m, RMSNorm):
                m.bias = nn.Parameter(torch.zeros_like(m.gamma))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim == 1 or name.endswith(".bias"):
                p.copy_(0.05 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
    return vae.to(dtype).eval()


# ---------------------------------------------------------------- whole-clip reference


def _norm(mod, x, act: bool):
    c = x.shape[1]
    y = F.normalize(x, dim=1) * c ** 0.5 * mod.gamma.reshape(1, c, *([1] * (x.ndim - 2)))
    if mod.bias is not None:
        y = y + mod.bias.reshape(1, c, *([1] * (x.ndim - 2)))
    return F.silu(y) if act else y


def _causal(conv, x):
    """Convolution over the whole clip with two zero frames in front (spatial padding from _padding)."""
    return F.conv3d(F.pad(x, conv._padding), conv.weight, conv.bias, conv.stride)


def _per_frame(fn, x):
    b, t = x.shape[0], x.shape[2]
    y = fn(x.transpose(1, 2).reshape(b * t, *x.shape[1:2], *x.shape[3:]))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


def _residual(blk, x):
    r = blk.residual
    h = _causal(r[2], _norm(r[0], x, True))
    h = _causal(r[6], _norm(r[3], h, True))
    sc = x if isinstance(blk.shortcut, nn.Identity) else F.conv3d(x, blk.shortcut.weight, blk.shortcut.bias)
    return h + sc


def _attention(blk, x):
    def frame(x4):
        n, c, h, w = x4.shape
        y = _norm(blk.norm, x4, False)
        q, k, v = F.conv2d(y, blk.to_qkv.weight, blk.to_qkv.bias).reshape(n, 3, c, h * w).unbind(1)
        a = torch.softmax(q.transpose(1, 2) @ k / c ** 0.5, dim=-1) @ v.transpose(1, 2)   # [n, hw, c]
        return x4 + F.conv2d(a.transpose(1, 2).reshape(n, c, h, w), blk.proj.weight, blk.proj.bias)
    return _per_frame(frame, x)


def _resample(blk, x):
    conv = blk.resample[1]
    if blk.mode.startswith("up"):
        if blk.mode == "upsample3d" and x.shape[2] > 1:
            y = _causal(blk.time_conv, x[:, :, 1:])                       # [b, 2c, t-1, h, w]
            b, c2, t, h, w = y.shape
            y = y.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
            x = torch.cat([x[:, :, :1], y], 2)
        return _per_frame(lambda f: F.conv2d(f.repeat_interleave(2, 2).repeat_interleave(2, 3), conv.weight,
                                             conv.bias, padding=1), x)
    x = _per_frame(lambda f: F.conv2d(F.pad(f, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2), x)
    if blk.mode == "downsample3d" and x.shape[2] > 1:
        x = torch.cat([x[:, :, :1], F.conv3d(x, blk.time_conv.weight, blk.time_conv.bias, stride=(2, 1, 1))], 2)
    return x


def _layer(layer, x):
    if isinstance(layer, ResidualBlock):
        return _residual(layer, x)
    if isinstance(layer, AttentionBlock):
        return _attention(layer, x)
    return _resample(layer, x)


def reference_encode(vae: WanVAE, x: torch.Tensor) -> torch.Tensor:
    """x [B, C, T, H, W] -> mu [B, z, 1 + (T-1)//4, H/8, W/8] (frames past the last 4k+1 are dropped, as
    ComfyUI's loop drops them)."""
    x = x[:, :, :1 + 4 * ((x.shape[2] - 1) // 4)]
    e = vae.encoder
    h = _causal(e.conv1, x)
    for layer in list(e.downsamples) + list(e.middle):
        h = _layer(layer, h)
    h = _causal(e.head[2], _norm(e.head[0], h, True))
    z = h.shape[1] // 2
    return F.conv3d(h, vae.conv1.weight, vae.conv1.bias)[:, :z]


def reference_decode(vae: WanVAE, z: torch.Tensor) -> torch.Tensor:
    """z [B, z, T, h, w] -> video [B, C, 1 + 4(T-1), 8h, 8w] (before ComfyUI's clamp to [-1, 1])."""
    d = vae.decoder
    h = _causal(d.conv1, F.conv3d(z, vae.conv2.weight, vae.conv2.bias))
    for layer in list(d.middle) + list(d.upsamples):
        h = _layer(layer, h)
    return _causal(d.head[2], _norm(d.head[0], h, True))
