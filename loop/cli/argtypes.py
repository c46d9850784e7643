"""Argument types that refuse out-of-range values while parsing, so a bad flag is a usage
error naming the flag (exit 2) before anything is opened, started or written."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (no upper bound when high is None)."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {value!r}") from None
        if n < low or (high is not None and n > high):
            span = f"{low} or more" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {n}")
        return n
    return parse


def number(low: float, high: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] ((low, high] when `above`)."""
    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
        if not math.isfinite(x) or x < low or (above and x == low) or x > high:
            lo = f"above {low:g}" if above else f"at least {low:g}"
            span = lo if math.isinf(high) else f"{lo} and at most {high:g}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return x
    return parse


positive = whole(1)
"""1, 2, 3, ...: counts of things that must exist (votes, workers, bots)."""
round_number = whole(0)
"""0, 1, 2, ...: rounds are numbered from 0."""
