"""WPO weighting, LD-DPO and f-DPO (objectives/weighting.py, forward/reduction.py) on DPO:
values and gradients against a float64 naive reference written from the papers, a
hand-derived number each, TRL 1.16's own loss code as a referee where TRL works, and the
range where it does not (alpha-divergence past its clamp)."""

from __future__ import annotations

import importlib.util
import math
import random

import pytest
import torch

from objective_fixtures import sequence_logps
from preftune.objectives import compute_objective, get_objective
from preftune.objectives.weighting import ScoringOptions, f_scores, log_sum_sq_probs
from preftune.types import SequenceLogps

HAS_TRL = importlib.util.find_spec("trl") is not None
DPO = get_objective("dpo")


def log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def naive_score(u: float, kind: str, alpha: float) -> float:
    """f'(r) at r = exp(u), Wang et al. 2023 Table 1, as the paper writes it."""
    r = math.exp(u)
    if kind == "reverse_kl":
        return math.log(r)
    if kind == "forward_kl":
        return 1 - 1 / r
    if kind == "js_divergence":
        return math.log(2 * r / (1 + r))
    return (r ** (alpha - 1) - 1) / (alpha - 1)


def naive_ld_sum(tokens: list[float], other_length: int, ld: float | None) -> float:
    shared = len(tokens) if ld is None else min(len(tokens), other_length)
    return sum(tokens[:shared]) + (ld or 0.0) * sum(tokens[shared:])


def naive_losses(rows, beta, kind="reverse_kl", alpha=1.0, ld=None, weights=None):
    """Per-pair ``w * -log sigma(beta (f(u_w) - f(u_l)))`` in plain floats. ``rows``:
    (chosen, rejected, ref_chosen, ref_rejected) token lists."""
    out = []
    for i, (cw, cl, rw, rl) in enumerate(rows):
        u_w = naive_ld_sum(cw, len(cl), ld) - naive_ld_sum(rw, len(rl), ld)
        u_l = naive_ld_sum(cl, len(cw), ld) - naive_ld_sum(rl, len(rw), ld)
        z = beta * (naive_score(u_w, kind, alpha) - naive_score(u_l, kind, alpha))
        out.append(-log_sigmoid(z) * (1.0 if weights is None else weights[i]))
    return out


def random_rows(seed: int, count: int = 4, scale: float = 1.0):
    rng = random.Random(seed)

    def seq(n):
        return [-scale * rng.random() for _ in range(n)]

    rows = []
    for _ in range(count):
        n_w, n_l = rng.randint(1, 6), rng.randint(1, 6)
        rows.append((seq(n_w), seq(n_l), seq(n_w), seq(n_l)))
    return rows


def ours(rows, beta, options, squares=None):
    """(per-pair losses, gradient wrt the chosen and rejected token log-probs)."""
    policy = sequence_logps([r[0] for r in rows], [r[1] for r in rows])
    reference = sequence_logps([r[2] for r in rows], [r[3] for r in rows])
    policy.chosen.requires_grad_(True)
    policy.rejected.requires_grad_(True)
    if squares is not None:
        policy.chosen_log_sum_sq, policy.rejected_log_sum_sq = squares
    output = compute_objective(DPO, {"beta": beta}, policy, reference, options=options)
    losses = output.terms.losses
    grads = torch.autograd.grad(losses.sum(), [policy.chosen, policy.rejected])
    return losses.detach(), [g * m for g, m in zip(grads, (policy.chosen_mask,
                                                           policy.rejected_mask))]


def finite_difference(rows, beta, h=1e-6, **kwargs):
    """Central differences of the naive total loss per policy token (``weights`` fixed)."""
    grads = []
    for side in (0, 1):
        width = max(len(r[side]) for r in rows)
        g = torch.zeros(len(rows), width, dtype=torch.float64)
        for i, row in enumerate(rows):
            for t in range(len(row[side])):
                def total(delta):
                    bumped = [list(r) for r in rows]
                    tokens = list(bumped[i][side])
                    tokens[t] += delta
                    bumped[i][side] = tokens
                    return sum(naive_losses(bumped, beta, **kwargs))
                g[i, t] = (total(h) - total(-h)) / (2 * h)
        grads.append(g)
    return grads


OPTION_CASES = [
    (ScoringOptions(ld_alpha=0.5), {"ld": 0.5}),
    (ScoringOptions(ld_alpha=0.0), {"ld": 0.0}),
    (ScoringOptions(f_divergence_type="forward_kl"), {"kind": "forward_kl"}),
    (ScoringOptions(f_divergence_type="js_divergence"), {"kind": "js_divergence"}),
    (ScoringOptions(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5),
     {"kind": "alpha_divergence", "alpha": 0.5}),
    (ScoringOptions(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.7),
     {"kind": "alpha_divergence", "alpha": 1.7}),
    (ScoringOptions(ld_alpha=0.3, f_divergence_type="alpha_divergence",
                    f_alpha_divergence_coef=0.3),
     {"ld": 0.3, "kind": "alpha_divergence", "alpha": 0.3}),
]


@pytest.mark.parametrize("options,naive", OPTION_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_values_and_gradients_match_the_naive_float64_reference(options, naive, seed):
    rows = random_rows(seed)
    losses, grads = ours(rows, 0.7, options)
    expected = torch.tensor(naive_losses(rows, 0.7, **naive), dtype=torch.float64)
    assert torch.allclose(losses, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, finite_difference(rows, 0.7, **naive)):
        # Central differences at h = 1e-6 in float64: truncation ~h^2, rounding ~1e-10.
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-8)


def test_hand_derived_numbers():
    """forward KL: u_w = 0, u_l = ln 2 -> scores 0 and 1 - 1/2; beta 1: log(1 + e^0.5).
    js: u_w = u_l = 0 -> both log 2 + log(1/2) = 0: log 2. alpha 0.5: u_l = -2 ln 2 ->
    ((1/4)^-0.5 - 1) / -0.5 = -2, beta 0.5: -log sigma(1) = log(1 + e^-1).
    LD-DPO 0.5: chosen [-1, -2, -3] vs rejected [-1, -1] -> -1 - 2 + 0.5 (-3) = -4.5 and -2;
    beta 0.1 with a zero reference: -log sigma(-0.25) = log(1 + e^0.25)."""
    u = torch.tensor([0.0, math.log(2.0)], dtype=torch.float64)
    fwd = f_scores(u, "forward_kl")
    assert fwd.tolist() == pytest.approx([0.0, 0.5], abs=1e-15)
    assert -torch.nn.functional.logsigmoid(fwd[0] - fwd[1]).item() == pytest.approx(
        math.log1p(math.exp(0.5)), rel=1e-14)
    assert f_scores(torch.zeros(1, dtype=torch.float64), "js_divergence").item() == \
        pytest.approx(0.0, abs=1e-15)
    alpha = f_scores(torch.tensor([0.0, -2 * math.log(2.0)], dtype=torch.float64),
                     "alpha_divergence", 0.5)
    assert alpha.tolist() == pytest.approx([0.0, -2.0], abs=1e-14)
    rows = [([-1.0, -2.0, -3.0], [-1.0, -1.0], [0.0, 0.0, 0.0], [0.0, 0.0])]
    losses, _ = ours(rows, 0.1, ScoringOptions(ld_alpha=0.5))
    assert losses.item() == pytest.approx(math.log1p(math.exp(0.25)), rel=1e-14)


def test_wpo_weight_hand_number():
    """Chosen token: picked with probability 1/2 from (1/2, 1/2): sum p^2 = 1/2, aligned
    ratio 1. Rejected token: probability 0.1 from (0.9, 0.1): sum p^2 = 0.82, ratio
    0.1/0.82. The pair's weight is 0.1/0.82 = 0.12195..., times DPO's loss (log 2 here)."""
    logits_w = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    logits_l = torch.log(torch.tensor([0.9, 0.1], dtype=torch.float64))
    sq_w, sq_l = log_sum_sq_probs(logits_w), log_sum_sq_probs(logits_l)
    assert sq_l.item() == pytest.approx(math.log(0.82), rel=1e-14)
    rows = [([math.log(0.5)], [math.log(0.1)], [math.log(0.5)], [math.log(0.1)])]
    squares = (sq_w.reshape(1, 1), sq_l.reshape(1, 1))
    losses, _ = ours(rows, 0.1, ScoringOptions(use_weighting=True), squares)
    assert losses.item() == pytest.approx(0.1 / 0.82 * math.log(2.0), rel=1e-13)


def test_wpo_values_and_gradients_match_the_naive_reference():
    """Weights are constants of the gradient (detached), so the naive gradient holds them
    fixed."""
    rows = random_rows(3)
    rng = random.Random(5)
    sq = [([-rng.random() for _ in r[0]], [-rng.random() for _ in r[1]]) for r in rows]
    weights = [math.exp(sum(a - b for a, b in zip(r[0], s[0])) / len(r[0])
                        + sum(a - b for a, b in zip(r[1], s[1])) / len(r[1]))
               for r, s in zip(rows, sq)]
    squares = (sequence_logps([s[0] for s in sq], [s[1] for s in sq]).chosen,
               sequence_logps([s[0] for s in sq], [s[1] for s in sq]).rejected)
    losses, grads = ours(rows, 0.4, ScoringOptions(use_weighting=True), squares)
    expected = naive_losses(rows, 0.4, weights=weights)
    assert torch.allclose(losses, torch.tensor(expected, dtype=torch.float64), rtol=1e-12)
    for got, want in zip(grads, finite_difference(rows, 0.4, weights=weights)):
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-8)


def test_alpha_divergence_stays_finite_with_gradients_past_trls_clamp():
    """alpha 0.5 and log-ratios of -200 (t = 100, past TRL's clamp at 80, where TRL's
    gradient is exactly 0): the loss is finite, in float32 and float64, and so are its
    gradients, which are nonzero; over [-2000, 2000] and down to -3e38 no score or gradient
    is NaN or infinite."""
    options = ScoringOptions(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5)
    for dtype in (torch.float32, torch.float64):
        values = torch.linspace(-2000, 2000, 81, dtype=dtype)
        for chosen_ratio, rejected_ratio in ((-200.0, -200.0), (-200.0, -199.0)):
            policy = SequenceLogps(torch.tensor([[chosen_ratio]], dtype=dtype, requires_grad=True),
                                   torch.ones(1, 1, dtype=torch.bool),
                                   torch.tensor([[rejected_ratio]], dtype=dtype,
                                                requires_grad=True),
                                   torch.ones(1, 1, dtype=torch.bool))
            reference = SequenceLogps(torch.zeros(1, 1, dtype=dtype), policy.chosen_mask,
                                      torch.zeros(1, 1, dtype=dtype), policy.rejected_mask)
            loss = compute_objective(DPO, {"beta": 0.1}, policy, reference,
                                     options=options).terms.losses.sum()
            grads = torch.autograd.grad(loss, [policy.chosen, policy.rejected])
            assert torch.isfinite(loss)
            assert all(torch.isfinite(g).all() and (g != 0).all() for g in grads)
        grid = torch.cat([values, torch.tensor([-3e38, -1e30], dtype=dtype)])
        grid.requires_grad_(True)
        scores = f_scores(grid, "alpha_divergence", 0.5)
        (grad,) = torch.autograd.grad(scores.sum(), grid)
        assert torch.isfinite(scores).all() and torch.isfinite(grad).all() and (grad >= 0).all()
        # Positive wherever the true derivative exp(-u/2) is representable (u < 200).
        assert (grad[grid.detach() < 200] > 0).all()


@pytest.mark.skipif(not HAS_TRL, reason="TRL is not installed")
@pytest.mark.parametrize("trl_kwargs,options", [
    ({"ld_alpha": 0.5}, ScoringOptions(ld_alpha=0.5)),
    ({"f_divergence_type": "forward_kl"}, ScoringOptions(f_divergence_type="forward_kl")),
    ({"f_divergence_type": "js_divergence"}, ScoringOptions(f_divergence_type="js_divergence")),
    ({"f_divergence_type": "alpha_divergence", "f_alpha": 0.5},
     ScoringOptions(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5)),
    ({"use_weighting": True}, ScoringOptions(use_weighting=True)),
])
def test_trl_dpo_trainer_agrees_where_it_works(trl_kwargs, options):
    """TRL's float32 loss and gradients on random inputs (log-ratios of a few nats, where
    its clamp is not reached) equal ours to float32 rounding."""
    from trl_referee import trl_loss

    rows = random_rows(11, count=5, scale=2.0)
    policy = sequence_logps([r[0] for r in rows], [r[1] for r in rows], dtype=torch.float32)
    reference = sequence_logps([r[2] for r in rows], [r[3] for r in rows], dtype=torch.float32)
    for p in (policy, reference):
        p.chosen, p.rejected = p.chosen * p.chosen_mask, p.rejected * p.rejected_mask
    if options.use_weighting:
        gen = torch.Generator().manual_seed(2)
        policy.chosen_log_sum_sq = -torch.rand(policy.chosen.shape, generator=gen)
        policy.rejected_log_sum_sq = -torch.rand(policy.rejected.shape, generator=gen)
    policy.chosen.requires_grad_(True)
    policy.rejected.requires_grad_(True)
    beta = 0.3
    mine = compute_objective(DPO, {"beta": beta}, policy, reference, options=options)
    our_loss = mine.terms.losses.mean()
    ref_sums = (reference.chosen.sum(-1), reference.rejected.sum(-1))
    if options.ld_alpha is not None:  # TRL takes cached sums: give it the LD-weighted ones
        ref_sums = (mine.reduced.ref_chosen, mine.reduced.ref_rejected)
    theirs = trl_loss(policy.chosen, policy.rejected, policy.chosen_mask, policy.rejected_mask,
                      *ref_sums, beta=beta, chosen_sq=policy.chosen_log_sum_sq,
                      rejected_sq=policy.rejected_log_sum_sq, **trl_kwargs)
    g_ours = torch.autograd.grad(our_loss, [policy.chosen, policy.rejected])
    g_trl = torch.autograd.grad(theirs, [policy.chosen, policy.rejected])
    assert our_loss.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    for a, b, m in zip(g_ours, g_trl, (policy.chosen_mask, policy.rejected_mask)):
        b = b[:, :a.shape[1]]
        assert torch.allclose(a * m, b * m, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunked", [True, False])
def test_fast_forward_log_sum_sq_matches_the_padded_forward(chunked):
    """Prefix sharing and packing on, chunked head on or off: the same alignment term as
    the padded forward, in float64, where it is scored."""
    from tiny import random_pairs, tiny_llama
    from preftune.forward.fast import FastForward
    from preftune.forward.logps import PaddedForward

    model = tiny_llama(vocab_size=50).double()
    pairs = random_pairs(4, vocab=50)
    device = torch.device("cpu")
    padded = PaddedForward(0, log_sum_sq=True)(model, pairs, device)
    fast = FastForward(0, chunked=chunked, chunk_size=3, prefix_sharing=True, packing=True,
                       probe=False, log=lambda *_: None, log_sum_sq=True)(model, pairs, device)
    for side in ("chosen", "rejected"):
        mask = getattr(padded, f"{side}_mask")
        assert torch.equal(getattr(fast, f"{side}_mask"), mask)
        got = getattr(fast, f"{side}_log_sum_sq")
        want = getattr(padded, f"{side}_log_sum_sq")
        assert torch.allclose(got * mask, want * mask, rtol=1e-10, atol=1e-12), side


def test_padded_forward_log_sum_sq_matches_softmax():
    """The forward station's alignment term equals log sum softmax^2 built from the logits
    by hand, in float64."""
    from tiny import random_pairs, tiny_llama
    from preftune.forward.logps import PaddedForward

    model = tiny_llama(vocab_size=50).double()
    pairs = random_pairs(3, vocab=50)
    out = PaddedForward(0, log_sum_sq=True)(model, pairs, torch.device("cpu"))
    pair = pairs[0]
    ids = torch.tensor([pair.prompt_ids + pair.chosen_ids])
    logits = model(input_ids=ids).logits[0]
    start = len(pair.prompt_ids)
    probs = torch.softmax(logits[start - 1:start - 1 + len(pair.chosen_ids)], -1)
    expected = torch.log((probs ** 2).sum(-1))
    got = out.chosen_log_sum_sq[0, :len(pair.chosen_ids)]
    assert torch.allclose(got, expected.detach(), rtol=1e-10, atol=1e-12)


def test_wpo_with_an_sft_term_weighs_the_preference_loss_only():
    """[sigmoid, sft] with use_weighting: the step loss is mean(w x dpo) + token-mean NLL,
    the NLL unweighted (TRL 1.16 raises on this combination: it multiplies its sft term's
    expanded batch mean in place)."""
    from preftune.config import load_config
    from preftune.objectives import step_loss
    from preftune.objectives.method import resolve_method

    rows = random_rows(4)
    policy = sequence_logps([r[0] for r in rows], [r[1] for r in rows])
    reference = sequence_logps([r[2] for r in rows], [r[3] for r in rows])
    gen = torch.Generator().manual_seed(3)
    policy.chosen_log_sum_sq = -torch.rand(policy.chosen.shape, generator=gen,
                                           dtype=torch.float64)
    policy.rejected_log_sum_sq = -torch.rand(policy.rejected.shape, generator=gen,
                                             dtype=torch.float64)
    method = resolve_method(load_config(None, ["--loss_type", "sigmoid,sft", "--beta", "0.5",
                                               "--use_weighting", "true"]).method)
    output = compute_objective(method.objective, method.hparams, policy, reference,
                               nll_weight=method.nll_weight, options=method.options)
    tokens = float(policy.chosen_mask.sum())
    loss = step_loss(output, examples_in_step=len(rows), nll_tokens_in_step=tokens)
    weights = output.terms.metrics["wpo/weights"]
    dpo = torch.tensor(naive_losses(rows, 0.5), dtype=torch.float64)
    nll = -(policy.chosen * policy.chosen_mask).sum() / tokens
    assert loss.item() == pytest.approx(((weights * dpo).mean() + nll).item(), rel=1e-13)
    if HAS_TRL:
        from trl_referee import trl_loss

        with pytest.raises(RuntimeError):
            trl_loss(policy.chosen * policy.chosen_mask, policy.rejected * policy.rejected_mask,
                     policy.chosen_mask, policy.rejected_mask,
                     (reference.chosen * reference.chosen_mask).sum(-1),
                     (reference.rejected * reference.rejected_mask).sum(-1), beta=0.5,
                     loss_types=("sigmoid", "sft"), use_weighting=True,
                     chosen_sq=policy.chosen_log_sum_sq, rejected_sq=policy.rejected_log_sum_sq)
