"""TRL 1.16's own loss code, run on given log-probs without a model.

TRL computes its DPO and KTO losses inside ``_compute_loss`` from the model's per-token
log-probs (its fused LM head returns 0 at positions labelled -100) and, with precomputed
reference log-probs, reads the reference sums from the batch. So a trainer object built
without ``__init__``, holding the attributes ``__init__`` would set from its config, and a
stand-in model that returns the given per-token log-probs run TRL's formulas unchanged.
CPO's loss is a method of its own (``cpo_loss``). Nothing here reimplements a formula.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch

from preftune.types import SequenceLogps


class _Accelerator:
    """Single process: gathering is the identity."""

    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(value):
        return value

    gather = gather_for_metrics


def _bare(trainer_cls, **attributes):
    trainer = object.__new__(trainer_cls)
    common = dict(accelerator=_Accelerator(), model=SimpleNamespace(training=True),
                  _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                  _total_train_tokens=0, _tp_size=1, aux_loss_enabled=False,
                  precompute_ref_logps=True)
    for name, value in {**common, **attributes}.items():
        setattr(trainer, name, value)
    return trainer


def _padded(values: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """Right-padded to ``width`` with zeros where masked (what TRL's head returns there)."""
    out = torch.where(mask, values, torch.zeros_like(values))
    return torch.nn.functional.pad(out, (0, width - out.shape[1]))


def _model_returning(log_probs: torch.Tensor):
    outputs = SimpleNamespace(log_probs=log_probs, entropy=torch.zeros_like(log_probs),
                              mean_logits=torch.zeros_like(log_probs),
                              is_top1=torch.zeros_like(log_probs, dtype=torch.bool),
                              aux_loss=None)
    return lambda **_: outputs


def dpo_trainer_loss(loss_type: str, policy: SequenceLogps, reference: SequenceLogps, *,
                     beta: float, label_smoothing: float = 0.0,
                     discopop_tau: float = 0.05) -> torch.Tensor:
    """TRL DPOTrainer's batch loss (mean over pairs) for one ``loss_type``; differentiable
    w.r.t. ``policy``'s per-token log-probs."""
    from trl import DPOTrainer

    width = max(policy.chosen.shape[1], policy.rejected.shape[1])
    log_probs = torch.cat([_padded(policy.chosen, policy.chosen_mask, width),
                           _padded(policy.rejected, policy.rejected_mask, width)])
    token_mask = torch.cat([_padded(policy.chosen_mask.long(), policy.chosen_mask, width),
                            _padded(policy.rejected_mask.long(), policy.rejected_mask, width)])
    # TRL's completion_mask covers input positions; the log-probs are for positions 1:.
    completion_mask = torch.nn.functional.pad(token_mask, (1, 0))
    inputs = {"input_ids": torch.zeros_like(completion_mask),
              "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask,
              "ref_chosen_logps": (reference.chosen * reference.chosen_mask).sum(-1),
              "ref_rejected_logps": (reference.rejected * reference.rejected_mask).sum(-1)}
    trainer = _bare(DPOTrainer, beta=beta, loss_types=[loss_type], loss_weights=[1.0],
                    ld_alpha=None, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0,
                    label_smoothing=label_smoothing, use_weighting=False,
                    args=SimpleNamespace(discopop_tau=discopop_tau,
                                         gradient_checkpointing_kwargs=None))
    return trainer._compute_loss(_model_returning(log_probs), inputs, return_outputs=False)


def cpo_trainer_losses(loss_type: str, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                       *, beta: float, alpha: float, simpo_gamma: float = 0.5,
                       label_smoothing: float = 0.0):
    """TRL CPOTrainer.cpo_loss on reduced log-probs: (losses, chosen_rewards, rejected_rewards)."""
    from trl.experimental.cpo import CPOTrainer

    trainer = _bare(CPOTrainer, beta=beta, alpha=alpha, loss_type=loss_type,
                    simpo_gamma=simpo_gamma, label_smoothing=label_smoothing)
    return trainer.cpo_loss(chosen_logps, rejected_logps)


def kto_trainer_loss(loss_type: str, logps: torch.Tensor, mask: torch.Tensor,
                     ref_logps: torch.Tensor, labels: torch.Tensor, *, beta: float,
                     desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """TRL KTOTrainer's batch loss (mean over examples) for a loss type that needs no KL
    completions (``apo_zero_unpaired``): per-token ``logps`` of each row's completion."""
    from trl import KTOTrainer

    log_probs = torch.where(mask, logps, torch.zeros_like(logps))
    completion_mask = torch.nn.functional.pad(mask.long(), (1, 0))
    batch = {"input_ids": torch.zeros_like(completion_mask),
             "attention_mask": torch.ones_like(completion_mask),
             "completion_mask": completion_mask, "label": labels,
             "ref_logps": (ref_logps * mask).sum(-1)}
    trainer = _bare(KTOTrainer, beta=beta, loss_type=loss_type, calculate_KL=False,
                    desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                    args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    return trainer._compute_loss(_model_returning(log_probs), batch, return_outputs=False)
