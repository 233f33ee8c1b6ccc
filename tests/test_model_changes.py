"""Runs follow the weights the model holds at that moment, and non-finite output stops a run.

ComfyUI changes a loaded model between runs by putting new tensors into it
(``comfy.utils.set_attr_param``: a LoRA-patched copy in, the original back out), by casting or
moving it, or by computing weights on the fly from patches (``weight_function``). The CUDA-graph
cache must notice every one of these (tests/test_gpu.py replays graphs on a GPU; here the
signature it keys on is checked host-free).
"""

import pytest
import torch

import lipar
from lipar.clips import ClipSpec, make_clip
from lipar.graphs import has_weight_hooks, weights_signature


def set_attr_param(module, name, value):
    """What ComfyUI's ``comfy.utils.set_attr_param`` does: a new Parameter object in the module."""
    *path, leaf = name.split(".")
    for p in path:
        module = getattr(module, p)
    prev = getattr(module, leaf)
    setattr(module, leaf, torch.nn.Parameter(value, requires_grad=False))
    return prev


@pytest.fixture()
def model():
    return lipar.build_model(lipar.TINY, seed=0)


def test_signature_changes_when_comfyui_swaps_a_weight_and_back(model):
    sig0 = weights_signature(model)
    old = set_attr_param(model, "blocks.1.ffn.2.weight", old_w := model.blocks[1].ffn[2].weight.data + 1.0)
    assert old_w is not None
    sig1 = weights_signature(model)
    assert sig1 != sig0
    set_attr_param(model, "blocks.1.ffn.2.weight", old.data)   # unpatch: the original storage again
    assert weights_signature(model) == sig0


def test_signature_ignores_in_place_updates_and_sees_casts_and_buffers(model):
    sig0 = weights_signature(model)
    with torch.no_grad():
        model.blocks[0].self_attn.q.weight.add_(1.0)          # same storage: a replayed graph reads it
    assert weights_signature(model) == sig0
    model.register_buffer("scale_input", torch.ones(1))
    sig1 = weights_signature(model)
    assert sig1 != sig0
    model.to(torch.float64)                                    # every tensor re-allocated
    assert weights_signature(model) != sig1


def test_signature_sees_comfyui_cast_flags(model):
    sig0 = weights_signature(model)
    model.blocks[0].ffn[0].comfy_cast_weights = True
    assert weights_signature(model) != sig0


def test_weight_hooks_are_detected_and_run_eagerly(model):
    clip = make_clip(ClipSpec(latent_frames=6, height=8, width=12))
    ctx = torch.randn(1, 5, 4096, generator=torch.Generator().manual_seed(0))
    assert not has_weight_hooks(model)
    model.blocks[1].self_attn.k.weight_function = [lambda w: w * 1.5]
    assert has_weight_hooks(model)
    r = lipar.sample(model, ctx, clip, config=lipar.SamplerConfig(seed=1))
    assert r.info["cuda_graphs"] is False and r.info["path"].startswith("eager")


def _nan_after(module, calls: int):
    """A forward hook that makes the module's output NaN from its ``calls``-th call on."""
    count = [0]

    def hook(_m, _inp, out):
        count[0] += 1
        return out * float("nan") if count[0] > calls else out
    return module.register_forward_hook(hook)


@pytest.mark.parametrize("bad_from_pass, chunk", [(0, 0), (4, 1)])
def test_non_finite_output_names_the_first_bad_chunk(model, bad_from_pass, chunk):
    clip = make_clip(ClipSpec(latent_frames=6, height=8, width=12))
    ctx = torch.randn(1, 5, 4096, generator=torch.Generator().manual_seed(0))
    handle = _nan_after(model.blocks[0].ffn, bad_from_pass)   # 4 passes per chunk: 3 steps + cache update
    with pytest.raises(lipar.LiparError, match=rf"NaN or Inf values in chunk {chunk} \(latent frames "
                                               rf"{3 * chunk}-{3 * chunk + 2}\)"):
        lipar.sample(model, ctx, clip, config=lipar.SamplerConfig(seed=1))
    handle.remove()
    assert torch.isfinite(lipar.sample(model, ctx, clip, config=lipar.SamplerConfig(seed=1)).latent).all()


def test_float16_overflow_suggests_bf16(model):
    clip = make_clip(ClipSpec(latent_frames=3, height=8, width=12))
    ctx = torch.randn(1, 5, 4096, generator=torch.Generator().manual_seed(0))
    handle = _nan_after(model.blocks[0].ffn, 0)
    with pytest.raises(lipar.LiparError, match="bf16"):
        lipar.sample(model.to(torch.float16), ctx, clip, config=lipar.SamplerConfig(seed=1, dtype=torch.float16))
    handle.remove()
