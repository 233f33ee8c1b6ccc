"""Write the real-host fixtures into a ComfyUI base directory (run with ComfyUI's Python).

usage: COMFY_PY make_fixtures.py COMFY_DIR BASE_DIR

BASE_DIR/models/diffusion_models/self_forcing_dmd.safetensors  tiny Wan2.1-T2V DiT (dim 128, 2 layers)
BASE_DIR/models/diffusion_models/self_forcing_dmd_official.pt  the same weights in the official .pt layout
BASE_DIR/models/vae/wan_2.1_vae.safetensors                    tiny Wan2.1 VAE (base width 8)
BASE_DIR/models/vae_approx/lighttaew2_1.safetensors            tiny VAE of the lighttaew2_1 architecture, random weights
BASE_DIR/models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors  placeholder (never loaded)
BASE_DIR/input/lipar_input.mp4                                 21 frames 128x96 (6 latent frames = 2 chunks)
BASE_DIR/input/lipar_input_odd.mp4                             65 frames 134x100 (VAE Encode crops to 128x96; short last chunk)
BASE_DIR/output/lipar_cond/shard_0000.pkl                      CONDITIONING for LoadTrainingDataset

The file names are the ones the workflows in workflows/ reference, so the API workflows
run unchanged except for the text encoder (see test_workflows_run.py). Prints a JSON summary.
"""
from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import tiny_models as tm  # noqa: E402


def main() -> None:
    comfy_dir, base = sys.argv[1], sys.argv[2]
    tm.comfy_preamble(comfy_dir)
    t0 = time.perf_counter()
    for d in ("models/diffusion_models", "models/vae", "models/vae_approx", "models/text_encoders", "input", "output",
              "temp", "user", "custom_nodes"):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    dm = os.path.join(base, "models", "diffusion_models")
    sd = tm.write_tiny_wan(os.path.join(dm, "self_forcing_dmd.safetensors"), dim=128, layers=2, ffn=256)
    tm.write_official_layout_pt(os.path.join(dm, "self_forcing_dmd_official.pt"), sd)
    tm.write_tiny_wan_vae(os.path.join(base, "models", "vae", "wan_2.1_vae.safetensors"), dim=8)
    # the fast workflow's tiny VAE: Load VAE lists lighttaew2_1* files of models/vae_approx
    tm.write_tiny_taehv(os.path.join(base, "models", "vae_approx", "lighttaew2_1.safetensors"))
    # a placeholder under the workflows' text-encoder name, so the front end finds the model it
    # lists (no "missing models" dialog); it is never loaded: the tests replace the text encoder
    with open(os.path.join(base, "models", "text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"), "wb") as f:
        f.write(b"placeholder: never loaded by the real-host tests")
    clip = os.path.join(base, "input", "lipar_input.mp4")
    tm.write_clip(clip, frames=21, width=128, height=96)
    # a real-world shape: a size that is not a multiple of 8 (as 854x480) and a length whose last
    # chunk is short (65 frames = 17 latent frames = 5 chunks of 3 + 2)
    tm.write_clip(os.path.join(base, "input", "lipar_input_odd.mp4"), frames=65, width=134, height=100)
    shard = tm.write_conditioning_shard(os.path.join(base, "output"))
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "clip": tm.probe_video(clip),
                      "dit_params": sum(v.numel() for v in sd.values()), "shard": shard}))


if __name__ == "__main__":
    main()
