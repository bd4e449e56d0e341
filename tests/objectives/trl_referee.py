"""TRL 1.16's own DPOTrainer loss code as a referee: ``DPOTrainer._compute_loss`` run on a
stand-in trainer and model that hand it given per-token log-probs (and cached reference
log-probs), so its loss and gradients can be compared with preftune's on the same numbers.
Tests skip when TRL is not installed."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(value):
        return value

    @staticmethod
    def gather(value):
        return value


def trl_loss(chosen, rejected, chosen_mask, rejected_mask, ref_chosen, ref_rejected, *,
             beta: float, loss_types=("sigmoid",), loss_weights=None, ld_alpha=None,
             f_divergence_type="reverse_kl", f_alpha=1.0, use_weighting=False,
             chosen_sq=None, rejected_sq=None) -> torch.Tensor:
    """TRL's batch loss for completion-aligned per-token log-probs ``[B, T]`` (0 at padding)
    and per-sequence reference sums ``[B]``."""
    from trl import DPOTrainer

    rows, width = chosen.shape[0], max(chosen.shape[1], rejected.shape[1])

    def widen(x):
        return torch.nn.functional.pad(x, (0, width - x.shape[1]))

    log_probs = torch.cat([widen(chosen), widen(rejected)])
    masks = torch.cat([widen(chosen_mask.long()), widen(rejected_mask.long())])
    completion_mask = torch.cat([torch.zeros(2 * rows, 1, dtype=torch.long), masks], dim=1)
    squares = None
    if chosen_sq is not None:
        squares = torch.cat([widen(chosen_sq), widen(rejected_sq)])
    outputs = SimpleNamespace(log_probs=log_probs, entropy=torch.zeros_like(log_probs),
                              mean_logits=torch.zeros_like(log_probs),
                              is_top1=torch.zeros_like(masks, dtype=torch.bool),
                              log_sum_sq_probs=squares, aux_loss=None)
    model = lambda **_: outputs  # noqa: E731
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_Accelerator(), beta=beta,
        label_smoothing=0.0, loss_types=list(loss_types),
        loss_weights=list(loss_weights or [1.0] * len(loss_types)), ld_alpha=ld_alpha,
        f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha,
        use_weighting=use_weighting, precompute_ref_logps=True, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1, args=SimpleNamespace(discopop_tau=0.05))
    inputs = {"input_ids": torch.ones_like(completion_mask),
              "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask,
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return DPOTrainer._compute_loss(trainer, model, inputs, False)
