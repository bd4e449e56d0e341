"""TRL 1.16's other preference losses (robust, exo-pair, nca-pair, bco-pair, sppo-hard, aot,
aot-unpaired, apo-zero, apo-down, discopop, sigmoid-norm, apo-zero-unpaired) and AlphaPO's
alpha on cpo / simpo / cpo-simpo, through compute_objective + step_loss, against the naive
float64 reference of naive_trl_losses.py: per-example losses, rewards, metrics, the step
loss and its gradient w.r.t. every per-token policy log-prob; then hand-derived numbers.

Inputs as in test_objective_parity.py: batch 3, ragged masks, garbage in the padding.
"""

from __future__ import annotations

import math

import pytest
import torch

from naive_objectives import PlainBatch, finite_difference
from naive_trl_losses import TRL_LOSSES_EXPECTED, naive_trl_step_loss, naive_trl_terms
from objective_fixtures import (assert_float32_agrees, assert_gradients_match, grads_or_zeros,
                                random_batch, sequence_logps, with_grad)
from preftune.objectives import REGISTRY, compute_objective, get_objective, step_loss

# Defaults first, then every hyperparameter moved, so a formula ignoring one would fail.
CASES = [
    ("robust", {}, None),
    ("robust", {"beta": 0.3, "label_smoothing": 0.2}, None),
    ("exo-pair", {}, None),
    ("exo-pair", {"beta": 0.4, "label_smoothing": 0.1}, 0.5),
    ("nca-pair", {}, None),
    ("nca-pair", {"beta": 0.7}, None),
    ("bco-pair", {}, None),
    ("bco-pair", {"beta": 0.6}, None),
    ("sppo-hard", {}, None),
    ("sppo-hard", {"beta": 0.5}, None),
    ("aot", {}, None),
    ("aot", {"beta": 0.5, "label_smoothing": 0.1}, None),
    ("aot-unpaired", {}, None),
    ("aot-unpaired", {"beta": 0.5, "label_smoothing": 0.2}, None),
    ("apo-zero", {}, None),
    ("apo-zero", {"beta": 0.8}, None),
    ("apo-down", {}, None),
    ("apo-down", {"beta": 0.8}, None),
    ("discopop", {}, None),
    ("discopop", {"beta": 0.5, "discopop_tau": 0.3}, None),
    ("discopop", {"beta": 2.0, "discopop_tau": 1.0}, None),
    ("sigmoid-norm", {}, None),
    ("sigmoid-norm", {"beta": 2.0, "label_smoothing": 0.1}, None),
    ("apo-zero-unpaired", {}, None),
    ("apo-zero-unpaired", {"beta": 0.5, "desirable_weight": 1.3, "undesirable_weight": 0.6},
     0.25),
    # AlphaPO's alpha on the reference-free sigmoid family, both signs.
    ("cpo", {"alpha": 0.25}, None),
    ("cpo", {"beta": 0.2, "alpha": -0.5, "label_smoothing": 0.1}, 0.3),
    ("simpo", {"beta": 2.5, "gamma": 0.25, "alpha": 0.25}, None),
    ("simpo", {"alpha": -1.0}, None),
    ("cpo-simpo", {"alpha": 0.1}, None),
]


def test_cases_cover_every_new_objective():
    assert {name for name, _, _ in CASES} >= set(TRL_LOSSES_EXPECTED)
    assert set(TRL_LOSSES_EXPECTED) <= set(REGISTRY)


def run(name, hparams, nll_weight, batch):
    objective = get_objective(name)
    policy = with_grad(batch.policy)
    output = compute_objective(objective, hparams, policy,
                               batch.reference if objective.needs_reference else None,
                               example_ids=batch.example_ids,
                               labels=None if objective.paired else batch.labels,
                               nll_weight=nll_weight)
    loss = step_loss(output, examples_in_step=len(batch.example_ids),
                     nll_tokens_in_step=float(output.nll_tokens))
    return objective, output, loss, grads_or_zeros(loss, [policy.chosen, policy.rejected])


def plain(batch, objective) -> PlainBatch:
    p, r = batch.policy, batch.reference
    return PlainBatch(chosen=p.chosen.tolist(), rejected=p.rejected.tolist(),
                      ref_chosen=r.chosen.tolist(), ref_rejected=r.rejected.tolist(),
                      chosen_mask=p.chosen_mask.tolist(), rejected_mask=p.rejected_mask.tolist(),
                      chosen_keep=p.chosen_mask.tolist(), rejected_keep=p.rejected_mask.tolist(),
                      labels=None if objective.paired else batch.labels.tolist())


def hyper(objective, hparams):
    return {**objective.defaults, **hparams}


def weight_of(objective, nll_weight):
    return objective.nll_weight if nll_weight is None else nll_weight


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name,hparams,nll_weight", CASES)
def test_values_match_naive_reference(name, hparams, nll_weight, seed):
    batch = random_batch(seed)
    objective, output, loss, _ = run(name, hparams, nll_weight, batch)
    hp = hyper(objective, hparams)
    expected = naive_trl_terms(name, plain(batch, objective), hp)

    def close(actual, wanted):
        torch.testing.assert_close(actual.detach(), torch.tensor(wanted, dtype=torch.float64),
                                   rtol=1e-10, atol=1e-12)

    close(output.terms.losses, expected.losses)
    close(output.terms.chosen_rewards, expected.chosen_rewards)
    close(output.terms.rejected_rewards, expected.rejected_rewards)
    assert set(output.terms.metrics) == set(expected.metrics)
    for key, values in expected.metrics.items():
        close(output.terms.metrics[key], values)
    wanted = naive_trl_step_loss(name, plain(batch, objective), hp,
                                 weight_of(objective, nll_weight))
    assert loss.item() == pytest.approx(wanted, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name,hparams,nll_weight", CASES)
def test_gradients_match_finite_differences(name, hparams, nll_weight, seed):
    batch = random_batch(seed)
    objective, _, _, (grad_chosen, grad_rejected) = run(name, hparams, nll_weight, batch)
    reference, hp = plain(batch, objective), hyper(objective, hparams)
    frozen = naive_trl_terms(name, reference, hp).frozen or None  # BCO's detached delta
    fd_chosen, fd_rejected = finite_difference(
        lambda b: naive_trl_step_loss(name, b, hp, weight_of(objective, nll_weight), frozen),
        reference)
    assert_gradients_match((grad_chosen, grad_rejected), (fd_chosen, fd_rejected), batch)


@pytest.mark.parametrize("name,hparams,nll_weight", CASES)
def test_float32_agrees_with_float64(name, hparams, nll_weight):
    assert_float32_agrees(run, name, hparams, nll_weight, random_batch(0))


@pytest.mark.parametrize("name", sorted(TRL_LOSSES_EXPECTED))
def test_dash_and_underscore_spellings_resolve(name):
    """TRL's loss_type spelling (underscores) and preftune's (dashes) name one objective."""
    assert get_objective(name) is REGISTRY[name]
    assert get_objective(name.replace("-", "_")) is REGISTRY[name]
    assert get_objective(name.replace("-", "_").upper()) is REGISTRY[name]


@pytest.mark.parametrize("name", sorted(TRL_LOSSES_EXPECTED))
def test_loss_type_spelling_selects_the_objective(name):
    from preftune.config import MethodConfig
    from preftune.objectives.method import resolve_method

    resolved = resolve_method(MethodConfig(loss_type=name.replace("-", "_")), ref_model="ref")
    assert resolved.objective is REGISTRY[name]


def test_batch_coupled_ones_are_declared():
    coupled = {name for name, o in REGISTRY.items() if o.batch_coupled}
    assert coupled == {"kto", "kto-pair", "bco-pair", "aot", "aot-unpaired"}


@pytest.mark.parametrize("name", ["aot", "aot-unpaired", "bco-pair"])
def test_batch_coupled_loss_ignores_the_order_of_examples(name):
    """The sort and the batch mean see a set of examples: shuffling rows leaves the step
    loss unchanged (AOT's per-rank losses are a permutation-free function of the batch)."""
    batch = random_batch(0)
    _, _, loss, _ = run(name, {}, None, batch)
    order = torch.tensor([2, 0, 1])

    def permute(logps):
        return type(logps)(logps.chosen[order], logps.chosen_mask[order],
                           logps.rejected[order], logps.rejected_mask[order])

    shuffled = type(batch)(permute(batch.policy), permute(batch.reference), batch.labels[order],
                           [batch.example_ids[i] for i in order])
    _, _, shuffled_loss, _ = run(name, {}, None, shuffled)
    assert shuffled_loss.item() == pytest.approx(loss.item(), rel=1e-14)


@pytest.mark.parametrize("name", ["aot", "aot-unpaired", "bco-pair"])
def test_batch_coupled_loss_depends_on_the_micro_batch(name):
    """What batch_coupled declares: the same 3 pairs scored as one micro-batch or as three
    give different step losses (the sort or the mean reward sees different sets)."""
    batch = random_batch(0)
    _, _, whole, _ = run(name, {"beta": 0.5}, None, batch)
    split = 0.0
    for i in range(3):
        def row(logps):
            return type(logps)(logps.chosen[i:i + 1], logps.chosen_mask[i:i + 1],
                               logps.rejected[i:i + 1], logps.rejected_mask[i:i + 1])
        one = type(batch)(row(batch.policy), row(batch.reference), batch.labels[i:i + 1],
                          batch.example_ids[i:i + 1])
        split += run(name, {"beta": 0.5}, None, one)[2].item() / 3
    assert whole.item() != pytest.approx(split, rel=1e-6)


def one_pair_batch(chosen_ratios, rejected_ratios, chosen_policy=None, rejected_policy=None):
    """One-token completions with log-ratios as given: policy -1 + r, reference -1 (or the
    policy log-probs given, reference = policy - r)."""
    cp = chosen_policy or [-1.0 + r for r in chosen_ratios]
    rp = rejected_policy or [-1.0 + r for r in rejected_ratios]
    policy = sequence_logps([[v] for v in cp], [[v] for v in rp])
    reference = sequence_logps([[c - r] for c, r in zip(cp, chosen_ratios)],
                               [[c - r] for c, r in zip(rp, rejected_ratios)])
    return policy, reference


def losses_of(name, hparams, chosen_ratios, rejected_ratios, labels=None, **policy):
    pol, ref = one_pair_batch(chosen_ratios, rejected_ratios, **policy)
    out = compute_objective(get_objective(name), hparams, pol, ref,
                            labels=None if labels is None else torch.tensor(labels))
    return out.terms.losses.tolist()


LN3 = math.log(3.0)  # sigma(ln 3) = 3/4, sigma(-ln 3) = 1/4, sigma(2 ln 3) = 9/10


def test_hand_numbers_dpo_variants():
    # robust, beta = ln 3, h = 1, eps = 1/4: [-(3/4) ln(3/4) + (1/4) ln(1/4)] / (1/2)
    #   = 2 [0.75 x 0.2876821 - 0.25 x 1.3862944] = -0.2616240 (negative: rDPO is unbiased,
    #   not bounded below).
    assert losses_of("robust", {"beta": LN3, "label_smoothing": 0.25}, [1.0], [0.0]) == \
        pytest.approx([-0.2616240], abs=1e-7)
    # robust at h = 0 is ln 2 for every eps: [(1 - eps) ln 2 - eps ln 2] / (1 - 2 eps).
    assert losses_of("robust", {"label_smoothing": 0.4}, [0.5], [0.5]) == \
        pytest.approx([math.log(2)], rel=1e-12)
    # exo-pair at h = 0, eps = 0.2: 1/2 ln(0.5/0.8) + 1/2 ln(0.5/0.2) = ln(0.5/0.4) = ln 1.25.
    assert losses_of("exo-pair", {"label_smoothing": 0.2}, [0.3], [0.3]) == \
        pytest.approx([math.log(1.25)], rel=1e-12)
    # nca-pair, beta = ln 3, r_w = 1, r_l = -1: ln(4/3) + 1/2 ln 4 + 1/2 ln(4/3) = 1.1246703.
    assert losses_of("nca-pair", {"beta": LN3}, [1.0], [-1.0]) == \
        pytest.approx([1.1246703], abs=1e-7)
    # sppo-hard, beta = 0.5 (targets +-1), r_w = 3, r_l = -2: (3 - 1)^2 + (-2 + 1)^2 = 5.
    assert losses_of("sppo-hard", {"beta": 0.5}, [3.0], [-2.0]) == pytest.approx([5.0])


def test_hand_numbers_sigmoid_norm():
    """Chosen: 2 tokens, log-ratio sum 2 (mean 1); rejected: 4 tokens, sum -4 (mean -1).
    beta = ln 3 / 2: z = beta (1 - (-1)) = ln 3, loss ln(4/3) = 0.2876821. DPO on the sums
    would see h = 6 instead."""
    policy = sequence_logps([[-1.0, -2.0]], [[-1.0, -1.0, -1.0, -1.0]])
    reference = sequence_logps([[-2.0, -3.0]], [[0.0, 0.0, 0.0, 0.0]])
    out = compute_objective(get_objective("sigmoid-norm"), {"beta": LN3 / 2}, policy, reference)
    assert out.terms.losses.tolist() == pytest.approx([0.2876821], abs=1e-7)


def test_hand_numbers_apo():
    # apo-zero, beta = ln 3, r_w = 1, r_l = -1: (1 - 3/4) + 1/4 = 1/2.
    assert losses_of("apo-zero", {"beta": LN3}, [1.0], [-1.0]) == pytest.approx([0.5])
    # apo-down: sigma(ln 3) + (1 - sigma(2 ln 3)) = 3/4 + 1/10 = 0.85.
    assert losses_of("apo-down", {"beta": LN3}, [1.0], [-1.0]) == pytest.approx([0.85])
    # apo-zero-unpaired, beta = ln 3, r = 1 on both rows: desirable 2 x (1 - 3/4) = 0.5,
    # undesirable 0.5 x 3/4 = 0.375 (the second row's "rejected" is its mismatched side).
    assert losses_of("apo-zero-unpaired", {"beta": LN3, "desirable_weight": 2.0,
                                           "undesirable_weight": 0.5},
                     [1.0, 1.0], [5.0, -5.0], labels=[True, False]) == \
        pytest.approx([0.5, 0.375])


def test_hand_numbers_bco_pair():
    """beta = 1; chosen rewards 1 + ln 3 twice, rejected 1 - ln 3 twice: delta = 1, so each
    pair's loss is -log sigma(ln 3) - log sigma(ln 3) = 2 ln(4/3) = 0.5753641. TRL 1.16's
    form (no delta) would give -log sigma(1 + ln 3) - log sigma(ln 3 - 1)
    = ln(1 + 1/(3e)) + ln(1 + e/3) = 0.1156713 + 0.6450558 = 0.7607271."""
    losses = losses_of("bco-pair", {"beta": 1.0}, [1 + LN3] * 2, [1 - LN3] * 2)
    assert losses == pytest.approx([0.5753641] * 2, abs=1e-7)
    without_shift = math.log1p(math.exp(-1 - LN3)) + math.log1p(math.exp(1 - LN3))
    assert without_shift == pytest.approx(0.7607271, abs=1e-7)
    # One pair per call: delta is its own mean reward, the loss -2 log sigma(beta h / 2).
    # beta = 1, r_w = 3, r_l = 3 - 2 ln 3 (h = 2 ln 3): 2 ln(4/3) = 0.5753641.
    assert losses_of("bco-pair", {"beta": 1.0}, [3.0], [3.0 - 2 * LN3]) == \
        pytest.approx([0.5753641], abs=1e-7)


def test_hand_numbers_aot():
    """aot, beta = ln 3. Policy margins lp_w - lp_l = (1, 3), reference margins (2, 0):
    per pair DPO would see h = (-1, 3); sorted, both ranks see 1 - 0 = 3 - 2 = 1, so each
    rank's loss is ln(4/3) = 0.2876821."""
    policy = sequence_logps([[-1.0], [-1.0]], [[-2.0], [-4.0]])
    reference = sequence_logps([[-1.0], [-3.0]], [[-3.0], [-3.0]])
    out = compute_objective(get_objective("aot"), {"beta": LN3}, policy, reference)
    assert out.terms.losses.tolist() == pytest.approx([0.2876821] * 2, abs=1e-7)
    # aot-unpaired: r_w = (0, 2), r_l = (1, -1); sorted (0, 2) - (-1, 1) = (1, 1).
    assert losses_of("aot-unpaired", {"beta": LN3}, [0.0, 2.0], [1.0, -1.0]) == \
        pytest.approx([0.2876821] * 2, abs=1e-7)


def test_hand_numbers_discopop():
    # z = 0: weight 1/2: 1/2 ln 2 + 1/2 e^0 = 0.8465736.
    assert losses_of("discopop", {}, [0.2], [0.2]) == pytest.approx([0.8465736], abs=1e-7)
    # tau = 1, z = ln 3 (beta = ln 3, h = 1): 1/4 ln(4/3) + 3/4 x 1/3 = 0.3219205.
    assert losses_of("discopop", {"beta": LN3, "discopop_tau": 1.0}, [1.0], [0.0]) == \
        pytest.approx([0.3219205], abs=1e-7)


def test_hand_numbers_alphapo():
    """alpha = 1: r = 1 - 1/p. Chosen sum log-prob ln(1/2) -> r = -1; rejected ln(1/4) ->
    r = -3; margin 2. cpo with beta = ln 3 / 2: z = ln 3, loss ln(4/3) = 0.2876821 (plain
    CPO would see the margin ln 2 instead)."""
    policy = sequence_logps([[math.log(0.5)]], [[math.log(0.5), math.log(0.5)]])
    out = compute_objective(get_objective("cpo"), {"beta": LN3 / 2, "alpha": 1.0}, policy,
                            nll_weight=0.0)
    assert out.terms.losses.tolist() == pytest.approx([0.2876821], abs=1e-7)
    assert out.terms.chosen_rewards.tolist() == pytest.approx([-LN3 / 2])
    assert out.terms.rejected_rewards.tolist() == pytest.approx([-3 * LN3 / 2])


def test_alphapo_gradient_at_a_tie():
    """alpha = 1, beta = 1, both sums ln(1/2): margin 0, loss ln 2. d r / d lp = p^-alpha = 2,
    so d loss / d lp_w = -sigma(0) x 2 = -1 and d loss / d lp_l = +1 (the factored margin is
    exact where the two exponents are equal)."""
    policy = with_grad(sequence_logps([[math.log(0.5)]], [[math.log(0.5)]]))
    out = compute_objective(get_objective("cpo"), {"beta": 1.0, "alpha": 1.0}, policy,
                            nll_weight=0.0)
    assert out.terms.losses.item() == pytest.approx(math.log(2))
    grad_chosen, grad_rejected = torch.autograd.grad(out.terms.losses.sum(),
                                                     [policy.chosen, policy.rejected])
    assert (grad_chosen.item(), grad_rejected.item()) == (pytest.approx(-1.0), pytest.approx(1.0))


def test_alpha_zero_is_the_plain_formula_bit_for_bit():
    batch = random_batch(0)
    for name in ("cpo", "simpo", "cpo-simpo"):
        _, plain_out, plain_loss, plain_grads = run(name, {}, None, batch)
        _, zero_out, zero_loss, zero_grads = run(name, {"alpha": 0.0}, None, batch)
        assert torch.equal(plain_out.terms.losses, zero_out.terms.losses)
        assert all(torch.equal(a, b) for a, b in zip(plain_grads, zero_grads))


@pytest.mark.parametrize("name,hparams", [("exo-pair", {"label_smoothing": 0.0}),
                                          ("robust", {"label_smoothing": 0.5}),
                                          ("discopop", {"discopop_tau": 1.5}),
                                          ("discopop", {"discopop_tau": 0.0})])
def test_out_of_range_hyperparameters_are_refused(name, hparams):
    from preftune.errors import ConfigError
    from preftune.objectives.resolve import resolve_hyperparameters

    with pytest.raises(ConfigError, match="must be"):
        resolve_hyperparameters(get_objective(name), hparams)
