"""A naive float64 reference for every objective, written from the papers' formulas.

Plain Python floats and ``math``; one loop over the batch; no torch, so nothing is shared
with the code under test. Gradients come from central finite differences of these
functions. Batch statistics that the objectives detach (KTO's reference points) are passed
in ``frozen`` and held fixed while differencing, which is what "detached" means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional


def log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def sigmoid(z: float) -> float:
    return math.exp(log_sigmoid(z))


def smoothed(z: float, eps: float) -> float:
    return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)


def kept(values: list[float], mask: list[bool]) -> list[float]:
    return [v for v, m in zip(values, mask) if m]


@dataclass
class PlainBatch:
    """Padded rows as nested lists. ``*_keep`` are the positions the log-prob sums cover
    (the masks, or SamPO's down-sampled masks); ``*_mask`` give the true lengths."""

    chosen: list[list[float]]
    rejected: list[list[float]]
    ref_chosen: list[list[float]]
    ref_rejected: list[list[float]]
    chosen_mask: list[list[bool]]
    rejected_mask: list[list[bool]]
    chosen_keep: list[list[bool]]
    rejected_keep: list[list[bool]]
    labels: Optional[list[bool]] = None


@dataclass
class NaiveTerms:
    losses: list[float]
    chosen_rewards: list[float]
    rejected_rewards: list[float]
    metrics: dict[str, list[float]] = field(default_factory=dict)
    frozen: dict[str, float] = field(default_factory=dict)


def _row(b: PlainBatch, i: int):
    """Sums, means and lengths of row i: policy and reference, chosen and rejected."""
    cw, rw = kept(b.chosen[i], b.chosen_keep[i]), kept(b.ref_chosen[i], b.chosen_keep[i])
    cl, rl = kept(b.rejected[i], b.rejected_keep[i]), kept(b.ref_rejected[i], b.rejected_keep[i])
    return dict(lp_w=sum(cw), ref_w=sum(rw), lp_l=sum(cl), ref_l=sum(rl),
                avg_w=sum(cw) / len(cw), ref_avg_w=sum(rw) / len(rw),
                avg_l=sum(cl) / len(cl), ref_avg_l=sum(rl) / len(rl),
                n_w=sum(b.chosen_mask[i]), n_l=sum(b.rejected_mask[i]))


def naive_terms(name: str, b: PlainBatch, hp: dict, frozen: Optional[dict] = None) -> NaiveTerms:
    rows = [_row(b, i) for i in range(len(b.chosen))]
    beta = hp.get("beta")
    eps = hp.get("label_smoothing", 0.0)
    out = NaiveTerms([], [], [])
    if name in ("kto-pair", "kto"):
        r_w = [r["lp_w"] - r["ref_w"] for r in rows]
        r_l = [r["lp_l"] - r["ref_l"] for r in rows]
        out.frozen = frozen or {"z_w": max(0.0, sum(r_w) / len(r_w)),
                                "z_l": max(0.0, sum(r_l) / len(r_l))}
    for i, r in enumerate(rows):
        h = (r["lp_w"] - r["ref_w"]) - (r["lp_l"] - r["ref_l"])
        ref_rewards = (beta * (r["lp_w"] - r["ref_w"]), beta * (r["lp_l"] - r["ref_l"])) if beta else None
        if name in ("dpo", "sampo"):
            loss, rewards = smoothed(beta * h, eps), ref_rewards
        elif name == "rdpo":
            # Park et al. 2024: sigma(beta h + alpha (|y_w| - |y_l|)).
            z = beta * h + hp["alpha"] * (r["n_w"] - r["n_l"])
            loss, rewards = smoothed(z, eps), ref_rewards
        elif name == "cpo":
            loss = smoothed(beta * (r["lp_w"] - r["lp_l"]), eps)
            rewards = (beta * r["lp_w"], beta * r["lp_l"])
        elif name in ("simpo", "cpo-simpo"):
            loss = smoothed(beta * (r["avg_w"] - r["avg_l"]) - hp["gamma"], eps)
            rewards = (beta * r["avg_w"], beta * r["avg_l"])
        elif name == "ipo":
            h_mean = (r["avg_w"] - r["ref_avg_w"]) - (r["avg_l"] - r["ref_avg_l"])
            loss = (h_mean - 1 / (2 * beta)) ** 2
            rewards = (beta * (r["avg_w"] - r["ref_avg_w"]), beta * (r["avg_l"] - r["ref_avg_l"]))
        elif name == "hinge":
            loss, rewards = max(0.0, 1 - beta * h), ref_rewards
        elif name == "kto-pair":
            z_w, z_l = out.frozen["z_w"], out.frozen["z_l"]
            loss = 0.5 * ((1 - sigmoid(beta * ((r["lp_w"] - r["ref_w"]) - z_l)))
                          + (1 - sigmoid(beta * (z_w - (r["lp_l"] - r["ref_l"])))))
            rewards = ref_rewards
        elif name == "kto":
            z0, ratio = out.frozen["z_l"], r["lp_w"] - r["ref_w"]
            if b.labels[i]:
                loss = hp["desirable_weight"] * (1 - sigmoid(beta * (ratio - z0)))
            else:
                loss = hp["undesirable_weight"] * (1 - sigmoid(beta * (z0 - ratio)))
            rewards = ref_rewards
            out.metrics.setdefault("kl", []).append(z0)
        elif name == "orpo":
            def log_odds(avg):
                p = math.exp(avg)
                return math.log(p / (1 - p))
            gap = log_odds(r["avg_w"]) - log_odds(r["avg_l"])
            loss = -beta * log_sigmoid(gap)
            rewards = (beta * r["avg_w"], beta * r["avg_l"])
            out.metrics.setdefault("log_odds_ratio", []).append(log_sigmoid(gap))
            out.metrics.setdefault("log_odds_chosen", []).append(gap)
        elif name == "sft":
            loss, rewards = 0.0, (r["avg_w"], r["avg_l"])
        else:
            raise KeyError(name)
        out.losses.append(loss)
        out.chosen_rewards.append(rewards[0])
        out.rejected_rewards.append(rewards[1])
    return out


def naive_step_loss(name: str, b: PlainBatch, hp: dict, nll_weight: float,
                    frozen: Optional[dict] = None) -> float:
    """Mean preference loss over the batch plus nll_weight times the token-mean NLL over all
    chosen tokens (desirable ones only for unpaired data)."""
    terms = naive_terms(name, b, hp, frozen)
    nll_tokens = [v for i, row in enumerate(b.chosen)
                  if b.labels is None or b.labels[i] for v in kept(row, b.chosen_mask[i])]
    nll = -sum(nll_tokens) / max(len(nll_tokens), 1)
    return sum(terms.losses) / len(terms.losses) + nll_weight * nll


def finite_difference(f: Callable[[PlainBatch], float], b: PlainBatch,
                      step: float = 1e-6) -> tuple[list[list[float]], list[list[float]]]:
    """d f / d (every entry of b.chosen and b.rejected), padding included (expected 0)."""
    grads = []
    for side in ("chosen", "rejected"):
        table = getattr(b, side)
        side_grads = []
        for i, row in enumerate(table):
            row_grads = []
            for j, value in enumerate(row):
                row[j] = value + step
                plus = f(b)
                row[j] = value - step
                minus = f(b)
                row[j] = value
                row_grads.append((plus - minus) / (2 * step))
            side_grads.append(row_grads)
        grads.append(side_grads)
    return grads[0], grads[1]
