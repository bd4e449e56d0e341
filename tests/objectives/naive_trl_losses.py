"""A naive float64 reference for TRL 1.16's other preference losses and AlphaPO, written
from the papers' formulas: plain Python floats and ``math``, per example, no torch.

Each formula below is the paper's, written the obvious way (``log(sigmoid(z))``,
``p ** -alpha`` with ``p = exp(lp)``), not the stable forms of the implementation: at the
moderate inputs of the parity tests both are exact to float64 rounding, so agreement tests
the algebra, and the extreme-input tests compare against these only where they are finite.
Batch statistics the objectives detach (BCO's delta) are returned in ``frozen`` and held
fixed while differencing.
"""

from __future__ import annotations

import math
from typing import Optional

from naive_objectives import NaiveTerms, PlainBatch, _row, kept

# name: (needs_reference, paired, reduction, nll_weight, default hyperparameters), from the
# papers and TRL 1.16's configs (beta 0.1, label_smoothing 0, discopop_tau 0.05; EXO's eps
# 1e-3, which TRL's error message recommends since its default 0 is refused).
TRL_LOSSES_EXPECTED = {
    "robust": (True, True, "sum", 0.0, {"beta": 0.1, "label_smoothing": 0.0}),
    "exo-pair": (True, True, "sum", 0.0, {"beta": 0.1, "label_smoothing": 1e-3}),
    "nca-pair": (True, True, "sum", 0.0, {"beta": 0.1}),
    "bco-pair": (True, True, "sum", 0.0, {"beta": 0.1}),
    "sppo-hard": (True, True, "sum", 0.0, {"beta": 0.1}),
    "aot": (True, True, "sum", 0.0, {"beta": 0.1, "label_smoothing": 0.0}),
    "aot-unpaired": (True, True, "sum", 0.0, {"beta": 0.1, "label_smoothing": 0.0}),
    "apo-zero": (True, True, "sum", 0.0, {"beta": 0.1}),
    "apo-down": (True, True, "sum", 0.0, {"beta": 0.1}),
    "discopop": (True, True, "sum", 0.0, {"beta": 0.1, "discopop_tau": 0.05}),
    "sigmoid-norm": (True, True, "mean", 0.0, {"beta": 0.1, "label_smoothing": 0.0}),
    "apo-zero-unpaired": (True, False, "sum", 0.0,
                          {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}),
}


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def log_sigmoid(z: float) -> float:
    return math.log(sigmoid(z))


def smoothed(z: float, eps: float) -> float:
    return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)


def alphapo_reward(lp: float, alpha: float) -> float:
    """Gupta et al. 2025: r = (1 - p^(-alpha)) / alpha, p = exp(lp); log p at alpha 0."""
    return lp if alpha == 0 else (1 - math.exp(lp) ** (-alpha)) / alpha


def _pair_loss(name: str, r: dict, hp: dict) -> float:
    """One pair's loss for the formulas that see only their own pair."""
    beta, eps = hp.get("beta"), hp.get("label_smoothing", 0.0)
    r_w, r_l = r["lp_w"] - r["ref_w"], r["lp_l"] - r["ref_l"]
    z = beta * (r_w - r_l)
    if name == "robust":  # Chowdhury et al. 2024, the rDPO loss
        return ((1 - eps) * -log_sigmoid(z) - eps * -log_sigmoid(-z)) / (1 - 2 * eps)
    if name == "exo-pair":  # Ji et al. 2024: KL((sigma(z), sigma(-z)) || (1 - eps, eps))
        q_w, q_l = sigmoid(z), sigmoid(-z)
        return q_w * math.log(q_w / (1 - eps)) + q_l * math.log(q_l / eps)
    if name == "nca-pair":  # Chen et al. 2024
        return (-log_sigmoid(beta * r_w) - 0.5 * log_sigmoid(-beta * r_w)
                - 0.5 * log_sigmoid(-beta * r_l))
    if name == "sppo-hard":  # Wu et al. 2024, Eq. 4.7, P = 1 / 0, eta = 1/beta
        return (r_w - 0.5 / beta) ** 2 + (r_l + 0.5 / beta) ** 2
    if name == "apo-zero":  # D'Oosterlinck et al. 2024, Eq. 7
        return (1 - sigmoid(beta * r_w)) + sigmoid(beta * r_l)
    if name == "apo-down":  # Eq. 8
        return sigmoid(beta * r_w) + (1 - sigmoid(beta * (r_w - r_l)))
    if name == "discopop":  # Lu et al. 2024, Eq. 5 (LRML)
        weight = sigmoid(z / hp["discopop_tau"])
        return (1 - weight) * -log_sigmoid(z) + weight * math.exp(-z)
    if name == "sigmoid-norm":  # DPO on per-token means of the log-ratios
        h = (r["avg_w"] - r["ref_avg_w"]) - (r["avg_l"] - r["ref_avg_l"])
        return smoothed(beta * h, eps)
    raise KeyError(name)


def _alphapo(name: str, r: dict, hp: dict) -> tuple[float, float, float]:
    """(loss, chosen reward, rejected reward) of cpo / simpo / cpo-simpo with AlphaPO's
    alpha: sums for cpo, per-token means for the SimPO pair."""
    lp_w, lp_l = (r["lp_w"], r["lp_l"]) if name == "cpo" else (r["avg_w"], r["avg_l"])
    reward_w, reward_l = alphapo_reward(lp_w, hp["alpha"]), alphapo_reward(lp_l, hp["alpha"])
    gamma = 0.0 if name == "cpo" else hp["gamma"]
    loss = smoothed(hp["beta"] * (reward_w - reward_l) - gamma, hp["label_smoothing"])
    return loss, hp["beta"] * reward_w, hp["beta"] * reward_l


def _sorted_losses(name: str, rows: list[dict], hp: dict) -> list[float]:
    """AOT (Melnyk et al. 2024): rank-matched (sorted) differences over the batch."""
    if name == "aot":
        upper = sorted(r["lp_w"] - r["lp_l"] for r in rows)
        lower = sorted(r["ref_w"] - r["ref_l"] for r in rows)
    else:
        upper = sorted(r["lp_w"] - r["ref_w"] for r in rows)
        lower = sorted(r["lp_l"] - r["ref_l"] for r in rows)
    return [smoothed(hp["beta"] * (u - v), hp["label_smoothing"]) for u, v in zip(upper, lower)]


def naive_trl_terms(name: str, b: PlainBatch, hp: dict,
                    frozen: Optional[dict] = None) -> NaiveTerms:
    rows = [_row(b, i) for i in range(len(b.chosen))]
    beta = hp["beta"]
    mean = name == "sigmoid-norm"
    out = NaiveTerms([], [], [])
    for r in rows:
        if mean:
            out.chosen_rewards.append(beta * (r["avg_w"] - r["ref_avg_w"]))
            out.rejected_rewards.append(beta * (r["avg_l"] - r["ref_avg_l"]))
        elif name not in ("cpo", "simpo", "cpo-simpo"):
            out.chosen_rewards.append(beta * (r["lp_w"] - r["ref_w"]))
            out.rejected_rewards.append(beta * (r["lp_l"] - r["ref_l"]))
    if name in ("cpo", "simpo", "cpo-simpo"):
        for r in rows:
            loss, reward_w, reward_l = _alphapo(name, r, hp)
            out.losses.append(loss)
            out.chosen_rewards.append(reward_w)
            out.rejected_rewards.append(reward_l)
    elif name in ("aot", "aot-unpaired"):
        out.losses = _sorted_losses(name, rows, hp)
    elif name == "bco-pair":  # Jung et al. 2024, delta = mean reward of the batch
        rewards = out.chosen_rewards + out.rejected_rewards
        out.frozen = frozen or {"delta": sum(rewards) / len(rewards)}
        delta = out.frozen["delta"]
        for r in rows:
            r_w, r_l = beta * (r["lp_w"] - r["ref_w"]), beta * (r["lp_l"] - r["ref_l"])
            out.losses.append(-log_sigmoid(r_w - delta) - log_sigmoid(-(r_l - delta)))
        out.metrics["delta"] = [delta] * len(rows)
    elif name == "apo-zero-unpaired":
        for i, r in enumerate(rows):
            z = beta * (r["lp_w"] - r["ref_w"])
            out.losses.append(hp["desirable_weight"] * (1 - sigmoid(z)) if b.labels[i]
                              else hp["undesirable_weight"] * sigmoid(z))
    else:
        out.losses = [_pair_loss(name, r, hp) for r in rows]
    return out


def naive_trl_step_loss(name: str, b: PlainBatch, hp: dict, nll_weight: float,
                        frozen: Optional[dict] = None) -> float:
    """Mean loss over the batch plus nll_weight times the token-mean NLL of the chosen
    (desirable) completions."""
    terms = naive_trl_terms(name, b, hp, frozen)
    nll_tokens = [v for i, row in enumerate(b.chosen)
                  if b.labels is None or b.labels[i] for v in kept(row, b.chosen_mask[i])]
    nll = -sum(nll_tokens) / max(len(nll_tokens), 1)
    return sum(terms.losses) / len(terms.losses) + nll_weight * nll
