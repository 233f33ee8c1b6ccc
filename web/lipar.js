// LIPAR for ComfyUI: front-end extension.
//
// Latent Inter-Frame Pruner: shows the prune statistics the node reports in its UI
//   result (`lipar_stats`): overall pruned share, kept tokens, a per-frame bar chart and
//   kept tokens per chunk. The animated mask preview itself comes through ComfyUI's
//   standard image preview (the node's `images` + `animated` UI result).
// Self-Forcing Causal Sampler: shows seconds, FPS, pruned share and the speed-up over the
//   last unpruned run of the same size seen in this browser session (`lipar_sampler`),
//   then any further lines the node sends (see renderSampler).
//
// Both panels are DOM widgets that are neither saved in workflows (serialize: false) nor
// sent with prompts (options.serialize: false), so workflows stay identical with and
// without this extension.
//
// Sizing: a DOM widget gets `computedHeight` from the node layout, and its element is
// `computedHeight - 2 * margin` tall. The panel reports the height its content needs at the
// node's current width (measured in a hidden copy, so it also works while the node is off
// screen), plus the margins, as both minimum and maximum height. Lines wrap; the node grows
// to fit (setSize with computeSize after new content, and the host's own arrange() whenever
// the widgets no longer fit, e.g. after the node is made narrower).

import { app } from "../../scripts/app.js";

const PRUNER = "LIPAR_LatentInterFramePruner";
const SAMPLER = "LIPAR_SelfForcingSampler";
const PANEL = "lipar_panel";
const BASELINE_KEY = "lipar.lastUnprunedRun";
const DEFAULT_MARGIN = 10;          // the host's DOMWidget default margin (options.margin)
const NBSP = "\u00a0";              // keeps a number and its unit on one line when lines wrap

const first = (v) => (Array.isArray(v) ? v[0] : v);
const pct = (x) => (typeof x === "number" && isFinite(x) ? `${(x * 100).toFixed(1)}%` : "n/a");
const num = (x) => (typeof x === "number" ? x.toLocaleString("en-US") : String(x ?? "n/a"));
const sum = (v) => (Array.isArray(v) ? v.flat(Infinity).reduce((a, b) => a + b, 0) : v);
const asList = (v) => (v === null || v === undefined || v === "" ? [] : Array.isArray(v) ? v.flat(Infinity) : [v]);

function el(tag, style = {}, text = null) {
  const e = document.createElement(tag);
  Object.assign(e.style, style);
  if (text !== null) e.textContent = text;
  return e;
}

// Every text property that changes line breaks is set here, so the hidden measuring copy and
// the panel on the canvas lay out identically whatever they inherit.
const PANEL_STYLE = {
  boxSizing: "border-box", width: "100%", height: "100%", margin: "0", padding: "6px 8px", border: "0",
  overflow: "hidden", font: "12px/1.35 sans-serif", letterSpacing: "normal", wordSpacing: "normal",
  textTransform: "none", textAlign: "left", whiteSpace: "normal", overflowWrap: "anywhere", wordBreak: "normal",
  color: "var(--fg-color, #ddd)", background: "var(--comfy-input-bg, #222)", borderRadius: "6px",
  pointerEvents: "none", userSelect: "none",
};

// ---- unpruned reference runs, kept for this browser session -----------------------------
let lastUnpruned = null;
try {
  lastUnpruned = JSON.parse(sessionStorage.getItem(BASELINE_KEY) || "null");
} catch {
  lastUnpruned = null;
}

function isUnpruned(info) {
  return info.prune_ratio === null || info.prune_ratio === undefined || info.recovery === "unpruned";
}

function rememberUnpruned(info) {
  lastUnpruned = {
    seconds: info.seconds, fps: info.fps, tokens_full: info.tokens_full, passes: info.passes,
    video_frames: info.video_frames, at: Date.now(),
  };
  try {
    sessionStorage.setItem(BASELINE_KEY, JSON.stringify(lastUnpruned));
  } catch {
    // storage may be unavailable (private mode); the in-memory value still works
  }
}

function comparable(info) {
  // same latent size, steps and chunking <=> the same full token count and number of passes
  return lastUnpruned && lastUnpruned.tokens_full === info.tokens_full && lastUnpruned.passes === info.passes &&
    typeof lastUnpruned.seconds === "number" && typeof info.seconds === "number" && info.seconds > 0;
}

// ---- measuring ---------------------------------------------------------------------------
let measurer = null;

function measureBox() {
  if (!measurer || !measurer.isConnected) {
    measurer = el("div", {
      ...PANEL_STYLE, position: "fixed", left: "-10000px", top: "0", height: "auto", overflow: "visible",
      visibility: "hidden", contain: "layout style",
    });
    measurer.className = "lipar-panel-measure";
    measurer.setAttribute("aria-hidden", "true");
    document.body.appendChild(measurer);
  }
  return measurer;
}

// Height (CSS px, padding included) that the panel's content needs at this width.
function contentHeight(panel, width) {
  const m = measureBox();
  m.style.width = `${Math.max(1, width)}px`;
  m.replaceChildren(panel.body.cloneNode(true));
  const h = m.getBoundingClientRect().height;
  m.replaceChildren();
  return Math.ceil(h) + 1;          // +1: sub-pixel line heights (12px x 1.35) round up on screen
}

// The widget height (margins included) at the node's current width; cached per content
// version and width, because the host asks for it on every frame the node is drawn.
function panelHeight(node, panel) {
  const widget = panel.widget;
  const margin = widget?.margin ?? DEFAULT_MARGIN;
  const nodeWidth = widget?.width ?? node.size?.[0] ?? 0;
  const width = Math.round(Math.max(nodeWidth, 2 * margin + 40) - 2 * margin);
  const key = `${panel.version}:${width}`;
  if (panel.cache?.key !== key) panel.cache = { key, height: contentHeight(panel, width) + 2 * margin };
  return panel.cache.height;
}

// ---- the panel widget --------------------------------------------------------------------
function addPanel(node, placeholder) {
  const root = el("div", PANEL_STYLE);
  root.className = "lipar-panel";
  root.dataset.state = "empty";
  const body = el("div", {});
  body.className = "lipar-panel-body";
  root.appendChild(body);
  const panel = { root, body, version: 0, cache: null, widget: null };
  line(body, placeholder, { opacity: "0.7" });
  panel.widget = node.addDOMWidget(PANEL, "lipar_panel", root, {
    serialize: false,                 // not part of the prompt sent to the server
    hideOnZoom: false,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => panelHeight(node, panel),
    getMaxHeight: () => panelHeight(node, panel),
  });
  panel.widget.serialize = false;     // not part of the workflow's widgets_values
  node.liparPanel = root;
  node.liparPanelState = panel;
  return panel;
}

function fitNode(node) {
  const want = node.computeSize();
  if (want[0] > node.size[0] || want[1] > node.size[1]) {
    node.setSize([Math.max(node.size[0], want[0]), Math.max(node.size[1], want[1])]);
  }
  node.setDirtyCanvas?.(true, true);
  node.graph?.setDirtyCanvas?.(true, true);
}

function show(node, panel, fill) {
  panel.body.replaceChildren();
  fill(panel.body);
  panel.root.dataset.state = "done";
  panel.version += 1;
  fitNode(node);
}

function line(parent, text, style = {}) {
  const d = el("div", style, text);
  parent.appendChild(d);
  return d;
}

function renderPruner(node, stats) {
  const panel = node.liparPanelState;
  if (!panel || !stats) return;
  show(node, panel, (body) => {
    const perFrame = Array.isArray(stats.prune_ratio_per_frame) ? stats.prune_ratio_per_frame : [];
    const kept = sum(stats.tokens_kept);
    const total = Array.isArray(stats.tokens_kept) ? stats.tokens_total * stats.tokens_kept.length : stats.tokens_total;
    line(body, `Pruned ${pct(stats.prune_ratio)} of tokens`, { fontWeight: "bold", fontSize: "13px" });
    line(body, `kept ${num(kept)} of ${num(total)} tokens` +
      (perFrame.length ? ` · ${perFrame.length} latent frames` : "") +
      (stats.tokens_per_frame ? `${NBSP}×${NBSP}${num(stats.tokens_per_frame)}` : ""));
    if (perFrame.length) {
      const chart = el("div", {
        display: "flex", alignItems: "flex-end", gap: "1px", height: "44px", marginTop: "4px",
        borderBottom: "1px solid var(--border-color, #555)",
      });
      chart.className = "lipar-frame-chart";
      perFrame.forEach((r, i) => {
        const bar = el("div", {
          flex: "1 1 0", minWidth: "1px", height: r > 0 ? `${Math.max(4, Math.round(r * 100))}%` : "2px",
          background: r > 0 ? "#4f8fe8" : "#666",
        });
        bar.title = `frame ${i}: ${pct(r)} pruned`;
        chart.appendChild(bar);
      });
      body.appendChild(chart);
      line(body, `pruned per latent frame (0…${perFrame.length - 1}), max ${pct(Math.max(...perFrame))}`,
        { opacity: "0.7", fontSize: "11px" });
    }
    const chunks = stats.kept_per_chunk;
    if (Array.isArray(chunks) && chunks.length) {
      const rows = Array.isArray(chunks[0]) ? chunks : [chunks];
      rows.forEach((row, b) => {
        line(body, `kept per chunk${rows.length > 1 ? ` (sample ${b})` : ""}: ${row.map(num).join(" · ")}`,
          { fontSize: "11px" });
      });
    }
  });
}

// Lines after the fixed ones, from whatever the node sends:
//   note:     a string (newlines start new lines) or a list of strings;
//   details:  {label: value} (or a list of strings), one "label: value" line each;
//   warning / warnings: a string or a list, shown in amber.
function extraLines(body, info) {
  const muted = { opacity: "0.7", fontSize: "11px", whiteSpace: "pre-line" };
  const details = info.details;
  if (details && typeof details === "object" && !Array.isArray(details)) {
    for (const [k, v] of Object.entries(details)) {
      if (v === null || v === undefined) continue;
      line(body, `${k}: ${Array.isArray(v) ? v.join(", ") : typeof v === "number" ? num(v) : String(v)}`, muted)
        .className = "lipar-detail";
    }
  } else {
    asList(details).forEach((t) => (line(body, String(t), muted).className = "lipar-detail"));
  }
  asList(info.warnings ?? info.warning).forEach((t) => {
    line(body, `⚠ ${t}`, { color: "#e0a060", fontSize: "11px", whiteSpace: "pre-line" }).className = "lipar-warning";
  });
  asList(info.note).forEach((t) => (line(body, String(t), muted).className = "lipar-note"));
}

function renderSampler(node, info) {
  const panel = node.liparPanelState;
  if (!panel || !info) return;
  const unpruned = isUnpruned(info);
  show(node, panel, (body) => {
    const secs = typeof info.seconds === "number" ? `${info.seconds.toFixed(2)}${NBSP}s` : "n/a";
    const fps = typeof info.fps === "number" ? `${info.fps.toFixed(2)}${NBSP}FPS` : `n/a${NBSP}FPS`;
    line(body, `${secs} · ${fps}`, { fontWeight: "bold", fontSize: "13px" });
    line(body, unpruned ? "unpruned (no pruning plan)"
      : `pruned ${pct(info.prune_ratio)} · recovery ${info.recovery}${info.recovery_form ? ` (${info.recovery_form})` : ""}`);
    if (typeof info.tokens_computed === "number" && info.tokens_full) {
      line(body, `tokens computed: ${pct(info.tokens_computed / info.tokens_full)} of full · ${num(info.passes)} passes`);
    }
    let speed;
    if (unpruned) {
      speed = line(body, "reference for the speed-up of later pruned runs", { opacity: "0.7" });
    } else if (comparable(info)) {
      const s = lastUnpruned.seconds / info.seconds;
      speed = line(body, `speed-up ${s.toFixed(2)}× vs last unpruned run (${lastUnpruned.seconds.toFixed(2)}${NBSP}s)`,
        { fontWeight: "bold", color: s >= 1 ? "#7ccf7c" : "#e0a060" });
    } else {
      speed = line(body, "speed-up: run the unpruned baseline on the same video to compare", { opacity: "0.7" });
    }
    speed.className = "lipar-speedup";
    extraLines(body, info);
  });
  if (unpruned) rememberUnpruned(info);
}

app.registerExtension({
  name: "lipar.nodes",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    const kind = nodeData?.name;
    if (kind !== PRUNER && kind !== SAMPLER) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      addPanel(this, kind === PRUNER
        ? "Run to see which patches are pruned."
        : "Run to see time, FPS and speed-up.");
      fitNode(this);                  // the host sized the node before this widget existed
      return r;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      try {
        if (kind === PRUNER) renderPruner(this, first(message?.lipar_stats));
        else renderSampler(this, first(message?.lipar_sampler));
      } catch (e) {
        console.warn("[LIPAR] could not show the node's statistics:", e);
      }
      return r;
    };
  },
});
