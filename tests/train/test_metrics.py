"""The JSONL log and json_safe: strict JSON, non-finite numbers as "nan", "inf", "-inf"."""

import json
import math

import numpy as np
import pytest
import torch

from preftune.train.metrics import JsonlLog, json_safe, read_jsonl


def strict_loads(line: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as strict parsers do."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_values_are_written_as_strings(tmp_path):
    log = JsonlLog(tmp_path / "metrics.jsonl")
    log.write({"step": 3, "loss": math.nan, "grad_norm": math.inf, "margin": -math.inf,
               "accuracy": 0.5, "nested": {"values": [1.0, math.nan]},
               "tensor": torch.tensor(math.nan), "numpy": np.float32(math.inf)})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert line.endswith("\n") and line.count("\n") == 1
    assert strict_loads(line) == {"step": 3, "loss": "nan", "grad_norm": "inf",
                                  "margin": "-inf", "accuracy": 0.5,
                                  "nested": {"values": [1.0, "nan"]}, "tensor": "nan",
                                  "numpy": "inf"}


def test_json_safe_converts_scalars_and_leaves_the_input_alone():
    record = {"loss": math.nan, "rows": (4, 7), "flag": True, "tensor": torch.tensor(2.5),
              "count": np.int64(12), "mean": np.float64(0.25),
              "per_rank": torch.tensor([1.0, math.inf])}
    safe = json_safe(record)
    assert safe == {"loss": "nan", "rows": [4, 7], "flag": True, "tensor": 2.5, "count": 12,
                    "mean": 0.25, "per_rank": [1.0, "inf"]}
    assert type(safe["tensor"]) is float and type(safe["count"]) is int
    assert type(safe["mean"]) is float
    assert math.isnan(record["loss"]) and record["rows"] == (4, 7)


def test_an_unwritable_value_fails_loudly(tmp_path):
    log = JsonlLog(tmp_path / "metrics.jsonl")
    with pytest.raises(TypeError):
        log.write({"step": 1, "what": object()})


def test_resumed_log_keeps_rows_with_non_finite_values_up_to_its_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = JsonlLog(path)
    for step, loss in ((1, 0.7), (2, math.nan), (3, 0.6)):
        log.write({"step": step, "loss": loss})
    JsonlLog(path, truncate_after_step=2)
    assert read_jsonl(path) == [{"step": 1, "loss": 0.7}, {"step": 2, "loss": "nan"}]
