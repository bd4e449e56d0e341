"""Where a reference-based objective's reference log-probs come from.

A reference source is a callable ``(pairs, device) -> SequenceLogps`` with no gradient:
- :class:`ModelReference`: a frozen model (a copy of the starting policy or ``ref_model``);
- :class:`AdapterReference`: the policy itself with its LoRA adapters switched off, so
  LoRA training keeps one copy of the base weights;
- :class:`preftune.refcache.ReferenceCache`: values computed once before training.
The trainer asks whichever it was given and never branches on which.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from preftune.types import SequenceLogps, TokenizedPair


class ModelReference:
    def __init__(self, model: torch.nn.Module, forward: Callable, autocast=None):
        self.model, self.forward = model, forward
        self.autocast = autocast or contextlib.nullcontext

    @property
    def fingerprint_module(self) -> torch.nn.Module:
        return self.model

    def __call__(self, pairs: Sequence[TokenizedPair], device: torch.device) -> SequenceLogps:
        self.model.eval()
        with torch.no_grad(), self.autocast():
            return self.forward(self.model, pairs, device).detach()


class AdapterReference:
    """The base model under the adapters: exactly the starting policy of a LoRA run."""

    def __init__(self, policy: torch.nn.Module, forward: Callable, unwrap: Callable,
                 autocast=None):
        self.policy, self.forward, self.unwrap = policy, forward, unwrap
        self.autocast = autocast or contextlib.nullcontext

    @property
    def fingerprint_module(self) -> torch.nn.Module:
        return self.unwrap(self.policy)

    def __call__(self, pairs: Sequence[TokenizedPair], device: torch.device) -> SequenceLogps:
        peft_model = self.unwrap(self.policy)
        was_training = peft_model.training
        peft_model.eval()
        try:
            with torch.no_grad(), self.autocast(), peft_model.disable_adapter():
                return self.forward(self.policy, pairs, device).detach()
        finally:
            peft_model.train(was_training)
