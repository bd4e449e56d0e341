"""DPOConfig's WPO, LD-DPO, f-DPO, TR-DPO and weighted loss-type lists map to preftune's
keys (trl/mapping.py) with TRL's meanings, and the run they describe validates."""

import pytest

from preftune.config import ConfigError
from preftune.trl.config import DPOConfig, KTOConfig
from preftune.trl.mapping import resolve
from preftune.validation import validate


def method_of(config):
    return validate(resolve(config).config, loads_data=False, loads_model=False)


def test_options_map_through():
    config = resolve(DPOConfig(use_weighting=True, ld_alpha=0.4,
                               f_divergence_type="alpha_divergence", sync_ref_model=True,
                               ref_model_mixup_alpha=0.5, ref_model_sync_steps=64)).config
    m, model = config.method, config.model
    assert (m.use_weighting, m.ld_alpha, m.f_divergence_type, m.f_alpha_divergence_coef) == \
        (True, 0.4, "alpha_divergence", 0.5)  # TRL's default coefficient
    assert (model.sync_ref_model, model.ref_model_mixup_alpha, model.ref_model_sync_steps) == \
        (True, 0.5, 64)
    method = validate(config, loads_data=False, loads_model=False)
    assert method.options.use_weighting and method.options.ld_alpha == 0.4


def test_kto_sync_maps_through():
    assert resolve(KTOConfig(sync_ref_model=True)).config.model.sync_ref_model


def test_weighted_list_is_a_mixture():
    """MPO: TRL's [sigmoid, bco_pair, sft] with [0.8, 0.2, 1.0]."""
    method = method_of(DPOConfig(loss_type=["sigmoid", "bco_pair", "sft"],
                                 loss_weights=[0.8, 0.2, 1.0], beta=0.2))
    components = method.objective.components
    assert [(c.objective.name, c.weight) for c in components] == \
        [("dpo", 0.8), ("bco-pair", 0.2), ("sft", 1.0)]
    assert components[0].hparams["beta"] == 0.2 and method.nll_weight == 1.0


def test_label_smoothing_with_a_mixture_is_refused():
    with pytest.raises(ConfigError, match="label_smoothing"):
        resolve(DPOConfig(loss_type=["sigmoid", "hinge"], label_smoothing=0.1))
