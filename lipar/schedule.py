"""Self-Forcing's flow-matching timesteps (DESIGN section 3).

A nominal step ``t`` in [0, 1000] maps to ``u = t / 1000`` and then through the shift:
``s = shift * u / (1 + (shift - 1) * u)``. The model sees timestep ``1000 * s``;
``x_t = (1 - s) x0 + s eps`` and the model predicts ``v = eps - x0``, so
``x0 = x_t - s v``.
"""

from __future__ import annotations

from typing import Sequence

from lipar.errors import LiparError

GENERATION_STEPS = (1000, 750, 500, 250)
EDITING_STEPS = (400, 350, 250)


def warp(step: float, shift: float = 5.0) -> float:
    """Nominal step in [0, 1000] -> noise level s in [0, 1]."""
    u = step / 1000.0
    return shift * u / (1.0 + (shift - 1.0) * u)


def sigmas(steps: Sequence[float], shift: float = 5.0) -> list[float]:
    return [warp(float(s), shift) for s in steps]


def parse_steps(steps: str | Sequence[int]) -> tuple[int, ...]:
    """'400,350,250' or a sequence -> strictly decreasing ints in (0, 1000]."""
    if isinstance(steps, str):
        try:
            vals = tuple(int(float(p)) for p in steps.replace(" ", "").split(",") if p)
        except ValueError:
            raise LiparError(f"Steps must be comma-separated numbers like '400,350,250'; got {steps!r}.") from None
    else:
        vals = tuple(int(s) for s in steps)
    if not vals:
        raise LiparError("Give at least one denoising step, e.g. '400,350,250'.")
    if any(not (0 < v <= 1000) for v in vals):
        raise LiparError(f"Steps must lie in (0, 1000]; got {list(vals)}.")
    if any(a <= b for a, b in zip(vals, vals[1:])):
        raise LiparError(f"Steps must be strictly decreasing, e.g. 1000,750,500,250; got {list(vals)}.")
    return vals


def check_shift(shift: float) -> float:
    if not (0.0 < shift <= 100.0):
        raise LiparError(f"shift must be within (0, 100]; got {shift}. Self-Forcing uses 5.")
    return float(shift)
