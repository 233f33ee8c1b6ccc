"""What the GPU benchmark scripts share: CUDA-event timing and saving a result.

    from bench_io import cuda_median_ms, save_result      # benchmarks/ is on sys.path when a script runs
    ms = cuda_median_ms(lambda: torch.mm(a, b), iters=20, warmup=3)
    save_result({"gpu": ..., "rows": rows}, "benchmarks/results/x.json")   # and a copy in $OUT when set
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
from typing import Callable

import torch


def cuda_median_ms(fn: Callable[[], object], iters: int, warmup: int = 0) -> float:
    """Median milliseconds of ``fn`` over ``iters`` calls, each timed by a pair of CUDA events (after
    ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def save_result(res: dict, out: str) -> None:
    """Write ``res`` as JSON to ``out`` (its folder made if needed) and, where the device tool's ``$OUT``
    is set, a copy of the file there under the same name."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    if os.environ.get("OUT"):
        copy = os.path.join(os.environ["OUT"], os.path.basename(out))
        if os.path.abspath(copy) != os.path.abspath(out):
            shutil.copy(out, copy)
