"""Regenerate the example workflows in workflows/ (UI format and API format).

One graph description per workflow gives both files (the LIPAR nodes' widget values are
their declared defaults, read from the pack),  so the UI version (opened in the
ComfyUI front end) and the API version (posted to /prompt) cannot drift apart. The
CI tier (tests/test_workflows.py) checks the committed files against the pack's
INPUT_TYPES and the core-node fixture; the real-host tier opens the UI files in the
real front end and compares its own API conversion with the API files.

Names: a UI file is named by the title the Templates browser shows (frontend 1.35.9 titles
a custom node's template with its file name, e.g. "LIPAR video edit.json"; the thumbnail is
the .jpg of the same name, made by make_thumbnails.py); the API files keep snake_case names
in workflows/api/.

usage: python tests/realhost/build_workflows.py [--check]   (with the project's venv: imports the pack)
  --check: exit 1 if a committed file differs from what this script writes, or if workflows/
           holds a .json this script does not write (e.g. one left behind by a rename)
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "workflows")

HF = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
VAE_FILE = "wan_2.1_vae.safetensors"
TINY_VAE_FILE = "lighttaew2_1.safetensors"          # ComfyUI's Load VAE lists lighttaew2_1* of models/vae_approx
TINY_VAE_URL = f"https://huggingface.co/lightx2v/Autoencoders/resolve/main/{TINY_VAE_FILE}"
TE_FILE = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
DIT_FILE = "self_forcing_dmd.safetensors"
INPUT_VIDEO = "lipar_input.mp4"
PROMPT = ("A corgi running along a sunny beach, waves rolling in, photorealistic, "
          "smooth camera motion, high detail")


@dataclass(frozen=True)
class Workflow:
    """One example workflow; its key in WORKFLOWS ("lipar", "baseline", "fast") picks the graph build() makes."""
    title: str       # the UI file's name: frontend 1.35.9 titles a template with its file name
    api: str         # the API file's name (snake_case, in workflows/api/)
    uid: str
    prefix: str      # Save Video's filename_prefix


WORKFLOWS = {
    "lipar": Workflow("LIPAR video edit", "lipar_video_edit_api",
                      "6c1d7f0e-4a1b-4c55-9d2e-11a1b2c3d401", "video/lipar_edit"),
    "baseline": Workflow("Unpruned baseline video edit", "baseline_video_edit_api",
                         "6c1d7f0e-4a1b-4c55-9d2e-11a1b2c3d402", "video/baseline_edit"),
    "fast": Workflow("LIPAR fast video edit (tiny VAE)", "lipar_fast_video_edit_api",
                     "6c1d7f0e-4a1b-4c55-9d2e-11a1b2c3d403", "video/lipar_fast_edit"),
}
LIPAR, BASELINE, FAST = (WORKFLOWS[k].title for k in ("lipar", "baseline", "fast"))

MODELS = f"""- `models/diffusion_models/{DIT_FILE}`: convert the official `self_forcing_dmd.pt` (Hugging Face `gdhe17/Self-Forcing`, `checkpoints/`) with `python -m lipar convert self_forcing_dmd.pt {DIT_FILE}`, or load the `.pt` with the **Load Self-Forcing Checkpoint** node instead of Load Diffusion Model."""

INPUT = """**Input video**: 832x480 (any size divisible by 16) with any 4k+1 frames, e.g. 21, 65, 69 or 81 (the last chunk may be shorter than 3 latent frames). Upload it in Load Video. Clips longer than 81 frames roll the sampler's KV cache: `window_frames` (21 latent frames = 81 video frames, Self-Forcing's training length) bounds memory and time per chunk, `sink_frames` (3) keeps the first chunk in view."""

OUTPUT = """**Output**: the sampler fills the pruned positions itself (each takes the patch at the same place in the latest frame where it was kept), so its latent goes straight to the decoder.

**VAE**: Wan VAE Encode / Decode (fast) give what ComfyUI's VAE Encode / VAE Decode give, about 1.6x faster for the Wan2.1 VAE; ComfyUI's own nodes work here too."""

TUNING = f"""**Tuning**: raise `threshold` on the pruner to prune more (faster, riskier) and watch its mask preview (pruned patches are tinted blue). The sampler reports seconds, FPS and the speed-up over the last unpruned run ("{BASELINE}") in this browser session."""


def note(kind: str) -> str:
    """The Read me note of one workflow (Markdown)."""
    if kind == "lipar":
        return f"""## {LIPAR} (Self-Forcing, Wan2.1-T2V-1.3B)

**Models** (see workflows/README.md of the pack):
{MODELS}
- `models/vae/{VAE_FILE}` and `models/text_encoders/{TE_FILE}` from Comfy-Org/Wan_2.1_ComfyUI_repackaged.

{INPUT}

{OUTPUT}

{TUNING}
"""
    if kind == "baseline":
        return f"""## {BASELINE} (Self-Forcing, Wan2.1-T2V-1.3B)

This is the A/B reference: the graph of "{LIPAR}" without pruning and attention recovery (same seed, steps, models and prompt). Run it first, then "{LIPAR}", to see the speed-up on the sampler.

**Models** (see workflows/README.md of the pack):
{MODELS}
- `models/vae/{VAE_FILE}` and `models/text_encoders/{TE_FILE}` from Comfy-Org/Wan_2.1_ComfyUI_repackaged.

{INPUT}
"""
    return f"""## {FAST}

"{LIPAR}" (Self-Forcing, Wan2.1-T2V-1.3B) with the tiny Wan2.1 VAE `{TINY_VAE_FILE}` for both encoding and decoding.

**Trade-off**: the tiny VAE encodes and decodes several times faster than the full Wan VAE, at visibly lower image quality: softer detail, some colour and texture drift. Its latents are in the Wan2.1 VAE's latent space, so the pruner and the sampler take them as they are; the pruning plan is computed on the latent this graph's encoder produced, i.e. on the latent the sampler edits. For the best picture use "{LIPAR}" (full Wan VAE).

**Models** (see workflows/README.md of the pack):
- `models/vae_approx/{TINY_VAE_FILE}`: the file `{TINY_VAE_FILE}` of the Hugging Face repository `lightx2v/Autoencoders`, saved into `models/vae_approx/` (Load VAE lists it from there). The same file also gives ComfyUI's latent previews with `--preview-method taesd`.
{MODELS}
- `models/text_encoders/{TE_FILE}` from Comfy-Org/Wan_2.1_ComfyUI_repackaged.

{INPUT}

{OUTPUT}

{TUNING}
"""


@dataclass
class N:
    id: int
    type: str
    pos: tuple[float, float]
    size: tuple[float, float]
    sockets: list[tuple[str, str]] = field(default_factory=list)          # (name, type) link inputs
    optional_sockets: list[tuple[str, str]] = field(default_factory=list)
    widgets: list[tuple[str, object]] = field(default_factory=list)       # (input name, value); None name = UI-only value
    outputs: list[tuple[str, str]] = field(default_factory=list)
    title: str | None = None
    properties: dict = field(default_factory=dict)
    virtual: bool = False                                                  # front-end only (notes)


SEED = 42


def _pack_classes() -> dict:
    """The pack's node classes, imported the way ComfyUI imports the pack (needs torch)."""
    import importlib.util
    name = "lipar_pack_for_workflows"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "__init__.py"),
                                                      submodule_search_locations=[ROOT])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].NODE_CLASS_MAPPINGS


def defaults(node_id: str, **override) -> list[tuple[str | None, object]]:
    """A LIPAR node's widget values: its declared defaults (the recommended settings), in input
    order, with the front end's control_after_generate value after a seed."""
    out = []
    for section in ("required", "optional"):
        for name, spec in _pack_classes()[node_id].INPUT_TYPES().get(section, {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if not (isinstance(kind, (list, tuple)) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN")):
                continue
            value = override.get(name, opts.get("default", kind[0] if isinstance(kind, (list, tuple)) else None))
            out.append((name, value))
            if opts.get("control_after_generate"):
                out.append((None, "fixed"))
    return out


def _models(name: str, url: str, directory: str) -> dict:
    return {"models": [{"name": name, "url": url, "directory": directory}]}


def build(kind: str) -> tuple[list[N], list[tuple[int, int, int, str, str]], list[tuple[str, list[int]]]]:
    """Nodes, links (from_id, from_slot, to_id, to_input_name, type) and groups of one workflow:
    kind "lipar" (pruned), "baseline" (the same graph unpruned) or "fast" (lipar with the tiny VAE)."""
    wf = WORKFLOWS[kind]
    pruned = kind != "baseline"
    # the pack's VAE nodes: the same result as VAE Encode/Decode; the Wan2.1 VAE computed by lipar (~1.6x
    # faster), the tiny VAE by its own module; both with the pixel scaling on the GPU
    enc, dec = "LIPAR_WanVAEEncode", "LIPAR_WanVAEDecode"
    if kind == "fast":
        vae = N(3, "VAELoader", (0, 500), (320, 60), widgets=[("vae_name", TINY_VAE_FILE)], outputs=[("VAE", "VAE")],
                title="Load VAE (tiny Wan VAE)", properties=_models(TINY_VAE_FILE, TINY_VAE_URL, "vae_approx"))
    else:
        vae = N(3, "VAELoader", (0, 500), (320, 60), widgets=[("vae_name", VAE_FILE)], outputs=[("VAE", "VAE")],
                properties=_models(VAE_FILE, f"{HF}/vae/{VAE_FILE}", "vae"))
    nodes = [
        N(1, "LoadVideo", (0, 0), (320, 440), widgets=[("file", INPUT_VIDEO), (None, "image")],
          outputs=[("VIDEO", "VIDEO")]),
        N(2, "GetVideoComponents", (380, 0), (240, 70), sockets=[("video", "VIDEO")],
          outputs=[("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")]),
        vae,
        N(4, enc, (380, 140), (240, 50), sockets=[("pixels", "IMAGE"), ("vae", "VAE")],
          outputs=[("LATENT" if enc == "VAEEncode" else "latent", "LATENT")]),
        N(6, "UNETLoader", (0, 660), (320, 82), widgets=[("unet_name", DIT_FILE), ("weight_dtype", "default")],
          outputs=[("MODEL", "MODEL")]),
        N(8, "CLIPLoader", (0, 840), (320, 106), widgets=[("clip_name", TE_FILE), ("type", "wan"), ("device", "default")],
          outputs=[("CLIP", "CLIP")], properties=_models(TE_FILE, f"{HF}/text_encoders/{TE_FILE}", "text_encoders")),
        N(9, "CLIPTextEncode", (380, 840), (300, 200), sockets=[("clip", "CLIP")], widgets=[("text", PROMPT)],
          outputs=[("CONDITIONING", "CONDITIONING")]),
        # the height the front end gives it (widgets, the appended window/sink inputs and the panel)
        N(10, "LIPAR_SelfForcingSampler", (1280, 0), (340, 430),
          sockets=[("model", "MODEL"), ("positive", "CONDITIONING"), ("latent", "LATENT")],
          widgets=defaults("LIPAR_SelfForcingSampler", seed=SEED),
          outputs=[("latent", "LATENT")]),
        # as wide as Save Video, so the pack's badge on its title clears the group's title
        N(13, dec, (1700, 0), (400, 50), sockets=[("samples", "LATENT"), ("vae", "VAE")],
          outputs=[("IMAGE" if dec == "VAEDecode" else "image", "IMAGE")]),
        N(14, "CreateVideo", (1700, 100), (270, 80), sockets=[("images", "IMAGE")], optional_sockets=[("audio", "AUDIO")],
          widgets=[("fps", 16.0)], outputs=[("VIDEO", "VIDEO")]),
        N(15, "SaveVideo", (1700, 240), (400, 460), sockets=[("video", "VIDEO")],
          widgets=[("filename_prefix", wf.prefix), ("format", "auto"), ("codec", "auto")]),
        N(16, "MarkdownNote", (1680, 780), (520, 520), widgets=[(None, note(kind))], title="Read me", virtual=True),
    ]
    links = [
        (1, 0, 2, "video", "VIDEO"),
        (2, 0, 4, "pixels", "IMAGE"),
        (3, 0, 4, "vae", "VAE"),
        (8, 0, 9, "clip", "CLIP"),
        (9, 0, 10, "positive", "CONDITIONING"),
        (3, 0, 13, "vae", "VAE"),
        (10, 0, 13, "samples", "LATENT"),      # the sampler restores pruned positions itself
        (13, 0, 14, "images", "IMAGE"),
        (2, 2, 14, "fps", "FLOAT"),
        (14, 0, 15, "video", "VIDEO"),
    ]
    if pruned:
        nodes += [
            N(5, "LIPAR_LatentInterFramePruner", (740, 0), (380, 600),
              sockets=[("latent", "LATENT")], optional_sockets=[("images", "IMAGE")],
              widgets=defaults("LIPAR_LatentInterFramePruner"),
              outputs=[("latent", "LATENT"), ("mask_preview", "IMAGE")]),
            N(7, "LIPAR_AttentionRecoveryPatch", (380, 660), (300, 130), sockets=[("model", "MODEL")],
              widgets=defaults("LIPAR_AttentionRecoveryPatch"),
              outputs=[("model", "MODEL")]),
            # no Preview Image on mask_preview: the pruner shows the mask in the node, and writing 21 full-size
            # PNGs per run cost 0.6 s on a 2-core host (benchmarks/preview_image_cost.py); connect one to look
            # at single frames
        ]
        links += [
            (4, 0, 5, "latent", "LATENT"),
            (2, 0, 5, "images", "IMAGE"),
            (6, 0, 7, "model", "MODEL"),
            (7, 0, 10, "model", "MODEL"),
            (5, 0, 10, "latent", "LATENT"),
        ]
        tiny = " (tiny VAE)" if kind == "fast" else ""
        groups = [(f"1 · Source video{tiny}", [1, 2, 3, 4]), ("2 · Models and prompt", [6, 7, 8, 9]),
                  ("3 · LIPAR: prune and sample", [5, 10]), (f"4 · Output video{tiny}", [13, 14, 15])]
    else:
        # the baseline keeps LIPAR's sampler position but has no pruner or patch
        links += [
            (6, 0, 10, "model", "MODEL"),
            (4, 0, 10, "latent", "LATENT"),
        ]
        groups = [("1 · Source video", [1, 2, 3, 4]), ("2 · Models and prompt", [6, 8, 9]),
                  ("3 · Self-Forcing sampler (unpruned)", [10]), ("4 · Output video", [13, 14, 15])]
    nodes.sort(key=lambda n: n.id)
    return nodes, links, groups


def _order(nodes: list[N], links) -> dict[int, int]:
    deps = {n.id: set() for n in nodes}
    for a, _, b, _, _ in links:
        deps[b].add(a)
    order, done = {}, set()
    while len(done) < len(nodes):
        ready = sorted(i for i in deps if i not in done and deps[i] <= done)
        for i in ready:
            order[i] = len(order)
            done.add(i)
    return order


def ui_workflow(kind: str) -> dict:
    nodes, links, groups = build(kind)
    byid = {n.id: n for n in nodes}
    order = _order(nodes, links)
    ui_links = []
    in_link: dict[tuple[int, str], int] = {}
    out_links: dict[tuple[int, int], list[int]] = {}
    for i, (a, sa, b, inp, typ) in enumerate(links, start=1):
        in_link[(b, inp)] = i
        out_links.setdefault((a, sa), []).append(i)
    out_nodes = []
    for n in nodes:
        inputs = [{"name": s, "type": t, "link": in_link.get((n.id, s))} for s, t in n.sockets]
        inputs += [{"name": s, "shape": 7, "type": t, "link": in_link.get((n.id, s))} for s, t in n.optional_sockets]
        for w, _ in n.widgets:   # widgets driven by a link become widget inputs
            if w is not None and (n.id, w) in in_link:
                t = next(typ for a, sa, b, inp, typ in links if b == n.id and inp == w)
                inputs.append({"name": w, "type": t, "widget": {"name": w}, "link": in_link[(n.id, w)]})
        outputs = [{"name": o, "type": t, "slot_index": k, "links": out_links.get((n.id, k), [])}
                   for k, (o, t) in enumerate(n.outputs)]
        d = {"id": n.id, "type": n.type, "pos": list(n.pos), "size": list(n.size), "flags": {},
             "order": order[n.id], "mode": 0, "inputs": inputs, "outputs": outputs}
        if n.title:
            d["title"] = n.title
        d["properties"] = ({} if n.virtual else {"Node name for S&R": n.type}) | n.properties
        d["widgets_values"] = [v for _, v in n.widgets]
        out_nodes.append(d)
    for i, (a, sa, b, inp, typ) in enumerate(links, start=1):
        slot = next(k for k, x in enumerate(next(o for o in out_nodes if o["id"] == b)["inputs"]) if x["name"] == inp)
        ui_links.append([i, a, sa, b, slot, typ])
    ui_groups = []
    for gi, (title, members) in enumerate(groups, start=1):
        x0 = min(byid[m].pos[0] for m in members) - 20
        y0 = min(byid[m].pos[1] for m in members) - 70
        x1 = max(byid[m].pos[0] + byid[m].size[0] for m in members) + 20
        y1 = max(byid[m].pos[1] + byid[m].size[1] for m in members) + 20
        ui_groups.append({"id": gi, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                          "color": "#3f789e" if gi != 3 else "#8a5a9e", "font_size": 24, "flags": {}})
    return {"id": WORKFLOWS[kind].uid, "revision": 0, "last_node_id": max(n.id for n in nodes), "last_link_id": len(links),
            "nodes": out_nodes, "links": ui_links, "groups": ui_groups, "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [160, 250]}}, "version": 0.4}


def api_workflow(kind: str) -> dict:
    nodes, links, _ = build(kind)
    src = {(b, inp): [str(a), sa] for a, sa, b, inp, _ in links}
    out = {}
    for n in nodes:
        if n.virtual:
            continue
        inputs = {}
        names = [s for s, _ in n.sockets] + [w for w, _ in n.widgets if w is not None] + [s for s, _ in n.optional_sockets]
        vals = {w: v for w, v in n.widgets if w is not None}
        for nm in names:
            if (n.id, nm) in src:
                inputs[nm] = src[(n.id, nm)]
            elif nm in vals:
                inputs[nm] = vals[nm]
        out[str(n.id)] = {"inputs": inputs, "class_type": n.type, "_meta": {"title": n.title or DISPLAY.get(n.type, n.type)}}
    return out


DISPLAY = {
    "LoadVideo": "Load Video", "GetVideoComponents": "Get Video Components", "VAELoader": "Load VAE",
    "VAEEncode": "VAE Encode", "VAEDecode": "VAE Decode", "UNETLoader": "Load Diffusion Model",
    "CLIPLoader": "Load CLIP", "CLIPTextEncode": "CLIP Text Encode (Prompt)", "CreateVideo": "Create Video",
    "SaveVideo": "Save Video", "PreviewImage": "Preview Image",
    "LIPAR_LatentInterFramePruner": "Latent Inter-Frame Pruner",
    "LIPAR_AttentionRecoveryPatch": "Attention Recovery Patch",
    "LIPAR_SelfForcingSampler": "Self-Forcing Causal Sampler", "LIPAR_TokenRestore": "Token Restore",
    "LIPAR_WanVAEEncode": "Wan VAE Encode (fast)", "LIPAR_WanVAEDecode": "Wan VAE Decode (fast)",
}

# workflows/<title>.json (UI, listed as templates) and workflows/api/<api>.json (API, headless runs)
FILES = {**{f"{w.title}.json": (lambda k=k: ui_workflow(k)) for k, w in WORKFLOWS.items()},
         **{f"api/{w.api}.json": (lambda k=k: api_workflow(k)) for k, w in WORKFLOWS.items()}}


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def stray_files() -> list[str]:
    """JSON files in workflows/ (and workflows/api/) that this script does not write."""
    out = []
    for folder in ("", "api"):
        d = os.path.join(OUT, folder)
        for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            rel = os.path.join(folder, f) if folder else f
            if f.endswith(".json") and rel not in FILES:
                out.append(rel)
    return out


def main() -> int:
    check = "--check" in sys.argv
    bad = []
    for rel, make in FILES.items():
        path = os.path.join(OUT, rel)
        text = dumps(make())
        if check:
            if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:
                bad.append(rel)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print("wrote", os.path.relpath(path, ROOT))
    stray = stray_files()
    if stray:
        print("not written by this script (delete or rename them):", ", ".join(stray))
    if bad:
        print("out of date:", ", ".join(bad))
    return 1 if bad or (check and stray) else 0


if __name__ == "__main__":
    sys.exit(main())
