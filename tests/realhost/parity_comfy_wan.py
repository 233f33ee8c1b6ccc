"""lipar's causal Wan forward on ComfyUI's own WanModel vs on lipar's WanDiT (run with ComfyUI's Python).

usage: COMFY_PY parity_comfy_wan.py COMFY_DIR WORK_DIR  -> prints one JSON object

One tiny random Wan2.1-T2V file (dim 256 = 2 heads of 128, 2 layers, every parameter
perturbed) is loaded twice: by ComfyUI's loader (``comfy.sd.load_diffusion_model``, model
detection included) and by ``lipar.loading.load_model``. Compared, in float32 on CPU:

a. ``lipar.causal.forward_once`` on ComfyUI's module vs on lipar's module (same code,
   different module trees: checks the parameter names/semantics lipar relies on);
b. a 2-chunk ``lipar.sample`` (SDEdit, KV cache, cache-update passes) unpruned, and pruned
   with each recovery mode, on both modules;
c. ComfyUI's own ``WanModel.forward`` (its non-causal path, its timestep convention
   t = 1000 * sigma and its own RoPE/time embedding) vs ``lipar.causal.forward_once`` on
   the same inputs and weights: an independent implementation of the same forward.
"""
from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import tiny_models as tm  # noqa: E402


def diff(a, b) -> dict:
    a, b = a.double(), b.double()
    err = (a - b).abs()
    return {"max_abs": float(err.max()), "ref_max_abs": float(b.abs().max()),
            "rel": float(err.max() / b.abs().max().clamp_min(1e-30)),
            "rms_rel": float(((a - b).pow(2).mean() / b.pow(2).mean().clamp_min(1e-30)).sqrt())}


def main() -> None:
    comfy_dir, work = sys.argv[1], sys.argv[2]
    tm.comfy_preamble(comfy_dir)
    import torch
    import comfy.model_management
    import comfy.sd
    lipar = tm.import_lipar()
    import lipar.loading
    from lipar.causal import forward_once

    torch.manual_seed(0)
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "tiny_wan_256.safetensors")
    tm.write_tiny_wan(path, dim=256, layers=2, ffn=512, seed=3)

    t0 = time.perf_counter()
    patcher = comfy.sd.load_diffusion_model(path)
    comfy.model_management.load_models_gpu([patcher])
    cm = patcher.model.diffusion_model
    res = {"comfy_module": f"{type(cm).__module__}.{type(cm).__name__}",
           "comfy_model": type(patcher.model).__name__,
           "comfy_config": {k: patcher.model.model_config.unet_config.get(k) for k in
                            ("dim", "num_heads", "ffn_dim", "num_layers", "in_dim", "out_dim", "model_type")},
           "comfy_weight_dtype": str(cm.blocks[0].self_attn.q.weight.dtype),
           "comfy_patch_embedding_dtype": str(cm.patch_embedding.weight.dtype),
           "load_seconds": round(time.perf_counter() - t0, 3)}
    lm = lipar.loading.load_model(path, dtype=torch.float32)

    g = torch.Generator().manual_seed(7)
    b, t, h, w = 1, 6, 8, 12
    latent = torch.randn(b, 16, t, h, w, generator=g)
    # make part of the video static, so the pruner finds something to prune
    latent[:, :, 1:, :, : w // 2] = latent[:, :, :1, :, : w // 2]
    context = torch.zeros(b, 512, 4096)
    context[:, :20] = torch.randn(b, 20, 4096, generator=g)
    timestep = torch.tensor([700.0])

    with torch.no_grad():
        # a. lipar's forward on both trees
        out_c = forward_once(cm, latent, timestep, context, dtype=torch.float32)
        out_l = forward_once(lm, latent, timestep, context, dtype=torch.float32)
        res["a_forward_once_comfy_vs_lipar"] = diff(out_c, out_l)

        # b. 2-chunk Self-Forcing sampling, unpruned and pruned
        plan = lipar.build_plan(latent, lipar.PlanConfig(threshold=0.15, anchor_threshold=0.3, chunk_frames=3))
        res["plan_prune_ratio"] = round(plan.prune_ratio(), 4)
        for name, pl, mode in (("unpruned", None, "noise_aware"), ("noise_aware", plan, "noise_aware"),
                               ("m_degree", plan, "m_degree"), ("none", plan, "none")):
            cfg = lipar.SamplerConfig(mode="edit", seed=11, dtype=torch.float32, recovery=mode, backend="sdpa")
            rc = lipar.sample(cm, context, latent, plan=pl, config=cfg, device="cpu")
            rl = lipar.sample(lm, context, latent, plan=pl, config=cfg, device="cpu")
            res[f"b_sample_{name}_comfy_vs_lipar"] = diff(rc.latent, rl.latent) | {
                "passes": rc.passes, "tokens_computed": rc.tokens_computed, "tokens_full": rc.tokens_full}

        # c. ComfyUI's own forward (non-causal, whole latent) vs lipar.causal.forward_once
        own = cm(latent, timestep, context)
        res["c_comfy_forward_vs_lipar_on_comfy_module"] = diff(out_c, own)
        res["c_comfy_forward_vs_lipar_on_lipar_module"] = diff(out_l, own)
        # the same at another noise level and a shorter (unpadded) text, which ComfyUI attends to as given
        ctx_short = context[:, :20]
        own2 = cm(latent, torch.tensor([125.0]), torch.cat([ctx_short, torch.zeros(b, 492, 4096)], 1))
        res["c_comfy_forward_vs_lipar_t125"] = diff(forward_once(lm, latent, torch.tensor([125.0]), ctx_short,
                                                                 dtype=torch.float32), own2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
