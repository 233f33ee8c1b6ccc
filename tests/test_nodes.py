"""The ComfyUI nodes, called host-free with ComfyUI-shaped values.

LATENT dicts hold raw-looking Wan latents (denormalised synthetic clips), IMAGE tensors
are [N, H, W, 3] in 0..1, CONDITIONING is [[tensor[1, L, 4096], {}]], and MODEL is a
small stand-in for ComfyUI's ModelPatcher around a real tiny lipar Wan. ComfyUI's
services (model loading, progress, interrupts, folder_paths) are absent, or faked in
``sys.modules`` where a test checks that the nodes use them.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import lipar
from lipar.clips import ClipSpec, make_clip
from lipar.latents import denormalize_wan21, normalize_wan21
from lipar_pack.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from tests import comfy_services
from lipar_pack.nodes.common import compute_dtype, cuda_graphs_allowed
from lipar_pack.nodes.loader import prepare_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Pruner = NODE_CLASS_MAPPINGS["LIPAR_LatentInterFramePruner"]
Patch = NODE_CLASS_MAPPINGS["LIPAR_AttentionRecoveryPatch"]
Sampler = NODE_CLASS_MAPPINGS["LIPAR_SelfForcingSampler"]
Restore = NODE_CLASS_MAPPINGS["LIPAR_TokenRestore"]
Loader = NODE_CLASS_MAPPINGS["LIPAR_SelfForcingCheckpointLoader"]

PRUNE_DEFAULTS = dict(threshold=0.15, anchor_threshold=0.3, chunk_frames=3, trim_outliers=0.0, smooth=1,
                      open_pruned=1, dilate_kept=0)
SAMPLE_DEFAULTS = dict(seed=2, steps="400,350,250", shift=5.0, chunk_frames=3, mode="edit")


# ---- ComfyUI stand-ins -------------------------------------------------------------------


class FakeBaseModel:
    """What the nodes use of ComfyUI's BaseModel (``model.model``)."""

    def __init__(self, diffusion_model, manual_cast_dtype=None, dtype=None):
        self.diffusion_model = diffusion_model
        self.manual_cast_dtype = manual_cast_dtype
        self._dtype = dtype

    def get_dtype(self):
        return self._dtype or next(self.diffusion_model.parameters()).dtype

    def process_latent_in(self, x):
        return normalize_wan21(x)

    def process_latent_out(self, x):
        return denormalize_wan21(x)


class FakePatcher:
    """What the nodes use of ComfyUI's ModelPatcher (clone deep-copies model_options, as ComfyUI does)."""

    def __init__(self, diffusion_model, model_options=None, **base_kw):
        self.model = FakeBaseModel(diffusion_model, **base_kw)
        self.model_options = model_options if model_options is not None else {"transformer_options": {}}
        self.load_device = torch.device("cpu")

    def clone(self):
        n = copy.copy(self)
        n.model_options = copy.deepcopy(self.model_options)
        return n


class ShallowClonePatcher(FakePatcher):
    """A careless clone that shares model_options: the patch node must still not touch the input."""

    def clone(self):
        return copy.copy(self)


@pytest.fixture(scope="module")
def wan():
    return lipar.build_model(lipar.TINY, seed=0)


@pytest.fixture(scope="module")
def clip():
    """A normalised-looking clip: 6 latent frames (2 chunks) of 8x12, one moving object."""
    return make_clip(ClipSpec(latent_frames=6, height=8, width=12, objects=1, object_size=0.4, speed=2.0, seed=1))


@pytest.fixture()
def raw(clip):
    """The clip as ComfyUI holds it after VAE Encode (raw VAE space)."""
    return denormalize_wan21(clip)


@pytest.fixture()
def frames():
    """The 21 source frames [N, H, W, 3] a 6-latent-frame video of 64x96 decodes from."""
    return torch.rand(4 * (6 - 1) + 1, 64, 96, 3, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def positive():
    ctx = 0.5 * torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(4))
    ctx[:, 12:] = 0   # umt5 pads with zero rows
    return [[ctx, {"pooled_output": None}]]


@pytest.fixture(autouse=True)
def temp_dir(tmp_path, monkeypatch):
    """Outside ComfyUI previews go to tempfile.gettempdir(): point it at a per-test folder."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def prune(latent, images=None, **kw):
    return Pruner().prune(latent, **{**PRUNE_DEFAULTS, **kw}, images=images)


def sample(model, positive, latent, **kw):
    return Sampler().sample(model, positive, latent, **{**SAMPLE_DEFAULTS, **kw})


def keep_pixels(plan, like):
    return plan.pixel_mask().expand_as(like)


# ---- public API --------------------------------------------------------------------------

API = {
    "LIPAR_LatentInterFramePruner": ("Latent Inter-Frame Pruner", ["latent", "threshold", "anchor_threshold",
        "chunk_frames", "trim_outliers", "smooth", "open_pruned", "dilate_kept"], ["images"],
        ("LATENT", "IMAGE"), ("latent", "mask_preview")),
    "LIPAR_AttentionRecoveryPatch": ("Attention Recovery Patch", ["model", "recovery", "recovery_form",
        "attention_backend"], ["fp8_compute"], ("MODEL",), ("model",)),
    "LIPAR_SelfForcingSampler": ("Self-Forcing Causal Sampler", ["model", "positive", "latent", "seed", "steps",
        "shift", "chunk_frames", "mode"], ["window_frames", "sink_frames"], ("LATENT",), ("latent",)),
    "LIPAR_TokenRestore": ("Token Restore", ["latent"], [], ("LATENT",), ("latent",)),
    "LIPAR_SelfForcingCheckpointLoader": ("Load Self-Forcing Checkpoint", ["ckpt_name", "weight_dtype"], [],
        ("MODEL",), ("model",)),
    "LIPAR_WanVAEEncode": ("Wan VAE Encode (fast)", ["pixels", "vae"], [], ("LATENT",), ("latent",)),
    "LIPAR_WanVAEDecode": ("Wan VAE Decode (fast)", ["samples", "vae"], [], ("IMAGE",), ("image",)),
}


def test_node_ids_inputs_and_outputs_are_the_public_api():
    assert set(NODE_CLASS_MAPPINGS) == set(API) == set(NODE_DISPLAY_NAME_MAPPINGS)
    for node_id, (display, required, optional, types_, names) in API.items():
        cls = NODE_CLASS_MAPPINGS[node_id]
        assert NODE_DISPLAY_NAME_MAPPINGS[node_id] == display
        spec = cls.INPUT_TYPES()
        assert list(spec["required"]) == required, node_id
        assert list(spec.get("optional", {})) == optional, node_id
        assert cls.RETURN_TYPES == types_ and cls.RETURN_NAMES == names, node_id
        assert cls.CATEGORY == "LIPAR" and callable(getattr(cls, cls.FUNCTION)) and cls.DESCRIPTION
        for name, entry in {**spec["required"], **spec.get("optional", {})}.items():
            assert isinstance(entry[1].get("tooltip"), str) and entry[1]["tooltip"], (node_id, name)


def test_widget_defaults_and_ranges():
    p = Pruner.INPUT_TYPES()["required"]
    assert p["threshold"][0] == "FLOAT"
    assert {k: p["threshold"][1][k] for k in ("default", "min", "max", "step")} == {"default": 0.15, "min": 0.0,
                                                                                   "max": 10.0, "step": 0.005}
    assert p["anchor_threshold"][1]["default"] == 0.3 and p["anchor_threshold"][1]["step"] == 0.005
    assert p["chunk_frames"][0] == "INT" and (p["chunk_frames"][1]["default"], p["chunk_frames"][1]["min"],
                                              p["chunk_frames"][1]["max"]) == (3, 1, 64)
    assert (p["trim_outliers"][1]["default"], p["trim_outliers"][1]["max"], p["trim_outliers"][1]["step"]) == (0.0, 0.9, 0.01)
    assert (p["smooth"][1]["default"], p["smooth"][1]["max"], p["smooth"][1]["step"]) == (1, 15, 2)
    assert (p["open_pruned"][1]["default"], p["dilate_kept"][1]["default"], p["dilate_kept"][1]["max"]) == (1, 0, 8)
    assert Pruner.INPUT_TYPES()["optional"]["images"][0] == "IMAGE"
    a = Patch.INPUT_TYPES()["required"]
    assert a["recovery"][0] == ["noise_aware", "m_degree", "none"]
    assert a["recovery_form"][0] == ["compressed", "exact"] and a["recovery_form"][1]["default"] == "compressed"
    assert a["attention_backend"][0] == ["auto", "sdpa", "cudnn", "flash_attn"]
    s = Sampler.INPUT_TYPES()["required"]
    assert s["seed"][1]["max"] == 0xffffffffffffffff and s["seed"][1]["control_after_generate"] is True
    assert s["steps"] == ("STRING", s["steps"][1]) and s["steps"][1]["default"] == "400,350,250"
    assert (s["shift"][1]["default"], s["shift"][1]["min"], s["shift"][1]["max"]) == (5.0, 0.1, 20.0)
    assert s["mode"][0] == ["edit", "generate"]
    assert Loader.INPUT_TYPES()["required"]["weight_dtype"][0] == ["default", "bf16", "fp16", "fp32"]
    assert Loader.INPUT_TYPES()["required"]["ckpt_name"][0] == []    # no folder_paths outside ComfyUI


def test_pack_imports_as_comfyui_loads_it(tmp_path):
    """Load the repo the way ComfyUI loads custom_nodes/<dir>/__init__.py (package named by its path,
    repo not on sys.path, ComfyUI's own top-level ``nodes`` module already imported)."""
    os.makedirs(tmp_path / "custom_nodes")
    link = tmp_path / "custom_nodes" / "comfyui-lipar"
    os.symlink(ROOT, link)
    script = textwrap.dedent(f"""
        import importlib.util, os, sys, types
        sys.path = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != {ROOT!r}]
        comfy_nodes = types.ModuleType("nodes")
        sys.modules["nodes"] = comfy_nodes          # ComfyUI's nodes.py
        path = {str(link)!r}
        spec = importlib.util.spec_from_file_location(path.replace(".", "_x_"), os.path.join(path, "__init__.py"))
        pack = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = pack
        spec.loader.exec_module(pack)
        lib = sys.modules[spec.name + ".lipar"]       # the library, imported relatively by the nodes
        assert sys.modules["nodes"] is comfy_nodes, "the pack replaced ComfyUI's nodes module"
        assert lib.__file__.startswith(path), lib.__file__
        assert "lipar" not in sys.modules, "the pack registered a top-level lipar module"
        assert sys.modules[spec.name + ".nodes.sampler"].SamplerConfig is lib.sampler.SamplerConfig
        assert not any(os.path.abspath(p or ".") in ({ROOT!r}, path) for p in sys.path), "pack dir put on sys.path"
        assert pack.WEB_DIRECTORY == "./web"
        print(sorted(pack.NODE_CLASS_MAPPINGS), pack.NODE_DISPLAY_NAME_MAPPINGS["LIPAR_TokenRestore"])
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "LIPAR_SelfForcingSampler" in r.stdout and "Token Restore" in r.stdout


# ---- Latent Inter-Frame Pruner ----------------------------------------------------------


def test_pruner_attaches_plan_and_shows_mask(raw, clip, frames, temp_dir):
    latent = {"samples": raw, "batch_index": [0]}
    before = raw.clone()
    r = prune(latent)
    out, preview = r["result"]
    assert latent.keys() == {"samples", "batch_index"} and torch.equal(latent["samples"], before)
    assert out is not latent and out["samples"] is raw and out["batch_index"] == [0]
    plan = out["lipar_plan"]
    assert isinstance(plan, lipar.PruningPlan) and plan.latent_shape == tuple(raw.shape)
    expect = lipar.build_plan(clip, lipar.PlanConfig())          # thresholds apply to the normalised latent
    assert torch.equal(plan.keep, expect.keep)
    assert 0.05 < plan.prune_ratio() < 0.8
    # without images: one mask per latent frame at video resolution
    assert preview.shape == (6, 64, 96, 3) and preview.dtype == torch.float32
    assert 0.0 <= preview.min() and preview.max() <= 1.0
    ui = r["ui"]
    assert ui["animated"] == (True,)
    (img,) = ui["images"]
    assert img["subfolder"] == "" and img["type"] == "temp" and img["filename"].endswith(".webp")
    assert os.path.getsize(temp_dir / img["filename"]) > 0
    from PIL import Image
    with Image.open(temp_dir / img["filename"]) as anim:      # at most one frame per latent frame: cheap to encode
        assert 1 < anim.n_frames <= 6
    video = torch.arange(21.0).view(21, 1, 1, 1).expand(21, 2, 2, 3)
    picked = lipar.preview.one_frame_per_latent_frame(video, 6)
    assert picked[:, 0, 0, 0].tolist() == [0, 4, 8, 12, 16, 20]
    assert lipar.preview.one_frame_per_latent_frame(video[:6], 6).equal(video[:6])
    (stats,) = ui["lipar_stats"]
    for key in ("prune_ratio", "prune_ratio_per_frame", "tokens_kept", "tokens_total", "kept_per_chunk"):
        assert key in stats
    assert stats["tokens_total"] == 6 * 4 * 6 and stats["tokens_kept"] == int(plan.keep.sum())
    assert len(stats["prune_ratio_per_frame"]) == 6 and stats["prune_ratio_per_frame"][0] == 0.0
    assert stats["kept_per_chunk"][0][0] == 3 * 24
    # with the source frames: the frame each latent frame ends on, pruned patches tinted, kept ones untouched
    before_frames = frames.clone()
    _, tinted = prune({"samples": raw}, images=frames)["result"]
    assert torch.equal(frames, before_frames)
    assert tinted.shape == (6,) + tuple(frames.shape[1:])
    for t in range(6):
        kept_px = plan.keep[0, t].repeat_interleave(16, 0).repeat_interleave(16, 1)   # latent frame t ends on 4t
        assert torch.allclose(tinted[t][kept_px], frames[4 * t][kept_px])
        if (~kept_px).any():
            assert not torch.allclose(tinted[t][~kept_px], frames[4 * t][~kept_px])
    assert (~plan.keep[0, 1:]).any()


def test_pruner_preview_goes_to_comfyui_temp_directory(raw, tmp_path, monkeypatch):
    comfy_temp = tmp_path / "comfy_temp"
    fp = types.ModuleType("folder_paths")
    fp.get_temp_directory = lambda: str(comfy_temp)
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    img = prune({"samples": raw})["ui"]["images"][0]
    assert (comfy_temp / img["filename"]).is_file()


def test_pruner_reports_its_stages_and_waits_for_its_animation(raw, frames, temp_dir):
    """The WEBP is encoded in a worker thread while the node copies its IMAGE output out; the node
    returns only once the file is written, and says where its time went."""
    r = prune({"samples": raw}, images=frames)
    (stats,) = r["ui"]["lipar_stats"]
    assert list(stats["node_seconds"]) == ["plan_and_preview", "stats", "output", "animation"]
    assert all(v >= 0 for v in stats["node_seconds"].values())
    assert r["result"][1].device.type == "cpu" and r["result"][1].shape == (6, 64, 96, 3)
    from PIL import Image
    with Image.open(temp_dir / r["ui"]["images"][0]["filename"]) as anim:
        assert anim.n_frames == 6


def test_pruner_animation_failure_is_not_swallowed(raw, monkeypatch):
    import lipar_pack.nodes.pruner as pruner_node

    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(pruner_node, "write_animation", broken)
    with pytest.raises(OSError, match="disk full"):
        prune({"samples": raw})


def test_one_frame_per_latent_frame_moves_only_those_frames():
    video = torch.arange(21.0).view(21, 1, 1, 1).expand(21, 2, 2, 3)      # a strided view, as IMAGE slices are
    picked = lipar.preview.one_frame_per_latent_frame(video, 6, "cpu")
    assert picked.is_contiguous() and picked[:, 0, 0, 0].tolist() == [0, 4, 8, 12, 16, 20]


def test_pruner_batch_of_two(raw):
    z = torch.cat([raw, raw.flip(-1)])
    r = prune({"samples": z})
    out, preview = r["result"]
    assert out["lipar_plan"].keep.shape == (2, 6, 4, 6)
    assert preview.shape == (6, 64, 96, 3)   # the first sample's mask
    assert len(r["ui"]["lipar_stats"][0]["kept_per_chunk"]) == 2


@pytest.mark.parametrize("change,msg", [
    (dict(samples=lambda z: z[:, :, 0]), r"video latent \[B, 16, T, H, W\].*image latent"),
    (dict(samples=lambda z: z[:, :4]), "16"),
    (dict(samples=lambda z: torch.where(torch.rand_like(z) < 0.01, torch.nan, z)), "NaN"),
    (dict(threshold=10.5), r"threshold must be within \[0, 10\]"),
    (dict(anchor_threshold=-0.1), "anchor_threshold"),
    (dict(smooth=4), "odd"),
])
def test_pruner_bad_inputs_give_clear_errors(raw, frames, change, msg):
    z = change.pop("samples", lambda z: z)(raw)
    images = change.pop("images", lambda f: None)(frames)
    with pytest.raises(ValueError, match=msg) as e:
        prune({"samples": z}, images=images, **change)
    assert e.type is ValueError   # plain ValueError: ComfyUI shows the message


def test_pruner_rejects_non_latents(raw):
    with pytest.raises(ValueError, match="LATENT"):
        prune(raw)


@pytest.mark.parametrize("size,done", [((64 + 6, 96 + 6), "cropped the images from 102x70 to 96x64"),
                                       ((64 + 7, 96), "cropped the images from 96x71 to 96x64"),
                                       ((128, 192), "resized the images from 192x128 to the latent's 96x64")])
def test_pruner_images_of_other_sizes_never_block_the_edit(raw, size, done, caplog):
    """Video sizes that are not multiples of 8 (854x480: VAE Encode crops it to 848x480) are
    cropped the way VAE Encode does, others resized; both say so and the plan is unchanged."""
    frames = torch.rand(21, *size, 3, generator=torch.Generator().manual_seed(1))
    base = prune({"samples": raw})["result"][0]["lipar_plan"]
    with caplog.at_level("WARNING", logger="lipar"):
        out, preview = prune({"samples": raw}, images=frames)["result"]
    assert done in caplog.text
    assert preview.shape == (6, 64, 96, 3) and torch.equal(out["lipar_plan"].keep, base.keep)
    if "cropped" in done:          # kept patches show the centre-cropped source pixels untouched
        dy, dx = (size[0] - 64) // 2, (size[1] - 96) // 2
        kept_px = base.keep[0, 0].repeat_interleave(16, 0).repeat_interleave(16, 1)
        assert torch.allclose(preview[0][kept_px], frames[0, dy:dy + 64, dx:dx + 96][kept_px])


def test_pruner_images_with_another_frame_count_show_the_masks(raw, frames, caplog):
    with caplog.at_level("WARNING", logger="lipar"):
        _, preview = prune({"samples": raw}, images=frames[:10])["result"]
    assert "has 10 frames but the latent stands for 21" in caplog.text
    assert preview.shape == (6, 64, 96, 3)


def test_pruner_says_why_a_one_chunk_video_is_not_pruned(raw):
    (stats,) = prune({"samples": raw[:, :, :3]})["ui"]["lipar_stats"]
    assert stats["prune_ratio"] == 0 and "fits in the first chunk" in stats["note"] and "13" in stats["note"]
    (stats,) = prune({"samples": raw}, threshold=0.0)["ui"]["lipar_stats"]
    assert "nothing pruned at these thresholds" in stats["note"]
    (stats,) = prune({"samples": raw})["ui"]["lipar_stats"]
    assert "note" not in stats


# ---- Attention Recovery Patch ------------------------------------------------------------


@pytest.mark.parametrize("patcher_cls", [FakePatcher, ShallowClonePatcher])
def test_patch_clones_and_leaves_the_input_alone(wan, patcher_cls):
    original = {"transformer_options": {"patches": {"x": [1]}}, "other": 1}
    model = patcher_cls(wan, model_options=original)
    snapshot = copy.deepcopy(original)
    (m,) = Patch().patch(model, "m_degree", "compressed", "sdpa")
    assert m is not model
    assert m.model_options["transformer_options"]["lipar"] == {"recovery": "m_degree", "recovery_form": "compressed",
                                                               "attention_backend": "sdpa", "fp8_compute": "auto"}
    assert m.model_options["transformer_options"]["patches"] == {"x": [1]} and m.model_options["other"] == 1
    assert model.model_options is original and original == snapshot
    assert m.model.diffusion_model is wan   # weights shared, not copied


def test_patch_creates_missing_option_dicts(wan):
    model = FakePatcher(wan, model_options={})
    (m,) = Patch().patch(model, "noise_aware", "exact", "auto")
    assert m.model_options["transformer_options"]["lipar"]["recovery"] == "noise_aware"
    assert model.model_options == {}


class SD15:
    """Stands for ComfyUI's supported-model config class of an SD1.5 checkpoint."""


def test_patch_rejects_non_wan_models(wan):
    with pytest.raises(ValueError, match=r"The connected model is a Linear, not a Wan2.1 text-to-video model: it "
                                         r"lacks Wan's patch_embedding.weight, text_embedding.0.weight, "
                                         r"time_embedding.0.weight and 7 more\. Load Self-Forcing") as e:
        Patch().patch(FakePatcher(torch.nn.Linear(4, 4)), "noise_aware", "exact", "auto")
    assert ".." not in str(e.value)
    sd15 = FakePatcher(torch.nn.Conv2d(4, 4, 3))
    sd15.model.model_config = SD15()
    with pytest.raises(ValueError, match=r"The connected model is a SD15 model \(network Conv2d\), not a Wan2.1"):
        Patch().patch(sd15, "noise_aware", "exact", "auto")
    with pytest.raises(ValueError, match=r"not a ComfyUI diffusion MODEL \(got Tensor\)"):
        Patch().patch(torch.zeros(1), "noise_aware", "exact", "auto")
    with pytest.raises(ValueError, match="recovery mode"):
        Patch().patch(FakePatcher(wan), "fast", "exact", "auto")


# ---- Self-Forcing Causal Sampler ---------------------------------------------------------


def test_sampler_unpruned_equals_lipar_and_reports(wan, positive, raw, clip):
    model = FakePatcher(wan)
    latent = {"samples": raw, "batch_index": [0]}
    before = raw.clone()
    ctx_before = positive[0][0].clone()
    params_before = [p.clone() for p in wan.parameters()]
    r = sample(model, positive, latent)
    (out,) = r["result"]
    assert latent.keys() == {"samples", "batch_index"} and torch.equal(raw, before)
    assert torch.equal(positive[0][0], ctx_before)
    assert all(torch.equal(a, b) for a, b in zip(params_before, wan.parameters()))
    assert model.model_options == {"transformer_options": {}}
    assert out.keys() == {"samples", "batch_index"}
    assert out["samples"].shape == raw.shape and out["samples"].dtype == torch.float32
    cfg = lipar.SamplerConfig(seed=2, steps=(400, 350, 250), recovery="none")
    ref = lipar.sample(wan, positive[0][0], clip, config=cfg).latent
    assert torch.allclose(out["samples"], denormalize_wan21(ref), atol=1e-4, rtol=1e-4)
    (info,) = r["ui"]["lipar_sampler"]
    assert info["prune_ratio"] is None and info["recovery"] == "unpruned"
    assert info["passes"] == 2 * 3 + 1 and info["tokens_computed"] == info["tokens_full"]
    assert info["seconds"] > 0 and info["fps"] == pytest.approx(21 / info["seconds"], rel=0.01)
    assert "unpruned" in info["note"]
    assert info["details"] == {"ran": "eager (CUDA graphs need a CUDA device; this run is on cpu), pytorch kernels, "
                                      "sdpa attention", "KV window": "21 frames, sink 3"}
    # the same seed gives the same latent, another seed another one
    again = sample(model, positive, latent)["result"][0]["samples"]
    other = sample(model, positive, latent, seed=3)["result"][0]["samples"]
    assert torch.equal(again, out["samples"]) and not torch.allclose(other, out["samples"])


def test_pruned_graph_restored_is_close_to_unpruned_on_kept_tokens(wan, positive, raw):
    model = FakePatcher(wan)
    base = sample(model, positive, {"samples": raw})["result"][0]["samples"]
    pruned_latent, _ = prune({"samples": raw})["result"]
    plan = pruned_latent["lipar_plan"]
    (patched,) = Patch().patch(model, "noise_aware", "exact", "auto")
    r = sample(patched, positive, pruned_latent)
    (out,) = r["result"]
    assert "lipar_plan" not in out and pruned_latent["lipar_plan"] is plan and pruned_latent["samples"] is raw
    (info,) = r["ui"]["lipar_sampler"]
    assert info["recovery"] == "noise_aware" and info["prune_ratio"] == pytest.approx(plan.prune_ratio(), abs=1e-6)
    assert info["tokens_computed"] < 0.95 * info["tokens_full"]
    assert info["note"] == "pruned run, recovery noise_aware; pruned positions restored"
    # the sampler's output is complete: what Token Restore gives from the raw pruned run, and VAE
    # Decode can take it directly (no flat holes at pruned positions); Token Restore passes it through
    z = normalize_wan21(raw.float())
    cfg = lipar.SamplerConfig(seed=2, recovery_form="exact")
    holes = lipar.sample(wan, positive[0][0], z, plan=plan, config=cfg).latent
    assert (holes[:, :, ~plan.keep[0].repeat_interleave(2, 1).repeat_interleave(2, 2)] == 0).all()
    assert torch.allclose(out["samples"], denormalize_wan21(lipar.restore_latent(holes, plan)), atol=1e-5)
    (restored,) = Restore().restore(out)
    assert torch.equal(restored["samples"], out["samples"])
    keep = keep_pixels(plan, base)
    err = ((restored["samples"] - base)[keep].norm() / base[keep].norm()).item()
    assert 0 < err < 0.05, err
    assert torch.isfinite(restored["samples"]).all()


def test_pruned_latent_without_patch_uses_default_recovery(wan, positive, raw):
    pruned_latent, _ = prune({"samples": raw})["result"]
    (info,) = sample(FakePatcher(wan), positive, pruned_latent)["ui"]["lipar_sampler"]
    assert info["recovery"] == "noise_aware"
    assert info["note"].startswith("pruned run, recovery noise_aware (default)")


def test_sampler_uses_comfyui_services_when_present(wan, positive, raw, monkeypatch):
    calls = comfy_services.install(monkeypatch, intermediate_device=lambda: torch.device("cpu"))

    model = FakePatcher(wan)
    out = sample(model, positive, {"samples": raw})["result"][0]["samples"]
    ((models, mem, _),) = calls["load"]
    assert models == [model] and mem > 0
    assert calls["interrupt"] == 7
    assert calls["progress"] == [(i, 7) for i in range(8)]
    # an interrupt stops the run and passes through unchanged; the model samples as before afterwards
    calls["stop_at"] = calls["interrupt"] + 3
    with pytest.raises(comfy_services.Interrupted):
        sample(model, positive, {"samples": raw})
    calls["stop_at"] = None
    assert torch.equal(sample(model, positive, {"samples": raw})["result"][0]["samples"], out)


def test_sampler_generate_mode_and_default_steps(wan, positive, raw):
    r = sample(FakePatcher(wan), positive, {"samples": torch.zeros_like(raw)}, mode="generate", steps=" ")
    (info,) = r["ui"]["lipar_sampler"]
    assert info["steps"] == [1000, 750, 500, 250] and info["passes"] == 2 * 4 + 1
    assert torch.isfinite(r["result"][0]["samples"]).all()


def test_sampler_runs_comfyui_style_half_precision_model(positive, raw):
    """ComfyUI's WanModel keeps patch_embedding in fp32 while the rest is bf16 (no manual cast on GPU)."""
    wan16 = lipar.build_model(lipar.TINY, seed=0).to(torch.bfloat16)
    wan16.patch_embedding.float()
    params_before = {k: (v.dtype, v.clone()) for k, v in wan16.state_dict().items()}
    model = FakePatcher(wan16, dtype=torch.bfloat16)   # ComfyUI: the model dtype, not the first parameter's
    r = sample(model, positive, {"samples": raw}, steps="400")
    assert r["ui"]["lipar_sampler"][0]["dtype"] == "bfloat16"
    assert torch.isfinite(r["result"][0]["samples"]).all()
    assert all(v.dtype == params_before[k][0] and torch.equal(v, params_before[k][1])
               for k, v in wan16.state_dict().items())


def test_cuda_graphs_off_when_comfyui_loaded_the_model_partly(wan):
    model = FakePatcher(wan)
    assert cuda_graphs_allowed(model) is None
    model.model.model_lowvram = True
    assert cuda_graphs_allowed(model) is False


def test_compute_dtype_follows_comfyui(wan):
    assert compute_dtype(FakePatcher(wan), wan) == torch.float32
    assert compute_dtype(FakePatcher(wan, dtype=torch.float16), wan) == torch.float16
    assert compute_dtype(FakePatcher(wan, dtype=torch.float8_e4m3fn), wan) == torch.bfloat16
    assert compute_dtype(FakePatcher(wan, dtype=torch.float8_e4m3fn, manual_cast_dtype=torch.float16), wan) == torch.float16


def test_sampler_bad_inputs_give_clear_errors(wan, positive, raw):
    model = FakePatcher(wan)
    pruned_latent, _ = prune({"samples": raw})["result"]

    def err(msg, *args, **kw):
        with pytest.raises(ValueError, match=msg) as e:
            sample(*args, **kw)
        assert e.type is ValueError

    err(r"The connected model is a Linear, not a Wan2.1", FakePatcher(torch.nn.Linear(4, 4)), positive, {"samples": raw})
    err("image latent", model, positive, {"samples": raw[:, :, 0]})
    err("NaN", model, positive, {"samples": raw * torch.nan})
    err("made for 3-frame chunks but the sampler uses 1", model, positive, pruned_latent, chunk_frames=1)
    err(r"made for a latent of shape \[1, 16, 6, 8, 12\]", model, positive,
        {**pruned_latent, "samples": torch.cat([raw, raw], 2)})
    err("strictly decreasing", model, positive, {"samples": raw}, steps="250,400")
    err("comma-separated", model, positive, {"samples": raw}, steps="four hundred")
    err("4096", model, [[torch.randn(1, 8, 768), {}]], {"samples": raw})
    err("CONDITIONING", model, [], {"samples": raw})
    other = {"samples": raw.flip(-1), "lipar_plan": pruned_latent["lipar_plan"]}
    err("made for another latent of the same shape", model, positive, other)
    padded = torch.cat([raw[:, :, :4], raw[:, :, 3:4].expand(-1, -1, 2, -1, -1)], 2)
    err("made for another latent", model, positive, {"samples": padded, "lipar_plan": pruned_latent["lipar_plan"]})
    edited = copy.deepcopy(pruned_latent["lipar_plan"])
    edited.anchor_frame[0, 4] = 0
    err("Invalid plan", model, positive, {"samples": raw, "lipar_plan": edited})
    err("KV window of 4 latent frames cannot hold", model, positive, {"samples": raw}, window_frames=4)
    err("not a LIPAR pruning plan", model, positive, {"samples": raw, "lipar_plan": {"keep": 1}})
    err("'cudnn' needs a CUDA device", Patch().patch(model, "noise_aware", "exact", "cudnn")[0], positive,
        {"samples": raw})


# ---- Token Restore -----------------------------------------------------------------------


def test_token_restore_without_plan_passes_through(raw):
    latent = {"samples": raw, "batch_index": [0]}
    before = raw.clone()
    (out,) = Restore().restore(latent)
    assert out is not latent and out.keys() == latent.keys()
    assert torch.equal(out["samples"], before) and torch.equal(raw, before)


def test_token_restore_fills_pruned_positions(raw):
    pruned_latent, _ = prune({"samples": raw})["result"]
    plan = pruned_latent["lipar_plan"]
    holes = torch.where(keep_pixels(plan, raw), raw, torch.zeros_like(raw))   # what a raw pruned run returns
    latent = {"samples": holes, "lipar_plan": plan}
    (out,) = Restore().restore(latent)
    assert out.keys() == {"samples"} and latent.keys() == {"samples", "lipar_plan"}
    assert torch.equal(out["samples"], lipar.restore_latent(holes, plan))
    assert (out["samples"] != 0).all()
    with pytest.raises(ValueError, match="made for a latent of shape"):
        Restore().restore({"samples": raw[:, :, :3], "lipar_plan": plan})


# ---- Load Self-Forcing Checkpoint --------------------------------------------------------


def test_loader_reads_the_official_layout(tmp_path):
    ema = lipar.build_model(lipar.TINY, seed=5).state_dict()
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": {"model." + k: torch.zeros_like(v) for k, v in ema.items()},
                "generator_ema": {"model." + k: v for k, v in ema.items()}}, path)
    sd, options, cfg = prepare_state_dict(str(path), "default")
    assert set(sd) == set(ema) and all(torch.equal(sd[k], ema[k]) for k in ema)
    assert options == {} and cfg.dim == lipar.TINY.dim and cfg.num_layers == lipar.TINY.num_layers
    sd, options, _ = prepare_state_dict(str(path), "bf16")
    assert options == {"dtype": torch.bfloat16} and all(v.dtype == torch.bfloat16 for v in sd.values())
    with pytest.raises(ValueError, match="weight dtype"):
        prepare_state_dict(str(path), "fp8")
    bad = tmp_path / "flux.pt"
    torch.save({"img_in.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(ValueError, match="Wan2.1") as e:
        prepare_state_dict(str(bad), "default")
    assert e.type is ValueError
    with pytest.raises(RuntimeError, match="inside ComfyUI"):
        Loader().load("self_forcing_dmd.pt", "default")


def test_sampler_validates_steps_at_queue_time():
    assert Sampler.VALIDATE_INPUTS(steps="400,350,250") is True and Sampler.VALIDATE_INPUTS(steps="") is True
    assert Sampler.VALIDATE_INPUTS(steps=None) is True         # linked from another node: checked when it runs
    for bad in ("inf", "400,,250", "400.9,350.2", "250,400"):
        msg = Sampler.VALIDATE_INPUTS(steps=bad)
        assert isinstance(msg, str) and "400,350,250" in msg, (bad, msg)


def test_sampler_window_inputs_roll_the_cache_for_long_videos(wan, positive):
    """A video longer than the window: the run says so; the default window leaves shorter
    videos exactly as a run without a window."""
    long = denormalize_wan21(make_clip(ClipSpec(latent_frames=10, height=8, width=12, seed=2)))
    a = sample(FakePatcher(wan), positive, {"samples": long}, window_frames=6, sink_frames=3)
    (info,) = a["ui"]["lipar_sampler"]
    assert info["window_rolls"] and "KV window 6 frames with a 3-frame sink" in info["note"]
    b = sample(FakePatcher(wan), positive, {"samples": long}, window_frames=0, sink_frames=0)
    assert not torch.allclose(a["result"][0]["samples"], b["result"][0]["samples"])
    c = sample(FakePatcher(wan), positive, {"samples": long})       # default: 21 frames, no roll
    assert torch.equal(c["result"][0]["samples"], b["result"][0]["samples"])
    assert not c["ui"]["lipar_sampler"][0]["window_rolls"]


def test_sampler_sends_a_latent_preview_per_chunk(wan, positive, raw, monkeypatch):
    """ComfyUI's own previewer (latent_preview.get_previewer for the model's latent format) gets
    each finished chunk's last frame, and its images go out with the progress bar."""
    sent, decoded = [], []

    class Previewer:
        def decode_latent_to_preview_image(self, fmt, x0):
            decoded.append(x0.clone())
            return (fmt, f"image {len(decoded)}", 512)

    lp = types.ModuleType("latent_preview")
    lp.get_previewer = lambda device, latent_format: Previewer() if latent_format == "wan21" else None

    class ProgressBar:
        def __init__(self, total):
            pass

        def update_absolute(self, value, total=None, preview=None):
            if preview is not None:
                sent.append((value, preview))

    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    monkeypatch.setitem(sys.modules, "latent_preview", lp)
    monkeypatch.setitem(sys.modules, "comfy", types.ModuleType("comfy"))
    monkeypatch.setitem(sys.modules, "comfy.utils", utils)
    model = FakePatcher(wan)
    model.model.latent_format = "wan21"
    sample(model, positive, {"samples": raw})
    assert len(decoded) == 2 and all(x.shape == (1, 16, 1, 8, 12) for x in decoded)   # one per chunk
    assert [p for _, p in sent] == [("JPEG", "image 1", 512), ("JPEG", "image 2", 512)]
    z = lipar.sample(wan, positive[0][0], normalize_wan21(raw.float()), config=lipar.SamplerConfig(seed=2)).latent
    assert torch.allclose(decoded[1], z[:, :, 5:6], atol=1e-5)                     # the last frame, model space


def test_graphs_are_released_when_comfyui_needs_the_memory(monkeypatch):
    from lipar_pack.nodes.host import keep_graphs

    class VRAMState:
        HIGH_VRAM, NORMAL_VRAM, LOW_VRAM = 1, 2, 3

    mm = types.ModuleType("comfy.model_management")
    mm.VRAMState = VRAMState
    monkeypatch.setitem(sys.modules, "comfy", types.ModuleType("comfy"))
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    model = FakePatcher(torch.nn.Linear(2, 2))
    cuda = torch.device("cuda")
    for state, free, lowvram, keep in ((2, 100, False, True), (2, 19, False, False), (3, 100, False, False),
                                       (1, 100, True, False)):
        mm.vram_state, mm.get_free_memory = state, (lambda device, free=free: free)
        model.model.model_lowvram = lowvram
        assert keep_graphs(model, cuda, 10) is keep, (state, free, lowvram)
    mm.extra_reserved_memory = lambda: 90                          # --reserve-vram counts as not free
    mm.vram_state, mm.get_free_memory, model.model.model_lowvram = 2, (lambda device: 100), False
    assert not keep_graphs(model, cuda, 10)
    assert keep_graphs(model, torch.device("cpu"), 10)


def test_a_plan_for_another_latent_is_refused_before_the_model_is_loaded(wan, positive, raw, monkeypatch):
    import lipar_pack.nodes.host as host

    loads = []
    monkeypatch.setattr(host, "load_model", lambda *a, **k: loads.append(a))
    pruned_latent, _ = prune({"samples": raw})["result"]
    with pytest.raises(ValueError, match="made for another latent"):
        sample(FakePatcher(wan), positive, {"samples": raw.flip(-1), "lipar_plan": pruned_latent["lipar_plan"]})
    assert loads == []
    sample(FakePatcher(wan), positive, pruned_latent)
    assert len(loads) == 1
