"""Where a reference-based objective's reference log-probs come from.

A reference source is a callable ``(pairs, device) -> SequenceLogps`` with no gradient:
- :class:`ModelReference`: a frozen model (a copy of the starting policy or ``ref_model``);
- :class:`AdapterReference`: the policy itself with its LoRA adapters switched off, so
  LoRA training keeps one copy of the base weights;
- :class:`preftune.reference.cache.ReferenceCache`: values computed once before training.
The trainer and the scorer ask whichever they were given and never branch on which;
:func:`build_reference` is the one place that chooses, for training and ``preftune eval``
alike.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Optional, Sequence

import torch

from preftune.distributed import prepare_reference
from preftune.model_io import is_peft_model, load_model, parse_dtype
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


def build_reference(config, accelerator, policy: torch.nn.Module, forward: Callable, *,
                    tokenizer, pairs: Sequence[TokenizedPair], ref_model=None,
                    log: Callable[[str], None] = print) -> Callable:
    """Reference log-probs in the cheapest form the run allows: the policy with adapters
    off (LoRA, no ``ref_model``), else a frozen model (``ref_model`` handed in, the
    ``ref_model`` setting, or a copy of the starting ``policy``); with
    ``precompute_ref_log_probs`` computed once over ``pairs`` from that source and cached
    on disk (keyed by weights, tokenizer and pairs), after which the model is released."""
    m, acc = config.model, accelerator
    if ref_model is None and m.ref_model is None and is_peft_model(acc.unwrap_model(policy)):
        source = AdapterReference(policy, forward, acc.unwrap_model, acc.autocast)
    else:
        if ref_model is None:
            ref_model = (load_model(m.ref_model, parse_dtype(m.torch_dtype, acc.device),
                                    trust_remote_code=m.trust_remote_code,
                                    attn_implementation=m.attn_implementation)
                         if m.ref_model else copy.deepcopy(acc.unwrap_model(policy)))
        # Placed like the policy: sharded under FSDP2 / ZeRO-3 (preftune.distributed).
        source = ModelReference(prepare_reference(acc, ref_model), forward, acc.autocast)
    if not m.precompute_ref_log_probs:
        return source
    return _cached(config, acc, source, tokenizer, pairs, log)


def _cached(config, accelerator, source, tokenizer, pairs, log) -> Callable:
    from preftune.model_io import cache_dir
    from preftune.reference.cache import cached_reference

    t = config.training
    return cached_reference(
        source, tokenizer, pairs, device=accelerator.device,
        batch_size=t.per_device_eval_batch_size,
        cache_dir=config.model.ref_cache_dir or cache_dir() / "reference", log=log,
        progress=t.progress_bar and accelerator.is_local_main_process,
        is_main=accelerator.is_main_process, barrier=accelerator.wait_for_everyone)


def needs_policy_copy(config, method, policy, ref_model=None) -> bool:
    """Whether the reference will be a copy of the starting policy (not a LoRA policy with
    adapters off, not a separate ``ref_model``): under FSDP and DeepSpeed that copy is
    taken before the policy is sharded (distributed.prepare)."""
    return (method.needs_reference and ref_model is None and not config.model.ref_model
            and not is_peft_model(policy))
