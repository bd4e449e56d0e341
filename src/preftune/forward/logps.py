"""Batches of tokenized pairs -> per-token completion log-probs (the forward station).

A forward step takes a list of :class:`TokenizedPair` and returns :class:`SequenceLogps`;
how it lays the tokens out on the device is its own business. The trainer, reduction and
objectives only ever see completion-aligned log-probs, so a faster layout replaces this
station without touching them.

:class:`PaddedForward` is the plain layout every preference trainer uses: prompt+chosen
and prompt+rejected as separate rows, right-padded, full-vocabulary logits. It is the
reference the faster layouts are tested against.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from preftune.types import SequenceLogps, TokenizedPair


def pad_right(rows: Sequence[Sequence[int]], value: int, dtype=torch.long,
              device: Optional[torch.device] = None) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out.to(device) if device is not None else out


def logps_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype log-softmax runs in: float32 at least (bf16/fp16 log-probs near 0 carry no
    digits), float64 for a float64 model, so that exactness can be checked in float64."""
    return torch.promote_types(dtype, torch.float32)


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]`` over the last dimension, in ``logps_dtype``.

    Written as ``logits[target] - logsumexp(logits)``: float32 ``log_softmax`` on CPU
    reads about 8e-6 nats a token high on a 49k vocabulary (always the same sign, so a
    sequence's sum drifts by 1e-4 and more), where logsumexp's error is some 20 times
    smaller and unbiased. It also keeps no ``[tokens, vocab]`` log-softmax for backward."""
    logits = logits.to(logps_dtype(logits.dtype))
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def completion_logps_from_logits(logits: torch.Tensor, input_ids: torch.Tensor,
                                 starts: Sequence[int], lengths: Sequence[int]
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather log pi(token) for each row's completion tokens ``[start, start+length)``.

    The token at position t is scored by the logits at t-1. Returns completion-aligned
    ``[rows, max_length]`` log-probs (0 at padding) and the bool mask.
    """
    rows, width = len(starts), max(lengths)
    index = torch.zeros(rows, width, dtype=torch.long, device=logits.device)
    mask = torch.zeros(rows, width, dtype=torch.bool, device=logits.device)
    for i, (start, length) in enumerate(zip(starts, lengths)):
        index[i, :length] = torch.arange(start - 1, start - 1 + length)
        mask[i, :length] = True
    picked = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.size(-1)))
    targets = input_ids.gather(1, index + 1)
    return token_logps(picked, targets) * mask, mask


def log_sum_sq_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log sum_v softmax(logits)_v^2`` over the last dimension, in log space:
    ``logsumexp(2 z) - 2 logsumexp(z)`` (no probability is squared and underflows)."""
    return torch.logsumexp(2.0 * logits, dim=-1) - 2.0 * torch.logsumexp(logits, dim=-1)


def completion_log_sum_sq(logits: torch.Tensor, starts: Sequence[int], lengths: Sequence[int]
                          ) -> torch.Tensor:
    """``log sum_v pi(v | prefix)^2`` at each completion position (WPO's alignment term,
    objectives/weighting.py), completion-aligned like the log-probs; no gradient."""
    rows, width = len(starts), max(lengths)
    out = torch.zeros(rows, width, dtype=logps_dtype(logits.dtype), device=logits.device)
    with torch.no_grad():
        for i, (start, length) in enumerate(zip(starts, lengths)):
            row = logits[i, start - 1:start - 1 + length].to(out.dtype)
            out[i, :length] = log_sum_sq_probs(row)
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP / DeepSpeed / accelerate wrappers."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def model_forward_kwargs(model: torch.nn.Module) -> dict:
    """Ask mixture-of-experts models for their router loss so it can join the objective."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "output_router_logits"):
        return {"output_router_logits": True}
    return {}


class PaddedForward:
    """Prompt+chosen and prompt+rejected rows, right-padded, one forward pass."""

    name = "padded"

    def __init__(self, pad_token_id: int = 0, log_sum_sq: bool = False):
        self.pad_token_id = pad_token_id
        # WPO's alignment term (use_weighting): one more vocabulary reduction per token.
        self.log_sum_sq = log_sum_sq

    def __call__(self, model: torch.nn.Module, pairs: Sequence[TokenizedPair],
                 device: torch.device) -> SequenceLogps:
        sequences = ([p.prompt_ids + p.chosen_ids for p in pairs]
                     + [p.prompt_ids + p.rejected_ids for p in pairs])
        input_ids = pad_right(sequences, self.pad_token_id, device=device)
        attention_mask = pad_right([[1] * len(s) for s in sequences], 0, device=device)
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                        **model_forward_kwargs(model))
        starts = [len(p.prompt_ids) for p in pairs] * 2
        lengths = [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]
        logps, mask = completion_logps_from_logits(outputs.logits, input_ids, starts, lengths)
        n = len(pairs)
        wc = max(len(p.chosen_ids) for p in pairs)
        wr = max(len(p.rejected_ids) for p in pairs)
        result = SequenceLogps(chosen=logps[:n, :wc], chosen_mask=mask[:n, :wc],
                               rejected=logps[n:, :wr], rejected_mask=mask[n:, :wr],
                               aux_loss=getattr(outputs, "aux_loss", None))
        if self.log_sum_sq:
            squares = completion_log_sum_sq(outputs.logits, starts, lengths)
            result.chosen_log_sum_sq = squares[:n, :wc]
            result.rejected_log_sum_sq = squares[n:, :wr]
        return result
