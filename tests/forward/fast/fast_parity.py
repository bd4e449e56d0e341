"""Run a forward station, an objective and backward; compare two stations' results.

The reference is :class:`PaddedForward` (full logits, separate right-padded rows), itself
checked against one-sequence-at-a-time float64 log-probs in tests/forward/test_forward.py. Exactness
is checked in float64 (tests/float64_bounds.py says why).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from float64_bounds import (assert_float64_close, assert_no_farther_from_float64,
                            ulps_floor, max_diff, scaled_max_diff)
from preftune.config import MethodConfig
from preftune.objectives import compute_objective, step_loss
from preftune.objectives.method import resolve_method
from preftune.types import SequenceLogps

CPU = torch.device("cpu")


@dataclass
class Result:
    logps: SequenceLogps
    loss: torch.Tensor
    grads: dict[str, torch.Tensor]


def run(forward, model, pairs, method: str, reference_model=None, device=CPU) -> Result:
    """One micro-batch as the trainer runs it: policy (and reference) log-probs, the step
    loss of ``method``, and every parameter's gradient (on the CPU, for comparing)."""
    resolved = resolve_method(MethodConfig(method=method))
    model.zero_grad(set_to_none=True)
    policy = forward(model, pairs, device)
    reference = None
    if resolved.needs_reference:
        with torch.no_grad():
            reference = forward(reference_model, pairs, device).detach()
    output = compute_objective(resolved.objective, resolved.hparams, policy, reference,
                               example_ids=[p.example_id for p in pairs],
                               nll_weight=resolved.nll_weight)
    loss = step_loss(output, examples_in_step=len(pairs),
                     nll_tokens_in_step=sum(len(p.chosen_ids) for p in pairs))
    loss.backward()
    grads = {name: p.grad.detach().cpu().clone() for name, p in model.named_parameters()
             if p.grad is not None}
    policy = policy.detach()
    on_cpu = SequenceLogps(policy.chosen.cpu(), policy.chosen_mask.cpu(), policy.rejected.cpu(),
                           policy.rejected_mask.cpu())
    return Result(on_cpu, loss.detach().cpu(), grads)


def assert_same_layout(got: Result, expected: Result) -> None:
    """Same shapes, dtypes, masks and gradient keys; zeros where the mask is off."""
    for side in ("chosen", "rejected"):
        g, e = getattr(got.logps, side), getattr(expected.logps, side)
        assert g.shape == e.shape and g.dtype == e.dtype, side
        assert torch.equal(getattr(got.logps, f"{side}_mask"),
                           getattr(expected.logps, f"{side}_mask")), side
        assert torch.all(g[~getattr(got.logps, f"{side}_mask")] == 0), side
    assert got.grads.keys() == expected.grads.keys()


def logps_of(result: Result) -> dict[str, torch.Tensor]:
    return {"chosen": result.logps.chosen, "rejected": result.logps.rejected}


def assert_same(got: Result, expected: Result) -> None:
    """Two float64 runs of the same step: per-token log-probs, loss and every gradient
    within a few float32 ulps of their scale (tests/float64_bounds.py)."""
    assert_same_layout(got, expected)
    assert_float64_close(logps_of(got), logps_of(expected), "log-probs")
    assert_float64_close(got.loss, expected.loss, "loss")
    assert_float64_close(got.grads, expected.grads, "gradients")


def assert_float32_as_close(got: Result, expected: Result, truth: Result) -> None:
    """float32 runs ``got`` (path under test) and ``expected`` (the padded path) against a
    float64 run ``truth``: ``got`` no farther from it than ``FACTOR`` times ``expected``, plus
    a floor of float32 ulps; for log-probs, the loss and every gradient."""
    assert_same_layout(got, expected)
    truth_logps, truth_grads = logps_of(truth), truth.grads
    assert_no_farther_from_float64(max_diff(logps_of(got), truth_logps),
                                   max_diff(logps_of(expected), truth_logps),
                                   ulps_floor(truth_logps), "log-probs")
    assert_no_farther_from_float64(max_diff(got.loss, truth.loss),
                                   max_diff(expected.loss, truth.loss),
                                   ulps_floor(truth.loss), "loss")
    # Gradients relative to their scale: the floor is in ulps of 1.
    assert_no_farther_from_float64(scaled_max_diff(got.grads, truth_grads),
                                   scaled_max_diff(expected.grads, truth_grads),
                                   ulps_floor(torch.ones(())), "gradients")
