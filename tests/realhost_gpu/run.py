"""GPU real-host tier: the pack's nodes inside ComfyUI 0.8's own code, in-process, on a GPU.

    python tests/realhost_gpu/run.py [--config 1.3b|tiny] [--device cuda|cpu] [--comfyui DIR] [--out JSON]

(on the GPU machine: ``bash tests/realhost_gpu/run.sh``, which installs the carried wheels first).
Each group of cases runs in a subprocess of its own (``worker.py``): ComfyUI reads its VRAM options
once, when ``comfy.model_management`` is imported, and hiding Triton or choosing the CUDA allocator
must happen before torch is imported. Every model is random-weight and written by the tier itself
(``harness_models.py``): a Wan2.1-T2V DiT (``--config 1.3b``: the real 1.3B architecture, dim 1536,
30 layers, FFN 8960; ``tiny``: dim 256, 2 layers, for CPU), its scaled-fp8 versions, a LoRA, a
Wan2.1 VAE. Inputs: a synthetic Wan latent (``lipar.clips``, denormalised to the VAE's raw space, as
the nodes take it), pruned by the pack's Latent Inter-Frame Pruner node; a random [1, L, 4096]
CONDITIONING. Sampling: edit mode, steps 400,350,250, seed 7; 1.3b: 416x240, 21 frames (6 latent
frames = 2 chunks); every correctness case runs the unpruned and the pruned latent.

The check (every correctness case)
-----------------------------------
``node``: the output latent of the pack's Self-Forcing sampler node (CUDA graphs where lipar uses
them). ``ref``: ``lipar.sample`` on the same ``model.model.diffusion_model`` right after the node ran
(the weights exactly as ComfyUI holds them then: patched, cast, partly offloaded), same compute dtype
as the node reported, same steps/seed/plan/KV window, ``cuda_graphs=False``, then
``lipar.restore_latent`` where the node fills pruned positions itself. ``ref32``: the same weights in
float32 (lipar's own module filled with ComfyUI's effective weights: fp8 upcast, scaled fp8 as
q * scale), eager, PyTorch SDPA, TF32 off. All compared in the model's normalised latent space.

    ref_err = relL2(ref, ref32)          how far a correct computation in the compute dtype lands
    pass   <=>  relL2(node, ref) <= tol,  tol = max(2 * ref_err, 1e-6)

Why 2: the node and the reference compute the same function in the same dtype; if the node is as
accurate as the reference (relL2(node, ref32) <= ref_err), the triangle inequality bounds their
distance by 2 * ref_err. So a failure proves the node is less accurate than an eager run of the same
weights, while a legitimate difference of rounding (padded token buckets, other kernels in case 5)
passes. 1e-6 is the floor for float32 runs (CPU), where node and reference are the same computation.
A check is only as strong as what a wrong node would produce: cases that change the model (LoRA,
weight swap) also require the eager change to be at least ``--min-effect`` (10) times the
tolerance, otherwise they fail as INCONCLUSIVE, so a node that ignores the change cannot pass.

Cases (groups)
--------------
setup_models (models)    write the model files (reused when a stamp matches; --rewrite-models)
unet_default (base)      UNETLoader weight_dtype default (bf16 on the GPU)
swap_weights (base)      after unet_default's runs (graphs warm), replace 6 weights exactly as
                         ComfyUI's ModelPatcher does (comfy.utils.set_attr_param, new Parameters),
                         run, then put the originals back the same way and run again: the minimal
                         reproduction of CUDA graphs replaying stale weight addresses
lora (base)              LoraLoaderModelOnly in one process: none, strength 1.0, 0.5, none again;
                         each matches its own reference, the change the LoRA makes to the node's output
                         matches the change it makes to the eager output (as a vector, within the
                         bound the two tolerances give), and "none again" equals the first "none"
unet_fp8_e4m3fn, unet_fp8_e4m3fn_fast (fp8)   UNETLoader weight_dtype fp8_e4m3fn / fp8_e4m3fn_fast
unet_scaled_fp8, unet_scaled_fp8_metadata (fp8)   scaled fp8 checkpoints: the legacy ``scaled_fp8``
                         marker + ``scale_weight`` layout, and ``_quantization_metadata``
lowvram (lowvram)        --lowvram on a 2.5 GiB GPU (torch.cuda.mem_get_info reports a 2.5 GiB card,
                         what ComfyUI sizes everything by; a memory fraction of 2.5 + 1 GiB margin makes
                         the limit real; --memory-emulation reserve: --reserve-vram instead): the model
                         loads partly, the node reports cuda_graphs False, its result equals the
                         normal-VRAM process's eager reference within that run's tolerance
no_triton (notriton)     Triton hidden from the import system before anything imports it: lipar
                         falls back (bias mode fold/mask, PyTorch RoPE); equal to its own reference and
                         to the Triton process's node output within tolerance
causal_ar_* (causal)     ComfyUI's newer causal Wan class (CausalWanModel, from the test-only overlay):
                         what 0.8 does with a causal_ar checkpoint (info), the class wrapped in a
                         ModelPatcher from the plain file, and detected from a causal_ar checkpoint
                         through UNETLoader (glue registers the model config): node output equals the
                         plain WanModel's node output within tolerance
cuda_malloc_async (mallocasync)   the allocator ComfyUI's main.py selects (PYTORCH_CUDA_ALLOC_CONF=
                         backend:cudaMallocAsync): graphs and results as with the native allocator
memory_unpruned, memory_pruned (memory)   the whole edit graph at 832x480, 81 frames (pruner, sampler,
                         Token Restore where the sampler leaves pruned positions empty, VAELoader +
                         VAEDecode of a full-width random Wan2.1 VAE) on a 12 GiB GPU (emulated as
                         above, fraction 12 GiB, no margin): completes, decodes 81 finite frames; peak
                         allocated/reserved per stage

Allocator: this tier does not run ComfyUI's main.py, so groups run with PyTorch's native caching
allocator unless stated: mallocasync and memory set backend:cudaMallocAsync as main.py does
(--memory-allocator native to change). Each worker reports the allocator it ran with.

On CPU (``--config tiny --device cpu``) CUDA graphs do not exist, so node and reference are the same
eager computation; lowvram and cuda_malloc_async start their subprocess (checking that the VRAM
options reach ComfyUI) and report "skipped: needs CUDA"; the memory cases run the pipeline without
a memory limit. ``--emulate-stale-weights`` (debug) makes the node's sampling use a copy of the
module frozen at its first run, what stale CUDA graphs amount to: swap_weights and lora must fail.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

CONFIGS = {
    "1.3b": {"model_config": "1.3b", "sizes": {"frames": 6, "height": 30, "width": 52},
             "memory_sizes": {"frames": 21, "height": 60, "width": 104}, "vae_dim": 96, "lowvram_budget_gb": 2.5,
             "memory_budget_gb": 12.0},
    "tiny": {"model_config": "tiny", "sizes": {"frames": 6, "height": 12, "width": 16},
             "memory_sizes": {"frames": 6, "height": 12, "width": 16}, "vae_dim": 8, "lowvram_budget_gb": 0.803,
             "memory_budget_gb": 12.0},
}

FILES = {"dit": "lipar_wan_t2v.safetensors", "dit_causal": "lipar_wan_t2v_causal_ar.safetensors",
         "fp8_legacy": "lipar_wan_t2v_scaled_fp8.safetensors",
         "fp8_metadata": "lipar_wan_t2v_scaled_fp8_metadata.safetensors",
         "lora": "lipar_test_lora.safetensors", "vae": "lipar_wan_2.1_vae.safetensors"}

ASYNC = {"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"}

TOLERANCE_RULE = ("pass iff relL2(node, ref) <= max(2 * ref_err, 1e-6); ref = lipar.sample on the same module "
                  "without CUDA graphs in the node's compute dtype; ref_err = relL2(ref, float32 eager run of the "
                  "same effective weights); model-changing cases also need an eager effect >= min_effect * tol")


def groups(args) -> list[dict]:
    mem_env = {} if args.memory_allocator == "native" else ASYNC
    gs = [
        {"name": "models", "worker": "models", "cases": ["setup_models"]},
        {"name": "base", "worker": "base", "cases": ["unet_default", "swap_weights", "lora"]},
        {"name": "fp8", "worker": "fp8", "cases": ["unet_fp8_e4m3fn", "unet_fp8_e4m3fn_fast", "unet_scaled_fp8",
                                                   "unet_scaled_fp8_metadata"]},
        {"name": "lowvram", "worker": "lowvram", "cases": ["lowvram"], "dry_on_cpu": True,
         "spec": {"comfy_args": {"lowvram": True}, "vram_budget_gb": "lowvram", "fraction_margin_gb": 1.0}},
        {"name": "notriton", "worker": "notriton", "cases": ["no_triton"], "spec": {"hide": ["triton"]}},
        {"name": "causal", "worker": "causal", "cases": ["causal_ar_file_on_0_8", "causal_ar_wrapped",
                                                        "causal_ar_detected"]},
        {"name": "mallocasync", "worker": "mallocasync", "cases": ["cuda_malloc_async"], "dry_on_cpu": True,
         "env": ASYNC},
    ]
    for plan in ("unpruned", "pruned"):
        gs.append({"name": f"memory_{plan}", "worker": "memory", "cases": [f"memory_{plan}"], "env": mem_env,
                   "spec": {"plan": plan, "vram_budget_gb": "memory", "fraction_margin_gb": 0.0}})
    return gs


def fmt(x, spec=".2e"):
    return "-" if x is None else format(x, spec)


def case_line(r: dict) -> str:
    status = {"pass": "PASS", "FAIL": "FAIL", "error": "ERROR", "skipped": "SKIP", "info": "INFO"}.get(r["status"], r["status"])
    return (f"{status:5s} {r['name']:26s} max_rel_err {fmt(r.get('max_rel_err')):>8s} (tol {fmt(r.get('tol')):>8s}, "
            f"ref_err {fmt(r.get('ref_err')):>8s})  {r.get('seconds') or 0:6.1f} s  {r.get('path') or '-':13s} "
            f"{r.get('notes') or ''}")


def log_tail(path: str, n: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def git_state() -> dict:
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            return {"commit": rev.stdout.strip(), "dirty_files": dirty.stdout.split("\n")[:20] if dirty.stdout else []}
    except Exception:
        pass
    return {"commit": None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="1.3b")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    ap.add_argument("--comfyui", default=os.environ.get("LIPAR_COMFYUI") or os.path.join(ROOT, ".gpu", "comfyui"))
    ap.add_argument("--overlay", default=os.path.join(ROOT, ".gpu", "comfy_overlay"))
    ap.add_argument("--pack", default=ROOT, help="the node pack ComfyUI loads (default: this checkout); e.g. an "
                    "older checkout to show a case failing there")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "realhost_gpu.json"))
    ap.add_argument("--work", default=None, help="models, logs, artifacts (default .gpu/work/<config>)")
    ap.add_argument("--python", default=sys.executable, help="the Python that runs the workers")
    ap.add_argument("--only", default="", help="comma-separated groups to run (models always runs)")
    ap.add_argument("--skip", default="", help="comma-separated groups to skip")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole tier; later groups are "
                    "skipped once it is spent (default 540 on CUDA: the GPU tool stops a command at 600 s, "
                    "wheels installed first; 3600 on CPU)")
    ap.add_argument("--rewrite-models", action="store_true")
    ap.add_argument("--memory-allocator", choices=("cudaMallocAsync", "native"), default="cudaMallocAsync")
    ap.add_argument("--memory-emulation", choices=("device", "reserve"), default="device",
                    help="how lowvram/memory make a small GPU: 'device' = torch.cuda.mem_get_info reports a card of "
                         "that size (what ComfyUI sizes everything by); 'reserve' = ComfyUI's --reserve-vram of the "
                         "rest; both with a memory fraction that makes the limit real")
    ap.add_argument("--min-effect", type=float, default=10.0)
    ap.add_argument("--lora-rho", type=float, default=2.0, help="||LoRA delta|| / ||W|| per target weight")
    ap.add_argument("--emulate-stale-weights", action="store_true", help="debug: see the docstring")
    args = ap.parse_args()

    t_start = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    device = args.device
    if device is None:
        try:
            import torch
            device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            device = "cpu"
    conf = CONFIGS[args.config]
    if args.budget is None:
        args.budget = 540.0 if device == "cuda" else 3600.0
    work = os.path.abspath(args.work or os.path.join(ROOT, ".gpu", "work", args.config))
    comfy_dir = os.path.abspath(args.comfyui)
    if not os.path.isfile(os.path.join(comfy_dir, "nodes.py")):
        print(f"run.py: {comfy_dir} is not a ComfyUI tree (no nodes.py); run tests/realhost_gpu/prepare.sh "
              "or pass --comfyui", file=sys.stderr)
        return 2
    for sub in ("results", "specs", "logs", "artifacts"):
        shutil.rmtree(os.path.join(work, sub), ignore_errors=True)
        os.makedirs(os.path.join(work, sub))
    stamp_path = os.path.join(work, "models", "STAMP.json")
    stamp = {"config": args.config, "model_seed": 0, "lora_rho": args.lora_rho, "lora_rank": 8,
             "vae_dim": conf["vae_dim"], "files": FILES, "format": 1}
    reuse = (not args.rewrite_models and os.path.isfile(stamp_path)
             and json.load(open(stamp_path)) == stamp
             and all(os.path.isfile(os.path.join(work, "models", d, FILES[k])) for k, d in
                     (("dit", "diffusion_models"), ("lora", "loras"), ("vae", "vae"))))

    common = {"comfyui": comfy_dir, "overlay": os.path.abspath(args.overlay), "pack": os.path.abspath(args.pack),
              "device": device, "work": work,
              "artifacts": os.path.join(work, "artifacts"), "files": FILES, "model_config": conf["model_config"],
              "sizes": conf["sizes"], "memory_sizes": conf["memory_sizes"], "vae_dim": conf["vae_dim"],
              "steps": "400,350,250", "seed": 7, "text_tokens": 24, "model_seed": 0, "lora_rank": 8,
              "lora_rho": args.lora_rho, "lora_strengths": [1.0, 0.5], "tol_factor": 2.0, "tol_floor": 1e-6,
              "min_effect": args.min_effect, "stub": ["av"], "emulate_stale_weights": args.emulate_stale_weights,
              "memory_emulation": args.memory_emulation}

    only = {g for g in args.only.split(",") if g}
    skip = {g for g in args.skip.split(",") if g}
    records, envs = [], []
    command = shlex.join([sys.executable] + sys.argv)
    print(f"[realhost_gpu] config {args.config}, device {device}, ComfyUI {comfy_dir}, work {work}")
    print(f"[realhost_gpu] tolerance: {TOLERANCE_RULE}")

    def write_json(final: bool) -> None:
        gpu = next((e for e in envs if e.get("gpu")), envs[0] if envs else {})
        summary = {s: sum(1 for r in records if r["status"] == s) for s in ("pass", "FAIL", "error", "skipped", "info")}
        out = {"tier": "tests/realhost_gpu", "started": started,
               "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds") if final else None,
               "seconds": round(time.perf_counter() - t_start, 1), "command": command,
               "outer_command": os.environ.get("LIPAR_REALHOST_GPU_COMMAND"), "cwd": os.getcwd(),
               "config": args.config, "device": device, "pack": os.path.abspath(args.pack), "gpu": gpu.get("gpu"), "gpu_total_gib": gpu.get("gpu_total_gib"),
               "python": gpu.get("python"), "torch": gpu.get("torch"), "cuda": gpu.get("cuda"),
               "comfyui_version": gpu.get("comfyui_version"), "comfyui_dir": comfy_dir,
               "lipar_version": gpu.get("lipar_version"), "pack_code": gpu.get("pack"), "tier_git": git_state(),
               "allocator": {"note": "ComfyUI's main.py selects backend:cudaMallocAsync (cuda_malloc.py); this tier "
                                     "runs ComfyUI in-process without main.py, so each group states the allocator it "
                                     "ran with",
                             "per_group": {e["group"]: e.get("allocator") for e in envs}},
               "tolerance_rule": TOLERANCE_RULE, "summary": summary,
               "environments": envs, "cases": records}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, default=str)

    for g in groups(args):
        name = g["name"]
        if (only and name not in only and name != "models") or name in skip:
            continue
        remaining = args.budget - (time.perf_counter() - t_start)
        if remaining < 20:
            for c in g["cases"]:
                rec = {"type": "case", "name": c, "group": name, "status": "skipped", "ok": None,
                       "notes": f"time budget ({args.budget:.0f} s) spent", "seconds": 0.0}
                records.append(rec)
                print(case_line(rec), flush=True)
            continue
        spec = dict(common, group=g["worker"], results=os.path.join(work, "results", name + ".jsonl"))
        spec.update({k: v for k, v in g.get("spec", {}).items()})
        if spec.get("vram_budget_gb") == "lowvram":
            spec["vram_budget_gb"] = conf["lowvram_budget_gb"]
        elif spec.get("vram_budget_gb") == "memory":
            spec["vram_budget_gb"] = conf["memory_budget_gb"]
        if device == "cpu":
            budget = spec.pop("vram_budget_gb", None)       # a memory limit needs CUDA
            spec["dry"] = bool(g.get("dry_on_cpu"))
            if spec["dry"] and budget is not None:           # still pass a VRAM option through ComfyUI's args
                spec.setdefault("comfy_args", {})["reserve_vram"] = float(budget)
        if name == "models" and reuse:
            spec["reuse_models"] = True
        spec_path = os.path.join(work, "specs", name + ".json")
        with open(spec_path, "w") as f:
            json.dump(spec, f, indent=1)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **g.get("env", {}))
        log_path = os.path.join(work, "logs", name + ".log")
        t0 = time.perf_counter()
        print(f"[realhost_gpu] group {name} ...", flush=True)
        rc, why = None, ""
        with open(log_path, "w") as log:
            try:
                rc = subprocess.run([args.python, os.path.join(HERE, "worker.py"), spec_path], cwd=work, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, timeout=max(20.0, remaining)).returncode
            except subprocess.TimeoutExpired:
                why = f"timed out after {remaining:.0f} s (time budget)"
        got = {}
        if os.path.isfile(spec["results"]):
            with open(spec["results"]) as f:
                for line in f:
                    rec = json.loads(line)
                    if rec["type"] == "env":
                        envs.append(rec)
                    else:
                        got[rec["name"]] = rec
        for c in g["cases"]:
            rec = got.pop(c, None)
            if rec is None:
                rec = {"type": "case", "name": c, "group": name, "status": "error", "ok": False,
                       "seconds": round(time.perf_counter() - t0, 1),
                       "notes": f"worker ended (rc {rc}) {why} before reporting; log {log_path}",
                       "details": {"log_tail": log_tail(log_path)}}
            rec["log"] = log_path
            records.append(rec)
            print(case_line(rec), flush=True)
            if rec["status"] in ("error",) and rec.get("details", {}).get("log_tail"):
                print("      | " + rec["details"]["log_tail"].rstrip().replace("\n", "\n      | "), flush=True)
        for rec in got.values():     # cases the worker reported beyond the expected list
            records.append(rec)
            print(case_line(rec), flush=True)
        if name == "models" and rc == 0:
            with open(stamp_path, "w") as f:
                json.dump(stamp, f)
        write_json(final=False)

    write_json(final=True)
    print()
    print(f"{'case':26s} {'status':7s} {'max_rel_err':>11s} {'ref_err':>9s} {'tol':>9s} {'seconds':>8s}  path")
    for r in records:
        print(f"{r['name']:26s} {r['status']:7s} {fmt(r.get('max_rel_err')):>11s} {fmt(r.get('ref_err')):>9s} "
              f"{fmt(r.get('tol')):>9s} {r.get('seconds') or 0:8.1f}  {r.get('path') or '-'}")
    counts = {s: sum(1 for r in records if r["status"] == s) for s in ("pass", "FAIL", "error", "skipped", "info")}
    print(f"\n[realhost_gpu] {counts['pass']} passed, {counts['FAIL']} failed, {counts['error']} errors, "
          f"{counts['skipped']} skipped, {counts['info']} info; {time.perf_counter() - t_start:.0f} s; "
          f"results {os.path.abspath(args.out)}")
    return 0 if counts["FAIL"] == 0 and counts["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
