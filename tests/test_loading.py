"""Checkpoint loading: official Self-Forcing .pt layout, safetensors, prefixes, dtypes, errors."""

import pytest
import torch
from safetensors.torch import save_file

import lipar
from lipar.__main__ import main as cli
from lipar.loading import convert_checkpoint, load_model, load_state_dict


@pytest.fixture(scope="module")
def model():
    return lipar.build_model(lipar.TINY, seed=5)


def _same(a, b, dtype=None):
    sa, sb = a.state_dict(), b.state_dict()
    cast = (lambda t: t.to(dtype).float()) if dtype else (lambda t: t.float())
    return sa.keys() == sb.keys() and all(torch.equal(cast(sa[k]), cast(sb[k])) for k in sa)


def test_official_pt_layout_prefers_generator_ema(tmp_path, model):
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    other = {k: torch.zeros_like(v) for k, v in sd.items()}
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": other, "generator_ema": sd, "critic": {"x": torch.zeros(1)}}, path)
    loaded = load_model(str(path))
    assert _same(loaded, model) and loaded.config == lipar.TINY
    torch.save({"generator": sd}, path)                       # only 'generator'
    assert _same(load_model(str(path)), model)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "diffusion_model."])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_safetensors_with_and_without_prefix(tmp_path, model, prefix, dtype):
    path = tmp_path / "wan.safetensors"
    save_file({prefix + k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_model(str(path))
    assert next(loaded.parameters()).dtype == dtype
    assert _same(loaded, model, dtype)


def test_convert_round_trip_and_cli(tmp_path, model):
    src = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator_ema": {f"model.{k}": v for k, v in model.state_dict().items()}}, src)
    dst = tmp_path / "out.safetensors"
    cfg = convert_checkpoint(str(src), str(dst), dtype=torch.float32)
    assert cfg == lipar.TINY
    assert _same(load_model(str(dst)), model)
    assert cli(["convert", str(src), str(tmp_path / "cli.safetensors"), "--dtype", "bf16"]) == 0
    sd, _ = load_state_dict(str(tmp_path / "cli.safetensors"))
    assert sd["head.head.weight"].dtype == torch.bfloat16
    assert cli(["convert", str(src), str(tmp_path / "bad.pt")]) == 2        # clear error, exit code 2


def test_bad_checkpoints_name_the_problem(tmp_path, model):
    sd = dict(model.state_dict())
    cases = {}
    missing = dict(sd)
    del missing["blocks.1.ffn.2.weight"]
    cases["missing keys (1): blocks.1.ffn.2.weight"] = missing
    extra = dict(sd, **{"blocks.0.self_attn.extra": torch.zeros(3)})
    cases["unexpected keys (1): blocks.0.self_attn.extra"] = extra
    bad = dict(sd, **{"blocks.0.self_attn.q.weight": torch.zeros(256, 128)})
    cases["mis-shaped keys: blocks.0.self_attn.q.weight [256, 128] (expected [256, 256])"] = bad
    for msg, d in cases.items():
        path = tmp_path / "bad.safetensors"
        save_file({k: v.contiguous() for k, v in d.items()}, str(path))
        with pytest.raises(lipar.LiparError) as e:
            load_model(str(path))
        assert msg in str(e.value)
    save_file({"first_stage_model.encoder.weight": torch.zeros(2)}, str(tmp_path / "vae.safetensors"))
    with pytest.raises(lipar.LiparError, match="does not look like a Wan2.1 DiT"):
        load_model(str(tmp_path / "vae.safetensors"))
    with pytest.raises(lipar.LiparError, match="not found"):
        load_model(str(tmp_path / "nope.safetensors"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(lipar.LiparError, match="Could not read"):
        load_model(str(tmp_path / "junk.pt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(lipar.LiparError, match="state dict"):
        load_model(str(tmp_path / "list.pt"))


def test_config_inferred_from_shapes_for_1_3b():
    with torch.device("meta"):
        big = lipar.WanDiT(lipar.WAN_1_3B)
    assert lipar.infer_config(dict(big.state_dict())) == lipar.WAN_1_3B
