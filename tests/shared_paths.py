"""Where the shared preference data sits: ``../shared/data`` beside the project root."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HH_RLHF = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
ORCA_OPENAI = SHARED_DATA / "orca-dpo-pairs-openai-format.jsonl"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder sits beside the project root)")
    return path
