"""The API workflows run end-to-end through the real server on CPU (tiny random-weight models
of the real architectures; see make_fixtures.py) and write output videos.

The fast workflow runs with a random-weight tiny VAE of the lighttaew2_1 architecture
(ComfyUI's TAEHV) as ``models/vae_approx/lighttaew2_1.safetensors``, the file the workflow
names, for VAE Encode and VAE Decode.

Text conditioning: ComfyUI's CLIPLoader builds the umt5-xxl encoder from a fixed config
(5.7 B parameters), so no small text encoder loads through it. The test copy of each
API workflow therefore replaces Load CLIP + CLIP Text Encode with ComfyUI's core
``LoadTrainingDataset`` node reading a CONDITIONING shard the fixtures wrote
([1, 512, 4096], zero rows after 12 "tokens", as umt5-xxl gives). Everything else runs
unchanged, under the file names the workflows use.
"""
from __future__ import annotations

import copy
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from comfy_host import ARTIFACTS, execution_error, run_comfy_python  # noqa: E402

LIPAR_API = "api/lipar_video_edit_api.json"
BASELINE_API = "api/baseline_video_edit_api.json"
FAST_API = "api/lipar_fast_video_edit_api.json"
CLIP_FRAMES, CLIP_W, CLIP_H = 21, 128, 96


def load_api(rel: str) -> dict:
    with open(os.path.join(ROOT, "workflows", rel), encoding="utf-8") as f:
        return json.load(f)


def with_test_conditioning(api: dict, folder: str = "lipar_cond") -> dict:
    """Replace CLIPLoader + CLIPTextEncode by LoadTrainingDataset (same node id as the text encoder)."""
    api = copy.deepcopy(api)
    te = next(k for k, v in api.items() if v["class_type"] == "CLIPTextEncode")
    loader = api[te]["inputs"]["clip"][0]
    assert api[loader]["class_type"] == "CLIPLoader"
    del api[loader]
    api[te] = {"class_type": "LoadTrainingDataset", "inputs": {"folder_name": folder},
               "_meta": {"title": "test conditioning (stands in for the umt5-xxl text encoder)"}}
    for node in api.values():
        for k, v in node["inputs"].items():
            if v == [te, 0]:
                node["inputs"][k] = [te, 1]      # LoadTrainingDataset's CONDITIONING output
    return api


def node_of(api: dict, class_type: str) -> str:
    return next(k for k, v in api.items() if v["class_type"] == class_type)


def saved_video(server, history: dict, api: dict) -> str:
    out = history["outputs"][node_of(api, "SaveVideo")]
    assert out.get("animated") == [True]
    item = out["images"][0]
    path = server.file_path(item)
    assert os.path.isfile(path) and os.path.getsize(path) > 0, path
    return path


def probe(comfy, *paths: str) -> list[dict]:
    return json.loads(run_comfy_python(comfy, "probe_video.py", *paths))


@pytest.fixture(scope="module")
def runs(comfy, server):
    """Run the baseline, the LIPAR and the fast workflow once each; the tests below inspect the results."""
    res = {}
    for name, rel in (("baseline", BASELINE_API), ("lipar", LIPAR_API), ("fast", FAST_API)):
        api = with_test_conditioning(load_api(rel))
        h = server.run(api)
        res[name] = (api, h)
    return res


def test_baseline_workflow_runs_and_writes_a_video(comfy, server, runs):
    api, h = runs["baseline"]
    assert h["status"]["status_str"] == "success", execution_error(h)
    info = h["outputs"][node_of(api, "LIPAR_SelfForcingSampler")]["lipar_sampler"][0]
    print("\nbaseline sampler:", json.dumps(info))
    assert info["prune_ratio"] is None and info["recovery"] == "unpruned"
    assert info["tokens_computed"] == info["tokens_full"]
    assert info["video_frames"] == CLIP_FRAMES and info["seconds"] > 0
    (v,) = probe(comfy, saved_video(server, h, api))
    print("baseline video:", v)
    ARTIFACTS.append(f"baseline output video: {v['path']} ({v['frames']} frames {v['width']}x{v['height']}); "
                     f"sampler {info['seconds']:.3f} s, {info['tokens_computed']}/{info['tokens_full']} tokens")
    assert (v["frames"], v["width"], v["height"], v["codec"]) == (CLIP_FRAMES, CLIP_W, CLIP_H, "h264")


def test_lipar_workflow_runs_prunes_and_writes_a_video(comfy, server, runs):
    api, h = runs["lipar"]
    assert h["status"]["status_str"] == "success", execution_error(h)
    pruner = h["outputs"][node_of(api, "LIPAR_LatentInterFramePruner")]
    stats = pruner["lipar_stats"][0]
    print("\npruner stats:", json.dumps(stats))
    for key in ("prune_ratio", "prune_ratio_per_frame", "tokens_kept", "tokens_total", "kept_per_chunk"):
        assert key in stats, key
    assert len(stats["prune_ratio_per_frame"]) == (CLIP_FRAMES - 1) // 4 + 1
    assert stats["prune_ratio_per_frame"][0] == 0           # frame 0 is never pruned
    assert 0 < stats["prune_ratio"] < 1, "the static background of the test clip should be pruned"
    assert pruner["animated"] == [True]
    mask = pruner["images"][0]
    assert mask["type"] == "temp" and mask["filename"].endswith(".webp")
    assert os.path.isfile(server.file_path(mask))
    with open(server.file_path(mask), "rb") as f:
        head = f.read(16)
    assert head[:4] == b"RIFF" and head[8:12] == b"WEBP"

    info = h["outputs"][node_of(api, "LIPAR_SelfForcingSampler")]["lipar_sampler"][0]
    print("lipar sampler:", json.dumps(info))
    for key in ("seconds", "fps", "prune_ratio", "recovery", "tokens_computed", "tokens_full", "passes", "note"):
        assert key in info, key
    assert info["recovery"] == "noise_aware"
    assert abs(info["prune_ratio"] - stats["prune_ratio"]) < 1e-6
    assert info["tokens_computed"] < info["tokens_full"]
    (v,) = probe(comfy, saved_video(server, h, api))
    print("lipar video:", v)
    ARTIFACTS.append(f"LIPAR output video: {v['path']} ({v['frames']} frames {v['width']}x{v['height']}); pruned "
                     f"{stats['prune_ratio'] * 100:.1f}% (per frame {stats['prune_ratio_per_frame']}); sampler "
                     f"{info['seconds']:.3f} s, {info['tokens_computed']}/{info['tokens_full']} tokens")
    assert (v["frames"], v["width"], v["height"], v["codec"]) == (CLIP_FRAMES, CLIP_W, CLIP_H, "h264")
    base_api, base_h = runs["baseline"]
    (b,) = probe(comfy, saved_video(server, base_h, base_api))
    assert v["sha256"] != b["sha256"], "pruned and unpruned runs should differ somewhere"


def test_lipar_workflow_on_a_video_of_real_world_size_and_length(comfy, server):
    """134x100 (not a multiple of 8: VAE Encode crops it to 128x96, as 854x480 to 848x480) and 65
    frames (17 latent frames: the last chunk holds 2): the pruner's source images are cropped
    the same way instead of stopping the edit, and the sampler runs the short chunk."""
    api = with_test_conditioning(load_api(LIPAR_API))
    api[node_of(api, "LoadVideo")]["inputs"]["file"] = "lipar_input_odd.mp4"
    h = server.run(api)
    assert h["status"]["status_str"] == "success", execution_error(h)
    stats = h["outputs"][node_of(api, "LIPAR_LatentInterFramePruner")]["lipar_stats"][0]
    assert stats["latent_frames"] == 17 and len(stats["kept_per_chunk"][0]) == 6 and stats["prune_ratio"] > 0
    assert "cropped the images from 134x100 to 128x96 as VAE Encode does" in server.log()
    info = h["outputs"][node_of(api, "LIPAR_SelfForcingSampler")]["lipar_sampler"][0]
    assert info["video_frames"] == 65 and info["tokens_computed"] < info["tokens_full"]
    (v,) = probe(comfy, saved_video(server, h, api))
    assert (v["frames"], v["width"], v["height"]) == (65, 128, 96)


def test_fast_workflow_runs_with_the_tiny_vae_and_prunes(comfy, server, runs):
    """The LIPAR graph with the tiny VAE (lighttaew2_1 architecture, from models/vae_approx) for
    encoding and decoding: it runs, the pruner plans on the tiny VAE's latent and the sampler
    computes fewer tokens than the unpruned baseline; the video has the clip's frames and size."""
    api, h = runs["fast"]
    assert api[node_of(api, "VAELoader")]["inputs"]["vae_name"] == "lighttaew2_1.safetensors"
    assert h["status"]["status_str"] == "success", execution_error(h)
    stats = h["outputs"][node_of(api, "LIPAR_LatentInterFramePruner")]["lipar_stats"][0]
    info = h["outputs"][node_of(api, "LIPAR_SelfForcingSampler")]["lipar_sampler"][0]
    print("\nfast pruner stats:", json.dumps(stats))
    print("fast sampler:", json.dumps(info))
    assert len(stats["prune_ratio_per_frame"]) == (CLIP_FRAMES - 1) // 4 + 1
    assert 0 < stats["prune_ratio"] < 1
    assert info["recovery"] == "noise_aware" and abs(info["prune_ratio"] - stats["prune_ratio"]) < 1e-6
    base_api, base_h = runs["baseline"]
    base_info = base_h["outputs"][node_of(base_api, "LIPAR_SelfForcingSampler")]["lipar_sampler"][0]
    assert info["tokens_full"] == base_info["tokens_full"]
    assert info["tokens_computed"] < base_info["tokens_computed"], (info, base_info)
    (v,) = probe(comfy, saved_video(server, h, api))
    print("fast video:", v)
    ARTIFACTS.append(f"fast (tiny VAE) output video: {v['path']} ({v['frames']} frames {v['width']}x{v['height']}); "
                     f"pruned {stats['prune_ratio'] * 100:.1f}%; sampler {info['seconds']:.3f} s, "
                     f"{info['tokens_computed']}/{info['tokens_full']} tokens")
    assert (v["frames"], v["width"], v["height"], v["codec"]) == (CLIP_FRAMES, CLIP_W, CLIP_H, "h264")
    lipar_api, lipar_h = runs["lipar"]
    (w,) = probe(comfy, saved_video(server, lipar_h, lipar_api))
    assert v["sha256"] != w["sha256"], "the tiny VAE should give another video than the Wan VAE"


def test_official_pt_through_load_self_forcing_checkpoint(comfy, server, runs):
    """Swap Load Diffusion Model for the pack's loader reading the same weights in the official
    .pt layout: the edit must come out identical to the .safetensors run."""
    api = with_test_conditioning(load_api(LIPAR_API))
    unet = node_of(api, "UNETLoader")
    api[unet] = {"class_type": "LIPAR_SelfForcingCheckpointLoader",
                 "inputs": {"ckpt_name": "self_forcing_dmd_official.pt", "weight_dtype": "default"}}
    api[node_of(api, "SaveVideo")]["inputs"]["filename_prefix"] = "video/lipar_edit_from_pt"
    h = server.run(api)
    assert h["status"]["status_str"] == "success", execution_error(h)
    ref_api, ref_h = runs["lipar"]
    got, ref = probe(comfy, saved_video(server, h, api), saved_video(server, ref_h, ref_api))
    assert got["sha256"] == ref["sha256"], (got, ref)


def test_invalid_widget_value_is_reported_by_validation(server):
    """ComfyUI validates LIPAR's combo inputs: the Save Video branch (which needs the patch) is
    rejected with value_not_in_list; the outputs that do not depend on it still run."""
    api = with_test_conditioning(load_api(LIPAR_API))
    patch = node_of(api, "LIPAR_AttentionRecoveryPatch")
    api[patch]["inputs"]["recovery"] = "magic"
    resp = server.post("/prompt", {"prompt": api})
    errors = resp["node_errors"][patch]["errors"]
    assert errors[0]["type"] == "value_not_in_list" and errors[0]["extra_info"]["input_name"] == "recovery"
    h = server.wait(resp["prompt_id"])
    assert node_of(api, "SaveVideo") not in h["outputs"]
