"""preftune.trl's configs against TRL 1.16's: the same fields with the same defaults, each
resolved to a preftune setting with TRL's meaning, or refused by name.

The expected values come from TRL's own config classes, instantiated (skipped where TRL is
not installed); the meanings of loss types are checked against TRL's documentation."""

import dataclasses
import inspect
import warnings

import pytest
import torch

from preftune.config import ConfigError, load_config
from preftune.trl import (CPOConfig, CPOTrainer, DPOConfig, DPOTrainer, KTOConfig, KTOTrainer,
                          ORPOConfig, ORPOTrainer, describe, resolve)
from preftune.trl.mapping import preftune_value
from preftune.validation import validate

OURS = {"cpo": CPOConfig, "dpo": DPOConfig, "orpo": ORPOConfig, "kto": KTOConfig}
# transformers 4 fields TRL 1.16 users still type (transformers 5 dropped them).
TRANSFORMERS_4 = {"warmup_ratio", "overwrite_output_dir"}


def trl_classes():
    trl = pytest.importorskip("trl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOConfig as TrlCPO, CPOTrainer as TrlCPOTrainer
        from trl.experimental.orpo import ORPOConfig as TrlORPO, ORPOTrainer as TrlORPOTrainer
    assert trl.__version__.startswith("1.16"), trl.__version__
    return {"cpo": (TrlCPO, TrlCPOTrainer), "dpo": (trl.DPOConfig, trl.DPOTrainer),
            "orpo": (TrlORPO, TrlORPOTrainer), "kto": (trl.KTOConfig, trl.KTOTrainer)}


def default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def plain(value):
    """TRL's enums (IntervalStrategy, SchedulerType ...) as their string values."""
    return getattr(value, "value", value)


# TRL field -> (preftune key, what preftune must hold given TRL's resolved value).
SAME = lambda v: v  # noqa: E731
EXPECTED = {
    "learning_rate": ("learning_rate", SAME), "num_train_epochs": ("num_train_epochs", SAME),
    "max_steps": ("max_steps", SAME), "lr_scheduler_type": ("lr_scheduler_type", plain),
    "warmup_steps": ("warmup_steps", lambda v: int(v) if v >= 1 else 0),
    "per_device_train_batch_size": ("per_device_train_batch_size", SAME),
    "per_device_eval_batch_size": ("per_device_eval_batch_size", SAME),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", SAME),
    "weight_decay": ("weight_decay", SAME), "adam_beta1": ("adam_beta1", SAME),
    "adam_beta2": ("adam_beta2", SAME), "adam_epsilon": ("adam_epsilon", SAME),
    "max_grad_norm": ("max_grad_norm", SAME), "optim": ("optim", plain), "seed": ("seed", SAME),
    "bf16": ("bf16", SAME), "fp16": ("fp16", SAME), "logging_steps": ("logging_steps", int),
    "logging_first_step": ("logging_first_step", SAME),
    "eval_strategy": ("eval_strategy", plain), "save_strategy": ("save_strategy", plain),
    "save_steps": ("save_steps", int), "save_total_limit": ("save_total_limit", SAME),
    "gradient_checkpointing": ("gradient_checkpointing", SAME),
    "push_to_hub": ("push_to_hub", SAME), "max_length": ("max_length", SAME),
    "beta": ("beta", SAME), "disable_dropout": ("disable_dropout", SAME),
    "precompute_ref_log_probs": ("precompute_ref_log_probs", SAME),
    "desirable_weight": ("desirable_weight", SAME),
    "undesirable_weight": ("undesirable_weight", SAME),
}


@pytest.mark.parametrize("kind", sorted(OURS))
def test_fields_defaults_and_resolution_match_trl(kind, tmp_path):
    """The table: every TRL field, TRL's default, ours, and what preftune resolved."""
    trl_config_class, _ = trl_classes()[kind]
    trl_fields = {f.name: f for f in dataclasses.fields(trl_config_class)}
    our_fields = {f.name: f for f in dataclasses.fields(OURS[kind])}
    assert set(trl_fields) <= set(our_fields), set(trl_fields) - set(our_fields)
    assert set(our_fields) - set(trl_fields) <= TRANSFORMERS_4
    # TRL refuses its own bf16 default on a machine without a GPU unless use_cpu is set.
    cpu = {} if torch.cuda.is_available() else {"use_cpu": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = trl_config_class(output_dir=str(tmp_path), **cpu)
    ours = OURS[kind](output_dir=str(tmp_path), **cpu)
    config = resolve(ours).config
    table = {row["field"]: row for row in describe(ours)}
    for name, f in trl_fields.items():
        assert default(our_fields[name]) == default(f), (name, default(our_fields[name]))
        assert table[name]["kind"] in ("mapped", "no effect", "refused unless default")
        if name in EXPECTED:
            key, meaning = EXPECTED[name]
            resolved = getattr(theirs, name)
            assert preftune_value(config, key) == meaning(resolved), (name, resolved)
    assert ours.bf16 == theirs.bf16  # both resolve bf16 on unless fp16
    assert config.training.warmup_ratio == 0.0  # TRL: no warmup (preftune train: 10%)
    assert config.training.save_minutes is None  # TRL saves by steps only


def test_trl_meanings_of_loss_types():
    """TRL's CPOConfig(loss_type=simpo) is CPO-SimPO with beta 0.1, gamma 0.5, alpha 1 (not
    preftune's CPO-SimPO recipe of beta 10, gamma 5.4); sigmoid is CPO under CPOConfig and
    DPO under DPOConfig."""
    def method(config):
        return validate(resolve(config).config, loads_data=False, loads_model=False)

    simpo = method(CPOConfig(loss_type="simpo"))
    assert (simpo.objective.name, simpo.hparams["beta"], simpo.hparams["gamma"],
            simpo.nll_weight) == ("cpo-simpo", 0.1, 0.5, 1.0)
    assert method(CPOConfig(loss_type="simpo", cpo_alpha=0.0)).objective.name == "simpo"
    assert method(CPOConfig(loss_type="alphapo")).objective.name == "simpo"
    cpo = method(CPOConfig())
    assert (cpo.objective.name, cpo.hparams["beta"], cpo.nll_weight) == ("cpo", 0.1, 1.0)
    hinge = method(CPOConfig(loss_type="hinge"))
    assert hinge.objective.name == "hinge" and hinge.reference_free and not hinge.needs_reference
    dpo = method(DPOConfig(loss_type="sigmoid"))
    assert (dpo.objective.name, dpo.needs_reference, dpo.nll_weight) == ("dpo", True, 0.0)
    mpo = method(DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.3]))
    assert (mpo.objective.name, mpo.nll_weight) == ("dpo", 0.3)
    assert method(DPOConfig(loss_type="ipo")).objective.name == "ipo"
    assert method(ORPOConfig(beta=0.25)).hparams["beta"] == 0.25
    kto = method(KTOConfig(desirable_weight=1.5))
    assert (kto.objective.name, kto.hparams["desirable_weight"]) == ("kto", 1.5)
    # `preftune train` keeps its own reading and defaults.
    own = validate(load_config(None, ["--loss_type", "simpo"]), loads_data=False,
                   loads_model=False)
    assert (own.objective.name, own.hparams["beta"], own.hparams["gamma"]) == \
        ("cpo-simpo", 10.0, 5.4)


@pytest.mark.parametrize("config, named", [
    (CPOConfig(torch_compile=True), "torch_compile"),
    (CPOConfig(generate_during_eval=True), "generate_during_eval"),
    (DPOConfig(loss_type=["sigmoid", "no_such_loss"]), "loss_type"),
    (DPOConfig(loss_type="no_such_loss"), "loss_type"),
    (DPOConfig(truncation_mode="keep_end"), "truncation_mode"),
    (DPOConfig(train_sampling_strategy="sequential"), "train_sampling_strategy"),
    (ORPOConfig(lr_scheduler_kwargs={"num_cycles": 2}), "lr_scheduler_kwargs"),
    (ORPOConfig(logging_strategy="epoch"), "logging_strategy"),
    (ORPOConfig(hub_strategy="checkpoint"), "hub_strategy"),
    (ORPOConfig(load_best_model_at_end=True), "load_best_model_at_end"),
    (CPOConfig(model_init_kwargs={"device_map": "cuda:1"}), "model_init_kwargs"),
    (CPOConfig(logging_steps=0.5), "logging_steps"),  # a ratio needs max_steps
])
def test_unsupported_field_fails_naming_it(config, named):
    with pytest.raises(ConfigError, match=named):
        resolve(config)


def test_the_other_trl_loss_types_map_to_their_objectives_with_trls_fields():
    def method(config):
        return validate(resolve(config).config, loads_data=False, loads_model=False)

    robust = method(DPOConfig(loss_type="robust", label_smoothing=0.1, beta=0.2))
    assert (robust.objective.name, robust.hparams) == (
        "robust", {"beta": 0.2, "label_smoothing": 0.1})
    assert method(DPOConfig(loss_type="discopop", discopop_tau=0.3)).hparams["discopop_tau"] == 0.3
    for name in ("nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero",
                 "apo_down", "sigmoid_norm"):
        assert method(DPOConfig(loss_type=name)).objective.name == name.replace("_", "-")
    apo = method(KTOConfig(loss_type="apo_zero_unpaired", desirable_weight=1.5))
    assert (apo.objective.name, apo.hparams["desirable_weight"]) == ("apo-zero-unpaired", 1.5)
    alphapo = method(CPOConfig(loss_type="alphapo", alpha=0.25))
    assert (alphapo.objective.name, alphapo.hparams["alpha"], alphapo.nll_weight) == \
        ("simpo", 0.25, 0.0)
    notes = resolve(DPOConfig(loss_type="sigmoid", discopop_tau=0.3)).notes
    assert any(n.startswith("discopop_tau=0.3: no effect here") for n in notes)
    with pytest.raises(ConfigError, match="label_smoothing"):  # TRL: > 0 for exo_pair
        method(DPOConfig(loss_type="exo_pair"))
    with pytest.raises(ConfigError, match="alpha"):  # AlphaPO shapes the sigmoid losses only
        method(CPOConfig(loss_type="hinge", alpha=0.5))


def test_unsupported_trainer_argument_fails_naming_it():
    with pytest.raises(ConfigError, match="callbacks"):
        CPOTrainer(model="unused", args=CPOConfig(), train_dataset=[{}], callbacks=[object()])


def test_fields_without_effect_are_reported():
    notes = resolve(DPOConfig(dataloader_num_workers=4, label_smoothing=0.1)).notes
    assert any(note.startswith("dataloader_num_workers=4: no effect") for note in notes)
    assert any("label_smoothing=0.1" in note for note in notes)  # TRL's sigmoid ignores it


def test_ratios_of_steps_resolve_as_transformers_does():
    t = resolve(CPOConfig(warmup_steps=0.1, max_steps=10, logging_steps=0.25,
                          eval_strategy="steps")).config.training
    assert (t.warmup_ratio, t.warmup_steps, t.logging_steps, t.eval_steps) == (0.1, 0, 3, 3)
    assert resolve(CPOConfig(warmup_steps=7)).config.training.warmup_steps == 7
    assert resolve(CPOConfig(warmup_ratio=0.2)).config.training.warmup_ratio == 0.2


@pytest.mark.parametrize("kind, ours", [("cpo", CPOTrainer), ("dpo", DPOTrainer),
                                        ("orpo", ORPOTrainer), ("kto", KTOTrainer)])
def test_trainer_signatures_match_trl(kind, ours):
    _, theirs = trl_classes()[kind]

    def shape(cls):
        return [(p.name, p.default) for p in inspect.signature(cls.__init__).parameters.values()]

    assert shape(ours) == shape(theirs)
