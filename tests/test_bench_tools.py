"""The helpers of the GPU benchmark scripts, on synthetic data (no GPU needed)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import memory_breakdown  # noqa: E402
import profile_run  # noqa: E402


def test_busy_union_counts_overlaps_once():
    assert profile_run.busy_union([]) == 0
    assert profile_run.busy_union([(0, 10), (5, 15), (20, 25), (21, 22)]) == 20
    assert profile_run.busy_union([(20, 25), (0, 10)]) == 15


def test_kernel_kinds():
    assert profile_run.kind_of("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention_cudnn"
    assert profile_run.kind_of("attn_fwd") == "attention_bias"
    assert profile_run.kind_of("nvjet_sm90_tst_192x192_64x4") == "gemm"
    assert profile_run.kind_of("rope_kernel") == "rope"
    assert profile_run.kind_of("vectorized_layer_norm_kernel") == "other"


def _frames(path, line):
    return [{"filename": "/x/torch/nn/functional.py", "line": 1, "name": "linear"},
            {"filename": f"/repo/lipar/{path}", "line": line, "name": "f"}]


def test_live_at_peak_replays_allocations():
    trace = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": _frames("causal.py", 10)},
        {"action": "alloc", "addr": 2, "size": 50, "frames": _frames("graphs.py", 20)},
        {"action": "free_completed", "addr": 2, "size": 50},
        {"action": "alloc", "addr": 3, "size": 30, "frames": _frames("graphs.py", 20)},
        {"action": "alloc", "addr": 4, "size": 40, "frames": _frames("sampler.py", 5)},   # live: 170, the peak
        {"action": "free_completed", "addr": 4, "size": 40},
        {"action": "free_completed", "addr": 99, "size": 7},                                # freed before the trace
    ]
    peak, sites = memory_breakdown.live_at_peak(trace, start=0)
    assert peak == 170
    assert sites == {"causal.py:10 f": 100, "graphs.py:20 f": 30, "sampler.py:5 f": 40}
    peak, sites = memory_breakdown.live_at_peak(trace, start=5)    # only after the 'sampler' free
    assert peak == 130 and "sampler.py:5 f" not in sites
