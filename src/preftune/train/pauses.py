"""Pauses a crash test sets through the environment, so that a kill or a stop signal lands
inside one moment of a run for certain (checkpoint writes and verification have theirs in
checkpoint.py). Unset, they cost one dictionary lookup."""

from __future__ import annotations

import os
import time

EVAL_DELAY_ENV = "PREFTUNE_EVAL_DELAY"
"""Seconds to wait after each evaluation batch."""
FINAL_SAVE_DELAY_ENV = "PREFTUNE_FINAL_SAVE_DELAY"
"""Seconds to wait inside the final save, once the weights are in its staging folder."""


def pause(env: str) -> None:
    seconds = os.environ.get(env)
    if seconds:
        time.sleep(float(seconds))
