"""One process of the GPU real-host tier: sets ComfyUI 0.8 up in a given mode and runs one group of cases.

usage: python worker.py SPEC.json      (written by run.py; results are appended to spec["results"] as JSON lines)

See run.py for the cases and the tolerance rule. Everything here calls ComfyUI's own node classes
(``UNETLoader``, ``LoraLoaderModelOnly``, ``VAELoader``, ``VAEDecode``) and the pack's node classes as
ComfyUI loaded them; the references call ``lipar.sample`` on the very module the node ran on.
"""
from __future__ import annotations

import copy
import gc
import json
import logging
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import harness_env  # noqa: E402  (imports nothing heavy)

PLANS = ("unpruned", "pruned")


def pack_identity(pack: str | None) -> dict:
    """Which code of the pack ran: its directory, git commit (where it is a checkout) and a digest of
    the Python files of lipar/ and nodes/ (the GPU machine receives a working tree without .git)."""
    import hashlib
    import subprocess
    out = {"dir": pack}
    if not pack:
        return out
    h = hashlib.sha256()
    for sub in ("lipar", "nodes"):
        for dirpath, _, names in sorted(os.walk(os.path.join(pack, sub))):
            for n in sorted(names):
                if n.endswith(".py"):
                    path = os.path.join(dirpath, n)
                    h.update(os.path.relpath(path, pack).encode() + b"\0")
                    with open(path, "rb") as f:
                        h.update(f.read())
    out["py_digest"] = h.hexdigest()[:16]
    try:
        r = subprocess.run(["git", "-C", pack, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        d = subprocess.run(["git", "-C", pack, "status", "--porcelain", "--untracked-files=no", "--", "lipar", "nodes"],
                           capture_output=True, text=True, timeout=10)
        if r.returncode == 0:
            out["git_commit"] = r.stdout.strip()
            out["lipar_nodes_modified"] = [l[3:] for l in d.stdout.splitlines()]
    except Exception:
        pass
    return out


def rel(a, b) -> float:
    """Relative L2 error of a against b (float64)."""
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        try:
            self.lines.append(record.getMessage())
        except Exception:
            pass

    def seen(self, text: str) -> bool:
        return any(text in line for line in self.lines)


class Worker:
    def __init__(self, spec: dict, C):
        self.spec, self.C = spec, C
        self.torch = C.torch
        self.lipar = C.lipar
        self.device = C.mm.get_torch_device()
        self.cuda = self.device.type == "cuda"
        self.tol_factor = float(spec["tol_factor"])
        self.tol_floor = float(spec["tol_floor"])
        self.min_effect = float(spec["min_effect"])
        self.steps = spec["steps"]
        self.seed = int(spec["seed"])
        self.logs = LogCapture()
        logging.getLogger().addHandler(self.logs)
        self._inputs = {}

    # ---- output ------------------------------------------------------------------------------------
    def emit(self, record: dict) -> None:
        with open(self.spec["results"], "a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def emit_case(self, name: str, status: str, seconds: float, *, max_rel=None, ref_err=None, tol=None,
                  path=None, notes=(), details=None) -> None:
        rec = {"type": "case", "name": name, "group": self.spec["group"], "status": status,
               "ok": {"pass": True, "FAIL": False, "error": False}.get(status),
               "max_rel_err": max_rel, "ref_err": ref_err, "tol": tol, "seconds": round(seconds, 2),
               "path": path, "notes": "; ".join(n for n in notes if n), "details": details or {}}
        self.emit(rec)
        print(f"[realhost_gpu] {status} {name} max_rel_err={max_rel} tol={tol} {seconds:.1f}s {path} "
              f"{rec['notes']}", flush=True)

    def env_record(self) -> dict:
        torch = self.torch
        rec = {"type": "env", "group": self.spec["group"], "python": sys.version.split()[0],
               "torch": torch.__version__, "cuda": torch.version.cuda, "device": str(self.device),
               "comfyui_version": harness_env.comfy_version(self.C.comfy_dir), "comfyui_dir": self.C.comfy_dir,
               "lipar_version": getattr(self.lipar, "__version__", None), "lipar_file": self.lipar.__file__,
               "pack_module": self.C.pack_module, "pack": pack_identity(self.spec.get("pack")),
               "stubbed_modules": harness_env.stubs_used(),
               "hidden_modules": self.spec.get("hide", []),
               "comfy_args": {k: getattr(self.C.args, k) for k in
                              ("cpu", "lowvram", "novram", "highvram", "gpu_only", "reserve_vram", "fast")},
               "vram_state": str(self.C.mm.vram_state), "memory_fraction": self.spec.get("memory_fraction"),
               "emulated_gpu_gib": self.spec.get("emulate_gpu_gib"),
               "comfy_total_vram_mb": round(float(getattr(self.C.mm, "total_vram", 0) or 0)),
               "triton_importable": self.lipar.kernels.triton_available(),
               "env_PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
        if self.cuda:
            rec["gpu"] = torch.cuda.get_device_name(self.device)
            rec["gpu_total_gib"] = round(torch.cuda.get_device_properties(self.device).total_memory / 2**30, 2)
            try:
                rec["allocator"] = torch.cuda.get_allocator_backend()
            except Exception as e:   # pragma: no cover
                rec["allocator"] = f"unknown ({e})"
        else:
            rec["allocator"] = "cpu"
        try:
            import comfy.quant_ops as qo
            rec["comfy_kitchen"] = bool(getattr(qo, "_CK_AVAILABLE", False))
            import comfy_kitchen as ck
            rec["comfy_kitchen_backends"] = {k: v.get("available") for k, v in ck.list_backends().items()}
        except Exception as e:
            rec["comfy_kitchen_error"] = str(e)
        return rec

    # ---- inputs ------------------------------------------------------------------------------------
    def inputs(self, sizes: dict) -> dict:
        """Raw (VAE-space) latents, unpruned and through the pack's pruner node, and the CONDITIONING."""
        key = (sizes["frames"], sizes["height"], sizes["width"])
        if key in self._inputs:
            return self._inputs[key]
        torch, lipar = self.torch, self.lipar
        clip = lipar.clips.make_clip(lipar.clips.ClipSpec(kind="objects", latent_frames=sizes["frames"],
                                                          height=sizes["height"], width=sizes["width"], seed=3))
        raw = lipar.latents.denormalize_wan21(clip)
        g = torch.Generator().manual_seed(11)
        context = 0.1 * torch.randn(1, int(self.spec["text_tokens"]), 4096, generator=g)
        req = self.C.pruner.INPUT_TYPES()["required"]
        kw = {}
        for k, v in req.items():
            if k == "latent":
                continue
            opts = v[1] if len(v) > 1 and isinstance(v[1], dict) else {}
            kw[k] = opts["default"] if "default" in opts else (v[0][0] if isinstance(v[0], (list, tuple)) else None)
        pruned = self.C.pruner().prune({"samples": raw}, **kw)["result"][0]
        plan = pruned["lipar_plan"]
        out = {"latents": {"unpruned": {"samples": raw}, "pruned": pruned}, "cond": [[context, {}]],
               "context": context, "prune_ratio": round(plan.prune_ratio(), 4)}
        self._inputs[key] = out
        return out

    # ---- one node run and its references ---------------------------------------------------------
    def node(self, model, latent: dict, cond):
        t0 = time.perf_counter()
        res = self.C.sampler().sample(model, cond, latent, self.seed, self.steps, 5.0, 3, "edit")
        seconds = time.perf_counter() - t0
        info = res["ui"]["lipar_sampler"][0]
        out = res["result"][0]
        norm = model.model.process_latent_in(out["samples"].float()).cpu()
        # the pack's sampler fills pruned positions itself (earlier versions left them empty for Token Restore)
        info["_restored"] = latent.get("lipar_plan") is not None and "lipar_plan" not in out
        return norm, info, seconds

    def sampler_config(self, dtype, **over):
        """The node's lipar configuration: the pack's default options and the node's widget defaults."""
        import dataclasses
        o = self.C.default_options
        kw = dict(mode="edit", steps=self.lipar.schedule.parse_steps(self.steps), shift=5.0, chunk_frames=3,
                  seed=self.seed, recovery=o["recovery"], recovery_form=o["recovery_form"],
                  backend=o["attention_backend"], dtype=dtype, cuda_graphs=False)
        fields = {f.name for f in dataclasses.fields(self.lipar.SamplerConfig)}
        inputs = self.C.sampler.INPUT_TYPES()
        for name in ("window_frames", "sink_frames"):     # inputs newer nodes have (run with their defaults)
            for group in ("required", "optional"):
                spec = inputs.get(group, {}).get(name)
                if spec is not None and name in fields:
                    kw[name] = spec[1]["default"]
        kw.update(over)
        return self.lipar.SamplerConfig(**kw)

    def _result(self, r, latent: dict, restored: bool):
        lat = r.latent
        if restored:
            lat = self.lipar.restore_latent(lat, getattr(r, "plan", None) or latent["lipar_plan"])
        return lat.float().cpu()

    def eager_ref(self, model, latent: dict, context, dtype, restored: bool = False):
        """lipar.sample on the module as ComfyUI holds it right now, without CUDA graphs."""
        torch = self.torch
        z = model.model.process_latent_in(latent["samples"].float())
        with torch.no_grad():
            r = self.lipar.sample(model.model.diffusion_model, context, z, plan=latent.get("lipar_plan"),
                                  config=self.sampler_config(dtype), device=model.load_device)
        return self._result(r, latent, restored), r.info

    def effective_weights(self, module, device) -> dict:
        """Every parameter of ComfyUI's module as float32 on ``device``, as ComfyUI computes with it:
        fp8 weights upcast exactly, scaled-fp8 (QuantizedTensor) weights as qdata * scale."""
        try:
            from comfy.quant_ops import QuantizedTensor
        except Exception:   # pragma: no cover
            QuantizedTensor = ()
        out = {}
        for name, p in module.named_parameters():
            t = p.detach()
            if QuantizedTensor and isinstance(t, QuantizedTensor):
                params = t._params
                if getattr(params, "block_scale", None) is None and getattr(params, "scale", None) is not None:
                    w = t._qdata.to(device).float() * params.scale.to(device).float()
                else:
                    w = t.dequantize().to(device).float()
                out[name] = w.reshape(tuple(params.orig_shape)) if hasattr(params, "orig_shape") else w
            else:
                out[name] = t.to(device).float()
        return out

    def fp32_ref(self, model, latent: dict, context, restored: bool = False):
        """The same weights in float32 (lipar's own WanDiT filled from ComfyUI's module), eager, PyTorch SDPA."""
        torch, lipar = self.torch, self.lipar
        module = model.model.diffusion_model
        cfg = lipar.causal.check_wan_module(module)
        dev = torch.device(model.load_device)
        with torch.device("meta"):
            ref = lipar.WanDiT(cfg)
        ref = ref.to_empty(device=dev).float().eval().requires_grad_(False)
        sd = self.effective_weights(module, dev)
        want = ref.state_dict()
        missing = [k for k in want if k not in sd]
        if missing:
            raise RuntimeError(f"ComfyUI's module lacks {missing[:3]} for the float32 reference")
        ref.load_state_dict({k: sd[k] for k in want})
        del sd
        z = model.model.process_latent_in(latent["samples"].float())
        prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.no_grad():
                r = lipar.sample(ref, context, z, plan=latent.get("lipar_plan"), device=dev,
                                 config=self.sampler_config(torch.float32, backend="sdpa"))
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
            del ref
            self.free_cache()
        return self._result(r, latent, restored)

    def tolerance(self, ref_err: float) -> float:
        return max(self.tol_factor * ref_err, self.tol_floor)

    def checked_run(self, label: str, model, latent: dict, inp: dict, *, fp32: bool = True) -> dict:
        """Node run, eager reference, float32 reference; the record of the comparison."""
        torch = self.torch
        node, info, seconds = self.node(model, latent, inp["cond"])
        dtype = getattr(torch, info["dtype"])
        restored = info.pop("_restored")
        ref, ref_info = self.eager_ref(model, latent, inp["context"], dtype, restored)
        ref32 = self.fp32_ref(model, latent, inp["context"], restored) if fp32 else None
        ref_err = rel(ref, ref32) if ref32 is not None else None
        tol = self.tolerance(ref_err) if ref_err is not None else None
        err = rel(node, ref)
        rec = {"label": label, "rel": err, "ref_err": ref_err, "tol": tol,
               "ok": bool(tol is not None and err <= tol and torch.isfinite(node).all()),
               "node_vs_fp32": rel(node, ref32) if ref32 is not None else None,
               "path": "graphs" if info.get("cuda_graphs") else "eager", "node_path_note": info.get("path"),
               "dtype": info.get("dtype"), "backend": info.get("backend"), "node_seconds": round(seconds, 3),
               "sampling_seconds": info.get("seconds"), "prune_ratio": info.get("prune_ratio"),
               "tokens_computed": info.get("tokens_computed"), "ref_backend": ref_info.get("backend"),
               "restored_by_node": restored,
               "info": {k: v for k, v in info.items() if k not in ("note",)},
               "_tensors": (node, ref, ref32)}
        return rec

    def summarize(self, name: str, runs: list[dict], t0: float, *, extra_ok: bool = True, notes=(), details=None,
                  status: str | None = None) -> None:
        ok = all(r["ok"] for r in runs) and extra_ok
        rels = [r["rel"] for r in runs]
        ref_errs = [r["ref_err"] for r in runs if r.get("ref_err") is not None]
        tols = [r["tol"] for r in runs if r.get("tol") is not None]
        paths = sorted({r["path"] for r in runs})
        det = dict(details or {})
        det["runs"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs]
        self.emit_case(name, status or ("pass" if ok else "FAIL"), time.perf_counter() - t0,
                       max_rel=max(rels) if rels else None, ref_err=max(ref_errs) if ref_errs else None,
                       tol=min(tols) if tols else None, path="+".join(paths) if paths else None,
                       notes=notes, details=det)

    # ---- model handling ----------------------------------------------------------------------------
    def load_unet(self, name: str, weight_dtype: str = "default"):
        return self.C.nodes.UNETLoader().load_unet(name, weight_dtype)[0]

    def free_cache(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def unload_all(self) -> None:
        self.C.mm.unload_all_models()
        self.free_cache()

    def save_artifact(self, name: str, obj) -> None:
        os.makedirs(self.spec["artifacts"], exist_ok=True)
        self.torch.save(obj, os.path.join(self.spec["artifacts"], name + ".pt"))

    def load_artifact(self, name: str):
        path = os.path.join(self.spec["artifacts"], name + ".pt")
        return self.torch.load(path) if os.path.isfile(path) else None

    def model_notes(self, model) -> list[str]:
        m = model.model
        blk = m.diffusion_model.blocks[0].self_attn.q
        w = blk.weight
        return [f"{type(m).__name__}/{type(m.diffusion_model).__name__}",
                f"q weight {type(w).__name__} {getattr(w, 'dtype', '?')}".replace("torch.", ""),
                f"ops {type(blk).__module__.split('.')[-1]}.{type(blk).__qualname__}",
                f"manual_cast {m.manual_cast_dtype}".replace("torch.", "")]

    # ---- cases -------------------------------------------------------------------------------------
    def case_guard(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            fn(name, t0)
        except Exception as e:
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)
            self.emit_case(name, "error", time.perf_counter() - t0,
                           notes=[f"{type(e).__name__}: {e}"[:400]], details={"traceback": tb[-4000:]})

    def skip(self, name: str, reason: str, details=None) -> None:
        self.emit_case(name, "skipped", 0.0, notes=[reason], details=details)


# ---- groups ------------------------------------------------------------------------------------------

def group_models(W: Worker) -> None:
    import harness_models as hm
    spec = W.spec

    def run(name, t0):
        if spec.get("reuse_models"):
            return W.emit_case(name, "pass", time.perf_counter() - t0,
                               notes=["reused the model files of an earlier run (STAMP.json matches)"])
        cfg = W.lipar.preset(spec["model_config"])
        root = os.path.join(spec["work"], "models")
        files = spec["files"]
        gen_dev = "cuda" if W.cuda else "cpu"
        sd = hm.random_dit(cfg, seed=int(spec["model_seed"]), device=gen_dev)
        sizes = {}
        sizes["dit"] = hm.write_dit(os.path.join(root, "diffusion_models", files["dit"]), sd)
        sizes["dit_causal"] = hm.write_dit(os.path.join(root, "diffusion_models", files["dit_causal"]), sd,
                                           causal_ar=True)
        q = hm.quantize_fp8(sd)
        for key, layout in (("fp8_legacy", "legacy"), ("fp8_metadata", "metadata")):
            sizes[key] = hm.write_scaled_fp8(os.path.join(root, "diffusion_models", files[key]), sd, layout, q)
        del q
        sizes["lora"] = hm.write_lora(os.path.join(root, "loras", files["lora"]), sd, cfg.num_layers,
                                      rank=int(spec["lora_rank"]), rho=float(spec["lora_rho"]))
        sizes["vae"] = hm.write_wan_vae(os.path.join(root, "vae", files["vae"]), int(spec["vae_dim"]))
        params = sum(v.numel() for v in sd.values())
        W.emit_case(name, "pass", time.perf_counter() - t0,
                    notes=[f"{spec['model_config']} DiT {params / 1e9:.3f} B params, bf16; "
                           f"scaled fp8 x2, LoRA rank {spec['lora_rank']}, Wan2.1 VAE dim {spec['vae_dim']}"],
                    details={"bytes": sizes, "dit_config": cfg.__dict__})

    W.case_guard("setup_models", run)


def group_base(W: Worker) -> None:
    spec, files = W.spec, W.spec["files"]
    inp = W.inputs(spec["sizes"])
    state = {}

    def default(name, t0):
        model = W.load_unet(files["dit"], "default")
        state["model"] = model
        runs = [W.checked_run(p, model, inp["latents"][p], inp) for p in PLANS]
        art = {r["label"]: {"node": r["_tensors"][0], "ref": r["_tensors"][1], "ref32": r["_tensors"][2],
                            "ref_err": r["ref_err"], "tol": r["tol"]} for r in runs}
        W.save_artifact("base_default", art)
        state["art"] = art
        W.summarize(name, runs, t0, notes=[f"pruned {inp['prune_ratio'] * 100:.1f}%"] + W.model_notes(model))

    def swap(name, t0):
        if "model" not in state:
            return W.skip(name, "needs unet_default's model")
        torch = W.torch
        model = state["model"]
        inner = model.model
        module = inner.diffusion_model
        params = list(module.parameters())
        probes = {id(params[0]), id(params[len(params) // 2]), id(params[-1])}
        L = len(module.blocks)
        # five block weights (noise of 3x their std) and the output projection (1x): on the 1.3B model
        # at 8x8 latents this moved the float32 result by 64% (the block weights alone: 17%)
        keys = [f"blocks.{L // 4}.self_attn.q.weight", f"blocks.{max(0, L // 2 - 1)}.ffn.0.weight",
                f"blocks.{(3 * L) // 4}.cross_attn.o.weight", f"blocks.{L - 1}.self_attn.v.weight",
                f"blocks.{L // 2}.ffn.2.weight", "head.head.weight"]
        named = dict(module.named_parameters())
        keys = [k for k in dict.fromkeys(keys) if id(named[k]) not in probes]
        g = torch.Generator().manual_seed(5)
        old = {k: named[k] for k in keys}
        for k in keys:
            w = old[k].detach()
            amp = 1.0 if k.startswith("head.") else 3.0
            noise = torch.randn(w.shape, generator=g).to(w.device, torch.float32) * w.float().std() * amp
            W.C.utils.set_attr_param(inner, "diffusion_model." + k, (w.float() + noise).to(w.dtype))
        runs = [W.checked_run("swapped/" + p, model, inp["latents"][p], inp) for p in PLANS]
        # the swap must have changed the model by far more than the tolerance, else the check proves nothing
        effects = {}
        for r in runs:
            p = r["label"].split("/")[1]
            effects[p] = rel(r["_tensors"][1], state["art"][p]["ref"])
        for k in keys:   # put the original tensors back, as ComfyUI's unpatch does
            W.C.utils.set_attr_param(inner, "diffusion_model." + k, old[k].detach())
        back = [W.checked_run("restored/" + p, model, inp["latents"][p], inp, fp32=True) for p in PLANS]
        for r in back:   # and the restored model gives the original result again
            p = r["label"].split("/")[1]
            r["rel_to_original_ref"] = rel(r["_tensors"][0], state["art"][p]["ref"])
            r["ok"] = r["ok"] and r["rel_to_original_ref"] <= r["tol"]
        teeth = all(effects[p] >= W.min_effect * max(r["tol"] for r in runs) for p in effects)
        notes = [f"set_attr_param on {len(keys)} weights ({', '.join(keys)})",
                 "effect of the swap on the eager result " + ", ".join(f"{p} {e:.3g}" for p, e in effects.items())]
        if not teeth:
            notes.append(f"INCONCLUSIVE: effect < {W.min_effect:g} x tol")
        W.summarize(name, runs + back, t0, extra_ok=teeth, notes=notes, details={"effects": effects, "keys": keys})

    def lora(name, t0):
        base = state.get("model") or W.load_unet(files["dit"], "default")
        loader = W.C.nodes.LoraLoaderModelOnly()
        strengths = [float(s) for s in spec["lora_strengths"]]
        seq = [("none", base)]
        for s in strengths:
            seq.append((f"lora{s:g}", loader.load_lora_model_only(base, files["lora"], s)[0]))
        seq.append(("none_again", base))
        runs, by = [], {}
        for label, model in seq:
            for p in PLANS:
                r = W.checked_run(f"{label}/{p}", model, inp["latents"][p], inp)
                runs.append(r)
                by[(label, p)] = r
        changes, teeth, extra = {}, True, True
        for s in strengths:
            for p in PLANS:
                rs, r0 = by[(f"lora{s:g}", p)], by[("none", p)]
                n_s, ref_s = rs["_tensors"][0], rs["_tensors"][1]
                n_0, ref_0 = r0["_tensors"][0], r0["_tensors"][1]
                eager_change = rel(ref_s, ref_0)
                node_change = rel(n_s, n_0)
                d_eager = ref_s.double() - ref_0.double()
                d_node = n_s.double() - n_0.double()
                vec_err = float((d_node - d_eager).norm() / d_eager.norm().clamp_min(1e-300))
                bound = float((rs["tol"] * ref_s.double().norm() + r0["tol"] * ref_0.double().norm())
                              / d_eager.norm().clamp_min(1e-300))
                changes[f"{s:g}/{p}"] = {"eager_change": eager_change, "node_change": node_change,
                                         "change_vector_err": vec_err, "change_vector_bound": bound}
                if eager_change < W.min_effect * max(rs["tol"], r0["tol"]):
                    teeth = False
                if vec_err > bound:
                    extra = False
        for p in PLANS:   # back to the base model: the first result again
            r = by[("none_again", p)]
            r["rel_to_first_none"] = rel(r["_tensors"][0], by[("none", p)]["_tensors"][1])
            r["ok"] = r["ok"] and r["rel_to_first_none"] <= r["tol"]
        notes = ["LoRA change node/eager " + ", ".join(f"{k} {v['node_change']:.3g}/{v['eager_change']:.3g}"
                                                       for k, v in changes.items())]
        if not teeth:
            notes.append(f"INCONCLUSIVE: LoRA effect < {W.min_effect:g} x tol")
        W.summarize(name, runs, t0, extra_ok=teeth and extra, notes=notes, details={"changes": changes})

    W.case_guard("unet_default", default)
    W.case_guard("swap_weights", swap)
    W.case_guard("lora", lora)


def group_fp8(W: Worker) -> None:
    files = W.spec["files"]
    inp = W.inputs(W.spec["sizes"])
    base = W.load_artifact("base_default")
    cases = [("unet_fp8_e4m3fn", files["dit"], "fp8_e4m3fn"), ("unet_fp8_e4m3fn_fast", files["dit"], "fp8_e4m3fn_fast"),
             ("unet_scaled_fp8", files["fp8_legacy"], "default"), ("unet_scaled_fp8_metadata", files["fp8_metadata"], "default")]
    for name, fname, wdt in cases:
        def run(name, t0, fname=fname, wdt=wdt):
            model = W.load_unet(fname, wdt)
            runs = [W.checked_run(p, model, inp["latents"][p], inp) for p in PLANS]
            notes = W.model_notes(model)
            if base:
                vs = {p: rel(r["_tensors"][0], base[p]["node"]) for p, r in zip(PLANS, runs)}
                notes.append("vs bf16 default " + ", ".join(f"{p} {v:.3g}" for p, v in vs.items()))
            if not W.cuda:
                notes.append("CPU: ComfyUI computes the fp8 weights in float32 (fp8 matmul needs CUDA)")
            del model
            W.unload_all()
            W.summarize(name, runs, t0, notes=notes)
        W.case_guard(name, run)


def install_causal_ar_config(C):
    """Make ComfyUI 0.8 detect a checkpoint whose safetensors metadata ``config`` says
    ``{"transformer": {"causal_ar": true}}`` as newer ComfyUI's causal Wan model. Test glue only (newer
    ComfyUI ships its own): 0.8's detection reads that metadata for LTXV only, so the Wan unet config gets
    ``causal_ar`` here; a model config matching it goes first in ``comfy.supported_models.models``, and its
    model builds the overlay's ``CausalWanModel``."""
    import comfy.ldm.wan.ar_model as ar
    import comfy.model_base as mb
    import comfy.model_detection as md
    import comfy.supported_models as sm

    class CausalARWan(mb.WAN21):
        def __init__(self, model_config, model_type=mb.ModelType.FLOW, device=None):
            mb.BaseModel.__init__(self, model_config, model_type, device=device, unet_model=ar.CausalWanModel)
            self.image_to_video = False

    class CausalARWanConfig(sm.WAN21_T2V):
        unet_config = {"image_model": "wan2.1", "model_type": "t2v", "causal_ar": True}
        sampling_settings = {"shift": 5.0}

        def __init__(self, unet_config):
            super().__init__(unet_config)
            self.unet_config.pop("causal_ar", None)

        def get_model(self, state_dict, prefix="", device=None):
            return CausalARWan(self, device=device)

    if getattr(md.detect_unet_config, "__lipar_glue__", False):
        return ar.CausalWanModel
    detect = md.detect_unet_config

    def detect_with_causal_ar(state_dict, key_prefix, metadata=None):
        config = detect(state_dict, key_prefix, metadata=metadata)
        if config and config.get("image_model") == "wan2.1" and metadata and "config" in metadata:
            if json.loads(metadata["config"]).get("transformer", {}).get("causal_ar"):
                config["causal_ar"] = True
        return config

    detect_with_causal_ar.__lipar_glue__ = True
    md.detect_unet_config = detect_with_causal_ar
    sm.models.insert(0, CausalARWanConfig)
    return ar.CausalWanModel


def group_causal(W: Worker) -> None:
    files, spec = W.spec["files"], W.spec
    overlay = spec.get("overlay")
    if not (overlay and os.path.isfile(os.path.join(overlay, "comfy", "ldm", "wan", "ar_model.py"))):
        for n in ("causal_ar_file_on_0_8", "causal_ar_wrapped", "causal_ar_detected"):
            W.skip(n, f"no overlay with comfy/ldm/wan/ar_model.py at {overlay} (run prepare.sh; see SOURCE.md)")
        return
    inp = W.inputs(spec["sizes"])
    state = {}

    def plain08(name, t0):
        # what ComfyUI 0.8 itself does with a checkpoint converted for newer ComfyUI's causal model
        try:
            m = W.load_unet(files["dit_causal"], "default")
            outcome = f"loaded as {type(m.model).__name__}/{type(m.model.diffusion_model).__name__}"
            del m
        except Exception as e:
            outcome = f"not loadable: {type(e).__name__}: {str(e)[:200]}"
        W.unload_all()
        W.emit_case(name, "info", time.perf_counter() - t0, notes=[
            f"ComfyUI 0.8 on the causal_ar file: {outcome} (0.8 reads metadata 'config' for LTXV only)"])

    def reference_plain():
        if "plain" not in state:
            model = W.load_unet(files["dit"], "default")
            state["plain"] = {p: W.checked_run("WanModel/" + p, model, inp["latents"][p], inp) for p in PLANS}
            del model
            W.unload_all()
        return state["plain"]

    def compare(name, t0, model, how):
        plain = reference_plain()
        runs = []
        for p in PLANS:
            r = W.checked_run("CausalWanModel/" + p, model, inp["latents"][p], inp)
            r["rel_to_WanModel_node"] = rel(r["_tensors"][0], plain[p]["_tensors"][0])
            r["ok"] = r["ok"] and r["rel_to_WanModel_node"] <= plain[p]["tol"]
            runs.append(r)
        notes = [how] + W.model_notes(model) + [
            "vs WanModel node " + ", ".join(f"{r['label'].split('/')[1]} {r['rel_to_WanModel_node']:.3g}" for r in runs)]
        is_causal = type(model.model.diffusion_model).__name__ == "CausalWanModel"
        if not is_causal:
            notes.append("the module is not CausalWanModel")
        W.summarize(name, list(plain.values()) + runs, t0, extra_ok=is_causal, notes=notes)

    def wrapped(name, t0):
        import comfy.ldm.wan.ar_model as ar
        import comfy.model_base as mb
        import comfy.model_patcher
        mm = W.C.mm
        plain = W.load_unet(files["dit"], "default")          # for its detected model config
        config = plain.model.model_config
        del plain
        W.unload_all()
        path = W.C.folder_paths.get_full_path_or_raise("diffusion_models", files["dit"])
        sd = W.C.utils.load_torch_file(path)
        inner = mb.BaseModel(config, model_type=mb.ModelType.FLOW, device=mm.unet_offload_device(),
                             unet_model=ar.CausalWanModel)
        inner.load_model_weights(sd, "")
        del sd
        model = comfy.model_patcher.ModelPatcher(inner, load_device=mm.get_torch_device(),
                                                 offload_device=mm.unet_offload_device())
        compare(name, t0, model, "CausalWanModel built from the plain file's detected config, in a ModelPatcher")
        del model
        W.unload_all()

    def detected(name, t0):
        install_causal_ar_config(W.C)
        model = W.load_unet(files["dit_causal"], "default")
        compare(name, t0, model, "UNETLoader on the file with config.transformer.causal_ar (detection glue + overlay)")
        del model
        W.unload_all()

    W.case_guard("causal_ar_file_on_0_8", plain08)
    W.case_guard("causal_ar_wrapped", wrapped)
    W.case_guard("causal_ar_detected", detected)


def cross_check(W: Worker, name: str, t0: float, runs: list[dict], notes: list[str], extra_ok: bool = True,
                details=None, against: str = "node") -> None:
    """Also compare each run with the normal-VRAM process's result (base artifacts), with that run's tolerance."""
    base = W.load_artifact("base_default")
    if base is None:
        notes.append("no base artifacts: cross-process comparison skipped")
    else:
        for r in runs:
            p = r["label"].split("/")[-1]
            r["rel_to_base_" + against] = rel(r["_tensors"][0], base[p][against])
            r["base_tol"] = base[p]["tol"]
            r["ok"] = r["ok"] and r["rel_to_base_" + against] <= base[p]["tol"]
        notes.append(f"vs normal-VRAM {against} " + ", ".join(
            f"{r['label'].split('/')[-1]} {r['rel_to_base_' + against]:.3g}" for r in runs))
    W.summarize(name, runs, t0, extra_ok=extra_ok, notes=notes, details=details)


def group_lowvram(W: Worker) -> None:
    if W.spec.get("dry"):
        mm = W.C.mm
        return W.skip("lowvram", "skipped: needs CUDA", details={
            "checked_on_cpu": f"subprocess set lowvram={W.C.args.lowvram}, reserve_vram={W.C.args.reserve_vram}; "
                              f"model_management.EXTRA_RESERVED_VRAM={mm.EXTRA_RESERVED_VRAM}"})
    inp = W.inputs(W.spec["sizes"])

    def run(name, t0):
        model = W.load_unet(W.spec["files"]["dit"], "default")
        runs = [W.checked_run("lowvram/" + p, model, inp["latents"][p], inp, fp32=False) for p in PLANS]
        m = model.model
        base = W.load_artifact("base_default")
        for r in runs:   # the float32 reference of this model is the normal-VRAM process's (same weights)
            p = r["label"].split("/")[-1]
            if base:
                r["ref_err"], r["tol"] = base[p]["ref_err"], base[p]["tol"]
                r["ok"] = bool(r["rel"] <= r["tol"])
        lowvram = bool(getattr(m, "model_lowvram", False))
        graphs_off = all(not r["info"].get("cuda_graphs") for r in runs)
        notes = [f"model_lowvram={lowvram}", f"loaded {model.loaded_size() / 2**30:.2f} of "
                 f"{model.model_size() / 2**30:.2f} GiB", f"cuda_graphs reported {[r['info'].get('cuda_graphs') for r in runs]}",
                 f"GPU of {W.spec.get('vram_budget_gb')} GiB ({W.spec.get('memory_emulation', 'device')} emulation, "
                 f"reserve_vram {W.C.args.reserve_vram}, memory fraction {W.spec.get('memory_fraction')})"]
        if not lowvram:
            notes.append("the budget did not force a partial load")
        cross_check(W, name, t0, runs, notes, extra_ok=lowvram and graphs_off, against="ref")

    W.case_guard("lowvram", run)


def group_notriton(W: Worker) -> None:
    import importlib.util
    inp = W.inputs(W.spec["sizes"])

    def run(name, t0):
        lipar = W.lipar
        hidden = (importlib.util.find_spec("triton") is None and sys.modules.get("triton", 0) is None
                  and not lipar.kernels.triton_available())
        model = W.load_unet(W.spec["files"]["dit"], "default")
        runs = [W.checked_run("no_triton/" + p, model, inp["latents"][p], inp) for p in PLANS]
        backend = runs[0]["info"].get("backend") or "auto"
        attn = lipar.attention.choose_attention(W.device, backend).name
        notes = [f"triton hidden={hidden}", f"attention {attn} (the split form needs Triton), RoPE in PyTorch",
                 "node path " + ", ".join(str(r["info"].get("path", r["path"])) for r in runs)]
        cross_check(W, name, t0, runs, notes, extra_ok=hidden, against="node")

    W.case_guard("no_triton", run)


def group_mallocasync(W: Worker) -> None:
    if W.spec.get("dry"):
        return W.skip("cuda_malloc_async", "skipped: needs CUDA", details={
            "checked_on_cpu": f"PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF')}"})
    inp = W.inputs(W.spec["sizes"])

    def run(name, t0):
        backend = W.torch.cuda.get_allocator_backend()
        model = W.load_unet(W.spec["files"]["dit"], "default")
        runs = [W.checked_run("async/" + p, model, inp["latents"][p], inp) for p in PLANS]
        cross_check(W, name, t0, runs, [f"allocator {backend}"], extra_ok=backend == "cudaMallocAsync", against="node")

    W.case_guard("cuda_malloc_async", run)


def group_memory(W: Worker) -> None:
    torch, spec, files = W.torch, W.spec, W.spec["files"]
    plan = spec["plan"]
    name = f"memory_{plan}"

    def run(name, t0):
        sizes = spec["memory_sizes"]
        stages, cuda = [], W.cuda

        def stage(label, fn):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            s0 = time.perf_counter()
            out = fn()
            if cuda:
                torch.cuda.synchronize()
            rec = {"stage": label, "seconds": round(time.perf_counter() - s0, 3)}
            if cuda:
                rec.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3),
                           peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 3),
                           allocated_after_gib=round(torch.cuda.memory_allocated() / 2**30, 3),
                           reserved_after_gib=round(torch.cuda.memory_reserved() / 2**30, 3))
            stages.append(rec)
            return out

        inp = stage("inputs_and_prune" if plan == "pruned" else "inputs", lambda: W.inputs(sizes))
        latent = inp["latents"][plan]
        model = stage("load_unet", lambda: W.load_unet(files["dit"], "default"))
        res = stage("sample", lambda: W.C.sampler().sample(model, inp["cond"], latent, W.seed, W.steps, 5.0, 3, "edit"))
        info = res["ui"]["lipar_sampler"][0]
        out = res["result"][0]
        loaded = {"model_lowvram": bool(getattr(model.model, "model_lowvram", False)),
                  "loaded_gib": round(model.loaded_size() / 2**30, 3), "model_gib": round(model.model_size() / 2**30, 3)}
        if plan == "pruned" and "lipar_plan" in out:     # earlier pack versions: Token Restore fills the latent
            out = stage("token_restore", lambda: W.C.restore().restore(out)[0])
        vae = stage("load_vae", lambda: W.C.nodes.VAELoader().load_vae(files["vae"])[0])
        images = stage("vae_decode", lambda: W.C.nodes.VAEDecode().decode(vae, out)[0])
        frames = 4 * (sizes["frames"] - 1) + 1
        want = (frames, sizes["height"] * 8, sizes["width"] * 8, 3)
        shape_ok = tuple(images.shape) == want
        finite = bool(torch.isfinite(images).all())
        tiled = W.logs.seen("retrying with tiled VAE decoding")
        peak = max((s.get("peak_reserved_gib") or 0) for s in stages) if cuda else None
        limit = spec.get("vram_budget_gb")
        notes = [f"{want[2]}x{want[1]}, {frames} frames", f"sampler {info.get('seconds')} s, "
                 f"cuda_graphs={info.get('cuda_graphs')}, graphs_kept={info.get('graphs_kept')}, "
                 f"prune {info.get('prune_ratio')}", f"DiT loaded {loaded['loaded_gib']}/{loaded['model_gib']} GiB"
                 f"{' (lowvram)' if loaded['model_lowvram'] else ''}",
                 f"VAE decode {'tiled (fell back after OOM)' if tiled else 'untiled'}"]
        if cuda:
            notes.append("peak reserved " + ", ".join(f"{s['stage']} {s.get('peak_reserved_gib')}" for s in stages
                                                      if s.get("peak_reserved_gib") is not None) + f" GiB (limit {limit})")
        else:
            notes.append("CPU: pipeline only, the memory limit needs CUDA")
        ok = shape_ok and finite and (peak is None or limit is None or peak <= float(limit) + 1e-6)
        W.emit_case(name, "pass" if ok else "FAIL", time.perf_counter() - t0, path=(
            "graphs" if info.get("cuda_graphs") else "eager"), notes=notes,
            details={"stages": stages, "node_info": info, "loaded": loaded, "images_shape": list(images.shape),
                     "finite": finite, "vae_tiled_fallback": tiled, "vram_budget_gib": limit,
                     "memory_fraction": spec.get("memory_fraction"), "reserve_vram_gib": W.C.args.reserve_vram,
                     "memory_emulation": spec.get("memory_emulation", "device"),
                     "comfy_total_vram_mb": round(float(getattr(W.C.mm, "total_vram", 0) or 0))})

    W.case_guard(name, run)


GROUPS = {"models": group_models, "base": group_base, "fp8": group_fp8, "causal": group_causal,
          "lowvram": group_lowvram, "notriton": group_notriton, "mallocasync": group_mallocasync,
          "memory": group_memory}


def emulate_stale_weights(lipar) -> None:
    """Debug: make every non-reference lipar.sample call run on a copy of the module frozen at its first call,
    which is what CUDA graphs replaying stale weight addresses amount to. The swap and LoRA cases must then fail."""
    real = lipar.sample
    frozen = {}

    def sample(module, *a, config=None, **k):
        if config is not None and config.cuda_graphs is False:
            return real(module, *a, config=config, **k)
        if id(module) not in frozen:
            frozen[id(module)] = (module, copy.deepcopy(module))
        return real(frozen[id(module)][1], *a, config=config, **k)

    lipar.sample = sample


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    harness_env.install_import_rules(hide=spec.get("hide") or [], stub=spec.get("stub") or [])
    budget = spec.get("vram_budget_gb")
    if budget and spec["device"] == "cuda":
        import torch
        free, total = torch.cuda.mem_get_info()
        if spec.get("memory_emulation", "device") == "reserve":   # ComfyUI's --reserve-vram on the big GPU
            spec.setdefault("comfy_args", {})["reserve_vram"] = max(0.0, free / 2**30 - float(budget))
        else:                                                    # a card of that size (harness_env.emulate_gpu_size)
            spec["emulate_gpu_gib"] = float(budget)
        spec["memory_fraction"] = min(1.0, (float(budget) + float(spec.get("fraction_margin_gb", 0.0))) * 2**30 / total)
    C = harness_env.setup_comfy(spec)
    W = Worker(spec, C)
    W.emit(W.env_record())
    if spec.get("emulate_stale_weights"):
        emulate_stale_weights(C.lipar)
    with C.torch.inference_mode():     # as ComfyUI's executor runs every node of a prompt
        GROUPS[spec["group"]](W)


if __name__ == "__main__":
    main()
