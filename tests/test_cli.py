"""The command line (`python -m lipar ...`): argument errors, output files, JSON, progress, help."""

import argparse
import io
import json

import pytest
import torch

import lipar
import lipar.bench
from lipar.__main__ import build_parser, main

SMALL = ["--config", "tiny", "--frames", "9", "--height", "32", "--width", "48"]


def _strict_json(text):
    def refuse(constant):
        raise AssertionError(f"non-finite number {constant} in the JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the bench builds a model or samples: errors must come before any work."""
    def work(*args, **kwargs):
        raise AssertionError("the bench started work before refusing its arguments")
    for name in ("build_model", "sample"):
        monkeypatch.setattr(lipar.bench, name, work)


def _error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("lipar: error: "), err
    return err


@pytest.mark.parametrize("args, says", [
    (["--compare", "--modes", "bogus"], "'bogus' is not one of them"),
    (["--compare", "--forms", "exact,,compressed"], "--forms"),
    (["--compare", "--forms", "exact", "--modes", "none"], "--forms"),
    (["--modes", "none"], "--modes needs --compare"),
    (["--threshold", "-5"], "--threshold needs --compare"),
    (["--forms", "exact", "--anchor-threshold", "0.2"], "--anchor-threshold, --forms need --compare"),
    (["--compare", "--threshold", "-5"], "--threshold must be within [0, 10]"),
    (["--compare", "--threshold", "nan"], "--threshold must be within [0, 10]"),
    (["--compare", "--target-prune", "1.5"], "[0, 0.95]"),
    (["--compare", "--target-prune", "0.999"], "[0, 0.95]"),
    (["--compare", "--target-prune", "-0.1"], "[0, 0.95]"),
    (["--compare", "--target-prune", "0.3", "--threshold", "0.1"], "not both"),
    (["--compare", "--target-prune", "0.3"], "out of reach"),          # one chunk: nothing can be pruned
    (["--repeat", "0"], "--repeat"),
    (["--height", "0"], "--height must be a positive multiple of 16"),
    (["--width", "-16"], "--width must be a positive multiple of 16"),
    (["--frames", "0"], "--frames must be 4k+1"),
    (["--frames", "6"], "--frames must be 4k+1"),
    (["--device", "foo"], "'cpu', 'cuda' or 'cuda:N'"),
    (["--device", "meta"], "'cpu', 'cuda' or 'cuda:N'"),
    (["--device", "cuda:99"], "--device cuda:99"),
    (["--seed", str(2 ** 70)], "[0, 2**63-1]"),
    (["--seed", "-1"], "[0, 2**63-1]"),
    (["--steps", "inf"], "'400,350,250'"),
    (["--steps", "400,,250"], "empty item"),
    (["--steps", "400.9,350.2"], "'400.9' is not a whole number"),
    (["--graphs", "on"], "--graphs on needs a CUDA device"),
    (["--model", "no/such/checkpoint.pt"], "--model"),
    (["--height", "65536", "--width", "65536"], "free"),              # terabytes of activations
])
def test_bench_refuses_bad_arguments_before_any_work(capsys, no_work, args, says):
    err = _error(capsys, ["bench", *SMALL, "--device", "cpu", *args] if "--device" not in args
                 else ["bench", *SMALL, *args])
    assert says in err, err


def test_bench_memory_check_says_what_it_needs_and_what_is_free(capsys, no_work, monkeypatch):
    monkeypatch.setattr(lipar.bench, "free_memory_bytes", lambda device: 2 ** 30)
    err = _error(capsys, ["bench", "--config", "1.3b", "--frames", "81"])
    assert "needs about" in err and "KV cache" in err and "but only 1.00 GiB is free" in err, err
    assert "--height" in err                                      # and what to change
    needed = lipar.bench.estimate_bench_memory(lipar.WAN_1_3B, (21, 60, 104), torch.bfloat16, 3, 3)
    assert needed["kv_cache"] == 2 * 30 * (21 * 30 * 52) * 1536 * 2          # 2 * layers * tokens * dim * 2 bytes
    assert 1.3e9 * 2 < needed["weights"] < 1.5e9 * 2
    tiny = lipar.bench.estimate_bench_memory(lipar.TINY, (3, 4, 6), torch.float32, 3, 3)
    assert tiny["weights"] == 4 * sum(p.numel() for p in lipar.build_model(lipar.TINY).parameters())


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_bench_out_is_checked_before_running(capsys, no_work, tmp_path, where):
    (tmp_path / "a_file").write_text("x")
    out = {"folder": tmp_path, "under_a_file": tmp_path / "a_file" / "r.json"}[where]
    err = _error(capsys, ["bench", *SMALL, "--out", str(out)])
    assert "--out" in err and "folder" in err, err


def test_bench_strict_json_progress_and_out_file(capsys, tmp_path):
    out = tmp_path / "new" / "dir" / "result.json"             # missing folders are created
    argv = ["bench", *SMALL, "--repeat", "1", "--compare", "--threshold", "0", "--anchor-threshold", "0",
            "--modes", "none,noise_aware", "--forms", "compressed", "--json", "--out", str(out)]
    assert main(argv) == 0
    cap = capsys.readouterr()
    res = _strict_json(cap.out)                                # stdout is the JSON and nothing else
    assert res["prune_ratio"] == 0.0
    assert set(res["modes"]) == {"none", "noise_aware/compressed"}
    for m in res["modes"].values():
        assert m["psnr_db"] is None and m["rel_l2"] == 0.0      # identical outputs: null, never Infinity
    assert _strict_json(out.read_text()) == res
    assert res["command"] == "python -m lipar " + " ".join(argv)
    for key in ("seconds", "fps", "tflops_effective", "model_bytes", "attention_backend", "tokens_total"):
        assert key in res
    for name in ("baseline", "none", "noise_aware/compressed"):   # a line when each configuration starts and ends
        assert f"lipar: {name}: 1 warm-up + 1 timed run" in cap.err
        assert f"lipar: {name}: " in cap.err.split(f"lipar: {name}: 1 warm-up")[1]


def test_json_never_holds_non_finite_numbers():
    text = lipar.bench.to_json({"a": float("inf"), "b": [1.5, float("nan")], "c": {"d": -float("inf")}})
    assert _strict_json(text) == {"a": None, "b": [1.5, None], "c": {"d": None}}


def test_progress_bar_on_a_terminal_and_lines_always():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, bar in ((Terminal(), True), (io.StringIO(), False)):
        p = lipar.bench.BenchProgress(stream)
        on_pass = p.start("noise_aware/compressed", 2, 5)
        for i in range(15):
            on_pass(lipar.PassInfo(0, i // 5, 1, i % 5, 3, i % 5, 5))
        p.end("0.1 s median")
        text = stream.getvalue()
        assert p.passes == 15
        assert "lipar: noise_aware/compressed: 1 warm-up + 2 timed runs, 5 transformer passes each" in text
        assert "lipar: noise_aware/compressed: 0.1 s median" in text
        assert ("/15 [" in text) == bar, text                   # a bar of the 15 passes, only on a terminal


def test_validate_resolves_defaults_in_one_place():
    s = lipar.bench.BenchOptions(compare=True, frames=21, height=32, width=48).validate()
    assert (s.options.threshold, s.options.anchor_threshold) == (0.15, 0.3)
    assert s.runs == (("none", "exact"), ("m_degree", "exact"), ("noise_aware", "exact"),
                      ("m_degree", "compressed"), ("noise_aware", "compressed"))
    assert s.latent_dims == (6, 4, 6) and s.passes_per_run == 2 * 3 + 1
    assert lipar.bench.BenchOptions(frames=21, height=32, width=48).validate().plan_config is None


def _tiny_checkpoint(tmp_path):
    src = tmp_path / "self_forcing_dmd.pt"
    model = lipar.build_model(lipar.TINY, seed=3)
    torch.save({"generator_ema": {f"model.{k}": v for k, v in model.state_dict().items()}}, src)
    return src


def test_convert_refuses_missing_folder_and_overwriting(capsys, tmp_path):
    src = _tiny_checkpoint(tmp_path)
    err = _error(capsys, ["convert", str(src), str(tmp_path / "missing" / "out.safetensors")])
    assert str(tmp_path / "missing") in err and "does not exist" in err, err
    assert _error(capsys, ["convert", str(tmp_path / "nope.pt"), str(tmp_path / "o.safetensors")])
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"precious")
    err = _error(capsys, ["convert", str(src), str(dst)])
    assert "--force" in err and dst.read_bytes() == b"precious", err
    assert main(["convert", str(src), str(dst), "--force"]) == 0
    assert _strict_json(capsys.readouterr().out)["dim"] == 256
    assert dst.stat().st_size > 1000


def test_preview_checks_extension_and_folder(capsys, tmp_path):
    small = ["--frames", "9", "--height", "32", "--width", "48"]
    err = _error(capsys, ["preview", *small, "--output", str(tmp_path / "mask.mp4")])
    assert ".webp" in err and ".gif" in err and ".mp4" in err, err
    err = _error(capsys, ["preview", *small, "--output", str(tmp_path / "missing" / "mask.webp")])
    assert str(tmp_path / "missing") in err, err
    assert not (tmp_path / "missing").exists()
    assert "--height" in _error(capsys, ["preview", "--frames", "9", "--height", "-16", "--output",
                                         str(tmp_path / "m.webp")])
    assert main(["preview", *small, "--output", str(tmp_path / "mask.gif")]) == 0
    assert (tmp_path / "mask.gif").stat().st_size > 0


def _subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("command", ["bench", "convert", "preview"])
def test_every_option_has_help_with_its_default(command):
    p = _subparsers()[command]
    assert p.description and p.epilog and "python -m lipar " + command in p.epilog
    formatter = p._get_formatter()
    for action in p._actions:
        assert action.help, f"{command} {action.dest} has no help"
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert "default" in formatter._get_help_string(action), f"{command} {action.dest}: no default shown"


def test_bench_help_explains_random_weights_and_shows_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "randomly initialised" in text and "--model" in text
    assert "python -m lipar bench --config tiny --frames 21 --height 240 --width 416 --compare" in text
    assert "--target-prune 0.338 --json" in text
    assert "(default: 0.15)" in text and "(default: 3)" in text


def test_bench_refuses_a_window_too_small_for_its_chunk_before_any_work(capsys, no_work):
    _error(capsys, ["bench", *SMALL, "--window-frames", "4"])               # before any work
    capsys.readouterr()


def test_bench_reports_kv_cache_bytes_and_chunk_seconds(capsys):
    args = ["bench", "--config", "tiny", "--frames", "45", "--height", "32", "--width", "48", "--repeat", "1", "--json"]
    sizes = {}
    for window in ("6", "0"):
        assert main(args + ["--window-frames", window]) == 0
        res = _strict_json(capsys.readouterr().out)
        assert len(res["chunk_seconds"]) == 4 and all(s > 0 for s in res["chunk_seconds"])
        sizes[window] = res["kv_cache_bytes"]
    per_frame = 2 * lipar.TINY.num_layers * 6 * lipar.TINY.dim * 4         # k and v, 6 tokens a frame, float32
    assert sizes == {"6": 6 * per_frame, "0": 12 * per_frame}
