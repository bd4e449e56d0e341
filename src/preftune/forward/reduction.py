"""Per-token log-probs -> one number per sequence.

This station is separate from the objectives because SimPO's averaging, SamPO's
down-sampling and R-DPO's length term are properties of how a sequence is scored, not of
the loss formula (SimPO = the DPO formula on mean log-probs without a reference).
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch

from preftune.types import ReducedLogps, SequenceLogps


def masked_sum(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (token_logps * mask).sum(-1)


def masked_mean(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # The data station guarantees non-empty completions; the clamp only keeps a fully
    # masked row (never produced by preftune's own batches) at 0 instead of 0/0.
    return masked_sum(token_logps, mask) / mask.sum(-1).clamp(min=1)


def pair_generator(seed: int, step: int, example_id: int) -> torch.Generator:
    """A generator that depends only on (seed, step, example), so a resumed run, another
    rank or another micro-batch split draws the same positions for the same pair."""
    digest = hashlib.blake2b(f"{seed}:{step}:{example_id}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def sampo_keep_masks(chosen_mask: torch.Tensor, rejected_mask: torch.Tensor,
                     example_ids: Sequence[int], seed: int, step: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """SamPO's down-sampling (Lu et al. 2024, arXiv:2406.10957, Eq. 8).

    Per pair, T = min(n_w, n_l): the shorter completion keeps all its tokens, the longer
    keeps T of its positions drawn uniformly without replacement. One draw per pair,
    shared by the policy and reference sums.
    """
    if len(example_ids) != chosen_mask.shape[0]:
        # Without one id per row the loop below would silently skip rows (with the default
        # ``example_ids=()`` it would skip all of them and SamPO would quietly become DPO).
        raise ValueError(f"SamPO needs one example id per row: {chosen_mask.shape[0]} rows, "
                         f"{len(example_ids)} ids")
    keep_chosen = chosen_mask.clone()
    keep_rejected = rejected_mask.clone()
    n_chosen = chosen_mask.sum(-1).tolist()
    n_rejected = rejected_mask.sum(-1).tolist()
    for row, example_id in enumerate(example_ids):
        n_w, n_l = int(n_chosen[row]), int(n_rejected[row])
        if n_w == n_l:
            continue
        longer_mask, longer_n, target = ((keep_chosen, n_w, n_l) if n_w > n_l
                                         else (keep_rejected, n_l, n_w))
        positions = longer_mask[row].nonzero().squeeze(-1)
        generator = pair_generator(seed, step, int(example_id))
        drop = torch.randperm(longer_n, generator=generator)[target:]
        longer_mask[row, positions[drop.to(positions.device)]] = False
    return keep_chosen, keep_rejected


def ld_token_weights(chosen_mask: torch.Tensor, rejected_mask: torch.Tensor, ld_alpha: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """LD-DPO's token weights (Liu et al. 2024, arXiv:2409.06411): per pair, the first
    ``min(n_w, n_l)`` completion tokens count 1, the longer completion's excess tokens
    ``ld_alpha`` (1 is plain DPO, 0 drops the excess). They replace the masks in the sums,
    so policy and reference are weighted alike; "mean" then divides the weighted sum by the
    full length, as TRL's IPO divides its LD-weighted sum."""
    shared = torch.minimum(chosen_mask.sum(-1), rejected_mask.sum(-1)).unsqueeze(-1)

    def weights(mask: torch.Tensor) -> torch.Tensor:
        position = mask.long().cumsum(-1)  # 1 at the first completion token
        tail = mask & (position > shared)
        return mask.to(torch.float64) - (1.0 - float(ld_alpha)) * tail.to(torch.float64)

    return weights(chosen_mask), weights(rejected_mask)


def reduce_logps(kind: str, policy: SequenceLogps, reference: Optional[SequenceLogps] = None,
                 *, example_ids: Sequence[int] = (), seed: int = 0, step: int = 0,
                 labels: Optional[torch.Tensor] = None,
                 ld_alpha: Optional[float] = None) -> ReducedLogps:
    """Apply reduction ``kind`` ("sum", "mean" or "sampo") to policy and reference alike;
    ``ld_alpha`` (LD-DPO, not with "sampo") down-weights the tokens past the shared length."""
    chosen_mask, rejected_mask = policy.chosen_mask, policy.rejected_mask
    if ld_alpha is not None:
        if kind == "sampo":
            raise ValueError("ld_alpha does not combine with SamPO's down-sampling (both "
                             "remove the length excess; give one)")
        return _ld_reduce(kind, policy, reference, labels, float(ld_alpha))
    if kind == "sampo":
        chosen_mask, rejected_mask = sampo_keep_masks(chosen_mask, rejected_mask,
                                                      example_ids, seed, step)
        reduce = masked_sum
    elif kind == "sum":
        reduce = masked_sum
    elif kind == "mean":
        reduce = masked_mean
    else:
        raise ValueError(f"unknown reduction {kind!r}")
    reduced = ReducedLogps(
        chosen=reduce(policy.chosen, chosen_mask),
        rejected=reduce(policy.rejected, rejected_mask),
        chosen_lengths=policy.chosen_mask.sum(-1),
        rejected_lengths=policy.rejected_mask.sum(-1),
        labels=labels,
    )
    if reference is not None:
        reduced.ref_chosen = reduce(reference.chosen, chosen_mask)
        reduced.ref_rejected = reduce(reference.rejected, rejected_mask)
    return reduced


def _ld_reduce(kind: str, policy: SequenceLogps, reference: Optional[SequenceLogps],
               labels: Optional[torch.Tensor], ld_alpha: float) -> ReducedLogps:
    """"sum" or "mean" with LD-DPO's token weights (:func:`ld_token_weights`)."""
    if kind not in ("sum", "mean"):
        raise ValueError(f"unknown reduction {kind!r}")
    chosen_w, rejected_w = ld_token_weights(policy.chosen_mask, policy.rejected_mask, ld_alpha)

    def reduce(token_logps: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor):
        total = (token_logps * weights.to(token_logps.dtype)).sum(-1)
        return total if kind == "sum" else total / mask.sum(-1).clamp(min=1)

    reduced = ReducedLogps(
        chosen=reduce(policy.chosen, chosen_w, policy.chosen_mask),
        rejected=reduce(policy.rejected, rejected_w, policy.rejected_mask),
        chosen_lengths=policy.chosen_mask.sum(-1),
        rejected_lengths=policy.rejected_mask.sum(-1), labels=labels)
    if reference is not None:
        reduced.ref_chosen = reduce(reference.chosen, chosen_w, policy.chosen_mask)
        reduced.ref_rejected = reduce(reference.rejected, rejected_w, policy.rejected_mask)
    return reduced
