"""The fast path's first-call probe: a few tokens through both stations, judged in the
precision the run computes in (fast/forward.py decides what to keep)."""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch

from preftune.forward.logps import unwrap
from preftune.types import SequenceLogps, TokenizedPair

PROBE_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6}  # others: ProbeJudge


def _worst(a: SequenceLogps, b: SequenceLogps) -> float:
    return max(float((a.chosen.double() - b.chosen.double()).abs().max()),
               float((a.rejected.double() - b.rejected.double()).abs().max()))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@contextlib.contextmanager
def without_autocast(model: torch.nn.Module):
    """The model's own forward, outside autocast: accelerate's mixed precision wraps the
    instance's ``forward`` in an autocast context and keeps the original as
    ``_original_forward``; that is put back for the duration."""
    inner = unwrap(model)
    original = inner.__dict__.get("_original_forward")
    patched = inner.__dict__.get("forward")
    if original is not None:
        inner.forward = original
    try:
        with torch.autocast(next(inner.parameters()).device.type, enabled=False):
            yield
    finally:
        if original is not None:
            if patched is None:
                del inner.forward
            else:
                inner.forward = patched


class ProbeJudge:
    """Is the fast path's probe result right, in the precision the run computes in?

    - float32/float64 compute: equal to PaddedForward within ``PROBE_TOLERANCE``.
    - bf16/fp16 autocast over float32 weights: both paths are judged against PaddedForward
      run in float32 (same weights, autocast off); the fast path is kept when it is no
      farther from that than 3 times the padded path, plus one ulp of the compute dtype.
      (On SmolLM2 both are ~0.1 from float32 in bf16; a model that ignores the custom mask
      is 30 times the padded path's distance away on a tiny random model, and more on a
      trained one.)
    - bf16/fp16 weights: no float32 weights to compare with; equal to PaddedForward within
      4 ulps of the weights' dtype at the log-probs' scale."""

    def __init__(self, model, device: torch.device, expected: SequenceLogps, run_padded):
        self.expected = expected
        weights = next(unwrap(model).parameters()).dtype
        autocast = torch.is_autocast_enabled(device.type)
        self.compute = torch.get_autocast_dtype(device.type) if autocast else weights
        self.truth = None
        if self.compute not in PROBE_TOLERANCE and weights in (torch.float32, torch.float64):
            with without_autocast(model):
                self.truth = run_padded()
            self.where = f"{_dtype_name(self.compute)} autocast, judged against float32"
        elif self.compute in PROBE_TOLERANCE:
            self.where = f"{_dtype_name(self.compute)}, judged against the padded path"
        else:
            self.where = (f"{_dtype_name(self.compute)} weights, judged against the padded "
                          "path")
        self.errors: dict[str, float] = {}

    def __call__(self, got: SequenceLogps, what: str) -> Optional[str]:
        ulp = torch.finfo(self.compute).eps
        if self.truth is not None:
            fast, padded = _worst(got, self.truth), _worst(self.expected, self.truth)
            self.errors[what], self.errors["padded path"] = fast, padded
            bound = 3 * padded + ulp
            if not fast <= bound:  # also catches NaN
                return (f"probe ({self.where}): {fast:.3g} from float32 against the padded "
                        f"path's {padded:.3g} (bound {bound:.3g})")
            return None
        worst = _worst(got, self.expected)
        self.errors[what] = worst
        scale = max(1.0, float(self.expected.chosen.abs().max()),
                    float(self.expected.rejected.abs().max()))
        tolerance = PROBE_TOLERANCE.get(self.compute, 4 * ulp * scale)
        if not worst <= tolerance:
            return (f"probe ({self.where}) differs from PaddedForward by {worst:.3g} "
                    f"(tolerance {tolerance:.3g})")
        return None

    def summary(self) -> str:
        measured = ", ".join(f"{k} {v:.3g}" for k, v in self.errors.items())
        away = "from float32" if self.truth is not None else "from the padded path"
        return f"probe in {self.where}" + (f" ({measured} {away})" if measured else "")


def probe_pairs(pairs: Sequence[TokenizedPair]) -> list[TokenizedPair]:
    """Two short pairs cut from the batch (real token ids, ragged lengths)."""
    first, second = pairs[0], pairs[-1]
    return [TokenizedPair(-1, first.prompt_ids[:4], first.chosen_ids[:3], first.rejected_ids[:2]),
            TokenizedPair(-2, second.prompt_ids[:3], second.chosen_ids[:2],
                          second.rejected_ids[:4])]
