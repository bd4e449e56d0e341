"""Run a forward station, an objective and backward; compare two stations' results.

The reference is :class:`PaddedForward` (full logits, separate right-padded rows), itself
checked against one-sequence-at-a-time float64 log-probs in tests/test_forward.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from preftune.config import MethodConfig
from preftune.method import resolve_method
from preftune.objectives import compute_objective, step_loss
from preftune.types import SequenceLogps

CPU = torch.device("cpu")


@dataclass
class Result:
    logps: SequenceLogps
    loss: torch.Tensor
    grads: dict[str, torch.Tensor]


def run(forward, model, pairs, method: str, reference_model=None) -> Result:
    """One micro-batch as the trainer runs it: policy (and reference) log-probs, the step
    loss of ``method``, and every parameter's gradient."""
    resolved = resolve_method(MethodConfig(method=method))
    model.zero_grad(set_to_none=True)
    policy = forward(model, pairs, CPU)
    reference = None
    if resolved.needs_reference:
        with torch.no_grad():
            reference = forward(reference_model, pairs, CPU).detach()
    output = compute_objective(resolved.objective, resolved.hparams, policy, reference,
                               example_ids=[p.example_id for p in pairs],
                               nll_weight=resolved.nll_weight)
    loss = step_loss(output, examples_in_step=len(pairs),
                     nll_tokens_in_step=sum(len(p.chosen_ids) for p in pairs))
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()
             if p.grad is not None}
    return Result(policy.detach(), loss.detach(), grads)


def assert_same(got: Result, expected: Result, atol: float = 1e-5,
                logps_atol: float | None = None) -> None:
    """Same shapes and masks; per-token log-probs within ``logps_atol`` (default ``atol``);
    loss and every gradient within ``atol`` (relative to the gradient's scale where that
    exceeds 1)."""
    logps_atol = atol if logps_atol is None else logps_atol
    for side in ("chosen", "rejected"):
        g, e = getattr(got.logps, side), getattr(expected.logps, side)
        assert g.shape == e.shape and g.dtype == e.dtype, side
        assert torch.equal(getattr(got.logps, f"{side}_mask"),
                           getattr(expected.logps, f"{side}_mask")), side
        assert torch.allclose(g, e, atol=logps_atol, rtol=0), (side, float((g - e).abs().max()))
        assert torch.all(g[~getattr(got.logps, f"{side}_mask")] == 0), side
    assert abs(float(got.loss) - float(expected.loss)) <= atol
    assert got.grads.keys() == expected.grads.keys()
    for name, e in expected.grads.items():
        scale = max(1.0, float(e.abs().max()))
        error = float((got.grads[name] - e).abs().max())
        assert error <= atol * scale, (name, error, scale)
