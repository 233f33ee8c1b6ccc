"""Which mask cleanup to use by default? A model-free measurement on synthetic clips.

For each clip and cleanup variant, at the paper's thresholds (0.15 / 0.3), report:
- prune ratio;
- copy error: relative L2 between the clip and the clip rebuilt by token restore from its
  own kept tokens (what a perfectly temporally-stable edit would lose), overall and the
  worst single token (max over tokens of mean |error|), the artefact a viewer sees;
- moving tokens pruned: tokens whose content changed by more than 0.5 (mean |diff|)
  against their stand-in, i.e. visible content the transformer skipped.

    python benchmarks/cleanup.py            # writes benchmarks/results/cleanup.json
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lipar.clips import ClipSpec, make_clip  # noqa: E402
from lipar.plan import PlanConfig, build_plan, patchify  # noqa: E402
from lipar.restore import restore_latent  # noqa: E402

VARIANTS = {
    "none": dict(smooth=1, dilate_kept=0, open_pruned=0, trim_outliers=0.0),
    "trim 0.1": dict(smooth=1, dilate_kept=0, open_pruned=0, trim_outliers=0.1),
    "smooth 3": dict(smooth=3, dilate_kept=0, open_pruned=0, trim_outliers=0.0),
    "open 1": dict(smooth=1, dilate_kept=0, open_pruned=1, trim_outliers=0.0),
    "dilate 1": dict(smooth=1, dilate_kept=1, open_pruned=0, trim_outliers=0.0),
    "dilate 1 + open 1": dict(smooth=1, dilate_kept=1, open_pruned=1, trim_outliers=0.0),
    "dilate 2": dict(smooth=1, dilate_kept=2, open_pruned=0, trim_outliers=0.0),
}
CLIPS = {
    "objects": ClipSpec(kind="objects"),
    "objects (noisy)": ClipSpec(kind="objects", jitter=0.09),
    "pan": ClipSpec(kind="pan"),
    "cut": ClipSpec(kind="cut"),
    "static": ClipSpec(kind="static"),
}


def measure(z: torch.Tensor, cfg: PlanConfig) -> dict:
    plan = build_plan(z, cfg)
    rec = restore_latent(z, plan)
    err = (rec - z).abs()
    tok_err = patchify(err).mean(-1)                      # [B, T, Hp, Wp]
    return {
        "prune_ratio": round(plan.prune_ratio(), 4),
        "copy_rel_l2": round(((rec - z).norm() / z.norm()).item(), 5),
        "worst_token_err": round(tok_err.max().item(), 4),
        "moving_tokens_pruned": int((tok_err > 0.5).sum().item()),
    }


def main() -> None:
    rows = []
    for clip_name, spec in CLIPS.items():
        z = make_clip(spec)
        for name, opts in VARIANTS.items():
            r = {"clip": clip_name, "variant": name, **measure(z, PlanConfig(**opts))}
            rows.append(r)
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/cleanup.json", "w") as f:
        json.dump({"thresholds": [0.15, 0.3], "rows": rows}, f, indent=2)
    print(f"{'clip':<16} {'variant':<18} {'pruned':>7} {'copy relL2':>10} {'worst tok':>9} {'moving pruned':>13}")
    for r in rows:
        print(f"{r['clip']:<16} {r['variant']:<18} {r['prune_ratio']:>7.3f} {r['copy_rel_l2']:>10.4f} "
              f"{r['worst_token_err']:>9.3f} {r['moving_tokens_pruned']:>13d}")


if __name__ == "__main__":
    main()
