// LIPAR for ComfyUI: front-end extension.
//
// Latent Inter-Frame Pruner: shows the prune statistics the node reports in its UI
//   result (`lipar_stats`): overall pruned share, kept tokens, a per-frame bar chart and
//   kept tokens per chunk. The animated mask preview itself comes through ComfyUI's
//   standard image preview (the node's `images` + `animated` UI result).
// Self-Forcing Causal Sampler: shows seconds, FPS, pruned share and the speed-up over the
//   last unpruned run of the same size seen in this browser session (`lipar_sampler`).
//
// Both panels are DOM widgets that are neither saved in workflows (serialize: false) nor
// sent with prompts (options.serialize: false), so workflows stay identical with and
// without this extension.

import { app } from "../../scripts/app.js";

const PRUNER = "LIPAR_LatentInterFramePruner";
const SAMPLER = "LIPAR_SelfForcingSampler";
const PANEL = "lipar_panel";
const BASELINE_KEY = "lipar.lastUnprunedRun";

const first = (v) => (Array.isArray(v) ? v[0] : v);
const pct = (x) => (typeof x === "number" && isFinite(x) ? `${(x * 100).toFixed(1)}%` : "n/a");
const num = (x) => (typeof x === "number" ? x.toLocaleString("en-US") : String(x ?? "n/a"));
const sum = (v) => (Array.isArray(v) ? v.flat(Infinity).reduce((a, b) => a + b, 0) : v);

function el(tag, style = {}, text = null) {
  const e = document.createElement(tag);
  Object.assign(e.style, style);
  if (text !== null) e.textContent = text;
  return e;
}

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
  return lastUnpruned && lastUnpruned.tokens_full === info.tokens_full && lastUnpruned.passes === info.passes;
}

// ---- the panel widget --------------------------------------------------------------------
function addPanel(node, placeholder) {
  const root = el("div", {
    boxSizing: "border-box", width: "100%", height: "100%", padding: "6px 8px", overflow: "hidden",
    font: "12px/1.35 sans-serif", color: "var(--fg-color, #ddd)", background: "var(--comfy-input-bg, #222)",
    borderRadius: "6px", pointerEvents: "none", userSelect: "none",
  });
  root.className = "lipar-panel";
  root.dataset.state = "empty";
  root.appendChild(el("div", { opacity: "0.7" }, placeholder));
  const widget = node.addDOMWidget(PANEL, "lipar_panel", root, {
    serialize: false,                 // not part of the prompt sent to the server
    hideOnZoom: false,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => (root.dataset.state === "empty" ? 34 : Number(root.dataset.height || 90)),
    getMaxHeight: () => (root.dataset.state === "empty" ? 34 : Number(root.dataset.height || 90)),
  });
  widget.serialize = false;           // not part of the workflow's widgets_values
  return root;
}

function finish(node, root, estimate) {
  // the content's real height when the panel is on screen, else the estimate
  root.dataset.state = "done";
  root.style.height = "auto";
  const measured = root.isConnected ? Math.ceil(root.scrollHeight) : 0;
  root.style.height = "100%";
  root.dataset.height = String(Math.max(estimate, measured) + 4);
  fitNode(node);
}

function fitNode(node) {
  const want = node.computeSize();
  node.setSize([Math.max(node.size[0], want[0]), Math.max(node.size[1], want[1])]);
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas?.(true, true);
}

function line(root, text, style = {}) {
  const d = el("div", style, text);
  root.appendChild(d);
  return d;
}

function renderPruner(node, stats) {
  const root = node.liparPanel;
  if (!root || !stats) return;
  root.replaceChildren();
  const perFrame = Array.isArray(stats.prune_ratio_per_frame) ? stats.prune_ratio_per_frame : [];
  const kept = sum(stats.tokens_kept);
  const total = Array.isArray(stats.tokens_kept) ? stats.tokens_total * stats.tokens_kept.length : stats.tokens_total;
  line(root, `Pruned ${pct(stats.prune_ratio)} of tokens`, { fontWeight: "bold", fontSize: "13px" });
  line(root, `kept ${num(kept)} of ${num(total)} tokens` +
    (perFrame.length ? ` · ${perFrame.length} latent frames` : "") +
    (stats.tokens_per_frame ? ` × ${num(stats.tokens_per_frame)}` : ""));

  let height = 50;
  if (perFrame.length) {
    const chart = el("div", {
      display: "flex", alignItems: "flex-end", gap: "1px", height: "44px", marginTop: "4px",
      borderBottom: "1px solid var(--border-color, #555)",
    });
    chart.className = "lipar-frame-chart";
    perFrame.forEach((r, i) => {
      const bar = el("div", {
        flex: "1 1 0", minWidth: "2px", height: r > 0 ? `${Math.max(4, Math.round(r * 100))}%` : "2px",
        background: r > 0 ? "#4f8fe8" : "#666",
      });
      bar.title = `frame ${i}: ${pct(r)} pruned`;
      chart.appendChild(bar);
    });
    root.appendChild(chart);
    const maxR = Math.max(...perFrame);
    line(root, `pruned per latent frame (0…${perFrame.length - 1}), max ${pct(maxR)}`,
      { opacity: "0.7", fontSize: "11px" });
    height += 68;
  }
  const chunks = stats.kept_per_chunk;
  if (Array.isArray(chunks) && chunks.length) {
    const rows = Array.isArray(chunks[0]) ? chunks : [chunks];
    rows.forEach((row, b) => {
      line(root, `kept per chunk${rows.length > 1 ? ` (sample ${b})` : ""}: ${row.map(num).join(" · ")}`,
        { fontSize: "11px", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" });
      height += 17;
    });
  }
  finish(node, root, height + 8);
}

function renderSampler(node, info) {
  const root = node.liparPanel;
  if (!root || !info) return;
  root.replaceChildren();
  const unpruned = isUnpruned(info);
  const secs = typeof info.seconds === "number" ? `${info.seconds.toFixed(2)} s` : "n/a";
  const fps = typeof info.fps === "number" ? `${info.fps.toFixed(2)} FPS` : "n/a FPS";
  line(root, `${secs} · ${fps}`, { fontWeight: "bold", fontSize: "13px" });
  line(root, unpruned ? "unpruned (no pruning plan)"
    : `pruned ${pct(info.prune_ratio)} · recovery ${info.recovery}${info.recovery_form ? ` (${info.recovery_form})` : ""}`);
  if (typeof info.tokens_computed === "number" && info.tokens_full) {
    line(root, `tokens computed: ${pct(info.tokens_computed / info.tokens_full)} of full · ${num(info.passes)} passes`);
  }
  let speed;
  if (unpruned) {
    speed = line(root, "reference for the speed-up of later pruned runs", { opacity: "0.7" });
  } else if (comparable(info)) {
    const s = lastUnpruned.seconds / info.seconds;
    speed = line(root, `speed-up ${s.toFixed(2)}× vs last unpruned run (${lastUnpruned.seconds.toFixed(2)} s)`,
      { fontWeight: "bold", color: s >= 1 ? "#7ccf7c" : "#e0a060" });
  } else {
    speed = line(root, "speed-up: run the unpruned baseline on the same video to compare", { opacity: "0.7" });
  }
  speed.className = "lipar-speedup";
  let height = 4 * 17 + 14;
  if (info.note) {
    line(root, info.note, { opacity: "0.7", fontSize: "11px", whiteSpace: "normal" });
    height += 30;
  }
  if (unpruned) rememberUnpruned(info);
  finish(node, root, height);
}

app.registerExtension({
  name: "lipar.nodes",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    const kind = nodeData?.name;
    if (kind !== PRUNER && kind !== SAMPLER) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.liparPanel = addPanel(this, kind === PRUNER
        ? "Run to see which patches are pruned."
        : "Run to see time, FPS and speed-up.");
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
