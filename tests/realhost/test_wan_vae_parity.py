"""Wan VAE Encode / Decode (fast) give what ComfyUI's VAEEncode / VAEDecode give, inside ComfyUI 0.8 (CPU,
float32), for a random Wan2.1 VAE loaded by ComfyUI's VAELoader; the tiny VAE runs ComfyUI's own module and gives exactly ComfyUI's result.

The comparison runs in ComfyUI's Python (vae_parity.py); see its docstring."""
from __future__ import annotations

import json

from comfy_host import ARTIFACTS, run_comfy_python

# Same float32 computation in another order (chunks of several frames, another memory layout): rounding only.
RTOL = 1e-5


def test_fast_wan_vae_nodes_equal_comfyui_vae_nodes(comfy, tmp_path):
    res = json.loads(run_comfy_python(comfy, "vae_parity.py", comfy["dir"], str(tmp_path)))
    print("\n" + json.dumps(res, indent=1))
    ARTIFACTS.append("Wan VAE (fast) vs ComfyUI VAE nodes, max rel error: " + ", ".join(
        f"{k} {res[k]['rel']:.1e}" for k in ("encode", "decode_encoded", "decode_7_frames")))
    assert res["wan_module"] == "comfy.ldm.wan.vae.WanVAE" and res["wan_dtype"] == "torch.float32"
    assert res["encode"]["shape"] == [1, 16, 4, 7, 10]                 # 13 frames, 59x83 cropped to 56x80
    assert res["decode_encoded"]["shape"] == [13, 56, 80, 3] and res["decode_7_frames"]["shape"] == [25, 56, 80, 3]
    for key in ("encode", "decode_encoded", "decode_7_frames"):
        r = res[key]
        assert r["shape"] == r["ref_shape"] and r["dtype"] == r["ref_dtype"] and r["device"] == r["ref_device"], r
        assert r["rel"] < RTOL, (key, r)
    assert res["module_calls_by_comfyui_and_pack"] == [1, 2], "the pack's nodes called the module (no fast path)"
    # the Wan VAE runs lipar's path: its only lines say where the time went (no fallback, no notice)
    assert all(m.startswith(("LIPAR Wan VAE encode: 13 frames in", "LIPAR Wan VAE decode: ")) and " frames in " in m
               for m in res["wan_log"]), res["wan_log"]
    assert res["tiny_module"] == "TAEHV"
    assert res["tiny_encode"]["equal"] and res["tiny_decode"]["equal"], (res["tiny_encode"], res["tiny_decode"])
    # the tiny VAE runs ComfyUI's own TAEHV module through the nodes (pixel scaling on the device): the same values
    assert any("encode: not a Wan2.1 VAE" in m and "TAEHV module" in m for m in res["tiny_log"])
    assert any("decode: not a Wan2.1 VAE" in m and "TAEHV module" in m for m in res["tiny_log"])
