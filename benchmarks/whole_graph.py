"""The seconds a user waits for the whole video-edit graph, with ComfyUI's own nodes, in-process.

    python benchmarks/whole_graph.py [--config 1.3b|tiny] [--device cuda|cpu] [--frames 81 --height 480
        --width 832] [--repeat 3] [--only PATTERNS] [--comfyui DIR] [--overlay DIR] [--out JSON]

(on the GPU machine: ``bash benchmarks/whole_graph.sh``, which installs the carried wheels first).

ComfyUI 0.8 is imported as a library with the pack loaded as a custom node (tests/realhost_gpu/harness_env.py)
and each graph is run by calling the node classes in graph order, as ComfyUI's executor would, inside
``torch.inference_mode()``:

    VAE Encode -> LIPAR Latent Inter-Frame Pruner -> LIPAR Self-Forcing Causal Sampler -> LIPAR Token Restore
               -> VAE Decode                                      (lipar, the shipped workflow; pruned rows)
    VAE Encode -> LIPAR Self-Forcing Causal Sampler -> VAE Decode (lipar, the shipped baseline workflow; unpruned)
    VAE Encode -> SamplerCustomAdvanced(RandomNoise, BasicGuider, SamplerARVideo(3), ManualSigmas) -> VAE Decode
                                                                  (core_ar: ComfyUI core's causal AR sampler)

Input: a synthetic source video as an IMAGE tensor [frames, height, width, 3] (``synthetic_video``: a static
textured background with a few moving textured boxes, made in pixel space), on the CPU as Load Video gives it.
Models, all random-weight and of the real architectures, written once into ``<work>/models`` (reused while
``STAMP.json`` matches): the Wan2.1-T2V DiT (``--config 1.3b``: 1.3B, dim 1536, 30 layers; ``tiny``: dim 256,
2 layers) through tests/realhost_gpu/harness_models.py, loaded by ComfyUI's UNETLoader; the Wan2.1 VAE at full
width (dim 96; tiny: 16) and the tiny Wan VAE ``lighttaew2_1`` (ComfyUI's own ``comfy.taesd.taehv.TAEHV``,
random init, saved in float32 so that ComfyUI detects lighttaew2_1 and not HunyuanVideo's fp16 taehv), loaded
by VAELoader. Conditioning: a random [1, 512, 4096] CONDITIONING (text encoding is measured separately).

Graphs: {Wan VAE encode+decode, tiny VAE encode+decode, tiny encode + Wan decode, Wan encode + tiny decode}
x {unpruned, pruned 33.8%, pruned 50%} with the lipar sampler (edit mode, steps 400,350,250, shift 5, seed
42), plus the anchor: core's causal AR sampler with the Wan and the tiny VAE (unpruned). For a pruned target
the threshold is fitted by bisection on the normalised latent that this graph's encoder produced (its warm-up
run; ``lipar.bench.fit_threshold`` on the device, anchor threshold = 2 x threshold; not timed) and passed to
the pruner node, which makes the plan on the latent of every run; the achieved ratio is reported. The pruner gets the source images
as in the shipped workflow (its mask preview is drawn over them).

Per graph: every stage CUDA-synchronised and timed (vae_encode, prune, sample, restore, vae_decode; a stage
that is not in the graph is null), one warm-up run (model loading, CUDA-graph capture, autotuning, the
threshold fit), then ``--repeat`` runs: ``stages`` are per-stage medians, ``seconds`` the median of the
per-run totals, ``fps`` = frames / seconds, ``peak_memory_bytes`` the largest torch.cuda.max_memory_allocated
of a measured run (reset before each; it includes the weights of the graph's models, the only models loaded:
everything is unloaded between graphs). Latent previews are off in the graphs (ComfyUI's default
``--preview-method none``).

Measured separately (not in the totals): latent previews (the lipar sampler stage with ComfyUI's latent2rgb
previewer vs none), the pruner with and without its source images, text encoding (ComfyUI's umt5-xxl class
with random weights built directly on the device, CLIP Text Encode of a 20-word prompt), and writing/reading
the 81 output frames as an mp4 with OpenCV where OpenCV is importable (the GPU machine has no PyAV).

Core's AR sampler: ComfyUI 0.8 has no causal Wan model and no ``sample_ar_video``. The test-only overlay
(``.gpu/comfy_overlay``, never committed, see its SOURCE.md) holds newer ComfyUI's ``comfy/ldm/wan/ar_model.py``
(CausalWanModel) and ``comfy_extras/nodes_ar_video.py`` (SamplerARVideo) verbatim and the function
``sample_ar_video`` verbatim (the newer sampling.py as a whole does not import under 0.8); the function is set
as ``comfy.k_diffusion.sampling.sample_ar_video``, where ``comfy.samplers.ksampler("ar_video", ...)`` finds it,
and runs under 0.8's own SamplerCustomAdvanced / BasicGuider / KSAMPLER. The causal model is loaded by
ComfyUI's ``load_diffusion_model_state_dict`` (what UNETLoader calls) from the same DiT file with
``causal_ar`` config metadata, through the model-config glue of tests/realhost_gpu/worker.py (0.8's detection
passes that metadata on only for LTXV models, so for this one load it is merged into the detected Wan config).
Sigmas: ManualSigmas with Self-Forcing's warped steps 400,350,250 (s = 5u/(1+4u)) and 0, the schedule lipar's
sampler uses. What differs from lipar's sampler by design of core's loop: a clean (sigma 0) cache pass after
every block including the last (lipar skips the last, nothing reads it), re-noising from the global torch RNG,
ComfyUI's own attention and weight casting, no CUDA graphs; the noised input is sigma0 * noise + (1 - sigma0) *
source latent (KSAMPLER's noise scaling), as lipar's edit mode.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import importlib
import json
import logging
import math
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HARNESS = os.path.join(ROOT, "tests", "realhost_gpu")

STAGES = ("vae_encode", "prune", "sample", "restore", "vae_decode")
# "wanfast": the Wan2.1 VAE through the pack's Wan VAE Encode/Decode (fast) nodes (lipar.wan_vae);
# "tinyfast": the tiny VAE through the same nodes (its own module, pixels scaled on the GPU), as the shipped
# fast workflow runs it
VAE_PAIRS = (("wan", "wan"), ("wanfast", "wanfast"), ("tiny", "tiny"), ("tinyfast", "tinyfast"), ("tiny", "wan"),
             ("wan", "tiny"))
PACK_VAE_NODES = ("wanfast", "tinyfast")
PRUNE_TARGETS = (None, 0.338, 0.5)
STEPS = "400,350,250"
SHIFT = 5.0
CHUNK_FRAMES = 3
SEED = 42
TEXT_TOKENS = 512
PROMPT = ("A small red fox trots across fresh snow at sunrise while pine branches sway gently "
          "and soft golden light spreads")   # 20 words
FILES = {"dit": "whole_graph_wan_t2v.safetensors", "wan_vae": "whole_graph_wan_2.1_vae.safetensors",
         "tiny_vae": "lighttaew2_1.safetensors"}
CONFIGS = {
    "1.3b": {"dit": "1.3b", "wan_vae_dim": 96, "text_encoder": "umt5-xxl"},
    "tiny": {"dit": "tiny", "wan_vae_dim": 16, "text_encoder": "tiny"},
}
ASYNC_BACKEND = "backend:cudaMallocAsync"
EXTRAS_RESERVE = 45.0      # seconds of --budget kept for the extras (about 35 s on an H200)
CAUSAL_AR_META = json.dumps({"transformer": {"causal_ar": True}})
TINY_UMT5 = {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2}


# ---- pure helpers (host-free; tests/test_whole_graph_tools.py) ------------------------------------------

def prune_tag(target: float | None) -> str:
    return "unpruned" if target is None else f"p{round(target * 100, 1):g}"


def graph_name(sampler: str, encoder: str, decoder: str, target: float | None) -> str:
    return f"{sampler}-{encoder}-{decoder}-{prune_tag(target)}"


def graph_specs() -> list[dict]:
    """Every graph, in run order: the lipar graphs of each VAE pair, then (for a pair of ComfyUI's own VAE nodes)
    core's AR-sampler graph as its anchor."""
    specs = []
    for enc, dec in VAE_PAIRS:
        for target in PRUNE_TARGETS:
            specs.append({"name": graph_name("lipar", enc, dec, target), "sampler": "lipar", "vae_encode": enc,
                          "vae_decode": dec, "target_prune": target})
        if enc == dec and enc not in PACK_VAE_NODES:     # core's graph runs ComfyUI's own VAE nodes
            specs.append({"name": graph_name("core_ar", enc, dec, None), "sampler": "core_ar", "vae_encode": enc,
                          "vae_decode": dec, "target_prune": None})
    return specs


def select_graphs(specs: list[dict], only: str) -> list[dict]:
    """``only``: comma-separated names or shell patterns (``lipar-wan-*``); empty = all. Unknown patterns raise."""
    pats = [p.strip() for p in (only or "").split(",") if p.strip()]
    if not pats:
        return list(specs)
    names = [s["name"] for s in specs]
    unknown = [p for p in pats if not fnmatch.filter(names, p)]
    if unknown:
        raise ValueError(f"--only: {', '.join(unknown)} match no graph; graphs: {', '.join(names)}")
    return [s for s in specs if any(fnmatch.fnmatchcase(s["name"], p) for p in pats)]


def check_sizes(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Video frames/height/width -> latent (T, H, W) of the Wan VAEs (4k+1 frames, sizes multiples of 16)."""
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"--frames must be 4k+1 (e.g. 81 or 17); got {frames}")
    for what, v in (("--height", height), ("--width", width)):
        if v <= 0 or v % 16:
            raise ValueError(f"{what} must be a positive multiple of 16; got {v}")
    return (frames - 1) // 4 + 1, height // 8, width // 8


def object_boxes(frames: int, height: int, width: int, objects: int = 3, seed: int = 0) -> list[list[tuple]]:
    """Per frame, per object: (y0, x0, y1, x1) of a box moving in a straight line, bouncing off the edges."""
    import random
    rng = random.Random(seed)
    bh, bw = max(4, height // 5), max(4, width // 7)
    speed = max(1.0, width / 250.0)           # ~3.3 px/frame at 832 wide
    state = []
    for _ in range(objects):
        y, x = rng.uniform(0, height - bh), rng.uniform(0, width - bw)
        angle = rng.uniform(0, 2 * math.pi)
        state.append([y, x, speed * math.sin(angle), speed * math.cos(angle)])
    out = []
    for _ in range(frames):
        boxes = []
        for s in state:
            y0, x0 = int(round(s[0])), int(round(s[1]))
            boxes.append((y0, x0, y0 + bh, x0 + bw))
        out.append(boxes)
        for s in state:
            for i, limit in ((0, height - bh), (1, width - bw)):
                s[i] += s[i + 2]
                if s[i] < 0 or s[i] > limit:
                    s[i + 2] = -s[i + 2]
                    s[i] = min(max(s[i], 0.0), float(limit))
    return out


def synthetic_video(frames: int, height: int, width: int, objects: int = 3, seed: int = 0):
    """A ComfyUI IMAGE [frames, height, width, 3] float32 in [0, 1]: a static textured background (sinusoids of
    a few random frequencies and a fine checker) and ``objects`` textured boxes (stripes, a colour of their own)
    moving over it (``object_boxes``). Pixels no box ever covers are identical in every frame."""
    import torch
    g = torch.Generator().manual_seed(seed)
    yy = torch.arange(height, dtype=torch.float32).view(-1, 1)
    xx = torch.arange(width, dtype=torch.float32).view(1, -1)
    bg = torch.empty(height, width, 3)
    for c in range(3):
        f = 2 * math.pi * (0.01 + 0.05 * torch.rand(4, generator=g))
        phase = 2 * math.pi * torch.rand(4, generator=g)
        wave = (torch.sin(f[0] * xx + phase[0]) + torch.sin(f[1] * yy + phase[1])
                + torch.sin(f[2] * (xx + yy) + phase[2]) + torch.sin(f[3] * (xx - 0.5 * yy) + phase[3]))
        checker = (((yy // 4) + (xx // 4)) % 2) * 0.15
        bg[..., c] = 0.35 + 0.08 * wave + checker
    bg = bg.clamp(0, 1)
    boxes = object_boxes(frames, height, width, objects, seed)
    textures = []
    for _ in range(objects):
        colour = torch.rand(3, generator=g) * 0.7 + 0.3
        bh, bw = boxes[0][0][2] - boxes[0][0][0], boxes[0][0][3] - boxes[0][0][1]
        stripes = ((torch.arange(bh).view(-1, 1) + 2 * torch.arange(bw).view(1, -1)) // 3 % 2).float()
        textures.append((0.55 + 0.45 * stripes).unsqueeze(-1) * colour)
    video = bg.unsqueeze(0).repeat(frames, 1, 1, 1)
    for t, frame_boxes in enumerate(boxes):
        for tex, (y0, x0, y1, x1) in zip(textures, frame_boxes):
            video[t, y0:y1, x0:x1] = tex
    return video.contiguous()


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize_runs(runs: list[dict], frames: int) -> dict:
    """runs: one ``{stage: seconds or None}`` per measured run -> per-stage medians (None for a stage absent
    from the graph), ``seconds`` = median of the per-run totals, ``fps`` = frames / seconds."""
    if not runs:
        return {"stages": {s: None for s in STAGES}, "seconds": None, "fps": None, "run_totals": []}
    totals = [sum(v for v in r.values() if v is not None) for r in runs]
    stages = {s: (None if all(r.get(s) is None for r in runs) else round(median([r.get(s) for r in runs]), 4))
              for s in STAGES}
    seconds = median(totals)
    return {"stages": stages, "seconds": round(seconds, 4), "fps": round(frames / seconds, 3) if seconds else None,
            "run_totals": [round(t, 4) for t in totals]}


def make_row(spec: dict, runs: list[dict], frames: int, *, prune_ratio: float | None, peak: int | None,
             **extra) -> dict:
    summary = summarize_runs(runs, frames)
    row = {"name": spec["name"], "vae_encode": spec["vae_encode"], "vae_decode": spec["vae_decode"],
           "sampler": spec["sampler"], "target_prune": spec["target_prune"],
           "prune_ratio": None if prune_ratio is None else round(float(prune_ratio), 4),
           "stages": summary["stages"], "seconds": summary["seconds"], "fps": summary["fps"],
           "peak_memory_bytes": peak, "run_totals": summary["run_totals"],
           "runs": [{k: (None if v is None else round(v, 4)) for k, v in r.items()} for r in runs]}
    row.update(extra)
    return row


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_table(rows: list[dict]) -> str:
    head = (f"{'graph':26s} {'pruned':>6s} {'encode':>7s} {'prune':>7s} {'sample':>7s} {'restore':>7s} "
            f"{'decode':>7s} {'total s':>8s} {'FPS':>7s} {'peak GiB':>8s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        st = r.get("stages") or {}
        if r.get("status", "ok") != "ok":
            lines.append(f"{r['name']:26s} {r.get('status')}: {str(r.get('error') or '')[:80]}")
            continue
        ratio = r.get("prune_ratio")
        lines.append(
            f"{r['name']:26s} {'-' if ratio is None else format(ratio * 100, '5.1f') + '%':>6s} "
            f"{_fmt(st.get('vae_encode'), '7.3f'):>7s} {_fmt(st.get('prune'), '7.3f'):>7s} "
            f"{_fmt(st.get('sample'), '7.3f'):>7s} {_fmt(st.get('restore'), '7.4f'):>7s} "
            f"{_fmt(st.get('vae_decode'), '7.3f'):>7s} {_fmt(r.get('seconds'), '8.3f'):>8s} "
            f"{_fmt(r.get('fps'), '7.2f'):>7s} "
            f"{_fmt(None if r.get('peak_memory_bytes') is None else r['peak_memory_bytes'] / 2**30, '8.2f'):>8s}")
    return "\n".join(lines)


def sigmas_text(steps: str = STEPS, shift: float = SHIFT) -> str:
    """ManualSigmas input for Self-Forcing's steps: s = shift*u / (1 + (shift-1)*u), u = step/1000, then 0
    (ComfyUI's flow models see timestep 1000*sigma, lipar's sampler 1000*s: the same schedule)."""
    vals = []
    for step in steps.split(","):
        u = int(step) / 1000.0
        vals.append(shift * u / (1.0 + (shift - 1.0) * u))
    return ", ".join(f"{v:.10f}" for v in vals + [0.0])


def alloc_conf(existing: str | None, allocator: str) -> str | None:
    """PYTORCH_CUDA_ALLOC_CONF as ComfyUI's cuda_malloc.py sets it for cudaMallocAsync (appended to any value)."""
    if allocator != "cudaMallocAsync":
        return existing
    if existing and "backend:" in existing:
        return existing
    return ASYNC_BACKEND if not existing else existing + "," + ASYNC_BACKEND


def clean_json(obj):
    """Floats that JSON cannot hold (nan, inf) -> None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


# ---- the benchmark (needs ComfyUI) ------------------------------------------------------------------------

class Bench:
    def __init__(self, args, C, work: str):
        import torch
        self.args, self.C, self.torch, self.work = args, C, torch, work
        self.lipar = C.lipar
        self.device = C.mm.get_torch_device()
        self.cuda = self.device.type == "cuda"
        self.frames, self.height, self.width = args.frames, args.height, args.width
        self.models: dict = {}
        self.thresholds: dict = {}
        self.kept: dict = {}
        self.t_start = time.perf_counter()

    # -- helpers
    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def timed(self, times: dict, stage: str, fn):
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        times[stage] = time.perf_counter() - t0
        return out

    def free(self):
        import gc
        self.C.mm.unload_all_models()
        try:
            self.lipar.graphs.clear_graph_cache()
        except Exception:
            pass
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.empty_cache()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    # -- models
    def write_models(self) -> dict:
        import harness_models as hm
        conf = CONFIGS[self.args.config]
        root = os.path.join(self.work, "models")
        stamp_path = os.path.join(root, "STAMP.json")
        stamp = {"config": self.args.config, "seed": 0, "wan_vae_dim": conf["wan_vae_dim"], "files": FILES,
                 "format": 3}
        paths = {"dit": os.path.join(root, "diffusion_models", FILES["dit"]),
                 "wan_vae": os.path.join(root, "vae", FILES["wan_vae"]),
                 "tiny_vae": os.path.join(root, "vae_approx", FILES["tiny_vae"])}   # 0.8's VAELoader: video TAEs
        t0 = time.perf_counter()
        if (os.path.isfile(stamp_path) and json.load(open(stamp_path)) == stamp
                and all(os.path.isfile(p) for p in paths.values())):
            return {"reused": True, "seconds": round(time.perf_counter() - t0, 2)}
        if os.path.isfile(stamp_path):
            os.remove(stamp_path)
        cfg = self.lipar.preset(conf["dit"])
        sd = hm.random_dit(cfg, seed=0, device="cuda" if self.cuda else "cpu")
        sizes = {"dit": hm.write_dit(paths["dit"], sd)}
        params = sum(v.numel() for v in sd.values())
        del sd
        sizes["wan_vae"] = hm.write_wan_vae(paths["wan_vae"], conf["wan_vae_dim"])
        sizes["tiny_vae"] = write_taehv(paths["tiny_vae"], self.device, seed=0)
        with open(stamp_path, "w") as f:
            json.dump(stamp, f)
        return {"reused": False, "seconds": round(time.perf_counter() - t0, 2), "bytes": sizes,
                "dit_params": params}

    def load_models(self) -> dict:
        C = self.C
        t0 = time.perf_counter()
        self.models["dit"] = C.nodes.UNETLoader().load_unet(FILES["dit"], "default")[0]
        patch = C.nodes.NODE_CLASS_MAPPINGS["LIPAR_AttentionRecoveryPatch"]
        o = C.default_options
        # every lipar graph samples through the patch (pruned and unpruned: the same attention and fp8 settings)
        self.models["dit_patched"] = patch().patch(self.models["dit"], o["recovery"], o["recovery_form"],
                                                   self.args.attention_backend, self.args.fp8_compute)[0]
        self.models["wan"] = C.nodes.VAELoader().load_vae(FILES["wan_vae"])[0]
        self.models["tiny"] = C.nodes.VAELoader().load_vae(FILES["tiny_vae"])[0]
        self.models["wanfast"] = self.models["wan"]
        self.models["tinyfast"] = self.models["tiny"]
        info = {"seconds": round(time.perf_counter() - t0, 2),
                "dit": f"{type(self.models['dit'].model).__name__}/"
                       f"{type(self.models['dit'].model.diffusion_model).__name__}",
                "dit_params": sum(p.numel() for p in self.models["dit"].model.diffusion_model.parameters()),
                "wan_vae": type(self.models["wan"].first_stage_model).__name__,
                "wan_vae_dtype": str(self.models["wan"].vae_dtype).replace("torch.", ""),
                "tiny_vae": type(self.models["tiny"].first_stage_model).__name__,
                "tiny_vae_dtype": str(self.models["tiny"].vae_dtype).replace("torch.", ""),
                "tiny_vae_latent_format": str(getattr(self.models["tiny"].first_stage_model, "latent_format", None))}
        try:
            info["core_ar"] = self.load_core_ar()
        except Exception as e:
            info["core_ar_error"] = f"{type(e).__name__}: {e}"[:400]
        return info

    def load_core_ar(self) -> dict:
        """Core's causal model and sampler from the overlay (see the module docstring)."""
        import importlib.util

        import comfy.k_diffusion.sampling as kds
        import comfy.sd
        import comfy.utils
        overlay = os.path.abspath(self.args.overlay)
        excerpt = os.path.join(overlay, "upstream_excerpts", "sample_ar_video.py")
        for need in (os.path.join(overlay, "comfy", "ldm", "wan", "ar_model.py"),
                     os.path.join(overlay, "comfy_extras", "nodes_ar_video.py"), excerpt):
            if not os.path.isfile(need):
                raise FileNotFoundError(f"the overlay lacks {need} (see .gpu/comfy_overlay/SOURCE.md)")
        spec = importlib.util.spec_from_file_location("whole_graph_sample_ar_video", excerpt)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        kds.sample_ar_video = mod.sample_ar_video
        import comfy_extras.nodes_ar_video as nar
        import comfy_extras.nodes_custom_sampler as ncs
        # the detection glue of the GPU real-host tier (a model config for causal_ar checkpoints that builds
        # CausalWanModel, as newer ComfyUI's WAN21_CausalAR does)
        wspec = importlib.util.spec_from_file_location("realhost_gpu_worker", os.path.join(HARNESS, "worker.py"))
        worker = importlib.util.module_from_spec(wspec)
        wspec.loader.exec_module(worker)
        worker.install_causal_ar_config(self.C)
        path = self.C.folder_paths.get_full_path_or_raise("diffusion_models", FILES["dit"])
        sd, meta = comfy.utils.load_torch_file(path, return_metadata=True)
        meta = dict(meta or {})
        meta["config"] = CAUSAL_AR_META
        # ComfyUI 0.8's detect_unet_config merges a checkpoint's metadata config.transformer only for LTXV,
        # so a Wan file's causal_ar flag never reaches the glue's config match; for this one load the
        # detected Wan config gets it too (everything else is load_diffusion_model_state_dict, what
        # UNETLoader runs after reading the file).
        import comfy.model_detection as md
        detect = md.detect_unet_config

        def detect_with_transformer_config(state_dict, key_prefix, metadata=None):
            config = detect(state_dict, key_prefix, metadata=metadata)
            if config is not None and metadata and "config" in metadata:
                config.update(json.loads(metadata["config"]).get("transformer", {}))
            return config

        md.detect_unet_config = detect_with_transformer_config
        try:
            model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={}, metadata=meta)
        finally:
            md.detect_unet_config = detect
        del sd
        name = type(model.model.diffusion_model).__name__
        if name != "CausalWanModel":
            raise RuntimeError(f"the causal_ar checkpoint loaded as {name}, not CausalWanModel")
        self.models["causal"] = model
        self.core = {"nar": nar, "ncs": ncs}
        return {"model": f"{type(model.model).__name__}/{name}", "sampler_function": mod.__file__,
                "sigmas": sigmas_text()}

    # -- graphs
    def pruner_kwargs(self) -> dict:
        req = self.C.pruner.INPUT_TYPES()["required"]
        return {k: v[1]["default"] for k, v in req.items() if k not in ("latent", "threshold", "anchor_threshold")}

    def fit(self, key, raw_samples, target: float) -> dict:
        lipar = self.lipar
        lb = importlib.import_module(lipar.__name__ + ".bench")
        kw = self.pruner_kwargs()
        base = lipar.PlanConfig(**kw)
        t0 = time.perf_counter()
        # on the device: 30 bisection steps of build_plan take seconds on the CPU, where the node's latent is
        norm = lipar.latents.normalize_wan21(raw_samples.to(self.device).float())
        plan = lb.fit_threshold(norm, target, base)
        fitted = {"threshold": plan.config.threshold, "anchor_threshold": plan.config.anchor_threshold,
                  "fit_ratio": plan.prune_ratio(), "fit_seconds": round(time.perf_counter() - t0, 3),
                  "fit_device": str(self.device)}
        self.thresholds[key] = fitted
        return fitted

    def vae_encode(self, kind: str, vae, video):
        if kind in PACK_VAE_NODES:
            return self.C.vae_encode().encode(video, vae)[0]
        return self.C.nodes.VAEEncode().encode(vae, video)[0]

    def vae_decode(self, kind: str, vae, latent):
        if kind in PACK_VAE_NODES:
            return self.C.vae_decode().decode(latent, vae)[0]
        return self.C.nodes.VAEDecode().decode(vae, latent)[0]

    def lipar_run(self, spec: dict, video, cond, warm: bool) -> tuple[dict, dict]:
        C, times = self.C, {s: None for s in STAGES}
        enc, dec = self.models[spec["vae_encode"]], self.models[spec["vae_decode"]]
        target = spec["target_prune"]
        latent = self.timed(times, "vae_encode", lambda: self.vae_encode(spec["vae_encode"], enc, video))
        extra = {}
        model = self.models["dit_patched"]
        if target is not None:
            key = (spec["vae_encode"], target)
            if warm or key not in self.thresholds:
                self.fit(key, latent["samples"], target)
            th = self.thresholds[key]
            kw = self.pruner_kwargs()
            pruned = self.timed(times, "prune", lambda: C.pruner().prune(
                latent, th["threshold"], th["anchor_threshold"], images=video, **kw))
            sampler_in = pruned["result"][0]
            extra["pruner_seconds"] = pruned["ui"]["lipar_stats"][0].get("node_seconds")
            extra["prune_ratio"] = sampler_in["lipar_plan"].prune_ratio()
        else:
            sampler_in = latent
            extra["prune_ratio"] = 0.0
        res = self.timed(times, "sample", lambda: C.sampler().sample(
            model, cond, sampler_in, SEED, STEPS, SHIFT, CHUNK_FRAMES, "edit"))
        out = res["result"][0]
        extra["sampler_info"] = {k: v for k, v in res["ui"]["lipar_sampler"][0].items() if k != "kernels"}
        if target is not None:
            out = self.timed(times, "restore", lambda: C.restore().restore(out)[0])
        images = self.timed(times, "vae_decode", lambda: self.vae_decode(spec["vae_decode"], dec, out))
        extra["images_shape"] = list(images.shape)
        self.kept["raw", spec["vae_encode"]] = latent
        self.kept["sampler_in", spec["vae_encode"], target] = sampler_in
        if spec["vae_decode"] in ("wan", "wanfast") or "images" not in self.kept:
            self.kept["images"] = images
        return times, extra

    def core_run(self, spec: dict, video, cond, warm: bool) -> tuple[dict, dict]:
        times = {s: None for s in STAGES}
        nar, ncs = self.core["nar"], self.core["ncs"]
        enc, dec = self.models[spec["vae_encode"]], self.models[spec["vae_decode"]]
        latent = self.timed(times, "vae_encode", lambda: self.vae_encode(spec["vae_encode"], enc, video))

        def sample():
            noise = ncs.RandomNoise.execute(SEED)[0]
            guider = ncs.BasicGuider.execute(self.models["causal"], cond)[0]
            sampler = nar.SamplerARVideo.execute(CHUNK_FRAMES)[0]
            sigmas = ncs.ManualSigmas.execute(sigmas_text())[0]
            return ncs.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent)[0]

        out = self.timed(times, "sample", sample)
        images = self.timed(times, "vae_decode", lambda: self.vae_decode(spec["vae_decode"], dec, out))
        return times, {"prune_ratio": 0.0, "images_shape": list(images.shape),
                       "output_finite": bool(self.torch.isfinite(out["samples"]).all())}

    def run_graph(self, spec: dict, video, cond) -> dict:
        torch = self.torch
        run = self.core_run if spec["sampler"] == "core_ar" else self.lipar_run
        self.free()
        t0 = time.perf_counter()
        run(spec, video, cond, warm=True)
        warm_seconds = time.perf_counter() - t0
        runs, peaks, peaks_reserved, extras = [], [], [], []
        for _ in range(self.args.repeat):
            if self.cuda:
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            times, extra = run(spec, video, cond, warm=False)
            if self.cuda:
                peaks.append(int(torch.cuda.max_memory_allocated(self.device)))
                peaks_reserved.append(int(torch.cuda.max_memory_reserved(self.device)))
            runs.append(times)
            extras.append(extra)
        last = extras[-1]
        ratios = sorted({round(e["prune_ratio"], 6) for e in extras if e.get("prune_ratio") is not None})
        row = make_row(spec, runs, self.frames, prune_ratio=last.get("prune_ratio"),
                       peak=max(peaks) if peaks else None,
                       peak_reserved_bytes=max(peaks_reserved) if peaks_reserved else None,
                       warmup_seconds=round(warm_seconds, 3), status="ok")
        if len(ratios) > 1:
            row["prune_ratios_seen"] = ratios
        if spec["target_prune"] is not None:
            row["thresholds"] = self.thresholds.get((spec["vae_encode"], spec["target_prune"]))
        for k in ("sampler_info", "pruner_seconds", "images_shape", "output_finite"):
            if k in last:
                row[k] = last[k]
        return row

    # -- measured separately
    def extra_previews(self, cond) -> dict:
        """The lipar sampler stage with ComfyUI's latent2rgb previewer vs previews off (alternating runs)."""
        import comfy.utils
        from comfy.cli_args import LatentPreviewMethod
        C, args = self.C, self.C.args
        enc = "wan" if ("sampler_in", "wan", None) in self.kept else "tiny"
        out = {"encoder": enc, "previewer": "ComfyUI latent_preview.Latent2RGBPreviewer (--preview-method latent2rgb)",
               "hook": "a progress-bar hook that only counts previews (the server's JPEG encoding and sending run "
                       "on its own event-loop thread)", "by_plan": {}}
        received = {"n": 0}

        def hook(value, total, preview, prompt_id=None, node_id=None):
            if preview is not None:
                received["n"] += 1

        before = args.preview_method
        comfy.utils.set_progress_bar_global_hook(hook)
        try:
            for target in (None, 0.338):
                key = ("sampler_in", enc, target)
                if key not in self.kept:
                    continue
                lat = self.kept[key]
                model = self.models["dit_patched"]
                secs = {"none": [], "latent2rgb": []}
                counts = []
                for i in range(self.args.repeat + 1):
                    for label, method in (("none", LatentPreviewMethod.NoPreviews),
                                          ("latent2rgb", LatentPreviewMethod.Latent2RGB)):
                        args.preview_method = method
                        received["n"] = 0
                        t = {}
                        self.timed(t, "sample", lambda: C.sampler().sample(
                            model, cond, lat, SEED, STEPS, SHIFT, CHUNK_FRAMES, "edit"))
                        if i > 0:
                            secs[label].append(t["sample"])
                            if label == "latent2rgb":
                                counts.append(received["n"])
                none, l2r = median(secs["none"]), median(secs["latent2rgb"])
                out["by_plan"][prune_tag(target)] = {
                    "sample_seconds_no_previews": round(none, 4), "sample_seconds_latent2rgb": round(l2r, 4),
                    "overhead_percent": round((l2r - none) / none * 100, 2), "previews_per_run": counts[-1],
                    "runs_no_previews": [round(s, 4) for s in secs["none"]],
                    "runs_latent2rgb": [round(s, 4) for s in secs["latent2rgb"]]}
        finally:
            args.preview_method = before
            comfy.utils.set_progress_bar_global_hook(None)
        return out

    def extra_pruner_images(self, video) -> dict:
        """The pruner node with the source images connected (its mask preview over the frames, as the shipped
        workflow) and without (masks alone)."""
        enc = "wan" if ("raw", "wan") in self.kept else "tiny"
        key = (enc, 0.338)
        if ("raw", enc) not in self.kept or key not in self.thresholds:
            return {"status": "skipped", "why": "no pruned graph ran"}
        latent, th, kw = self.kept["raw", enc], self.thresholds[key], self.pruner_kwargs()
        secs = {"with_images": [], "without_images": []}
        for i in range(self.args.repeat + 1):
            for label, images in (("with_images", video), ("without_images", None)):
                t = {}
                self.timed(t, "prune", lambda: self.C.pruner().prune(latent, th["threshold"], th["anchor_threshold"],
                                                                     images=images, **kw))
                if i > 0:
                    secs[label].append(t["prune"])
        return {"encoder": enc, "target_prune": 0.338,
                "seconds_with_images": round(median(secs["with_images"]), 4),
                "seconds_without_images": round(median(secs["without_images"]), 4),
                "note": "the images input only feeds the mask preview (an animated WEBP written to ComfyUI's temp "
                        "folder and the IMAGE output); the plan is the same"}

    def extra_text_encode(self) -> dict:
        """ComfyUI's umt5-xxl text encoder class, random weights made on the device, CLIP Text Encode."""
        import types

        import comfy.sd
        import comfy.text_encoders.wan as wan
        torch, mm = self.torch, self.C.mm
        self.free()
        load_device = mm.text_encoder_device()
        kind = CONFIGS[self.args.config]["text_encoder"]
        dtype = torch.bfloat16 if self.cuda else torch.float32
        t0 = time.perf_counter()
        what = (f"comfy.text_encoders.wan.te(dtype_t5={str(dtype).replace('torch.', '')}): WanT5Model / "
                "UMT5XXlModel (umt5_config_xxl.json) in comfy.sd.CLIP, as CLIPLoader type 'wan' builds it")
        options = {"initial_device": load_device, "load_device": load_device}
        if kind != "umt5-xxl":    # CPU checks: ComfyUI's own per-model config override, a 2-layer 64-wide umt5
            options["umt5xxl_model_config"] = TINY_UMT5
            what += f"; tiny: umt5xxl_model_config {TINY_UMT5}"
        target = types.SimpleNamespace(clip=wan.te(dtype_t5=dtype), tokenizer=wan.WanT5Tokenizer, params={})
        clip = comfy.sd.CLIP(target, tokenizer_data={"spiece_model": toy_spiece_model()}, model_options=options)
        n_params = randomize_(clip.cond_stage_model, seed=0)
        self.sync()
        build = time.perf_counter() - t0
        node = self.C.nodes.CLIPTextEncode()
        secs = []
        for i in range(self.args.repeat + 1):
            t = {}
            cond = self.timed(t, "text", lambda: node.encode(clip, PROMPT)[0])
            if i > 0:
                secs.append(t["text"])
        tokens = clip.tokenize(PROMPT)
        seq = len(next(iter(tokens.values()))[0])
        shape = list(cond[0][0].shape)
        param = next(clip.cond_stage_model.parameters())
        del clip, cond
        self.free()
        return {"status": "measured", "seconds": round(median(secs), 4), "runs": [round(s, 4) for s in secs],
                "class": what, "parameters": n_params, "weight_dtype": str(param.dtype).replace("torch.", ""),
                "device": str(param.device), "build_seconds": round(build, 2), "prompt_words": len(PROMPT.split()),
                "sequence_tokens": seq, "output_shape": shape,
                "tokenizer": "ComfyUI's WanT5Tokenizer (SPieceTokenizer, min_length 512) over a toy SentencePiece "
                             "model trained in-process (the real umt5 spiece model travels inside the checkpoint, "
                             "which is not here); the sequence is padded to 512 tokens either way, so the "
                             "encoder's work does not depend on it",
                "note": "random weights; a bf16 umt5-xxl (the fp8-scaled file many users load computes differently)"}

    def extra_video_io(self) -> dict:
        images = self.kept.get("images")
        if images is None:
            return {"status": "skipped", "why": "no graph decoded frames"}
        try:
            import cv2
        except ImportError:
            return {"status": "not measured",
                    "why": "OpenCV is not importable here and PyAV (ComfyUI's video files) is not installed; "
                           "the GPU machine has OpenCV but no PyAV"}
        import tempfile
        import numpy as np
        folder = tempfile.mkdtemp(prefix="whole_graph_")
        path = os.path.join(folder, "out.mp4")
        n, h, w = images.shape[:3]
        t0 = time.perf_counter()
        frames = (images.clamp(0, 1) * 255).round().to(self.torch.uint8).numpy()
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 16.0, (w, h))
        for f in frames:
            writer.write(np.ascontiguousarray(f[..., ::-1]))
        writer.release()
        write = time.perf_counter() - t0
        t0 = time.perf_counter()
        cap = cv2.VideoCapture(path)
        got = []
        while True:
            ok, f = cap.read()
            if not ok:
                break
            got.append(f[..., ::-1])
        cap.release()
        back = self.torch.from_numpy(np.stack(got)).float() / 255.0 if got else None
        read = time.perf_counter() - t0
        size = os.path.getsize(path)
        os.remove(path)
        os.rmdir(folder)
        return {"status": "measured", "what": "OpenCV mp4v (MPEG-4 Part 2) write and read of the decoded frames; "
                "not ComfyUI's Load Video / Save Video (PyAV, H.264), which the GPU machine cannot run",
                "write_seconds": round(write, 4), "read_seconds": round(read, 4), "frames_written": n,
                "frames_read": len(got), "bytes": size, "size": [w, h],
                "read_shape": None if back is None else list(back.shape)}


def write_taehv(path: str, device, seed: int = 0) -> int:
    """ComfyUI's TAEHV (lighttaew2_1 layout: 16 latent channels) with random weights, saved in float32.
    Weights ~ N(0, 1/fan_in); the last encoder conv is then rescaled per channel so that the latent of a
    synthetic clip has the Wan2.1 latent statistics (the pruner's thresholds apply to the normalised latent)."""
    import torch
    from safetensors.torch import save_file

    import comfy.taesd.taehv as taehv
    from harness_env import pack_lipar
    WAN21_MEAN, WAN21_STD = pack_lipar("latents").WAN21_MEAN, pack_lipar("latents").WAN21_STD
    g = torch.Generator().manual_seed(seed)
    net = taehv.TAEHV(latent_channels=16, show_progress_bar=False)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        net = net.to(device)
        clip = synthetic_video(9, 64, 64, seed=seed).permute(3, 0, 1, 2).unsqueeze(0).to(device)  # [1, 3, T, H, W]
        z = net.encode(clip)                                                                        # [1, 16, T', h, w]
        mean = z.mean(dim=(0, 2, 3, 4))
        std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-6)
        last = net.encoder[-1]
        want_mean = torch.tensor(WAN21_MEAN, device=device)
        want_std = torch.tensor(WAN21_STD, device=device)
        scale = want_std / std
        last.weight.mul_(scale.view(-1, 1, 1, 1))
        last.bias.copy_((last.bias - mean) * scale + want_mean)
    sd = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(sd, path)
    return os.path.getsize(path)


def toy_spiece_model() -> bytes:
    """A small SentencePiece model trained in-process (pad 0, eos 1, unk 2: umt5's special ids)."""
    import io

    import sentencepiece as spm
    words = PROMPT.lower().replace(",", "").split() + "the a of and in on with under over light water".split()
    sents = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sents * 4), model_writer=buf, vocab_size=96, pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, model_type="bpe", hard_vocab_limit=False,
                                   minloglevel=2)
    return buf.getvalue()


def randomize_(module, seed: int = 0) -> int:
    """Random weights in place on the module's device: matrices N(0, 1/fan_in), vectors (norm gains) 1."""
    import torch
    n = 0
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            g = torch.Generator(device=p.device).manual_seed(seed + i)
            if p.ndim >= 2:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32).to(p.dtype)
                        / math.sqrt(fan_in))
            else:
                p.fill_(1.0)
            n += p.numel()
    return n


def git_state() -> dict:
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": rev.stdout.strip() or None, "dirty_files": dirty.stdout.split("\n")[:20]}
    except Exception:
        return {"commit": None}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="1.3b",
                    help="1.3b: the real architectures (GPU); tiny: a 2-layer DiT and a narrow Wan VAE (CPU checks)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    ap.add_argument("--frames", type=int, default=81, help="video frames, 4k+1 (default 81)")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--repeat", type=int, default=3, help="measured runs per graph after one warm-up (median)")
    ap.add_argument("--only", default="", help="comma-separated graph names or patterns, e.g. 'lipar-wan-wan-*,"
                    "core_ar-*' (default: all)")
    ap.add_argument("--extras", default="previews,pruner_images,text_encode,video_io",
                    help="what is measured separately, comma-separated, or 'none'")
    ap.add_argument("--comfyui", default=os.environ.get("LIPAR_COMFYUI") or os.path.join(ROOT, ".gpu", "comfyui"))
    ap.add_argument("--overlay", default=os.path.join(ROOT, ".gpu", "comfy_overlay"))
    ap.add_argument("--work", default=None, help="model cache and ComfyUI folders (default .gpu/work/whole_graph/"
                    "<config>)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "whole_graph.json"))
    ap.add_argument("--allocator", choices=("cudaMallocAsync", "native"), default="cudaMallocAsync",
                    help="CUDA allocator (ComfyUI's main.py selects cudaMallocAsync); set before torch is imported")
    ap.add_argument("--budget", type=float, default=0.0, help="seconds: graphs and extras that would start after "
                    "this are skipped (0 = no limit)")
    ap.add_argument("--attention-backend", default="auto", choices=("auto", "sdpa", "cudnn", "flash_attn"),
                    help="the Attention Recovery Patch's attention_backend for every lipar graph")
    ap.add_argument("--fp8-compute", default="auto", choices=("auto", "on", "off"),
                    help="the Attention Recovery Patch's fp8_compute for every lipar graph")
    ap.add_argument("--list", action="store_true", help="list the graph names and exit")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    try:
        check_sizes(args.frames, args.height, args.width)
        args.graphs = select_graphs(graph_specs(), args.only)
    except ValueError as e:
        ap.error(str(e))
    known = {"previews", "pruner_images", "text_encode", "video_io"}
    args.extra_list = [] if args.extras.strip() == "none" else [e.strip() for e in args.extras.split(",") if e.strip()]
    bad = [e for e in args.extra_list if e not in known]
    if bad:
        ap.error(f"--extras: unknown {bad}; choose from {sorted(known)} or 'none'")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(s["name"] for s in graph_specs()))
        return 0
    # before torch is imported: ComfyUI's allocator choice (main.py -> cuda_malloc.py)
    if args.device != "cpu":
        conf = alloc_conf(os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), args.allocator)
        if conf is not None:
            os.environ["PYTORCH_CUDA_ALLOC_CONF"] = conf
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    handler = logging.StreamHandler()             # the pack's INFO lines (where each node's time goes) in the log
    handler.setFormatter(logging.Formatter("[lipar] %(message)s"))
    logging.getLogger("lipar").addHandler(handler)
    logging.getLogger("lipar").setLevel(logging.INFO)
    logging.getLogger("lipar").propagate = False   # once, not again through a root handler ComfyUI may set up
    if HARNESS not in sys.path:
        sys.path.insert(0, HARNESS)
    import harness_env
    harness_env.install_import_rules(stub=["av"])       # ComfyUI 0.8 imports PyAV; the GPU machine has none

    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = os.path.abspath(args.work or os.path.join(ROOT, ".gpu", "work", "whole_graph", args.config))
    comfy_dir = os.path.abspath(args.comfyui)
    if not os.path.isfile(os.path.join(comfy_dir, "nodes.py")):
        print(f"whole_graph.py: {comfy_dir} is not a ComfyUI tree (run tests/realhost_gpu/prepare.sh)", file=sys.stderr)
        return 2
    C = harness_env.setup_comfy({"comfyui": comfy_dir, "overlay": os.path.abspath(args.overlay), "device": device,
                                 "work": work})
    # ComfyUI 0.8's VAELoader reads the video TAEs (lighttaew2_1 ...) from models/vae_approx
    os.makedirs(os.path.join(work, "models", "vae_approx"), exist_ok=True)
    C.folder_paths.add_model_folder_path("vae_approx", os.path.join(work, "models", "vae_approx"), is_default=True)
    B = Bench(args, C, work)
    B.t_start = t_start
    cuda = B.cuda
    latent_dims = check_sizes(args.frames, args.height, args.width)
    result = {
        "benchmark": "benchmarks/whole_graph.py", "started": started, "finished": None,
        "command": shlex.join([sys.executable] + sys.argv), "outer_command": os.environ.get("WHOLE_GRAPH_COMMAND"),
        "cwd": os.getcwd(), "config": args.config, "device": str(B.device),
        "gpu": torch.cuda.get_device_name(B.device) if cuda else None,
        "gpu_total_gib": round(torch.cuda.get_device_properties(B.device).total_memory / 2**30, 2) if cuda else None,
        "python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
        "comfyui_version": harness_env.comfy_version(comfy_dir), "comfyui_dir": comfy_dir,
        "overlay": os.path.abspath(args.overlay), "lipar_version": getattr(C.lipar, "__version__", None),
        "git": git_state(),
        "allocator": {"PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                      "backend": torch.cuda.get_allocator_backend() if cuda else "cpu",
                      "note": "ComfyUI's main.py selects backend:cudaMallocAsync (cuda_malloc.py); set here before "
                              "torch was imported unless --allocator native"},
        "comfy_state": {"vram_state": str(C.mm.vram_state), "cudnn_benchmark": torch.backends.cudnn.benchmark,
                        "preview_method_in_graphs": str(C.args.preview_method),
                        "intermediate_device": str(C.mm.intermediate_device())},
        "stubbed_modules": harness_env.stubs_used(),
        "sizes": {"frames": args.frames, "height": args.height, "width": args.width,
                  "latent": list(latent_dims)},
        "sampling": {"steps": STEPS, "shift": SHIFT, "chunk_frames": CHUNK_FRAMES, "seed": SEED, "mode": "edit",
                     "core_ar_sigmas": sigmas_text(), "core_ar_num_frame_per_block": CHUNK_FRAMES},
        "conditioning": f"random CONDITIONING [1, {TEXT_TOKENS}, 4096] (0.1 * N(0, 1))",
        "repeat": args.repeat, "method": "one warm-up run per graph, then --repeat runs; stages: per-stage medians; "
                                         "seconds: median of per-run totals; fps = frames / seconds; "
                                         "peak_memory_bytes: max over measured runs of max_memory_allocated (reset "
                                         "before each run), other models unloaded",
        "models": None, "rows": [], "extras": {}, "skipped": [],
    }

    def write() -> None:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(clean_json(result), f, indent=1, allow_nan=False, default=str)

    print(f"[whole_graph] {args.config} on {B.device} ({result['gpu'] or 'cpu'}), ComfyUI {result['comfyui_version']},"
          f" allocator {result['allocator']['backend']}, {args.frames}x{args.height}x{args.width}", flush=True)
    rc = 0
    with torch.inference_mode():
        result["models"] = {"written": B.write_models()}
        result["models"].update(B.load_models())
        print(f"[whole_graph] models: {json.dumps(result['models'], default=str)}", flush=True)
        write()
        video = synthetic_video(args.frames, args.height, args.width, seed=0)
        g = torch.Generator().manual_seed(11)
        cond = [[0.1 * torch.randn(1, TEXT_TOKENS, 4096, generator=g), {}]]
        longest = 0.0
        # graphs leave EXTRAS_RESERVE seconds of the budget to what is measured separately
        graph_budget = args.budget - (EXTRAS_RESERVE if args.extra_list else 0.0)
        for spec in args.graphs:
            if args.budget and B.elapsed() + longest > graph_budget:
                result["skipped"].append({"name": spec["name"], "why": f"time budget {args.budget:.0f} s"})
                print(f"[whole_graph] SKIP {spec['name']} (time budget)", flush=True)
                continue
            if spec["sampler"] == "core_ar" and "causal" not in B.models:
                row = {"name": spec["name"], "sampler": "core_ar", "vae_encode": spec["vae_encode"],
                       "vae_decode": spec["vae_decode"], "status": "error",
                       "error": result["models"].get("core_ar_error", "core AR model not loaded")}
                result["rows"].append(row)
                rc = 1
                continue
            t0 = time.perf_counter()
            try:
                row = B.run_graph(spec, video, cond)
            except Exception as e:
                import traceback
                traceback.print_exc()
                row = {"name": spec["name"], "sampler": spec["sampler"], "vae_encode": spec["vae_encode"],
                       "vae_decode": spec["vae_decode"], "status": "error", "error": f"{type(e).__name__}: {e}"[:500]}
                rc = 1
            longest = max(longest, time.perf_counter() - t0)
            result["rows"].append(row)
            write()
            if row.get("status") == "ok":
                print(f"[whole_graph] {row['name']}: {row['seconds']:.3f} s ({row['fps']:.2f} FPS), prune "
                      f"{row['prune_ratio']}, stages {row['stages']}, peak {row['peak_memory_bytes']}", flush=True)
        B.free()
        extras = {"previews": lambda: B.extra_previews(cond), "pruner_images": lambda: B.extra_pruner_images(video),
                  "text_encode": B.extra_text_encode, "video_io": B.extra_video_io}
        for name in args.extra_list:
            if args.budget and B.elapsed() > args.budget:
                result["extras"][name] = {"status": "skipped", "why": f"time budget {args.budget:.0f} s"}
                continue
            try:
                result["extras"][name] = extras[name]()
            except Exception as e:
                import traceback
                traceback.print_exc()
                msg = f"{type(e).__name__}: {e}"[:500]
                result["extras"][name] = {"status": "not measured", "why": msg}
            write()
            print(f"[whole_graph] {name}: {json.dumps(clean_json(result['extras'][name]), default=str)}", flush=True)
    result["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    write()
    print(f"[whole_graph] JSON: {args.out} ({result['seconds']} s)")
    ex = result["extras"]
    if "previews" in ex and ex["previews"].get("by_plan"):
        print("latent previews (latent2rgb vs none, % of sampling): " + ", ".join(
            f"{k} {v['overhead_percent']:+.1f}%" for k, v in ex["previews"]["by_plan"].items()))
    if ex.get("pruner_images", {}).get("seconds_with_images") is not None:
        p = ex["pruner_images"]
        print(f"pruner node: {p['seconds_with_images']:.3f} s with source images (mask preview), "
              f"{p['seconds_without_images']:.3f} s without")
    te = ex.get("text_encode", {})
    print("text encode: " + (f"{te['seconds']:.4f} s ({te.get('class', '')[:40]}..., {te.get('parameters')} params)"
                             if te.get("status") == "measured" else f"not measured ({te.get('why', 'not run')})"))
    vio = ex.get("video_io", {})
    print("video file: " + (f"OpenCV mp4v write {vio['write_seconds']:.3f} s, read {vio['read_seconds']:.3f} s"
                            if vio.get("status") == "measured" else f"not measured ({vio.get('why', 'not run')})"))
    if result["skipped"]:
        print("skipped (time budget): " + ", ".join(s["name"] for s in result["skipped"]))
    print(format_table(result["rows"]))
    return rc


if __name__ == "__main__":
    sys.exit(main())
