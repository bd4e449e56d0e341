"""Faster forward station: completion-only chunked log-probs, prefix sharing, packing."""

from preftune.forward.fast.chunked_logps import HeadTransform, chunked_token_logps
from preftune.forward.fast.forward import FastForward, build_forward
from preftune.forward.fast.grouping import LengthGroupedPlan, length_grouped_order
from preftune.forward.fast.layout import build_layout

__all__ = ["FastForward", "HeadTransform", "build_forward", "build_layout", "chunked_token_logps",
           "length_grouped_order", "LengthGroupedPlan"]
