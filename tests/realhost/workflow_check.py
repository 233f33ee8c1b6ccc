"""Static checks of ComfyUI workflow files against node definitions (standard library only).

Node definitions come in ComfyUI's ``/object_info`` shape: ``{"input": {"required": {...},
"optional": {...}}, "input_order": ..., "output": [...], "output_name": [...], "output_node": bool}``,
either from a live server, from the committed core-node fixture
(``data/comfyui_core_nodes.json``) or from a V1 node class (``node_info_from_class``).

Used by the CI tier (tests/test_workflows.py, with the fixture and the pack's own
classes) and by the real-host tier (with the live server's /object_info).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
CORE_FIXTURE = os.path.join(HERE, "data", "comfyui_core_nodes.json")

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
UPLOAD_KEYS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "upload")
# Front-end-only nodes: never sent to the server, no definition in /object_info.
VIRTUAL_NODES = {"MarkdownNote", "Note", "Reroute", "PrimitiveNode"}


@dataclass
class Input:
    name: str
    type: str                    # INT/FLOAT/STRING/BOOLEAN/COMBO or a socket type (LATENT, MODEL, ...)
    required: bool
    opts: dict = field(default_factory=dict)
    options: list | None = None  # COMBO choices (empty: installation-dependent files)

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.opts.get("forceInput")

    @property
    def extra_ui_values(self) -> list[str]:
        """Values the front end stores after this widget's own value in widgets_values."""
        extra = []
        if self.type == "INT" and (self.opts.get("control_after_generate") or self.name in ("seed", "noise_seed")):
            extra.append("control")
        if self.type == "COMBO" and any(self.opts.get(k) for k in UPLOAD_KEYS):
            extra.append("upload")
        return extra


@dataclass
class NodeDef:
    name: str
    inputs: list[Input]
    outputs: list[tuple[str, str]]
    output_node: bool = False

    def input(self, name: str) -> Input | None:
        return next((i for i in self.inputs if i.name == name), None)

    @property
    def widgets(self) -> list[Input]:
        return [i for i in self.inputs if i.is_widget]


def _parse_input(name: str, spec: Any, required: bool) -> Input:
    spec = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    head = spec[0]
    opts = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(head, (list, tuple)):
        return Input(name, "COMBO", required, opts, list(head))
    if head == "COMBO":
        return Input(name, "COMBO", required, opts, list(opts.get("options", [])))
    return Input(name, str(head), required, opts)


def parse_node_info(name: str, info: dict) -> NodeDef:
    inputs = []
    order = info.get("input_order") or {}
    for section in ("required", "optional"):
        sec = (info.get("input") or {}).get(section) or {}
        names = order.get(section) or list(sec)
        for n in names:
            inputs.append(_parse_input(n, sec[n], section == "required"))
    names = info.get("output_name") or info.get("output") or []
    outputs = list(zip(names, info.get("output") or []))
    return NodeDef(name, inputs, outputs, bool(info.get("output_node")))


def node_info_from_class(cls) -> dict:
    """A V1 node class (INPUT_TYPES, RETURN_TYPES, ...) in /object_info's shape."""
    it = cls.INPUT_TYPES()
    jsonable = json.loads(json.dumps(it, default=list))
    info = {"input": {k: v for k, v in jsonable.items() if k in ("required", "optional")},
            "input_order": {k: list(v) for k, v in it.items() if k in ("required", "optional")},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False))}
    return info


def load_core_fixture(path: str = CORE_FIXTURE) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def definitions(node_infos: dict[str, dict]) -> dict[str, NodeDef]:
    return {name: parse_node_info(name, info) for name, info in node_infos.items()}


# ---- value checks --------------------------------------------------------------------------
def check_value(node: str, inp: Input, value: Any) -> list[str]:
    where = f"{node}.{inp.name}"
    t, o = inp.type, inp.opts
    if t == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{where}: {value!r} is not an INT"]
    elif t == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return [f"{where}: {value!r} is not a FLOAT"]
    elif t == "STRING":
        if not isinstance(value, str):
            return [f"{where}: {value!r} is not a STRING"]
        return []
    elif t == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not a BOOLEAN"]
    elif t == "COMBO":
        if inp.options:
            return [] if value in inp.options else [f"{where}: {value!r} is not one of {inp.options}"]
        return [] if isinstance(value, str) and value else [f"{where}: {value!r} is not a file name"]
    else:
        return [f"{where}: a {t} input cannot hold the literal {value!r}"]
    errs = []
    if "min" in o and value < o["min"]:
        errs.append(f"{where}: {value!r} < min {o['min']}")
    if "max" in o and value > o["max"]:
        errs.append(f"{where}: {value!r} > max {o['max']}")
    return errs


def types_compatible(out_type: str, in_type: str) -> bool:
    if "*" in (out_type, in_type):
        return True
    outs, ins = set(str(out_type).split(",")), set(str(in_type).split(","))
    return bool(outs & ins)


# ---- UI format -----------------------------------------------------------------------------
def split_widget_values(d: NodeDef, values: list) -> tuple[dict[str, Any], list[str]]:
    """Map a node's widgets_values onto its widget inputs (skipping the front end's control/upload values)."""
    errs, out, i = [], {}, 0
    for w in d.widgets:
        if i >= len(values):
            if not w.required and all(not x.required for x in d.widgets[d.widgets.index(w):]):
                return out, errs    # a workflow saved before optional widgets were appended: defaults apply
            errs.append(f"{d.name}: widgets_values has {len(values)} values; missing {w.name!r}")
            return out, errs
        out[w.name] = values[i]
        i += 1
        for extra in w.extra_ui_values:
            if i >= len(values):
                errs.append(f"{d.name}: widgets_values lacks the {extra} value after {w.name!r}")
                return out, errs
            v = values[i]
            if extra == "control" and v not in CONTROL_VALUES:
                errs.append(f"{d.name}: {v!r} after {w.name!r} is not a control_after_generate value {CONTROL_VALUES}")
            if extra == "upload" and not isinstance(v, str):
                errs.append(f"{d.name}: upload widget value {v!r} after {w.name!r} is not a string")
            i += 1
    if i != len(values):
        errs.append(f"{d.name}: widgets_values has {len(values)} values, the node has {i} widget values")
    return out, errs


def check_ui(wf: dict, defs: dict[str, NodeDef]) -> list[str]:
    errs: list[str] = []
    for key in ("nodes", "links", "last_node_id", "last_link_id", "version"):
        if key not in wf:
            errs.append(f"UI workflow lacks {key!r}")
    if errs:
        return errs
    if wf["version"] != 0.4:
        errs.append(f"version is {wf['version']}, expected 0.4")
    nodes = {}
    for n in wf["nodes"]:
        if n["id"] in nodes:
            errs.append(f"duplicate node id {n['id']}")
        nodes[n["id"]] = n
    if nodes and wf["last_node_id"] < max(nodes):
        errs.append(f"last_node_id {wf['last_node_id']} < largest node id {max(nodes)}")
    links = {}
    for ln in wf["links"]:
        if len(ln) != 6:
            errs.append(f"link {ln} does not have 6 fields")
            continue
        links[ln[0]] = ln
    if links and wf["last_link_id"] < max(links):
        errs.append(f"last_link_id {wf['last_link_id']} < largest link id {max(links)}")

    for n in wf["nodes"]:
        t = n["type"]
        for key in ("pos", "size"):
            if not (isinstance(n.get(key), list) and len(n[key]) == 2):
                errs.append(f"node {n['id']} ({t}) has no valid {key}")
        if t in VIRTUAL_NODES:
            continue
        d = defs.get(t)
        if d is None:
            errs.append(f"node {n['id']}: unknown node type {t!r}")
            continue
        values, e = split_widget_values(d, n.get("widgets_values") or [])
        errs += [f"node {n['id']} {m}" for m in e]
        for name, v in values.items():
            errs += [f"node {n['id']} {m}" for m in check_value(t, d.input(name), v)]
        seen = set()
        for slot, inp in enumerate(n.get("inputs") or []):
            spec = d.input(inp["name"])
            if spec is None:
                errs.append(f"node {n['id']} ({t}): input {inp['name']!r} does not exist")
                continue
            seen.add(inp["name"])
            if spec.is_widget and "widget" not in inp:
                errs.append(f"node {n['id']} ({t}): widget input {inp['name']!r} lacks its 'widget' entry")
            if inp.get("type") != spec.type and not (spec.type == "COMBO"):
                errs.append(f"node {n['id']} ({t}): input {inp['name']!r} has type {inp.get('type')}, node says {spec.type}")
            lid = inp.get("link")
            if lid is not None:
                ln = links.get(lid)
                if ln is None:
                    errs.append(f"node {n['id']} ({t}): input {inp['name']!r} refers to missing link {lid}")
                elif ln[3] != n["id"] or ln[4] != slot:
                    errs.append(f"link {lid} targets node {ln[3]} slot {ln[4]}, but node {n['id']} slot {slot} "
                                f"({inp['name']}) lists it")
        for spec in d.inputs:
            if spec.required and not spec.is_widget:
                inp = next((i for i in n.get("inputs") or [] if i["name"] == spec.name), None)
                if inp is None or inp.get("link") is None:
                    errs.append(f"node {n['id']} ({t}): required input {spec.name!r} is not connected")
        outs = n.get("outputs") or []
        if len(outs) != len(d.outputs):
            errs.append(f"node {n['id']} ({t}): {len(outs)} outputs, the node has {len(d.outputs)}")
        for k, (o, (oname, otype)) in enumerate(zip(outs, d.outputs)):
            if o.get("type") != otype:
                errs.append(f"node {n['id']} ({t}): output {k} has type {o.get('type')}, node says {otype}")
            for lid in o.get("links") or []:
                ln = links.get(lid)
                if ln is None or ln[1] != n["id"] or ln[2] != k:
                    errs.append(f"node {n['id']} ({t}): output {k} lists link {lid} that does not start there")

    for lid, (_, a, sa, b, sb, typ) in links.items():
        na, nb = nodes.get(a), nodes.get(b)
        if na is None or nb is None:
            errs.append(f"link {lid}: node {a if na is None else b} does not exist")
            continue
        outs, ins = na.get("outputs") or [], nb.get("inputs") or []
        if sa >= len(outs) or sb >= len(ins):
            errs.append(f"link {lid}: slot out of range ({a}:{sa} -> {b}:{sb})")
            continue
        if lid not in (outs[sa].get("links") or []):
            errs.append(f"link {lid}: not listed in node {a} output {sa}")
        if ins[sb].get("link") != lid:
            errs.append(f"link {lid}: node {b} input {sb} does not point back to it")
        if outs[sa].get("type") != typ:
            errs.append(f"link {lid}: type {typ} but node {a} output {sa} is {outs[sa].get('type')}")
        da, db = defs.get(na["type"]), defs.get(nb["type"])
        if da and db and sa < len(da.outputs):
            spec_in = db.input(ins[sb]["name"])
            out_t = da.outputs[sa][1]
            if spec_in is not None and not types_compatible(out_t, spec_in.type):
                errs.append(f"link {lid}: {na['type']} output {out_t} cannot feed {nb['type']}.{spec_in.name} ({spec_in.type})")
    return errs


def ui_to_api(wf: dict, defs: dict[str, NodeDef]) -> dict:
    """What the front end sends for a UI workflow (graphToPrompt), without _meta."""
    links = {ln[0]: ln for ln in wf["links"]}
    out = {}
    for n in wf["nodes"]:
        if n["type"] in VIRTUAL_NODES or n.get("mode", 0) in (2, 4):
            continue
        d = defs[n["type"]]
        values, _ = split_widget_values(d, n.get("widgets_values") or [])
        inputs = dict(values)
        for inp in n.get("inputs") or []:
            if inp.get("link") is not None:
                ln = links[inp["link"]]
                inputs[inp["name"]] = [str(ln[1]), ln[2]]
        out[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return out


# ---- API format ----------------------------------------------------------------------------
def check_api(prompt: dict, defs: dict[str, NodeDef]) -> list[str]:
    errs = []
    for nid, node in prompt.items():
        t = node.get("class_type")
        d = defs.get(t)
        if d is None:
            errs.append(f"API node {nid}: unknown class_type {t!r}")
            continue
        inputs = node.get("inputs") or {}
        for name, v in inputs.items():
            spec = d.input(name)
            if spec is None:
                errs.append(f"API node {nid} ({t}): unknown input {name!r}")
                continue
            if isinstance(v, list):
                if len(v) != 2 or not isinstance(v[0], str) or not isinstance(v[1], int):
                    errs.append(f"API node {nid} ({t}).{name}: link {v!r} is not [node_id, output_index]")
                    continue
                src = prompt.get(v[0])
                if src is None:
                    errs.append(f"API node {nid} ({t}).{name}: links to missing node {v[0]}")
                    continue
                ds = defs.get(src.get("class_type"))
                if ds is None:
                    continue
                if v[1] >= len(ds.outputs):
                    errs.append(f"API node {nid} ({t}).{name}: node {v[0]} has no output {v[1]}")
                elif not types_compatible(ds.outputs[v[1]][1], spec.type):
                    errs.append(f"API node {nid} ({t}).{name}: {ds.outputs[v[1]][1]} from node {v[0]} does not fit {spec.type}")
            else:
                errs += [f"API node {nid} {m}" for m in check_value(t, spec, v)]
        for spec in d.inputs:
            if spec.required and spec.name not in inputs:
                errs.append(f"API node {nid} ({t}): required input {spec.name!r} missing")
    return errs


def strip_meta(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
