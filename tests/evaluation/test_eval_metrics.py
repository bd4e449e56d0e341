"""Held-out preference metrics against a naive computation: each sequence scored alone, no
padding, no packing; float64 models on both sides, so that no float32 rounding (which differs
between CPUs) can flip a near-tie in reward accuracy."""

import pytest
import torch

from tiny import random_pairs, tiny_llama
from preftune.config import MethodConfig, load_config
from preftune.evaluation.metrics import preference_metrics
from preftune.forward.fast import build_forward
from preftune.forward.logps import PaddedForward
from preftune.objectives.method import resolve_method
from preftune.reference.build import ModelReference


def naive_logps(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits
    logps = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    return logps[len(prompt) - 1:]


@pytest.mark.parametrize("forward", ["padded", "fast"])
def test_simpo_metrics_match_naive(forward):
    model, pairs = tiny_llama(vocab_size=1000).double(), random_pairs(7, vocab=1000, seed=3)
    beta, gamma = 2.0, 0.5
    method = resolve_method(MethodConfig(method="simpo",
                                         hyperparameters={"beta": beta, "gamma": gamma}))
    station = PaddedForward(0) if forward == "padded" else build_forward(load_config(), log=lambda *_: None)
    got = preference_metrics(model, pairs, method, station, batch_size=3)
    chosen = [naive_logps(model, p.prompt_ids, p.chosen_ids) for p in pairs]
    rejected = [naive_logps(model, p.prompt_ids, p.rejected_ids) for p in pairs]
    # SimPO's implicit reward: beta x the token-mean log-prob (the margin gamma is in the loss only).
    rc = torch.stack([beta * c.mean() for c in chosen])
    rr = torch.stack([beta * r.mean() for r in rejected])
    assert got["pairs"] == 7
    assert got["reward_accuracy"] == pytest.approx(float((rc > rr).double().mean()), abs=1e-9)
    assert got["reward_margin"] == pytest.approx(float((rc - rr).mean()), abs=1e-4)
    nll = -sum(float(c.sum()) for c in chosen) / sum(len(c) for c in chosen)
    assert got["nll_chosen"] == pytest.approx(nll, abs=1e-4)


def test_dpo_metrics_use_the_reference():
    model = tiny_llama(vocab_size=1000, seed=0).double()
    ref = tiny_llama(vocab_size=1000, seed=1).double()
    pairs = random_pairs(5, vocab=1000, seed=4)
    method = resolve_method(MethodConfig(method="dpo", hyperparameters={"beta": 0.1}))
    forward = PaddedForward(0)
    with pytest.raises(ValueError, match="reference"):
        preference_metrics(model, pairs, method, forward)
    got = preference_metrics(model, pairs, method, forward, ModelReference(ref, forward))
    def reward(p, completion):
        return 0.1 * float(naive_logps(model, p.prompt_ids, completion).sum()
                           - naive_logps(ref, p.prompt_ids, completion).sum())
    margins = [reward(p, p.chosen_ids) - reward(p, p.rejected_ids) for p in pairs]
    assert got["reward_margin"] == pytest.approx(sum(margins) / 5, abs=1e-4)
    assert got["reward_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 5)
