"""The pack in a real ComfyUI: it imports, registers its nodes, serves its web extension and
workflows, and the workflows validate against the live server's node definitions."""
from __future__ import annotations

import json
import os
import re
import sys
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import dump_core_nodes  # noqa: E402
import workflow_check as wc  # noqa: E402
from build_workflows import WORKFLOWS  # noqa: E402
from comfy_host import PACK_LINK_NAME  # noqa: E402

UI_FILES = [f"{w.title}.json" for w in WORKFLOWS.values()]       # named by their template titles
API_FILES = [f"api/{w.api}.json" for w in WORKFLOWS.values()]

LIPAR_NODES = {
    "LIPAR_LatentInterFramePruner": "Latent Inter-Frame Pruner",
    "LIPAR_AttentionRecoveryPatch": "Attention Recovery Patch",
    "LIPAR_SelfForcingSampler": "Self-Forcing Causal Sampler",
    "LIPAR_TokenRestore": "Token Restore",
    "LIPAR_SelfForcingCheckpointLoader": "Load Self-Forcing Checkpoint",
    "LIPAR_WanVAEEncode": "Wan VAE Encode (fast)",
    "LIPAR_WanVAEDecode": "Wan VAE Decode (fast)",
}


def test_comfyui_starts_and_imports_the_pack_without_errors(server):
    log = server.log()
    link = os.path.join(server.base, "custom_nodes", PACK_LINK_NAME)
    assert os.path.islink(link)
    # ComfyUI prints "<seconds> seconds (IMPORT FAILED): <path>" for a pack that failed to import
    failed = [ln for ln in log.splitlines() if "IMPORT FAILED" in ln and PACK_LINK_NAME in ln]
    assert not failed, "\n".join(failed) + "\n" + log[-4000:]
    assert not re.search(r"Cannot import .*" + re.escape(PACK_LINK_NAME), log), log[-4000:]
    imported = [ln for ln in log.splitlines() if "seconds:" in ln and PACK_LINK_NAME in ln]
    assert imported, "the pack is not in ComfyUI's import-times list:\n" + log[-4000:]
    assert not any("Traceback" in ln for ln in log.splitlines()[-200:] if PACK_LINK_NAME in ln)


def test_object_info_lists_the_lipar_nodes_with_their_inputs(server):
    info = server.get("/object_info")
    import lipar_pack.nodes as pack_nodes   # the pack's node classes, imported as a package (tests/conftest.py)

    for node_id, display in LIPAR_NODES.items():
        assert node_id in info, node_id
        live = info[node_id]
        assert live["display_name"] == display
        assert live["category"] == "LIPAR"
        assert live["python_module"] == f"custom_nodes.{PACK_LINK_NAME}"
        want = wc.node_info_from_class(pack_nodes.NODE_CLASS_MAPPINGS[node_id])
        assert live["input_order"].get("required", []) == want["input_order"].get("required", [])
        assert live["input_order"].get("optional", []) == want["input_order"].get("optional", [])
        assert live["output"] == want["output"] and live["output_name"] == want["output_name"]
        for section in ("required", "optional"):
            for name, spec in want["input"].get(section, {}).items():
                got = live["input"][section][name]
                if node_id == "LIPAR_SelfForcingCheckpointLoader" and name == "ckpt_name":
                    # the server fills the file list from models/diffusion_models
                    assert "self_forcing_dmd.safetensors" in got[0] and "self_forcing_dmd_official.pt" in got[0]
                    continue
                assert got[0] == spec[0], (node_id, name)
                for k in ("default", "min", "max"):
                    assert got[1].get(k) == spec[1].get(k), (node_id, name, k)
    assert info["LIPAR_LatentInterFramePruner"]["output_node"] is True
    assert info["LIPAR_SelfForcingSampler"]["input"]["required"]["seed"][1].get("control_after_generate") is True


def test_core_node_fixture_matches_this_comfyui(server):
    """The CI tier checks workflows against data/comfyui_core_nodes.json; it must say what this ComfyUI says."""
    live = dump_core_nodes.extract(server.get("/object_info"))["nodes"]
    committed = wc.load_core_fixture()["nodes"]
    assert live == committed, ("the core-node fixture is out of date for this ComfyUI: run "
                               "python tests/realhost/dump_core_nodes.py <server url>")


def test_workflows_validate_against_the_live_node_definitions(server):
    defs = wc.definitions(server.get("/object_info"))
    # the tiny VAE of the fast workflow is listed from models/vae_approx (lighttaew2_1*)
    assert "lighttaew2_1.safetensors" in defs["VAELoader"].input("vae_name").options
    for rel in UI_FILES:
        with open(os.path.join(ROOT, "workflows", rel)) as f:
            wf = json.load(f)
        assert not wc.check_ui(wf, defs), wc.check_ui(wf, defs)
    for rel in API_FILES:
        with open(os.path.join(ROOT, "workflows", rel)) as f:
            api = json.load(f)
        errs = [e for e in wc.check_api(api, defs)]
        # file pickers list this installation's files: the tiny fixtures use the workflows' names
        assert not errs, errs


def test_workflow_templates_and_web_extension_are_served(server):
    templates = server.get("/api/workflow_templates")
    assert sorted(templates.get(PACK_LINK_NAME, [])) == sorted(w.title for w in WORKFLOWS.values()), templates
    for name in templates[PACK_LINK_NAME]:
        url = f"/api/workflow_templates/{PACK_LINK_NAME}/{urllib.parse.quote(name)}"
        served = server.get(url + ".json")
        served = json.loads(served) if isinstance(served, (bytes, str)) else served
        with open(os.path.join(ROOT, "workflows", f"{name}.json")) as f:
            assert served == json.load(f)
        # the thumbnail the template browser (frontend 1.35.9) asks for: <name>.jpg next to the json
        thumb, status = server.request("GET", url + ".jpg")
        assert status == 200 and thumb[:3] == b"\xff\xd8\xff", (name, status, thumb[:16])
        with open(os.path.join(ROOT, "workflows", f"{name}.jpg"), "rb") as f:
            assert thumb == f.read()
    js, status = server.request("GET", f"/extensions/{PACK_LINK_NAME}/lipar.js")
    assert status == 200
    with open(os.path.join(ROOT, "web", "lipar.js"), "rb") as f:
        assert js == f.read()
    exts = server.get("/extensions")
    assert f"/extensions/{PACK_LINK_NAME}/lipar.js" in exts, exts
