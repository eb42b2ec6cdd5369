"""argparse value types shared by the command lines (`python -m ml`, `python -m bench ...`): one rule
each, one wording (argparse prints "argument --x: <message>" and exits with status 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(
    parse: Callable[[str], float] = int,
    low: float | None = None,
    high: float | None = None,
    *,
    above: float | None = None,
    what: str = "a whole number",
) -> Callable[[str], float]:
    """A `type=` for argparse: `parse(text)`, finite, at least `low`, strictly above `above`, at most
    `high` (each bound optional)."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be above {above:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:g}, got {text}")
        return value

    return convert


positive_int = number(int, low=1)
