"""A run folder -> what the report shows: its logged rows as series, its config, final numbers.

Reads what ``preftune train`` leaves in ``OUTPUT_DIR``: ``metrics.jsonl`` (train rows, and
``eval_`` rows at evaluation steps), ``preftune_config.yaml`` and the model card
``README.md`` of a finished run, or the config inside the newest checkpoint of an
unfinished one. Nothing here needs the run to have finished or to be well formed: a missing
file, a cut-off last line or a non-finite value becomes a note on the page.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from preftune.errors import ConfigError
from preftune.train.checkpoint import STATE_FILE, latest_checkpoint

# JsonlLog writes non-finite floats as these strings (JSON has no NaN).
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# Rows keys that are coordinates, not metrics.
COORDINATES = ("step", "epoch")


@dataclass
class Series:
    steps: list[int]
    values: list[float]

    @property
    def non_finite_steps(self) -> list[int]:
        return [s for s, v in zip(self.steps, self.values) if not math.isfinite(v)]


@dataclass
class Run:
    name: str
    folder: Path
    series: dict[str, Series]
    config: dict = field(default_factory=dict)
    """Sections of the saved config (``model``, ``data``, ``method``, ``training``)."""
    settings: dict = field(default_factory=dict)
    """The model card's settings table (method as described, steps, global batch ...)."""
    notes: list[str] = field(default_factory=list)

    @property
    def last_step(self) -> Optional[int]:
        steps = [s.steps[-1] for s in self.series.values() if s.steps]
        return max(steps) if steps else None

    def final(self, name: str) -> Optional[tuple[int, float]]:
        """(step, value) of the last finite value of a metric, or None."""
        series = self.series.get(name)
        if series is None:
            return None
        for step, value in zip(reversed(series.steps), reversed(series.values)):
            if math.isfinite(value):
                return step, value
        return None


def as_number(value) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in NON_FINITE:
        return NON_FINITE[value.strip().lower()]
    return None


def read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a metrics.jsonl, and notes about lines that could not be read (a run killed
    mid-write leaves a cut-off last line)."""
    rows, notes = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            notes.append(f"{path.name} line {number} is not JSON; skipped")
            continue
        if not isinstance(row, dict) or as_number(row.get("step")) is None:
            notes.append(f"{path.name} line {number} has no step; skipped")
            continue
        rows.append(row)
    return rows, notes


def to_series(rows: list[dict]) -> dict[str, Series]:
    """Metric name -> its (step, value) points in log order. A later row for the same step
    (a resumed run logging a step again) replaces the earlier one."""
    points: dict[str, dict[int, float]] = {}
    for row in rows:
        step = int(as_number(row["step"]))
        for name, raw in row.items():
            value = as_number(raw)
            if name in COORDINATES or value is None:
                continue
            points.setdefault(name, {})[step] = value
    return {name: Series(sorted(p), [p[s] for s in sorted(p)]) for name, p in points.items()}


def read_settings(card: Path) -> dict:
    """The ``| setting | value |`` rows of the model card, final metrics left out."""
    settings = {}
    for line in card.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if (line.startswith("|") and len(cells) == 2 and cells[0] not in ("setting", "---")
                and not cells[0].startswith("final ")):
            settings[cells[0]] = cells[1]
    return settings


def read_config(folder: Path) -> tuple[dict, str]:
    """(config sections, where they came from): the final export's YAML, else the newest
    checkpoint's state."""
    saved = folder / "preftune_config.yaml"
    if saved.is_file():
        return yaml.safe_load(saved.read_text()) or {}, saved.name
    checkpoint = latest_checkpoint(folder)
    if checkpoint is not None:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        return state.get("config", {}), f"{checkpoint.name}/{STATE_FILE}"
    return {}, ""


def load_run(folder: Path, name: Optional[str] = None) -> Run:
    folder = Path(folder)
    metrics = folder / "metrics.jsonl" if folder.is_dir() else folder
    if not metrics.is_file():
        raise ConfigError(f"{folder}: no metrics.jsonl (give the output_dir of a "
                          "`preftune train` run)")
    folder = metrics.parent
    rows, notes = read_rows(metrics)
    if not rows:
        notes.append("metrics.jsonl holds no rows yet")
    config, source = read_config(folder)
    if not source:
        notes.append("no saved config (preftune_config.yaml or a checkpoint) in the folder")
    card = folder / "README.md"
    settings = read_settings(card) if card.is_file() else {}
    return Run(name or folder.name, folder, to_series(rows), config, settings, notes)
