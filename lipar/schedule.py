"""Self-Forcing's flow-matching timesteps (Self-Forcing's scheduler: shift 5, x0 = x_t - s v).

A nominal step ``t`` in [0, 1000] maps to ``u = t / 1000`` and then through the shift:
``s = shift * u / (1 + (shift - 1) * u)``. The model sees timestep ``1000 * s``;
``x_t = (1 - s) x0 + s eps`` and the model predicts ``v = eps - x0``, so
``x0 = x_t - s v``.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable
from typing import Sequence

from .errors import LiparError

GENERATION_STEPS = (1000, 750, 500, 250)
EDITING_STEPS = (400, 350, 250)


def warp(step: float, shift: float = 5.0) -> float:
    """Nominal step in [0, 1000] -> noise level s in [0, 1]."""
    u = step / 1000.0
    return shift * u / (1.0 + (shift - 1.0) * u)


def sigmas(steps: Sequence[float], shift: float = 5.0) -> list[float]:
    return [warp(float(s), shift) for s in steps]


STEPS_EXAMPLE = "'400,350,250' for editing or '1000,750,500,250' for generation"
_INT_TEXT = re.compile(r"[+-]?[0-9]+")


def parse_steps(steps: str | Sequence[int]) -> tuple[int, ...]:
    """'400,350,250' or a sequence of ints -> strictly decreasing ints in (0, 1000].

    Text must be a plain comma-separated list of integers (spaces around items are fine);
    anything else (empty items, decimals, 'inf', words) raises LiparError.
    """
    vals = _steps_from_text(steps) if isinstance(steps, str) else _steps_from_sequence(steps)
    if not vals:
        raise LiparError(f"Give at least one denoising step, e.g. {STEPS_EXAMPLE}.")
    if any(not (0 < v <= 1000) for v in vals):
        raise LiparError(f"Steps must lie in (0, 1000]; got {list(vals)}. Use e.g. {STEPS_EXAMPLE}.")
    if any(a <= b for a, b in zip(vals, vals[1:])):
        raise LiparError(f"Steps must be strictly decreasing; got {list(vals)}. Use e.g. {STEPS_EXAMPLE}.")
    return vals


def _steps_from_text(text: str) -> tuple[int, ...]:
    if not text.strip():
        return ()
    items = [item.strip() for item in text.split(",")]
    bad = [item for item in items if not _INT_TEXT.fullmatch(item)]
    if bad:
        if "" in bad:
            what = f"{text!r} has an empty item"
        else:
            what = f"{bad[0]!r} is not a whole number" + (f" (in {text!r})" if bad[0] != text.strip() else "")
        raise LiparError(f"Steps must be comma-separated whole numbers like {STEPS_EXAMPLE}; {what}.")
    return tuple(int(item) for item in items)


def _steps_from_sequence(steps: Sequence[int]) -> tuple[int, ...]:
    if isinstance(steps, (bytes, bytearray)) or not isinstance(steps, Iterable):
        raise LiparError(f"Steps must be text (e.g. {STEPS_EXAMPLE}) or a sequence of ints; "
                         f"got {type(steps).__name__}.")
    return tuple(_step_int(s) for s in steps)


def _step_int(value: object) -> int:
    """One step of a sequence: an int (not a bool), or a float with no fractional part."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
            and float(value).is_integer():
        return int(value)
    raise LiparError(f"Each step must be a whole number; got {value!r}. Use e.g. {STEPS_EXAMPLE}.")


def check_shift(shift: float) -> float:
    if not (0.0 < shift <= 100.0):
        raise LiparError(f"shift must be within (0, 100]; got {shift}. Self-Forcing uses 5.")
    return float(shift)
