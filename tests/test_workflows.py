"""The example workflows (workflows/) and the web extension, checked without a ComfyUI host.

* every JSON file parses; UI-format files (opened in the front end) sit directly in
  workflows/, where ComfyUI lists them as the pack's templates; API-format files (posted
  to /prompt) sit in workflows/api/, which ComfyUI does not list;
* UI format: every node type exists (LIPAR nodes in the pack's NODE_CLASS_MAPPINGS, core
  nodes in a fixture derived from ComfyUI 0.8's /object_info), widgets_values match the
  node's widget inputs (count, order, types, choices, ranges), links are consistent;
* API format: inputs match the node definitions, links point at existing outputs of the
  right type;
* the UI and API versions of a workflow describe the same prompt;
* the UI files are named by the titles the template browser shows; the graphs are wired as
  designed (pruned, unpruned baseline, and pruned with the tiny VAE);
* the LIPAR nodes' widget order is the public API the saved workflows rely on.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = os.path.join(ROOT, "workflows")
REALHOST = os.path.join(ROOT, "tests", "realhost")
sys.path.insert(0, REALHOST)

import workflow_check as wc  # noqa: E402

# (UI file: its name is the title the Templates browser shows, API file)
LIPAR_UI, LIPAR_API = "LIPAR video edit.json", "api/lipar_video_edit_api.json"
BASELINE_UI, BASELINE_API = "Unpruned baseline video edit.json", "api/baseline_video_edit_api.json"
FAST_UI, FAST_API = "LIPAR fast video edit (tiny VAE).json", "api/lipar_fast_video_edit_api.json"
PAIRS = [(LIPAR_UI, LIPAR_API), (BASELINE_UI, BASELINE_API), (FAST_UI, FAST_API)]
UI_FILES = [p[0] for p in PAIRS]
API_FILES = [p[1] for p in PAIRS]

# The LIPAR nodes' widget inputs in order: saved UI workflows store widget values by
# position, so this order (and these names) must never change.
PUBLIC_WIDGETS = {
    "LIPAR_LatentInterFramePruner": ["threshold", "anchor_threshold", "chunk_frames", "trim_outliers", "smooth",
                                     "open_pruned", "dilate_kept"],
    "LIPAR_AttentionRecoveryPatch": ["recovery", "recovery_form", "attention_backend", "fp8_compute"],
    "LIPAR_SelfForcingSampler": ["seed", "steps", "shift", "chunk_frames", "mode", "window_frames", "sink_frames"],
    "LIPAR_TokenRestore": [],
    "LIPAR_SelfForcingCheckpointLoader": ["ckpt_name", "weight_dtype"],
    "LIPAR_WanVAEEncode": [],
    "LIPAR_WanVAEDecode": [],
}
PUBLIC_SOCKETS = {
    "LIPAR_LatentInterFramePruner": (["latent", "images"], ["LATENT", "IMAGE"]),
    "LIPAR_AttentionRecoveryPatch": (["model"], ["MODEL"]),
    "LIPAR_SelfForcingSampler": (["model", "positive", "latent"], ["LATENT"]),
    "LIPAR_TokenRestore": (["latent"], ["LATENT"]),
    "LIPAR_SelfForcingCheckpointLoader": ([], ["MODEL"]),
    "LIPAR_WanVAEEncode": (["pixels", "vae"], ["LATENT"]),
    "LIPAR_WanVAEDecode": (["samples", "vae"], ["IMAGE"]),
}


def load(rel: str) -> dict:
    with open(os.path.join(WORKFLOWS, rel), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def pack():
    """The pack imported the way ComfyUI imports it: the repo root as a package (relative imports)."""
    name = "lipar_pack_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def defs(pack):
    infos = dict(wc.load_core_fixture()["nodes"])
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        infos[node_id] = wc.node_info_from_class(cls)
    return wc.definitions(infos)


def test_every_json_parses_and_has_a_known_format():
    files = sorted(glob.glob(os.path.join(WORKFLOWS, "**", "*.json"), recursive=True))
    assert files, "no workflows"
    for path in files:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        rel = os.path.relpath(path, WORKFLOWS)
        is_ui = isinstance(data, dict) and "nodes" in data and "links" in data
        is_api = isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values())
        assert is_ui or is_api, f"{rel} is neither a UI nor an API workflow"
        # ComfyUI lists workflows/*.json of a pack as templates the front end opens: UI format only there
        if os.path.dirname(rel) == "":
            assert is_ui, f"{rel}: API-format files belong in workflows/api/ (ComfyUI lists workflows/*.json as templates)"
        else:
            assert is_api, f"{rel}: only API-format files go in a subfolder"
    assert sorted(os.path.relpath(p, WORKFLOWS) for p in files) == sorted(UI_FILES + API_FILES)


def test_pack_exports(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == set(PUBLIC_WIDGETS)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(PUBLIC_WIDGETS)
    web = os.path.normpath(os.path.join(ROOT, pack.WEB_DIRECTORY))
    assert os.path.isfile(os.path.join(web, "lipar.js"))


@pytest.mark.parametrize("node_id", sorted(PUBLIC_WIDGETS))
def test_lipar_node_public_api(defs, node_id):
    d = defs[node_id]
    assert [w.name for w in d.widgets] == PUBLIC_WIDGETS[node_id]
    sockets, outputs = PUBLIC_SOCKETS[node_id]
    assert [i.name for i in d.inputs if not i.is_widget] == sockets
    assert [t for _, t in d.outputs] == outputs


@pytest.mark.parametrize("rel", UI_FILES)
def test_ui_workflow_matches_node_definitions(defs, rel):
    errs = wc.check_ui(load(rel), defs)
    assert not errs, "\n".join(errs)


@pytest.mark.parametrize("rel", API_FILES)
def test_api_workflow_matches_node_definitions(defs, rel):
    errs = wc.check_api(load(rel), defs)
    assert not errs, "\n".join(errs)


@pytest.mark.parametrize("ui_rel,api_rel", PAIRS)
def test_ui_and_api_versions_describe_the_same_prompt(defs, ui_rel, api_rel):
    from_ui = wc.ui_to_api(load(ui_rel), defs)
    api = wc.strip_meta(load(api_rel))
    assert sorted(from_ui) == sorted(api), "different node ids"
    for nid in api:
        assert from_ui[nid]["class_type"] == api[nid]["class_type"], nid
        assert from_ui[nid]["inputs"] == api[nid]["inputs"], f"node {nid} ({api[nid]['class_type']})"


@pytest.mark.parametrize("rel", API_FILES)
def test_lipar_settings_are_the_nodes_defaults(defs, rel):
    """The examples show the recommended settings: each LIPAR widget at its declared default
    (the seed excepted). When a default changes, regenerate: tests/realhost/build_workflows.py."""
    for nid, node in load(rel).items():
        d = defs.get(node["class_type"])
        if not node["class_type"].startswith("LIPAR_"):
            continue
        for w in d.widgets:
            if w.name == "seed":
                continue
            default = w.opts.get("default", w.options[0] if w.options else None)
            assert node["inputs"][w.name] == default, (rel, nid, w.name)


def _by_type(api: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for v in api.values():
        out.setdefault(v["class_type"], []).append(v["inputs"])
    return out


def _vae_nodes(api_rel) -> tuple[str, str]:
    """Both VAEs run through the pack's VAE nodes (lipar computes the Wan2.1 VAE; the tiny VAE runs its
    own module; both scale pixels on the GPU)."""
    return ("LIPAR_WanVAEEncode", "LIPAR_WanVAEDecode")


@pytest.mark.parametrize("api_rel", [LIPAR_API, FAST_API])
def test_lipar_graph_is_wired_as_designed(api_rel):
    api = load(api_rel)
    t = _by_type(api)
    enc, dec = _vae_nodes(api_rel)
    for needed in ("LoadVideo", "GetVideoComponents", "VAELoader", enc, "LIPAR_LatentInterFramePruner",
                   "UNETLoader", "LIPAR_AttentionRecoveryPatch", "CLIPLoader", "CLIPTextEncode",
                   "LIPAR_SelfForcingSampler", dec, "CreateVideo", "SaveVideo"):
        assert len(t.get(needed, [])) == 1, needed
    # the pruner shows its mask in the node; a Preview Image on mask_preview would write 21 full-size PNGs a run
    assert "PreviewImage" not in t
    for other in {"VAEEncode", "VAEDecode", "LIPAR_WanVAEEncode", "LIPAR_WanVAEDecode"} - {enc, dec}:
        assert other not in t, other
    # the sampler restores pruned positions itself: Token Restore stays in the pack (saved
    # workflows keep working) but the examples do not use it
    assert "LIPAR_TokenRestore" not in t

    def src(node_type, name):
        ref = t[node_type][0][name]
        return api[ref[0]]["class_type"], ref[1]

    assert src("GetVideoComponents", "video") == ("LoadVideo", 0)
    assert src(enc, "pixels") == ("GetVideoComponents", 0)
    assert src(enc, "vae") == ("VAELoader", 0)
    assert src("LIPAR_LatentInterFramePruner", "latent") == (enc, 0)
    assert src("LIPAR_LatentInterFramePruner", "images") == ("GetVideoComponents", 0)
    assert src("LIPAR_AttentionRecoveryPatch", "model") == ("UNETLoader", 0)
    assert src("LIPAR_SelfForcingSampler", "model") == ("LIPAR_AttentionRecoveryPatch", 0)
    assert src("LIPAR_SelfForcingSampler", "positive") == ("CLIPTextEncode", 0)
    assert src("LIPAR_SelfForcingSampler", "latent") == ("LIPAR_LatentInterFramePruner", 0)
    assert src(dec, "samples") == ("LIPAR_SelfForcingSampler", 0)
    assert src(dec, "vae") == ("VAELoader", 0)      # one VAE encodes and decodes
    assert src("CreateVideo", "images") == (dec, 0)
    assert src("CreateVideo", "fps") == ("GetVideoComponents", 2)
    assert src("SaveVideo", "video") == ("CreateVideo", 0)
    assert t["CLIPLoader"][0]["type"] == "wan"
    want_vae = "lighttaew2_1.safetensors" if api_rel == FAST_API else "wan_2.1_vae.safetensors"
    assert t["VAELoader"][0]["vae_name"] == want_vae
    assert t["UNETLoader"][0]["unet_name"] == "self_forcing_dmd.safetensors"
    assert t["UNETLoader"][0]["weight_dtype"] == "default"
    assert t["LIPAR_LatentInterFramePruner"][0]["chunk_frames"] == t["LIPAR_SelfForcingSampler"][0]["chunk_frames"]


def test_baseline_is_the_same_run_without_lipar():
    lip, base = _by_type(load(LIPAR_API)), _by_type(load(BASELINE_API))
    for gone in ("LIPAR_LatentInterFramePruner", "LIPAR_AttentionRecoveryPatch", "LIPAR_TokenRestore"):
        assert gone not in base
    api = load(BASELINE_API)
    s = base["LIPAR_SelfForcingSampler"][0]
    assert api[s["latent"][0]]["class_type"] == "LIPAR_WanVAEEncode"     # the same VAE nodes as the LIPAR edit
    assert api[s["model"][0]]["class_type"] == "UNETLoader"
    assert api[base["LIPAR_WanVAEDecode"][0]["samples"][0]]["class_type"] == "LIPAR_SelfForcingSampler"
    # a fair A/B: same sampler settings, models, prompt and input video
    ls = lip["LIPAR_SelfForcingSampler"][0]
    for k in ("seed", "steps", "shift", "chunk_frames", "mode", "window_frames", "sink_frames"):
        assert s[k] == ls[k], k
    for node_type in ("LoadVideo", "VAELoader", "UNETLoader", "CLIPLoader", "CLIPTextEncode"):
        assert base[node_type] == lip[node_type], node_type
    assert base["SaveVideo"][0]["filename_prefix"] != lip["SaveVideo"][0]["filename_prefix"]


def test_fast_workflow_is_the_lipar_graph_with_the_tiny_vae():
    """Node for node the LIPAR workflow, except the VAE file (ComfyUI's Load VAE lists
    lighttaew2_1* files of models/vae_approx) and where the video is saved."""
    lip, fast = load(LIPAR_API), load(FAST_API)
    assert sorted(lip) == sorted(fast)
    differ = {nid for nid in lip if wc.strip_meta({nid: lip[nid]}) != wc.strip_meta({nid: fast[nid]})}
    assert {lip[nid]["class_type"] for nid in differ} == {"VAELoader", "SaveVideo"}
    vae = next(v for v in fast.values() if v["class_type"] == "VAELoader")
    assert vae["inputs"] == {"vae_name": "lighttaew2_1.safetensors"}
    prefixes = {wf[n]["inputs"]["filename_prefix"] for wf in (lip, fast) for n in wf if wf[n]["class_type"] == "SaveVideo"}
    assert len(prefixes) == 2
    # the front end offers the download from the right folder when the file is missing
    ui = next(n for n in load(FAST_UI)["nodes"] if n["type"] == "VAELoader")
    assert ui["properties"]["models"] == [{
        "name": "lighttaew2_1.safetensors", "directory": "vae_approx",
        "url": "https://huggingface.co/lightx2v/Autoencoders/resolve/main/lighttaew2_1.safetensors"}]


def test_ui_files_are_named_by_their_titles():
    """Frontend 1.35.9 titles a custom node's template with its file name, so the UI files carry
    readable titles; each has its thumbnail (same name, .jpg); the API files are snake_case."""
    for rel in UI_FILES:
        name = rel[:-len(".json")]
        assert "_" not in name and name[0].isupper() and " " in name, rel
        assert os.path.isfile(os.path.join(WORKFLOWS, name + ".jpg")), f"{name}.jpg (tests/realhost/make_thumbnails.py)"
    for rel in API_FILES:
        assert rel.startswith("api/") and rel.endswith("_api.json") and " " not in rel, rel
    jpgs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(WORKFLOWS, "*.jpg")))
    assert jpgs == sorted(rel[:-len(".json")] + ".jpg" for rel in UI_FILES), "a thumbnail without its workflow"


def test_notes_describe_the_current_graphs():
    """The Read me notes: no Token Restore to connect, any 4k+1 frame count, the KV window widgets;
    the fast workflow's note names the tiny VAE's source, folder and trade-off."""
    notes = {}
    for rel in UI_FILES:
        (n,) = [n for n in load(rel)["nodes"] if n["type"] == "MarkdownNote"]
        notes[rel] = n["widgets_values"][0]
    for rel, text in notes.items():
        assert "Token Restore" not in text and "TokenRestore" not in text, rel
        assert "4k+1" in text and "window_frames" in text and "sink_frames" in text, rel
    # other workflows are named by the titles the template browser shows
    assert '"Unpruned baseline video edit"' in notes[LIPAR_UI]
    assert '"LIPAR video edit"' in notes[BASELINE_UI] and '"LIPAR video edit"' in notes[FAST_UI]
    fast = notes[FAST_UI]
    for needed in ("lightx2v/Autoencoders", "lighttaew2_1.safetensors", "models/vae_approx/", "--preview-method taesd",
                   "faster", "lower image quality", "the latent the sampler edits"):
        assert needed in fast, needed


@pytest.mark.parametrize("rel", UI_FILES)
def test_ui_layout_reads_left_to_right(rel):
    wf = load(rel)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for _, a, _, b, _, _ in wf["links"]:
        assert nodes[a]["pos"][0] <= nodes[b]["pos"][0], f"link {a}->{b} runs right to left"
    # each node with its title bar (LiteGraph.NODE_TITLE_HEIGHT = 30 above pos): no node covers a title
    boxes = [(n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1], n["id"])
             for n in wf["nodes"]]
    for i, p in enumerate(boxes):
        for q in boxes[i + 1:]:
            overlap = p[0] < q[2] and q[0] < p[2] and p[1] < q[3] and q[1] < p[3]
            assert not overlap, f"nodes {p[4]} and {q[4]} overlap"
    groups = [(g["bounding"], g["title"]) for g in wf.get("groups", [])]
    for i, (a, ta) in enumerate(groups):
        for b, tb in groups[i + 1:]:
            overlap = a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
            assert not overlap, f"groups {ta!r} and {tb!r} overlap"


def test_readme_names_every_model_file():
    with open(os.path.join(WORKFLOWS, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for rel in API_FILES:
        for node in load(rel).values():
            for key in ("unet_name", "vae_name", "clip_name"):
                if key in node["inputs"]:
                    assert node["inputs"][key] in readme, node["inputs"][key]
    for rel in UI_FILES + API_FILES:
        assert os.path.basename(rel) in readme, rel
    assert "lightx2v/Autoencoders" in readme and "models/vae_approx/" in readme


def test_web_extension_is_a_valid_es_module():
    path = os.path.join(ROOT, "web", "lipar.js")
    with open(path, encoding="utf-8") as f:
        src = f.read()
    assert 'import { app } from "../../scripts/app.js"' in src
    assert 'name: "lipar.nodes"' in src
    for needle in ("LIPAR_LatentInterFramePruner", "LIPAR_SelfForcingSampler", "lipar_stats", "lipar_sampler",
                   "serialize: false", "widget.serialize = false", "onExecuted"):
        assert needle in src, needle
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; syntax of web/lipar.js not checked")
    r = subprocess.run([node, "--experimental-default-type=module", "--check", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


SAVED = os.path.join(ROOT, "tests", "data", "saved_workflows")


@pytest.mark.parametrize("name", sorted(os.listdir(SAVED)))
def test_workflows_saved_by_earlier_versions_still_validate(defs, name):
    """Users' saved workflows keep working: the example workflows as shipped by an earlier
    version (before inputs were appended) still match the node definitions."""
    with open(os.path.join(SAVED, name)) as f:
        wf = json.load(f)
    errs = wc.check_ui(wf, defs) if "nodes" in wf else wc.check_api(wf, defs)
    assert not errs, "\n".join(errs)
