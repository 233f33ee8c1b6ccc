"""Wan VAE Encode / Decode (fast) against ComfyUI's own VAEEncode / VAEDecode (run with ComfyUI's Python).

usage: COMFY_PY vae_parity.py COMFY_DIR WORK_DIR  -> prints one JSON object

A random Wan2.1 VAE (base width 8, full 3x3x3 kernels, every weight random) and the tiny lighttaew2_1
VAE of the fixtures are written as files and loaded by ComfyUI's VAELoader (its model detection
included); the pack is imported as ComfyUI imports it (a package named by its folder). On CPU in
float32 (ComfyUI's VAE dtype there), the pack's nodes and ComfyUI's nodes get the same inputs: a 13-frame
59x83 clip (VAE Encode crops it to 56x80) and two latents (the encoded one, 4 frames, and a 7-frame one,
so the decoder's chunks are uneven). For the Wan VAE the pack must not call the module's own
encode/decode (the fast path ran); for the tiny VAE (its own module run by the nodes) it must give ComfyUI's result exactly.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import tiny_models as tm  # noqa: E402


def load_pack():
    """The repository as ComfyUI imports a custom node folder: a package (nodes import ..lipar relatively)."""
    spec = importlib.util.spec_from_file_location("lipar_pack_under_test", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)
    return pack


def diff(a, b) -> dict:
    return {"shape": list(a.shape), "ref_shape": list(b.shape), "dtype": str(a.dtype), "ref_dtype": str(b.dtype),
            "device": str(a.device), "ref_device": str(b.device),
            "rel": float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)),
            "equal": bool(a.shape == b.shape and a.dtype == b.dtype and bool((a == b).all()))}


class Counter:
    """Wraps a module method and counts its calls."""

    def __init__(self, module, name):
        self.n, self.fn = 0, getattr(module, name)
        setattr(module, name, self)

    def __call__(self, *a, **k):
        self.n += 1
        return self.fn(*a, **k)


def main() -> None:
    comfy_dir, work = sys.argv[1], sys.argv[2]
    tm.comfy_preamble(comfy_dir)
    import torch
    import folder_paths
    import nodes as comfy_nodes
    from safetensors.torch import save_file

    for kind in ("vae", "vae_approx"):
        os.makedirs(os.path.join(work, kind), exist_ok=True)
        folder_paths.add_model_folder_path(kind, os.path.join(work, kind))
    save_file(tm.tiny_wan_vae_state_dict(dim=8, seed=3, local=False), os.path.join(work, "vae", "wan21_random.safetensors"))
    tm.write_tiny_taehv(os.path.join(work, "vae_approx", "lighttaew2_1.safetensors"))
    pack = load_pack()
    enc, dec = pack.NODE_CLASS_MAPPINGS["LIPAR_WanVAEEncode"](), pack.NODE_CLASS_MAPPINGS["LIPAR_WanVAEDecode"]()
    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logging.getLogger("lipar").addHandler(handler)
    logging.getLogger("lipar").setLevel(logging.INFO)

    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(13, 59, 83, 3, generator=g)
    z7 = torch.randn(1, 16, 7, 7, 10, generator=g)
    res = {}
    with torch.inference_mode():
        (vae,) = comfy_nodes.VAELoader().load_vae("wan21_random.safetensors")
        res["wan_module"] = f"{type(vae.first_stage_model).__module__}.{type(vae.first_stage_model).__name__}"
        res["wan_dtype"] = str(vae.vae_dtype)
        calls = Counter(vae.first_stage_model, "encode"), Counter(vae.first_stage_model, "decode")
        ref = comfy_nodes.VAEEncode().encode(vae, pixels)[0]["samples"]
        ours = enc.encode(pixels, vae)[0]["samples"]
        res["encode"] = diff(ours, ref)
        for name, z in (("decode_encoded", ref), ("decode_7_frames", z7)):
            res[name] = diff(dec.decode({"samples": z}, vae)[0], comfy_nodes.VAEDecode().decode(vae, {"samples": z})[0])
        res["module_calls_by_comfyui_and_pack"] = [c.n for c in calls]      # ComfyUI's nodes: 1 encode, 2 decodes
        res["wan_log"] = list(records)
        records.clear()

        (tiny,) = comfy_nodes.VAELoader().load_vae("lighttaew2_1.safetensors")
        res["tiny_module"] = type(tiny.first_stage_model).__name__
        small = pixels[:5, :32, :48]
        t_ref = comfy_nodes.VAEEncode().encode(tiny, small)[0]["samples"]
        res["tiny_encode"] = diff(enc.encode(small, tiny)[0]["samples"], t_ref)
        res["tiny_decode"] = diff(dec.decode({"samples": t_ref}, tiny)[0], comfy_nodes.VAEDecode().decode(tiny, {"samples": t_ref})[0])
        res["tiny_log"] = list(records)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
