"""The registry: names, metadata the trainer reads, lookups and their error messages."""

from __future__ import annotations

import math
import re

import pytest

from preftune.errors import ConfigError

from naive_trl_losses import TRL_LOSSES_EXPECTED
from objective_fixtures import random_batch, sequence_logps
from preftune.objectives import REGISTRY, Objective, compute_objective, get_objective

# name: (needs_reference, paired, reduction, nll_weight, default hyperparameters)
EXPECTED = {
    "dpo": (True, True, "sum", 0.0, {"beta": 0.1, "label_smoothing": 0.0}),
    "rdpo": (True, True, "sum", 0.0, {"beta": 0.1, "alpha": 0.01, "label_smoothing": 0.0}),
    "sampo": (True, True, "sampo", 0.0, {"beta": 0.1, "label_smoothing": 0.0}),
    "cpo": (False, True, "sum", 1.0, {"beta": 0.1, "label_smoothing": 0.0, "alpha": 0.0}),
    "simpo": (False, True, "mean", 0.0,
              {"beta": 2.0, "gamma": 1.0, "label_smoothing": 0.0, "alpha": 0.0}),
    "cpo-simpo": (False, True, "mean", 0.05,
                  {"beta": 10.0, "gamma": 5.4, "label_smoothing": 0.0, "alpha": 0.0}),
    "ipo": (True, True, "mean", 0.0, {"beta": 0.1}),
    "hinge": (True, True, "sum", 0.0, {"beta": 0.1}),
    "kto-pair": (True, True, "sum", 0.0, {"beta": 0.1}),
    "kto": (True, False, "sum", 0.0,
            {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}),
    "orpo": (False, True, "mean", 1.0, {"beta": 0.1}),
    "sft": (False, True, "mean", 1.0, {}),
    **TRL_LOSSES_EXPECTED,  # test_trl_losses.py: TRL 1.16's other loss types
}


def test_registry_holds_exactly_the_documented_objectives():
    assert set(REGISTRY) == set(EXPECTED)
    assert all(REGISTRY[name].name == name for name in REGISTRY)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_metadata(name):
    objective = get_objective(name)
    needs_reference, paired, reduction, nll_weight, hparams = EXPECTED[name]
    assert objective.needs_reference is needs_reference
    assert objective.paired is paired
    assert objective.reduction == reduction
    assert objective.nll_weight == nll_weight
    assert objective.defaults == hparams


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_objective_cites_its_source(name):
    objective = get_objective(name)
    assert objective.equation and objective.loss_fn.__doc__
    if name != "sft":  # plain maximum likelihood has no paper to cite
        assert re.search(r"\b20\d\d\b", objective.paper), objective.paper
        assert re.search(r"arXiv:\d{4}\.\d{5}", objective.paper), objective.paper


@pytest.mark.parametrize("spelling,name", [("CPO_SimPO", "cpo-simpo"), ("kto_pair", "kto-pair"),
                                           (" DPO ", "dpo")])
def test_lookup_normalises_spelling(spelling, name):
    assert get_objective(spelling) is REGISTRY[name]


@pytest.mark.parametrize("typo,suggestion", [("simpoo", "simpo"), ("cpo-simp", "cpo-simpo"),
                                             ("kto-pari", "kto-pair"), ("orpoo", "orpo")])
def test_unknown_name_suggests_the_closest(typo, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        get_objective(typo)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"known: (\S+, )*cpo, cpo-simpo, (\S+, )*dpo, "):
        get_objective("ppo")


def test_registering_a_name_twice_is_refused():
    from preftune.objectives import register

    with pytest.raises(ValueError, match="registered twice"):
        register(Objective(name="dpo", paper="", equation="", needs_reference=True,
                           paired=True, reduction="sum", loss_fn=REGISTRY["dpo"].loss_fn))


def test_call_merges_defaults_with_overrides():
    """Overriding beta alone keeps the default label_smoothing (0). On the DPO hand example
    (h = 2) beta 0.2 gives -log sigma(0.4) = log(1 + e^-0.4) = 0.513015."""
    policy = sequence_logps([[-1, -2]], [[-1]])
    reference = sequence_logps([[-2, -3]], [[-1]])
    out = compute_objective(get_objective("dpo"), {"beta": 0.2}, policy, reference)
    assert out.terms.losses.item() == pytest.approx(math.log1p(math.exp(-0.4)))
    assert math.log1p(math.exp(-0.4)) == pytest.approx(0.5130152524)


@pytest.mark.parametrize("name", [n for n, meta in EXPECTED.items() if meta[0]])
def test_reference_methods_refuse_to_run_without_reference(name):
    batch = random_batch(0)
    with pytest.raises(ValueError, match="needs reference"):
        compute_objective(get_objective(name), {}, batch.policy, None,
                          example_ids=batch.example_ids, labels=batch.labels)


def test_kto_refuses_unlabelled_data():
    batch = random_batch(0)
    with pytest.raises(ValueError, match="labels"):
        compute_objective(get_objective("kto"), {}, batch.policy, batch.reference)


@pytest.mark.parametrize("name,hparams", [("simpo", {"beta": 0.0}), ("ipo", {"beta": -0.1})])
def test_formulas_that_divide_by_beta_refuse_non_positive_beta(name, hparams):
    batch = random_batch(0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        compute_objective(get_objective(name), hparams, batch.policy, batch.reference)
