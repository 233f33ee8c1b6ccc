"""Write the core-node fixture that tests/test_workflows.py checks the workflows against.

The fixture is a small derived fact file: for each ComfyUI core node the workflows (and
the real-host tests) use, its input names, types, defaults, ranges and option lists and
its outputs, as a running ComfyUI reports them in ``/object_info``. Tooltips and
descriptions are dropped; the option lists of file pickers (model names, input videos)
depend on the installation and are stored empty.

usage: python tests/realhost/dump_core_nodes.py http://127.0.0.1:8188 [OUT.json]
(the real-host tier also compares the committed file against the live server)
"""
from __future__ import annotations

import json
import os
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "comfyui_core_nodes.json")

# Core nodes used by workflows/*.json, plus LoadTrainingDataset (the real-host tier's
# conditioning stand-in). Frontend-only nodes (MarkdownNote, Note, Reroute) are not here.
CORE_NODES = ["LoadVideo", "GetVideoComponents", "VAELoader", "VAEEncode", "VAEDecode", "UNETLoader",
              "CLIPLoader", "CLIPTextEncode", "CreateVideo", "SaveVideo", "PreviewImage",
              "SaveAnimatedWEBP", "LoadTrainingDataset"]

# Combo inputs whose options are files of the installation (folder they list).
FILE_COMBOS = {"LoadVideo.file": "input", "VAELoader.vae_name": "vae", "UNETLoader.unet_name": "diffusion_models",
               "CLIPLoader.clip_name": "text_encoders"}

DROP = {"tooltip", "description"}


def _clean_spec(node: str, name: str, spec: list) -> list:
    spec = list(spec)
    if f"{node}.{name}" in FILE_COMBOS:
        if isinstance(spec[0], list):
            spec[0] = []
        elif len(spec) > 1 and isinstance(spec[1], dict) and "options" in spec[1]:
            spec[1] = {**spec[1], "options": []}
    if len(spec) > 1 and isinstance(spec[1], dict):
        spec[1] = {k: v for k, v in spec[1].items() if k not in DROP}
    return spec


def extract(object_info: dict, version: dict | None = None) -> dict:
    nodes = {}
    for n in CORE_NODES:
        info = object_info[n]
        inputs = {}
        for section in ("required", "optional"):
            sec = info["input"].get(section) or {}
            if sec:
                inputs[section] = {k: _clean_spec(n, k, v) for k, v in sec.items()}
        nodes[n] = {
            "input": inputs,
            "input_order": {k: v for k, v in info.get("input_order", {}).items() if k != "hidden"},
            "output": info["output"],
            "output_name": info["output_name"],
            "output_is_list": info["output_is_list"],
            "output_node": info["output_node"],
        }
    return {"_about": "Derived from a ComfyUI server's /object_info by tests/realhost/dump_core_nodes.py; "
                      "input/output names and types of the core nodes the workflows use.",
            "comfyui": version or {}, "file_combos": FILE_COMBOS, "nodes": nodes}


def fetch(url: str, path: str):
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=30) as r:
        return json.load(r)


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188"
    out = sys.argv[2] if len(sys.argv) > 2 else FIXTURE
    stats = fetch(url, "/system_stats")
    version = {k: stats["system"].get(k) for k in ("comfyui_version", "required_frontend_version")}
    data = extract(fetch(url, "/object_info"), version)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
