"""Shared fixtures: the real SmolLM2 tokenizer (offline, cached) and tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HH_RLHF = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
ORCA_OPENAI = SHARED_DATA / "orca-dpo-pairs-openai-format.jsonl"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder sits beside the project root)")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from preftune.model_io import load_tokenizer

    return load_tokenizer("smollm2")
