"""Faster forward station: completion-only chunked log-probs, prefix sharing, packing."""

from preftune.fast.chunked_logps import HeadTransform, chunked_token_logps
from preftune.fast.forward import FastForward, build_forward
from preftune.fast.grouping import LengthGroupedPlan, length_grouped_order
from preftune.fast.layout import build_layout

__all__ = ["FastForward", "HeadTransform", "build_forward", "build_layout", "chunked_token_logps",
           "length_grouped_order", "LengthGroupedPlan"]
