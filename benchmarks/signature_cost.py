"""What it costs to check, at the start of every run, that the CUDA graphs still read the
weights the model holds (``lipar.graphs.weights_signature``: address, dtype, shape, strides
and device of every parameter and buffer, and ComfyUI's cast flags).

    python benchmarks/signature_cost.py [--config 1.3b] [--device cuda] [--out JSON]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lipar  # noqa: E402
from lipar.graphs import has_weight_hooks, weights_signature  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="1.3b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    model = lipar.build_model(lipar.preset(a.config), dtype=torch.bfloat16, device=a.device)
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        weights_signature(model)
        has_weight_hooks(model)
        times.append(time.perf_counter() - t0)
    res = {"command": "python " + " ".join(sys.argv), "config": a.config, "device": a.device,
           "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
           "torch": torch.__version__, "parameters": sum(1 for _ in model.parameters()),
           "check_ms_median": round(1000 * statistics.median(times), 3), "check_ms_max": round(1000 * max(times), 3)}
    print(json.dumps(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
