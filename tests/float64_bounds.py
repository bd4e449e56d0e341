"""Tolerances that hold on any CPU and thread count.

A float32 sum over thousands of terms lands on different last bits on another CPU's kernels
(AVX2 against AVX-512/AMX, one thread against two): an absolute float32 tolerance read off
one machine encodes that machine. So the suite checks in one of two ways:

- **Exactness of an algorithm** (two layouts, accumulation, sharding, caching): run both
  sides in float64. transformers keeps a few float32 islands even in a float64 model
  (RMSNorm's statistics, eager attention's softmax), each a short sum whose last bit depends
  on the layout, so two float64 runs agree to about one float32 ulp of the values' scale
  (6e-8 relative), not 1e-16: the bound is ``ULPS`` float32 ulps of the scale, with no long
  float32 sum in it to vary between CPUs. Any real error (one token off, a wrong mask, a
  missing term) moves log-probs and gradients by 1e-3 to 1 of their scale.
- **float32 behaviour**: the path under test may be no farther from a float64 run of the
  same computation than ``FACTOR`` times the reference path's own distance from it, plus a
  floor of a few ulps (of float32, or bf16 where the matmuls run in it) of the values' size.
"""

from __future__ import annotations

from typing import Mapping, Union

import torch

FACTOR = 4.0
"""How much farther from float64 the path under test may be than the reference path: two
float32 computations of one quantity in different summation orders have errors of the same
size, rarely more than twice apart; 4 absorbs that, and a real error is orders larger."""

ULPS = 16
"""The floor, in float32 ulps of the largest value compared."""

Tensors = Union[torch.Tensor, Mapping[str, torch.Tensor]]


def max_diff(a: Tensors, b: Tensors) -> float:
    """Largest absolute difference, over every tensor of two equally keyed dicts."""
    if isinstance(a, torch.Tensor):
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    assert a.keys() == b.keys()
    return max((max_diff(a[k], b[k]) for k in a), default=0.0)


def scaled_max_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Largest difference of any tensor, relative to that tensor's own scale in ``b`` where
    the scale exceeds 1 (gradients of embeddings and norms differ by orders)."""
    assert a.keys() == b.keys()
    return max((max_diff(a[k], b[k]) / max(1.0, float(b[k].abs().max())) for k in a),
               default=0.0)


def ulps_floor(reference: Tensors, dtype: torch.dtype = torch.float32) -> float:
    """``ULPS`` ulps of ``dtype`` at the largest magnitude in ``reference`` (at least 1)."""
    def largest(v):
        if isinstance(v, torch.Tensor):
            return float(v.abs().max()) if v.numel() else 0.0
        return max((largest(x) for x in v.values()), default=0.0)

    return ULPS * torch.finfo(dtype).eps * max(1.0, largest(reference))


def assert_no_farther_from_float64(got_error: float, reference_error: float, floor: float,
                                   what: str = "") -> None:
    """``got_error <= FACTOR * reference_error + floor`` (both distances from float64)."""
    bound = FACTOR * reference_error + floor
    assert got_error <= bound, (f"{what}: {got_error:.3g} from float64, reference path "
                                f"{reference_error:.3g}, bound {bound:.3g}")


def assert_float64_close(got: Tensors, expected: Tensors, what: str = "") -> None:
    """Two float64 computations of one quantity agree to ``ULPS`` float32 ulps of its scale
    (at least 1)."""
    for value in (got, expected):
        for t in ([value] if isinstance(value, torch.Tensor) else value.values()):
            assert not t.is_floating_point() or t.dtype == torch.float64, (what, t.dtype)
    error, bound = max_diff(got, expected), ulps_floor(expected)
    assert error <= bound, f"{what}: {error:.3g} apart in float64 (bound {bound:.3g})"
