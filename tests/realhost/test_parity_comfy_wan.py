"""lipar's causal Wan forward on ComfyUI's own WanModel equals the same on lipar's WanDiT, and
ComfyUI's own (non-causal) WanModel.forward equals lipar.causal.forward_once (float32, CPU).

The comparison runs in ComfyUI's Python (parity_comfy_wan.py); see its docstring."""
from __future__ import annotations

import json

from comfy_host import ARTIFACTS, run_comfy_python

# Same code on two module trees: only summation order can differ.
SAME_CODE_RTOL = 1e-5
# Two implementations (ComfyUI computes the sinusoidal time embedding from float32
# positions, lipar from float64; RoPE tables and softmax kernels differ too): float32 level.
INDEPENDENT_RTOL = 1e-4


def test_lipar_on_comfy_wanmodel_matches_lipar_wandit_and_comfy_forward(comfy, tmp_path):
    res = json.loads(run_comfy_python(comfy, "parity_comfy_wan.py", comfy["dir"], str(tmp_path)))
    print("\n" + json.dumps(res, indent=1))
    worst_same = max(res[k]["rel"] for k in res if k.startswith(("a_", "b_")))
    worst_own = max(res[k]["rel"] for k in res if k.startswith("c_"))
    ARTIFACTS.append(f"parity: lipar on ComfyUI WanModel vs on lipar WanDiT, max rel error {worst_same:.1e} "
                     f"(forward_once + 2-chunk sample x4 modes); ComfyUI WanModel.forward vs forward_once {worst_own:.1e}")
    assert res["comfy_module"] == "comfy.ldm.wan.model.WanModel"
    assert res["comfy_model"] == "WAN21"
    assert res["comfy_config"]["dim"] == 256 and res["comfy_config"]["num_heads"] == 2
    assert res["comfy_weight_dtype"] == "torch.float32"
    assert res["a_forward_once_comfy_vs_lipar"]["rel"] < SAME_CODE_RTOL
    assert res["plan_prune_ratio"] > 0.05, "the parity latent should exercise pruning"
    for mode in ("unpruned", "noise_aware", "m_degree", "none"):
        r = res[f"b_sample_{mode}_comfy_vs_lipar"]
        assert r["rel"] < SAME_CODE_RTOL, (mode, r)
        assert r["passes"] == 7          # 2 chunks x 3 steps + 1 cache-update pass
        if mode != "unpruned":
            assert r["tokens_computed"] < r["tokens_full"]
    for key in ("c_comfy_forward_vs_lipar_on_comfy_module", "c_comfy_forward_vs_lipar_on_lipar_module",
                "c_comfy_forward_vs_lipar_t125"):
        assert res[key]["rel"] < INDEPENDENT_RTOL, (key, res[key])
