"""When a run writes checkpoints: every ``save_steps`` steps, every ``save_minutes``
minutes (30 by default), at each epoch's end (``save_strategy epoch``), and always at the
last step, before the final evaluation and save, so that a stop or a crash there loses no
training. ``save_strategy no`` writes none (a stop signal still writes one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

STRATEGIES = ("steps", "epoch", "no")
"""Values of ``save_strategy`` and ``eval_strategy``."""


@dataclass
class SavePolicy:
    enabled: bool
    every: Optional[int]
    """Steps between checkpoints; None: by time (and at the last step) only."""
    minutes: Optional[float]
    keep: Optional[int]

    @classmethod
    def from_config(cls, t, steps_per_epoch: int) -> "SavePolicy":
        """From a validated config (preftune.validation checks the strategy and counts)."""
        if t.save_strategy == "no":
            return cls(False, None, None, t.save_total_limit)
        every = steps_per_epoch if t.save_strategy == "epoch" else t.save_steps
        return cls(True, every, t.save_minutes, t.save_total_limit)

    def describe(self, output_dir: Path) -> str:
        if not self.enabled:
            return ("checkpoints: off (save_strategy no): a stop signal still writes one, a "
                    "crash loses the run")
        when = [f"every {self.every} steps"] if self.every else []
        when += [f"every {self.minutes:g} min"] if self.minutes else []
        when.append("at the last step")
        kept = f"keeping the newest {self.keep}" if self.keep else "keeping all"
        return f"checkpoints: {', '.join(when)}, in {output_dir}/checkpoint-N; {kept}"


class SaveClock:
    """Whether a checkpoint is due after a step: by step count, by time since the last
    one, or because it is the last step."""

    def __init__(self, policy: SavePolicy):
        self.policy = policy
        self.last = time.monotonic()

    def saved(self) -> None:
        self.last = time.monotonic()

    def due_by_steps(self, step: int, last: bool) -> bool:
        p = self.policy
        return p.enabled and (last or bool(p.every) and step % p.every == 0)

    def due_by_time(self) -> bool:
        minutes = self.policy.minutes
        return (self.policy.enabled and bool(minutes)
                and time.monotonic() - self.last >= 60 * minutes)
