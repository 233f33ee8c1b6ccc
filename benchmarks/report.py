"""Render the benchmark JSON files under benchmarks/results/ as Markdown tables.

    python benchmarks/report.py            # prints the tables used in README.md
"""

from __future__ import annotations

import glob
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _gb(b):
    return f"{b / 2**30:.2f}" if b else "-"


def compare_table(path: str) -> str:
    d = json.load(open(path))
    lines = [f"`{os.path.relpath(path, os.path.dirname(ROOT))}` — {d['gpu']}, torch {d['torch']}, {d['config']} "
             f"({d['weights']} weights), {d['dtype']}, {d['video_frames']} frames {d['width']}x{d['height']}, "
             f"steps {d['steps']}, clip `{d['clip']}`, prune ratio {d.get('prune_ratio', 0):.3f}",
             "",
             "| run | seconds | FPS | speedup | TFLOP/s eff. | peak GiB | memory ratio | kept-token rel. L2 | PSNR dB (restored) |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| unpruned | {d['seconds']:.3f} | {d['fps']:.1f} | 1.00 | {d['tflops_effective']} | {_gb(d['peak_memory_bytes'])} | 1.00 | 0 | inf |"]
    for name, m in d.get("modes", {}).items():
        lines.append(f"| {name} | {m['seconds']:.3f} | {m['fps']:.1f} | {m['speedup']:.2f} | {m['tflops_effective']} | "
                     f"{_gb(m['peak_memory_bytes'])} | {m['memory_ratio'] or '-'} | {m['rel_l2_kept']:.4f} | {m['psnr_db']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    for path in sorted(glob.glob(os.path.join(ROOT, "*.json")) + glob.glob(os.path.join(ROOT, "cpu", "*.json"))):
        d = json.load(open(path))
        if "modes" in d:
            print(compare_table(path))
            print()


if __name__ == "__main__":
    main()
