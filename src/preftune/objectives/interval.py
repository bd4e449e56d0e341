"""The values a number may take: an interval with open or closed ends.

Used by the objectives' hyperparameter declarations and by the config's checks, so that
the check, its error message and the help text all read the same bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Interval:
    """``low`` and ``high`` (None: unbounded), each end closed unless marked open."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False  # no setting here means anything as inf or NaN
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        """``> 0``, ``>= 1``, ``in [0, 0.5)``, ``any finite number``."""
        if self.low is None and self.high is None:
            return "any finite number"
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


ANY = Interval()
POSITIVE = Interval(0.0, low_open=True)
NON_NEGATIVE = Interval(0.0)
AT_LEAST_ONE = Interval(1.0)
UNIT = Interval(0.0, 1.0)
"""[0, 1]: a share of something."""
BELOW_ONE = Interval(0.0, 1.0, high_open=True)
"""[0, 1): a probability that must leave something (dropout, a held-out fraction)."""
