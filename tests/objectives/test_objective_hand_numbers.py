"""One hand-derived number per objective: inputs small enough to do the arithmetic in the
docstring. Expected values are written as the arithmetic (``math``), decimals in comments.

Notation: per-token log-probs are listed per row; r = lp - ref; h = r_w - r_l;
-log sigma(z) = log(1 + e^-z).
"""

from __future__ import annotations

import math

import pytest
import torch

from objective_fixtures import sequence_logps
from preftune.objectives import compute_objective, get_objective, step_loss


def run(name, chosen, rejected, ref_chosen=None, ref_rejected=None, hparams=None,
        labels=None, example_ids=None):
    objective = get_objective(name)
    policy = sequence_logps(chosen, rejected)
    reference = sequence_logps(ref_chosen, ref_rejected) if ref_chosen is not None else None
    output = compute_objective(objective, hparams or {}, policy, reference,
                               example_ids=example_ids or list(range(len(chosen))),
                               labels=None if labels is None else torch.tensor(labels))
    loss = step_loss(output, examples_in_step=len(chosen),
                     nll_tokens_in_step=float(output.nll_tokens))
    return output.terms, loss.item()


def softplus(x: float) -> float:
    """-log sigma(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def test_dpo():
    """beta 0.1. lp_w = -1 - 2 = -3, ref_w = -2 - 3 = -5 -> r_w = 2; rejected identical under
    both models -> r_l = 0; h = 2.
    loss = -log sigma(0.1 * 2) = log(1 + e^-0.2) = log(1.818731) = 0.598139.
    rewards: 0.1 * 2 = 0.2 and 0."""
    terms, loss = run("dpo", [[-1, -2]], [[-1, -1, -1]], [[-2, -3]], [[-1, -1, -1]])
    assert loss == pytest.approx(softplus(-0.2))
    assert softplus(-0.2) == pytest.approx(0.5981388694)  # the docstring's decimal
    assert terms.chosen_rewards.item() == pytest.approx(0.2)
    assert terms.rejected_rewards.item() == pytest.approx(0.0)


def test_rdpo():
    """Same pair as test_dpo (h = 2), n_w = 2, n_l = 3, alpha 0.01:
    z = 0.1 * 2 + 0.01 * (2 - 3) = 0.19; loss = log(1 + e^-0.19) = 0.602653.
    (The shorter chosen answer gets less credit, so the loss is above DPO's 0.598139.)"""
    _, loss = run("rdpo", [[-1, -2]], [[-1, -1, -1]], [[-2, -3]], [[-1, -1, -1]])
    assert loss == pytest.approx(softplus(-0.19))
    assert softplus(-0.19) == pytest.approx(0.6026529093)  # the docstring's decimal


def test_sampo():
    """Chosen: 4 tokens, each with log-ratio -1 - (-2) = +1; rejected: 2 tokens, ratio 0.
    T = min(4, 2) = 2, so whichever 2 chosen positions are drawn, h_s = 2 (plain DPO would
    use h = 4). loss = log(1 + e^-0.2) = 0.598139 (DPO on h = 4: 0.513015)."""
    for example_id in range(5):  # any draw gives the same number
        _, loss = run("sampo", [[-1] * 4], [[-1, -1]], [[-2] * 4], [[-1, -1]],
                      example_ids=[example_id])
        assert loss == pytest.approx(softplus(-0.2))
        assert softplus(-0.2) == pytest.approx(0.5981388694)  # the docstring's decimal


def test_cpo():
    """beta 0.1, no reference. lp_w = -1 - 2 = -3, lp_l = -2 - 3 = -5: z = 0.1 * 2 = 0.2,
    preference loss 0.598139; NLL = (1 + 2) / 2 = 1.5 with weight 1:
    step loss = 0.598139 + 1.5 = 2.098139. Rewards 0.1 * lp: -0.3 and -0.5."""
    terms, loss = run("cpo", [[-1, -2]], [[-2, -3]])
    assert terms.losses.item() == pytest.approx(softplus(-0.2))
    assert loss == pytest.approx(softplus(-0.2) + 1.5)
    assert softplus(-0.2) + 1.5 == pytest.approx(2.0981388694)  # the docstring's decimal
    assert terms.chosen_rewards.item() == pytest.approx(-0.3)


def test_simpo():
    """beta 2, gamma 1 (gamma/beta 0.5). avg_w = -1, avg_l = (-2 * 3) / 3 = -2:
    z = 2 * (-1 - (-2)) - 1 = 1; loss = log(1 + e^-1) = 0.313262. Rewards 2 * avg: -2, -4."""
    terms, loss = run("simpo", [[-1, -1]], [[-2, -2, -2]])
    assert loss == pytest.approx(softplus(-1.0))
    assert softplus(-1.0) == pytest.approx(0.3132616875)  # the docstring's decimal
    assert terms.rejected_rewards.item() == pytest.approx(-4.0)


def test_cpo_simpo():
    """beta 10, gamma 5.4, NLL weight 0.05. avg_w = -1, avg_l = -1.5:
    z = 10 * 0.5 - 5.4 = -0.4; preference loss = log(1 + e^0.4) = 0.913015;
    NLL = (1 + 1) / 2 = 1; step loss = 0.913015 + 0.05 * 1 = 0.963015."""
    _, loss = run("cpo-simpo", [[-1, -1]], [[-1.5, -1.5]])
    assert loss == pytest.approx(softplus(0.4) + 0.05)
    assert softplus(0.4) + 0.05 == pytest.approx(0.9630152524)  # the docstring's decimal


def test_ipo():
    """beta 0.1: target 1/(2 * 0.1) = 5. Mean log-probs: chosen -1 vs ref -3 -> +2;
    rejected -2 vs ref -1 -> -1; h = 2 - (-1) = 3; loss = (3 - 5)^2 = 4.
    (On sums, h would be 4 - (-4) = 8 and the loss 9: this checks the mean reduction.)"""
    _, loss = run("ipo", [[-1, -1]], [[-2] * 4], [[-3, -3]], [[-1] * 4])
    assert loss == pytest.approx(4.0)


def test_hinge():
    """beta 0.1. Row 0: h = 2 (as test_dpo) -> max(0, 1 - 0.2) = 0.8.
    Row 1: r_w = -1 - (-21) = 20, r_l = 0, h = 20 -> max(0, 1 - 2) = 0. Mean 0.4."""
    terms, loss = run("hinge", [[-1, -2], [-1]], [[-1], [-1]], [[-2, -3], [-21]], [[-1], [-1]])
    torch.testing.assert_close(terms.losses, torch.tensor([0.8, 0.0], dtype=torch.float64))
    assert loss == pytest.approx(0.4)


def test_kto_pair():
    """beta 0.1. r_w = [-1 - (-2), -1 - (-4)] = [1, 3] -> z_w = mean = 2;
    r_l = [-2 - (-1), -4 - (-1)] = [-1, -3] -> z_l = max(0, -2) = 0.
    Row 0: 0.5 [(1 - sigma(0.1 (1 - 0))) + (1 - sigma(0.1 (2 - (-1))))]
         = 0.5 [sigma(-0.1) + sigma(-0.3)] = 0.5 (0.475021 + 0.425557) = 0.450289.
    Row 1: 0.5 [sigma(-0.3) + sigma(-0.5)] = 0.5 (0.425557 + 0.377541) = 0.401549."""
    sigma = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    terms, _ = run("kto-pair", [[-1], [-1]], [[-2], [-4]], [[-2], [-4]], [[-1], [-1]])
    expected = [0.5 * (sigma(-0.1) + sigma(-0.3)), 0.5 * (sigma(-0.3) + sigma(-0.5))]
    torch.testing.assert_close(terms.losses, torch.tensor(expected, dtype=torch.float64))
    assert expected == pytest.approx([0.4502891479, 0.4015490760])


def test_kto_unpaired():
    """beta 0.1, lambda_D 1, lambda_U 2; labels [desirable, undesirable].
    r = [-1 - (-2), -2 - (-1)] = [1, -1]. Mismatched completions: lp - ref = [-1 - (-3),
    -3 - (-3)] = [2, 0] -> z0 = max(0, mean) = 1.
    Row 0 (desirable): 1 * (1 - sigma(0.1 (1 - 1))) = 0.5.
    Row 1 (undesirable): 2 * (1 - sigma(0.1 (1 - (-1)))) = 2 sigma(-0.2) = 0.900332.
    kl metric = 1 per row; rewards 0.1 r = [0.1, -0.1]."""
    terms, _ = run("kto", [[-1], [-2]], [[-1], [-3]], [[-2], [-1]], [[-3], [-3]],
                   hparams={"undesirable_weight": 2.0}, labels=[True, False])
    expected = [0.5, 2 / (1 + math.exp(0.2))]
    torch.testing.assert_close(terms.losses, torch.tensor(expected, dtype=torch.float64))
    assert expected[1] == pytest.approx(0.9003320054)
    torch.testing.assert_close(terms.metrics["kl"], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(terms.chosen_rewards, torch.tensor([0.1, -0.1], dtype=torch.float64))


def test_kto_reference_point_is_clamped_at_zero():
    """Mismatched lp - ref = [-2, 0] -> mean -1 -> z0 = max(0, -1) = 0.
    Row 0 (desirable, r = 1): 1 - sigma(0.1) = sigma(-0.1) = 0.475021."""
    terms, _ = run("kto", [[-1], [-2]], [[-3], [-3]], [[-2], [-1]], [[-1], [-3]],
                   labels=[True, False])
    assert terms.metrics["kl"][0].item() == 0.0
    assert terms.losses[0].item() == pytest.approx(1 / (1 + math.exp(0.1)))


def test_orpo():
    """beta (lambda) 0.1. Chosen: one token, p = 0.5 -> odds 1, log odds 0. Rejected: two
    tokens of p = 0.2, avg = log 0.2 -> odds 0.2/0.8 = 1/4, log odds -log 4.
    log-odds gap = log 4 = 1.386294; -log sigma(log 4) = log(1 + 1/4) = log 1.25 = 0.223144;
    preference loss 0.1 * 0.223144 = 0.0223144; NLL = -log 0.5 = 0.693147;
    step loss = 0.715462. Metrics: log_odds_chosen = log 4, log_odds_ratio = -log 1.25."""
    terms, loss = run("orpo", [[math.log(0.5)]], [[math.log(0.2)] * 2])
    assert terms.losses.item() == pytest.approx(0.1 * math.log(1.25))
    assert loss == pytest.approx(0.1 * math.log(1.25) + math.log(2))
    assert 0.1 * math.log(1.25) + math.log(2) == pytest.approx(0.7154615357)  # the docstring's decimal
    assert terms.metrics["log_odds_chosen"].item() == pytest.approx(math.log(4))
    assert terms.metrics["log_odds_ratio"].item() == pytest.approx(-math.log(1.25))


def test_sft_is_the_token_mean_nll():
    """Chosen tokens [-1, -2] and [-3]: NLL = (1 + 2 + 3) / 3 = 2, a mean over tokens, not
    over sequences ((1.5 + 3) / 2 = 2.25). Preference part 0; rewards = avg logps."""
    terms, loss = run("sft", [[-1, -2], [-3]], [[-1], [-1]])
    assert loss == pytest.approx(2.0)
    assert not terms.losses.any()
    torch.testing.assert_close(terms.chosen_rewards, torch.tensor([-1.5, -3.0], dtype=torch.float64))
