"""Numbers on screen: a failing value must never read the same as its bound.

    vs(0.010043, 0.01)  -> ("0.010043", "0.01")      not "0.01 (allowed 0.01)"
    vs(0.0093, 0.01)    -> ("0.0093", "0.01")
"""

from __future__ import annotations

import math

DIGITS = 3
"""Significant digits shown when more are not needed to tell a value from its bound."""


def vs(value: float, bound: float, digits: int = DIGITS) -> tuple[str, str]:
    """`value` and `bound` formatted with the fewest significant digits (at least `digits`) at which
    they read differently whenever they differ."""
    n = digits
    while n < 17 and value != bound and _g(value, n) == _g(bound, n):
        n += 1
    return _g(value, n), _g(bound, digits if _g(bound, digits) == _g(bound, n) or math.isinf(bound) else n)


def _g(x: float, n: int) -> str:
    return f"{x:.{n}g}"
