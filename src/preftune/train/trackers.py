"""Experiment trackers (``report_to``) through accelerate: the rows of ``metrics.jsonl``, also
sent to TensorBoard, Weights & Biases, MLflow or Trackio.

    preftune train --config recipe.yaml --report_to tensorboard        # OUTPUT_DIR/runs/
    preftune train --config recipe.yaml --report_to wandb,tensorboard

accelerate drops a tracker whose package is missing with only a debug message; a run asked
to report somewhere must not train for hours and report nowhere, so the packages are checked
here, when the trainer is built, and a missing one is a :class:`ConfigError`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

from preftune.config import Config, TrainingConfig
from preftune.errors import ConfigError

# report_to name -> the packages accelerate accepts for it (any one will do), and what to
# install.
TRACKERS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "trackio": (("trackio",), "trackio"),
}
NONE = ("", "none", "no", "false")


def parse_report_to(value: Any) -> list[str]:
    """``None``/``"none"`` -> []; ``"tensorboard,wandb"`` or a list -> names, checked."""
    if value is None or value is False:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = [str(item).strip().lower() for item in items]
    names = [n for n in names if n not in NONE]
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"report_to: unknown tracker {name!r}; use one or more of "
                              f"{', '.join(TRACKERS)} (comma-separated), or none")
        packages, install = TRACKERS[name]
        if not any(importlib.util.find_spec(p) is not None for p in packages):
            raise ConfigError(f"report_to: {name} needs its package: pip install {install}")
    return list(dict.fromkeys(names))


def accelerator_options(t: TrainingConfig) -> dict:
    """Keyword arguments for ``Accelerator``: the trackers and where local ones write."""
    names = parse_report_to(t.report_to)
    if not names:
        return {}
    return {"log_with": names, "project_dir": str(Path(t.output_dir) / "runs")}


def flat_config(config: Config) -> dict[str, Any]:
    """``{"training/learning_rate": 1e-6, ...}``: TensorBoard's hyperparameter table takes
    only numbers, strings and booleans, so anything else is written as text."""
    flat = {}
    for section, values in config.to_dict().items():
        # The objective's hyperparameters as keys of their own (method/beta), as given.
        given = values.pop("hyperparameters", {})
        values = {**values, **given}
        for key, value in values.items():
            keep = isinstance(value, (bool, int, float, str))
            flat[f"{section}/{key}"] = value if keep else str(value)
    return flat


class TrackedLog:
    """Writes each row to the JSONL log and sends its numbers to the trackers at its step."""

    def __init__(self, jsonl, accelerator) -> None:
        self.jsonl, self.accelerator = jsonl, accelerator

    def write(self, record: dict) -> None:
        if self.jsonl is not None:
            self.jsonl.write(record)
        numbers = {k: float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(numbers, step=int(record["step"]))


def start(accelerator, config: Config, jsonl) -> Optional[object]:
    """Opens the trackers (when the accelerator has any) and returns the log the loop
    writes to: the JSONL log alone, or one that also feeds the trackers."""
    if not accelerator.log_with:
        return jsonl
    t = config.training
    accelerator.init_trackers(t.run_name or Path(t.output_dir).name or "preftune",
                              config=flat_config(config))
    return TrackedLog(jsonl, accelerator)


def finish(accelerator) -> None:
    """Flushes and closes the trackers; nothing when there are none."""
    if accelerator.log_with:
        accelerator.end_training()
