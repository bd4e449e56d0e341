"""Weighted mixtures of objectives (objectives/mixture.py, objectives/options.py): the
gradient is the weighted sum of the components' gradients, the config reads lists from YAML
and the command line, and a training run logs each component's loss."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from objective_fixtures import sequence_logps
from preftune.config import load_config
from preftune.errors import ConfigError
from preftune.objectives import REGISTRY, compute_objective, get_objective, step_loss
from preftune.objectives.method import resolve_method

HAS_TRL = importlib.util.find_spec("trl") is not None
ROWS_W = [[-1.0, -2.5, -0.5], [-0.7], [-2.0, -0.1]]
ROWS_L = [[-1.5, -0.3], [-0.9, -1.1, -0.2, -0.4], [-3.0]]


def batch(requires_grad: bool = True):
    policy = sequence_logps(ROWS_W, ROWS_L)
    reference = sequence_logps([[v * 0.9 for v in r] for r in ROWS_W],
                               [[v * 1.1 - 0.05 for v in r] for r in ROWS_L])
    policy.chosen.requires_grad_(requires_grad)
    policy.rejected.requires_grad_(requires_grad)
    return policy, reference


def step_gradient(method) -> tuple[torch.Tensor, list[torch.Tensor]]:
    policy, reference = batch()
    output = compute_objective(method.objective, method.hparams, policy, reference,
                               nll_weight=method.nll_weight, options=method.options)
    tokens = float(policy.chosen_mask.sum())
    loss = step_loss(output, examples_in_step=3.0, nll_tokens_in_step=tokens)
    grads = torch.autograd.grad(loss, [policy.chosen, policy.rejected], allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g  # sft never reads the rejected side
             for g, p in zip(grads, (policy.chosen, policy.rejected))]
    return loss.detach(), [g * m for g, m in zip(grads, (policy.chosen_mask,
                                                         policy.rejected_mask))]


def resolved(*args: str):
    return resolve_method(load_config(None, list(args)).method)


MIXTURES = [
    (["sigmoid", "ipo", "sft"], [0.8, 0.2, 1.0]),
    (["sigmoid", "hinge"], [0.5, 1.5]),
    (["dpo", "sft"], [1.0, 0.3]),
]
if "bco-pair" in REGISTRY:
    MIXTURES.append((["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]))


@pytest.mark.parametrize("names,weights", MIXTURES)
def test_mixture_gradient_is_the_weighted_sum_of_its_components(names, weights):
    """float64: loss and gradient of the mixture equal sum_i w_i (loss_i, gradient_i), each
    component run alone as its own method (sigmoid is DPO, TRL DPOConfig's meaning)."""
    mixture = resolved("--loss_type", ",".join(names),
                       "--loss_weights", ",".join(map(str, weights)), "--beta", "0.3")
    loss, grads = step_gradient(mixture)
    want_loss, want = 0.0, [0.0, 0.0]
    for name, weight in zip(names, weights):
        single = resolved("--method", "dpo" if name == "sigmoid" else name, "--beta", "0.3") \
            if name != "sft" else resolved("--method", "sft")
        part_loss, part = step_gradient(single)
        want_loss = want_loss + weight * part_loss
        want = [w + weight * g for w, g in zip(want, part)]
    assert torch.allclose(loss, want_loss, rtol=1e-13, atol=1e-15)
    for got, expected in zip(grads, want):
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_hand_derived_mixture_loss():
    """One pair, policy = reference except the chosen sum is ln 3 higher: h = ln 3. beta 1:
    DPO's -log sigma(ln 3) = ln(4/3); hinge max(0, 1 - ln 3) = 0. Mixture 2 x DPO + 5 x
    hinge = 2 ln(4/3)."""
    import math

    policy = sequence_logps([[math.log(3.0) - 1.0]], [[-1.0]])
    reference = sequence_logps([[-1.0]], [[-1.0]])
    method = resolved("--loss_type", "[sigmoid, hinge]", "--loss_weights", "[2, 5]",
                      "--beta", "1")
    output = compute_objective(method.objective, method.hparams, policy, reference)
    assert output.terms.losses.item() == pytest.approx(2 * math.log(4 / 3), rel=1e-14)
    assert output.terms.metrics["loss/hinge"].item() == 0.0


def test_yaml_and_command_line_read_the_same_lists(tmp_path):
    recipe = tmp_path / "mpo.yaml"
    recipe.write_text("loss_type: [sigmoid, ipo, sft]\nloss_weights: [0.8, 0.2, 1.0]\n")
    from_yaml = resolve_method(load_config(str(recipe)).method)
    from_cli = resolved("--loss_type", "sigmoid,ipo,sft", "--loss_weights", "0.8,0.2,1.0")
    for method in (from_yaml, from_cli):
        comps = method.objective.components
        assert [c.objective.name for c in comps] == ["dpo", "ipo", "sft"]
        assert [c.weight for c in comps] == [0.8, 0.2, 1.0]
        assert method.needs_reference and method.nll_weight == 1.0


@pytest.mark.parametrize("args,key", [
    (["--loss_type", "sigmoid,ipo", "--loss_weights", "1,2,3"], "loss_weights"),
    (["--loss_type", "sigmoid,ipo", "--loss_weights", "1,-2"], "loss_weights"),
    (["--loss_type", "sigmoid,ipo", "--simpo_gamma", "1"], "simpo_gamma"),
    (["--loss_type", "sigmoid,sft", "--cpo_alpha", "1"], "cpo_alpha"),
    (["--loss_type", "sigmoid,sigmoid"], "loss_type"),
    (["--loss_type", "sigmoid,kto"], "loss_type"),
    (["--loss_type", "sigmoid,nosuch"], "nosuch"),
])
def test_mixtures_refused(args, key):
    with pytest.raises(ConfigError, match=key):
        resolved(*args)


@pytest.mark.skipif(not HAS_TRL, reason="TRL is not installed")
def test_trl_dpo_trainer_agrees_on_a_mixture():
    """TRL's loss for loss_type [sigmoid, ipo, sft] with weights [0.8, 0.2, 1.0] on one batch
    (its sft term is the batch's token mean, as ours is for a one-batch step)."""
    from trl_referee import trl_loss

    policy, reference = batch()
    method = resolved("--loss_type", "sigmoid,ipo,sft", "--loss_weights", "0.8,0.2,1.0",
                      "--beta", "0.3")
    output = compute_objective(method.objective, method.hparams, policy, reference,
                               nll_weight=method.nll_weight)
    ours = step_loss(output, examples_in_step=3.0,
                     nll_tokens_in_step=float(policy.chosen_mask.sum()))
    theirs = trl_loss(policy.chosen * policy.chosen_mask, policy.rejected * policy.rejected_mask,
                      policy.chosen_mask, policy.rejected_mask,
                      (reference.chosen * reference.chosen_mask).sum(-1),
                      (reference.rejected * reference.rejected_mask).sum(-1), beta=0.3,
                      loss_types=("sigmoid", "ipo", "sft"), loss_weights=(0.8, 0.2, 1.0))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)


def test_training_run_logs_each_component(tmp_path, tokenizer):
    """From the command line: loss/<name> for each component, and loss = sum_i w_i
    loss/<name_i> (loss/sft being the token-mean NLL)."""
    from tiny import random_pairs, tiny_llama
    from preftune.train.metrics import read_jsonl
    from preftune.train.trainer import Trainer

    config = load_config(None, [
        "--output_dir", str(tmp_path / "run"), "--loss_type", "[sigmoid, ipo, sft]",
        "--loss_weights", "[0.8, 0.2, 1.0]", "--max_steps", "2", "--learning_rate", "1e-3",
        "--logging_steps", "1", "--progress_bar", "false", "--per_device_train_batch_size",
        "4", "--seed", "7"])
    Trainer(config, model=tiny_llama(vocab_size=1000).double(), tokenizer=tokenizer,
            train_pairs=random_pairs(8, vocab=1000), log=lambda *_: None).train()
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(rows) == 2
    for row in rows:
        weighted = 0.8 * row["loss/sigmoid"] + 0.2 * row["loss/ipo"] + row["loss/sft"]
        # Per-component metric sums are kept in float32 (compute.py example_metrics).
        assert row["loss"] == pytest.approx(weighted, rel=1e-6)
        assert row["loss/sft"] == pytest.approx(row["nll_loss"], rel=1e-6)
    assert get_objective("dpo").name == "dpo"
