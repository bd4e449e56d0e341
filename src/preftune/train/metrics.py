"""Metric sums and counts -> means, across micro-batches, steps and ranks; the JSONL log.

Every metric is kept as (sum, count) until it is written, so an average over a logging
window of several steps, several micro-batches and several ranks is exactly the average
over the examples it covers.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch


class MetricWindow:
    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, values: dict[str, tuple]) -> None:
        for name, (total, count) in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(total)
            self.counts[name] = self.counts.get(name, 0.0) + float(count)

    def add_scalar(self, name: str, value: float, count: float = 1.0) -> None:
        self.add({name: (value * count, count)})

    def means(self, all_reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
              ) -> dict[str, float]:
        names = sorted(self.sums)
        if all_reduce is not None and names:
            packed = torch.tensor([[self.sums[n], self.counts[n]] for n in names],
                                  dtype=torch.float64)
            packed = all_reduce(packed)
            reduced = {n: (float(s), float(c)) for n, (s, c) in zip(names, packed.tolist())}
        else:
            reduced = {n: (self.sums[n], self.counts[n]) for n in names}
        return {n: s / c for n, (s, c) in reduced.items() if c > 0}

    def merge(self, other: "MetricWindow") -> None:
        self.add({n: (other.sums[n], other.counts[n]) for n in other.sums})

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()


def total_loss(means: dict[str, float], nll_weight: float) -> float:
    """The logged loss: mean preference loss plus the weighted token-mean NLL."""
    loss = means.get("loss/preference", 0.0)
    if nll_weight and "nll_loss" in means:
        loss += nll_weight * means["nll_loss"]
    return loss


class JsonlLog:
    """One JSON object per line, flushed each write so a killed run keeps what it logged.
    Strict JSON: a non-finite number (a NaN loss, an infinite gradient norm) is written as
    the string ``"nan"``, ``"inf"`` or ``"-inf"`` (:func:`json_safe`)."""

    def __init__(self, path: Path, truncate_after_step: Optional[int] = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and path.exists():
            # A resumed run rewrites the steps after its checkpoint; drop the stale ones.
            kept = [line for line in path.read_text().splitlines()
                    if _step_of(line) is not None and _step_of(line) <= truncate_after_step]
            # Replaced whole, so a kill during the rewrite leaves the old log, not half of it.
            staging = path.with_name(path.name + ".tmp")
            staging.write_text("".join(line + "\n" for line in kept))
            os.replace(staging, path)

    def write(self, record: dict) -> None:
        line = json.dumps(json_safe(record), allow_nan=False)
        with self.path.open("a") as handle:
            handle.write(line + "\n")


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that strict JSON parsers accept: non-finite floats, also inside
    dicts, lists and tuples, become the strings ``"nan"``, ``"inf"``, ``"-inf"`` (which
    of them is worth keeping: a NaN loss and an overflowing gradient are different faults;
    report/runs.py reads them back as numbers). Python's ``json`` would write ``NaN`` and
    ``Infinity``, which are not JSON. 0-d tensors and numpy scalars become Python numbers;
    larger arrays and tensors become lists."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    elif hasattr(value, "tolist"):
        return json_safe(value.tolist())
    if isinstance(value, float):
        # float() also turns numpy's float64 (a float subclass) into a plain float.
        return float(value) if math.isfinite(value) else str(float(value))
    return value


def _step_of(line: str) -> Optional[int]:
    """The step of one log line; None for a blank line or the torn last line of a run
    killed while writing it."""
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
