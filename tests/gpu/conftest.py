"""The GPU tests reuse the fast-path tests' helpers."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "forward" / "fast"))
