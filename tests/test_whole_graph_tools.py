"""The pure helpers of benchmarks/whole_graph.py (no ComfyUI, no GPU)."""

import importlib.util
import json
import math
import os

import pytest
import torch

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "whole_graph.py")
_spec = importlib.util.spec_from_file_location("whole_graph", _PATH)
wg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wg)


def test_importing_the_script_imports_neither_torch_nor_comfy():
    # the CUDA allocator (PYTORCH_CUDA_ALLOC_CONF) must be set before torch is imported: main() does it first
    import subprocess
    import sys
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('wg', sys.argv[1]); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'torch', 'comfy', 'lipar', 'nodes'}))")
    out = subprocess.run([sys.executable, "-c", code, _PATH], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- the synthetic source video ----------------------------------------------------------------------

def _covered(boxes, height, width):
    mask = torch.zeros(height, width, dtype=torch.bool)
    for frame in boxes:
        for y0, x0, y1, x1 in frame:
            mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize("frames,height,width", [(17, 64, 96), (9, 48, 160)])
def test_video_is_an_image_batch_with_a_static_background(frames, height, width):
    video = wg.synthetic_video(frames, height, width, objects=3, seed=1)
    assert video.shape == (frames, height, width, 3) and video.dtype == torch.float32
    assert float(video.min()) >= 0.0 and float(video.max()) <= 1.0
    boxes = wg.object_boxes(frames, height, width, objects=3, seed=1)
    covered = _covered(boxes, height, width)
    assert 0 < covered.float().mean() < 0.9
    static = ~covered
    # every pixel no object ever covers is the same in every frame ...
    assert torch.equal(video[:, static], video[:1, static].expand(frames, -1, -1))
    # ... and the background is textured, not flat
    assert float(video[0][static].std()) > 0.05
    # the objects move: consecutive frames differ, and only where objects are
    diff = (video[1:] - video[:-1]).abs().amax(dim=-1)
    assert bool((diff.amax(dim=0) > 0).any())
    assert not bool((diff.amax(dim=0)[static] > 0).any())


def test_boxes_stay_inside_and_move():
    frames, height, width = 40, 48, 80
    boxes = wg.object_boxes(frames, height, width, objects=4, seed=3)
    assert len(boxes) == frames and all(len(b) == 4 for b in boxes)
    for frame in boxes:
        for y0, x0, y1, x1 in frame:
            assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
    assert all(boxes[0][k] != boxes[-1][k] for k in range(4))


def test_video_is_deterministic_and_depends_on_the_seed():
    a = wg.synthetic_video(9, 32, 48, seed=5)
    assert torch.equal(a, wg.synthetic_video(9, 32, 48, seed=5))
    assert not torch.equal(a, wg.synthetic_video(9, 32, 48, seed=6))


# ---- graphs ------------------------------------------------------------------------------------------

def test_graph_specs_cover_every_combination_once():
    specs = wg.graph_specs()
    names = [s["name"] for s in specs]
    assert len(names) == 20 and len(set(names)) == 20
    lipar = [s for s in specs if s["sampler"] == "lipar"]
    assert {(s["vae_encode"], s["vae_decode"], s["target_prune"]) for s in lipar} == {
        (e, d, t) for e, d in [("wan", "wan"), ("wanfast", "wanfast"), ("tiny", "tiny"), ("tinyfast", "tinyfast"),
                               ("tiny", "wan"), ("wan", "tiny")]
        for t in (None, 0.338, 0.5)}
    core = [s for s in specs if s["sampler"] == "core_ar"]
    assert {(s["vae_encode"], s["vae_decode"]) for s in core} == {("wan", "wan"), ("tiny", "tiny")}   # ComfyUI's VAE nodes
    assert all(s["target_prune"] is None for s in core)
    assert "lipar-tiny-wan-p33.8" in names and "lipar-wan-tiny-p50" in names and "core_ar-wan-wan-unpruned" in names


def test_select_graphs_by_name_and_pattern():
    specs = wg.graph_specs()
    assert wg.select_graphs(specs, "") == specs
    got = [s["name"] for s in wg.select_graphs(specs, "lipar-wan-wan-*, core_ar-tiny-tiny-unpruned")]
    assert got == ["lipar-wan-wan-unpruned", "lipar-wan-wan-p33.8", "lipar-wan-wan-p50", "core_ar-tiny-tiny-unpruned"]
    assert len(wg.select_graphs(specs, "*-p50")) == 6
    with pytest.raises(ValueError, match="lipar-nope"):
        wg.select_graphs(specs, "lipar-wan-wan-*,lipar-nope")


def test_sizes():
    assert wg.check_sizes(81, 480, 832) == (21, 60, 104)
    assert wg.check_sizes(17, 64, 96) == (5, 8, 12)
    for bad in ((80, 480, 832), (81, 488, 832), (81, 480, 0)):
        with pytest.raises(ValueError):
            wg.check_sizes(*bad)


# ---- rows, medians, fps --------------------------------------------------------------------------------

def _runs():
    # per-stage medians: encode 1.0, sample 2.0, decode 3.0 -> their sum is 6.0,
    # but the per-run totals are 6.5, 4.3, 7.0 -> the median total is 6.5
    return [{"vae_encode": 1.0, "prune": None, "sample": 2.5, "restore": None, "vae_decode": 3.0},
            {"vae_encode": 0.9, "prune": None, "sample": 1.0, "restore": None, "vae_decode": 2.4},
            {"vae_encode": 1.2, "prune": None, "sample": 2.0, "restore": None, "vae_decode": 3.8}]


def test_summary_medians_and_fps():
    s = wg.summarize_runs(_runs(), frames=81)
    assert s["stages"] == {"vae_encode": 1.0, "prune": None, "sample": 2.0, "restore": None, "vae_decode": 3.0}
    assert s["run_totals"] == [6.5, 4.3, 7.0]
    assert s["seconds"] == 6.5                      # median of totals, not the sum of stage medians (6.0)
    assert s["fps"] == round(81 / 6.5, 3)
    even = wg.summarize_runs(_runs()[:2], frames=81)
    assert math.isclose(even["seconds"], 5.4) and math.isclose(even["stages"]["sample"], 1.75)
    assert wg.summarize_runs([], frames=81)["seconds"] is None


def test_row_has_the_fields_the_json_promises():
    spec = {"name": "lipar-wan-tiny-p33.8", "sampler": "lipar", "vae_encode": "wan", "vae_decode": "tiny",
            "target_prune": 0.338}
    runs = [{"vae_encode": 1.0, "prune": 0.2, "sample": 1.0, "restore": 0.0, "vae_decode": 0.3}]
    row = wg.make_row(spec, runs, 81, prune_ratio=0.33791234, peak=123456, status="ok")
    for key in ("name", "vae_encode", "vae_decode", "sampler", "prune_ratio", "stages", "seconds", "fps",
                "peak_memory_bytes"):
        assert key in row
    assert row["prune_ratio"] == 0.3379 and row["peak_memory_bytes"] == 123456
    assert row["seconds"] == 2.5 and row["fps"] == round(81 / 2.5, 3)
    assert set(row["stages"]) == set(wg.STAGES)
    json.dumps(wg.clean_json(row), allow_nan=False)
    table = wg.format_table([row, {"name": "core_ar-wan-wan-unpruned", "status": "error", "error": "boom"}])
    lines = table.splitlines()
    assert lines[-2].startswith("lipar-wan-tiny-p33.8") and "33.8%" in lines[-2] and "2.500" in lines[-2]
    assert "error: boom" in lines[-1]


def test_clean_json_drops_non_finite_numbers():
    out = wg.clean_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    assert out == {"a": None, "b": [1.0, None], "c": {"d": 2}}


# ---- core AR sigmas, allocator -------------------------------------------------------------------------

def test_sigmas_are_self_forcings_warped_steps():
    from lipar.schedule import sigmas
    vals = [float(v) for v in wg.sigmas_text("400,350,250", 5.0).split(",")]
    assert vals[-1] == 0.0 and len(vals) == 4
    assert all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(vals[:-1], sigmas((400, 350, 250), 5.0)))
    assert math.isclose(vals[0], 2.0 / 2.6, abs_tol=1e-9)     # s = 5u / (1 + 4u) at u = 0.4


def test_allocator_setting_follows_comfyui():
    assert wg.alloc_conf(None, "cudaMallocAsync") == "backend:cudaMallocAsync"
    assert wg.alloc_conf("expandable_segments:True", "cudaMallocAsync") == \
        "expandable_segments:True,backend:cudaMallocAsync"
    assert wg.alloc_conf("backend:native", "cudaMallocAsync") == "backend:native"
    assert wg.alloc_conf(None, "native") is None


def test_prompt_has_twenty_words():
    assert len(wg.PROMPT.split()) == 20


def test_cli_rejects_bad_options():
    with pytest.raises(SystemExit):
        wg.parse_args(["--only", "nothing-like-this"])
    with pytest.raises(SystemExit):
        wg.parse_args(["--frames", "80"])
    with pytest.raises(SystemExit):
        wg.parse_args(["--extras", "previews,coffee"])
    a = wg.parse_args(["--only", "core_ar-*", "--extras", "none"])
    assert [s["name"] for s in a.graphs] == ["core_ar-wan-wan-unpruned", "core_ar-tiny-tiny-unpruned"]
    assert a.extra_list == []
