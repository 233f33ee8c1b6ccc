"""The UI workflows in the real ComfyUI front end (headless Chromium through Playwright).

For the baseline and then the LIPAR workflow: the page loads the UI file (app.loadGraphData),
every node resolves to a registered node type, the front end's own conversion
(app.graphToPrompt) equals the committed API file and its serialisation keeps the widget
values; then the test's copy of the API workflow (text encoder replaced, see
test_workflows_run.py) is queued with the page's client id, so the page receives the
``executed`` messages over its websocket as if it had queued the run itself. Checked: the
extension's panels show the pruner's statistics and the sampler's time/FPS/speed-up, the
animated mask preview is shown on the pruner, and the console has no errors (beyond the
host's own 404s for optional user files and requests to the internet, which this machine
cannot reach). Screenshots are saved and their paths printed.

Needs the ``playwright`` Python package (no browser download) and Debian's chromium
(``apt-get install chromium``); LIPAR_CHROMIUM may point at another Chromium binary.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from urllib.parse import urlparse

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import workflow_check as wc  # noqa: E402
from comfy_host import ARTIFACTS, execution_error  # noqa: E402
from test_workflows_run import node_of, with_test_conditioning  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Requests of the front end itself that fail on a fresh, offline host: optional user files
# and the internet (release notes, model sizes). Anything else failing is an error.
ALLOWED_FAILING_PATHS = ("/api/userdata", "/user.css", "/favicon.ico")

APP = "window.comfyAPI.app.app"


def chromium_path() -> str | None:
    for c in (os.environ.get("LIPAR_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if c and os.path.isfile(c):
            return c
    return None


def load(rel: str) -> dict:
    with open(os.path.join(ROOT, "workflows", rel), encoding="utf-8") as f:
        return json.load(f)


class Console:
    """Console messages, page errors and failed requests of one page."""

    def __init__(self, page, server_url: str):
        self.server = urlparse(server_url).netloc
        self.errors: list[str] = []
        self.ignored: list[str] = []
        self.all: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def allowed_url(self, url: str) -> bool:
        u = urlparse(url)
        if u.netloc != self.server:
            return True                  # the internet: unreachable here
        return u.path.startswith(ALLOWED_FAILING_PATHS)

    def _console(self, msg) -> None:
        text, url = msg.text, (msg.location or {}).get("url", "")
        self.all.append(f"[{msg.type}] {text[:300]}")
        if "lipar" in text.lower() and msg.type in ("error", "warning"):
            self.errors.append(f"{msg.type}: {text}")
            return
        if msg.type != "error":
            return
        if text.startswith("Failed to load resource") and self.allowed_url(url):
            self.ignored.append(f"{text} ({url})")
            return
        self.errors.append(f"{text} ({url})")


def wait_app(page, node_types: list[str]) -> None:
    """Until the front end is up, has registered the node definitions (the graph exists before
    /object_info is read) and has loaded its own start-up graph, which would replace ours."""
    page.wait_for_function(f"() => {APP}?.graph && {APP}.canvas && window.comfyAPI.api.api.clientId",
                           timeout=120_000)
    page.wait_for_function("(types) => types.every(t => window.LiteGraph?.registered_node_types?.[t])",
                           arg=node_types, timeout=120_000)
    page.wait_for_function(f"() => {APP}.graph.nodes.length > 0", timeout=30_000)
    time.sleep(0.5)


DIALOGS = ("This workflow has missing nodes", "Missing Models", "Some Nodes Are Missing")


def open_dialogs(page) -> list[str]:
    return [d for d in DIALOGS if page.get_by_text(d).count() and page.get_by_text(d).first.is_visible()]


def open_workflow(page, wf: dict, name: str) -> dict:
    """Load a UI workflow; return what the front end makes of it."""
    return page.evaluate(
        """async ([wf, name]) => {
            const app = window.comfyAPI.app.app;
            await app.loadGraphData(wf, true, true, name);
            const LG = window.LiteGraph;
            const p = await app.graphToPrompt();
            const ser = app.graph.serialize();
            return {
              prompt: p.output,
              nodes: app.graph.nodes.map(n => ({id: n.id, type: n.type, errors: !!n.has_errors,
                                                registered: !!LG?.registered_node_types?.[n.type]})),
              widgets_values: Object.fromEntries(ser.nodes.map(n => [n.id, n.widgets_values ?? []])),
              links: ser.links.length,
            };
        }""", [wf, name])


def check_opened(opened: dict, wf: dict, api: dict, defs) -> None:
    want_types = {n["id"]: n["type"] for n in wf["nodes"]}
    assert {n["id"]: n["type"] for n in opened["nodes"]} == want_types
    assert not [n for n in opened["nodes"] if n["errors"] or not n["registered"]], opened["nodes"]
    assert opened["links"] == len(wf["links"])
    # the front end's own API conversion is the committed API workflow
    assert wc.strip_meta(opened["prompt"]) == wc.strip_meta(api)
    # saving the opened workflow keeps every node's widget values (the extension adds none)
    for n in wf["nodes"]:
        assert opened["widgets_values"][str(n["id"])] == n["widgets_values"], n["type"]


def panel(page, node_id: int) -> dict:
    return page.evaluate(f"""() => {{ const n = {APP}.graph.getNodeById({node_id});
        const p = n?.liparPanel; return {{state: p?.dataset.state, text: p?.innerText ?? null,
        visible: !!p && p.isConnected && p.getBoundingClientRect().height > 10}} }}""")


def focus(page, x: float, y: float, scale: float) -> None:
    page.evaluate(f"""() => {{ const c = {APP}.canvas; c.ds.scale = {scale}; c.ds.offset = [{-x}, {-y}];
        c.setDirty(true, true); }}""")
    time.sleep(1.5)


def test_ui_workflows_open_run_and_show_lipar_panels(server, artifacts_dir):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("no Chromium: apt-get install chromium (or set LIPAR_CHROMIUM)")
    defs = wc.definitions(server.get("/object_info"))
    server.post("/settings", {"Comfy.TutorialCompleted": True})     # no template browser on first visit
    server.post("/free", {"unload_models": True, "free_memory": True})  # fresh runs, not cached results
    shots = {}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            console = Console(page, server.url)
            page.goto(server.url)
            types = sorted({n["type"] for rel in ("lipar_video_edit.json", "baseline_video_edit.json")
                            for n in load(rel)["nodes"]})
            wait_app(page, types)
            page.wait_for_function(f"() => ({APP}.extensions ?? []).some(e => e.name === 'lipar.nodes')",
                                   timeout=30_000)
            client_id = page.evaluate("() => window.comfyAPI.api.api.clientId")

            results = {}
            for name, ui_rel, api_rel in (("baseline", "baseline_video_edit.json", "api/baseline_video_edit_api.json"),
                                          ("lipar", "lipar_video_edit.json", "api/lipar_video_edit_api.json")):
                wf, api = load(ui_rel), load(api_rel)
                check_opened(open_workflow(page, wf, ui_rel[:-5]), wf, api, defs)
                time.sleep(1.0)
                assert not open_dialogs(page), f"{ui_rel}: the front end reports {open_dialogs(page)}"
                test_api = with_test_conditioning(api)
                h = server.run(test_api, client_id=client_id)
                assert h["status"]["status_str"] == "success", execution_error(h)
                results[name] = (test_api, h)
                sampler = int(node_of(test_api, "LIPAR_SelfForcingSampler"))
                page.wait_for_function(
                    f"() => {APP}.graph.getNodeById({sampler})?.liparPanel?.dataset.state === 'done'", timeout=60_000)
                if name == "baseline":
                    time.sleep(1.0)            # the workflow's own saved view (extra.ds)
                    shots["baseline"] = os.path.join(artifacts_dir, "baseline_video_edit_after_run.png")
                    page.screenshot(path=shots["baseline"])

            api, h = results["lipar"]
            pruner, sampler = int(node_of(api, "LIPAR_LatentInterFramePruner")), int(node_of(api, "LIPAR_SelfForcingSampler"))
            page.wait_for_function(
                f"() => {APP}.graph.getNodeById({pruner})?.liparPanel?.dataset.state === 'done'", timeout=60_000)
            # the animated mask preview: ComfyUI's preview widget with the pruner's webp, loaded
            page.wait_for_function(
                """() => [...document.querySelectorAll('img')].some(i => i.src.includes('lipar_mask_')
                         && i.complete && i.naturalWidth > 0)""", timeout=60_000)
            stats = h["outputs"][str(pruner)]["lipar_stats"][0]
            info = h["outputs"][str(sampler)]["lipar_sampler"][0]
            base_api, base_h = results["baseline"]
            base_info = base_h["outputs"][node_of(base_api, "LIPAR_SelfForcingSampler")]["lipar_sampler"][0]
            time.sleep(1.0)                    # the workflow's own saved view (extra.ds)
            shots["overview"] = os.path.join(artifacts_dir, "lipar_video_edit_overview.png")
            page.screenshot(path=shots["overview"])
            focus(page, 660, -40, 1.0)             # the LIPAR nodes at 100%
            shots["lipar"] = os.path.join(artifacts_dir, "lipar_video_edit_after_run.png")
            page.screenshot(path=shots["lipar"])

            assert not open_dialogs(page), open_dialogs(page)
            pp, sp = panel(page, pruner), panel(page, sampler)
            assert pp["visible"] and sp["visible"]
            assert f"Pruned {stats['prune_ratio'] * 100:.1f}% of tokens" in pp["text"], pp
            assert f"kept {stats['tokens_kept']} of {stats['tokens_total']} tokens" in pp["text"], pp
            bars = page.evaluate(f"""() => {APP}.graph.getNodeById({pruner}).liparPanel
                                     .querySelectorAll('.lipar-frame-chart > div').length""")
            assert bars == len(stats["prune_ratio_per_frame"])
            assert f"{info['seconds']:.2f} s" in sp["text"] and "FPS" in sp["text"], sp
            assert f"pruned {info['prune_ratio'] * 100:.1f}%" in sp["text"], sp
            speedup = base_info["seconds"] / info["seconds"]
            assert f"speed-up {speedup:.2f}× vs last unpruned run" in sp["text"], sp
            print(f"\n[realhost] pruner panel:\n{pp['text']}\n[realhost] sampler panel:\n{sp['text']}")
            print("[realhost] console lines:", len(console.all), "ignored host/offline errors:", console.ignored)
            assert not console.errors, "\n".join(console.errors)
        finally:
            browser.close()
    for k, path in shots.items():
        assert os.path.getsize(path) > 10_000
        print(f"[realhost] screenshot ({k}): {path}")
        ARTIFACTS.append(f"screenshot ({k}): {path}")
