"""A TRL config (preftune.trl.config) -> preftune's :class:`~preftune.config.Config`, with
TRL 1.16's meanings and defaults.

Every field of a TRL config is one of three kinds:

- **mapped** (``MAPPED``): it sets preftune keys, with TRL's meaning (``loss_type`` sigmoid
  is CPO under CPOConfig and DPO under DPOConfig; ``warmup_steps`` below 1 is a ratio;
  an unset ``eval_steps`` is ``logging_steps``);
- **no effect on what is trained** (``NO_EFFECT``): data-loader workers, padding, DDP
  plumbing, script flags, and fields TRL itself reads only with another field's
  non-default value, which preftune refuses. Accepted; a non-default value is reported;
- **refused** (all others): any value but TRL's default is a ConfigError naming the field,
  checked before anything loads.

``resolve(trl_config)`` returns the config and the notes for the run's log;
``describe(trl_config)`` the table of every field, its value and what preftune made of it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preftune.config import FIELDS, Config, ConfigError, build_config
from preftune.objectives.base import get_objective
from preftune.objectives.options import DPO_LOSS_TYPE_NAMES
from preftune.trl.config import CPOConfig, DPOConfig, KTOConfig, ORPOConfig

NO_LIMIT = 2 ** 31 - 1
"""``max_length`` None (TRL: no truncation): a length no sequence reaches."""

_LOADER = "preftune builds batches in the training process, without a DataLoader"
_PADDING = "preftune packs sequences; padding never reaches the loss or the metrics"
_LAUNCH = "distributed settings come from `accelerate launch` and its config file"
NO_EFFECT = {
    "dataloader_num_workers": _LOADER, "dataloader_pin_memory": _LOADER,
    "dataloader_persistent_workers": _LOADER, "dataloader_prefetch_factor": _LOADER,
    "dataloader_multiprocessing_context": _LOADER, "dataloader_in_order": _LOADER,
    "remove_unused_columns": "preftune reads only the columns it needs",
    "length_column_name": "preftune counts lengths from the token ids",
    "log_level": "preftune prints its own log lines",
    "log_level_replica": "preftune prints on the main process only",
    "log_on_each_node": "preftune prints on the main process only",
    "logging_nan_inf_filter": "a non-finite step is skipped whole (weights untouched) and "
                              "reported in metrics.jsonl",
    "include_num_input_tokens_seen": "preftune logs tokens_per_second and tokens_per_step",
    "skip_memory_metrics": "preftune logs no memory metrics",
    "torch_empty_cache_steps": "memory housekeeping only",
    "use_cache": "training forwards never use the key-value cache",
    "prediction_loss_only": "preftune's evaluation returns metrics only",
    "eval_do_concat_batches": "preftune's evaluation returns metrics only",
    "eval_use_gather_object": "preftune's evaluation returns metrics only",
    "eval_accumulation_steps": "preftune's evaluation returns metrics only",
    "save_only_model": "checkpoints also hold the optimizer state, for resuming",
    "save_on_each_node": "the main process writes checkpoints",
    "enable_jit_checkpoint": "preftune always checkpoints on SIGTERM and SIGINT",
    "ddp_find_unused_parameters": _LAUNCH, "ddp_bucket_cap_mb": _LAUNCH,
    "ddp_broadcast_buffers": _LAUNCH, "ddp_static_graph": _LAUNCH, "ddp_backend": _LAUNCH,
    "ddp_timeout": _LAUNCH, "local_rank": _LAUNCH,
    "do_train": "a flag for scripts; TRL's trainers do not read it",
    "do_eval": "a flag for scripts; eval_strategy decides",
    "do_predict": "a flag for scripts; TRL's trainers do not read it",
    "padding_free": _PADDING, "pad_to_multiple_of": _PADDING, "padding_value": _PADDING,
    "precompute_ref_batch_size": "a batch size of a no-grad pass: the same numbers",
    "use_cpu": "accepted where there is no GPU, where it changes nothing (TRL needs it there "
               "for bf16); refused on a GPU machine",
    "max_completion_length": "TRL reads it for encoder-decoder models only",
}

# Mapped field -> the preftune keys it sets (what describe() shows).
MAPPED = {
    "output_dir": ("output_dir",), "overwrite_output_dir": ("overwrite_output_dir",),
    "per_device_train_batch_size": ("per_device_train_batch_size",),
    "per_device_eval_batch_size": ("per_device_eval_batch_size",),
    "num_train_epochs": ("num_train_epochs",), "max_steps": ("max_steps",),
    "learning_rate": ("learning_rate",), "lr_scheduler_type": ("lr_scheduler_type",),
    "warmup_steps": ("warmup_steps", "warmup_ratio"), "warmup_ratio": ("warmup_ratio",),
    "optim": ("optim",), "weight_decay": ("weight_decay",), "adam_beta1": ("adam_beta1",),
    "adam_beta2": ("adam_beta2",), "adam_epsilon": ("adam_epsilon",),
    "gradient_accumulation_steps": ("gradient_accumulation_steps",),
    "max_grad_norm": ("max_grad_norm",), "bf16": ("bf16",), "fp16": ("fp16",),
    "gradient_checkpointing": ("gradient_checkpointing",),
    "gradient_checkpointing_kwargs": ("gradient_checkpointing_kwargs",),
    "activation_checkpointing": ("gradient_checkpointing",),
    "activation_checkpointing_kwargs": ("gradient_checkpointing_kwargs",),
    "logging_steps": ("logging_steps",), "logging_first_step": ("logging_first_step",),
    "disable_tqdm": ("progress_bar",), "report_to": ("report_to",), "run_name": ("run_name",),
    "eval_strategy": ("eval_strategy",), "eval_steps": ("eval_steps",),
    "save_strategy": ("save_strategy",), "save_steps": ("save_steps", "save_minutes"),
    "save_total_limit": ("save_total_limit",), "push_to_hub": ("push_to_hub",),
    "hub_model_id": ("hub_model_id",), "hub_strategy": ("push_to_hub",),
    "seed": ("seed",), "train_sampling_strategy": ("group_by_length",),
    "resume_from_checkpoint": ("resume",),
    "max_length": ("max_length", "max_prompt_length"), "truncation_mode": ("max_prompt_length",),
    "dataset_num_proc": ("dataset_num_proc",),
    "model_init_kwargs": ("torch_dtype", "attn_implementation"),
    "trust_remote_code": ("trust_remote_code",), "disable_dropout": ("disable_dropout",),
    "router_aux_loss_coef": ("router_aux_loss_coef",),
    "precompute_ref_log_probs": ("precompute_ref_log_probs",),
    "loss_type": ("method", "cpo_alpha", "reference_free", "loss_type", "loss_weights"),
    "loss_weights": ("cpo_alpha", "loss_weights"),
    "use_weighting": ("use_weighting",), "ld_alpha": ("ld_alpha",),
    "f_divergence_type": ("f_divergence_type",),
    "f_alpha_divergence_coef": ("f_alpha_divergence_coef",),
    "sync_ref_model": ("sync_ref_model",), "ref_model_mixup_alpha": ("ref_model_mixup_alpha",),
    "ref_model_sync_steps": ("ref_model_sync_steps",),
    "beta": ("beta",), "label_smoothing": ("label_smoothing",), "cpo_alpha": ("cpo_alpha",),
    "alpha": ("alpha",), "discopop_tau": ("discopop_tau",),
    "simpo_gamma": ("gamma",), "desirable_weight": ("desirable_weight",),
    "undesirable_weight": ("undesirable_weight",), "pad_token": ("tokenizer.pad_token",),
}

# Why a refused field is refused, where there is more to say than "no such feature".
REASONS = {
    "truncation_mode": "preftune keeps the start of a completion",
    "lr_scheduler_kwargs": "preftune's schedules take no extra arguments",
    "activation_offloading": "preftune does not offload activations",
    "generate_during_eval": "preftune's evaluation does not generate (use `preftune eval`)",
    "is_encoder_decoder": "preftune trains causal LMs",
    "tf32": "preftune leaves the matmul precision as torch sets it",
    "data_seed": "one seed orders the data and initialises everything else",
    "fsdp": _LAUNCH, "fsdp_config": _LAUNCH, "deepspeed": _LAUNCH,
    "accelerator_config": _LAUNCH, "parallelism_config": _LAUNCH,
    "hub_token": "pushes use the token of `huggingface-cli login`",
}


@dataclass
class Resolution:
    config: Config
    notes: list[str] = field(default_factory=list)
    """What the run's log says about TRL fields: those with no effect here that were set,
    and settings TRL itself ignores."""


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def kind_of(trl_config) -> str:
    """cpo, dpo, orpo or kto."""
    for kind, cls in (("cpo", CPOConfig), ("dpo", DPOConfig), ("orpo", ORPOConfig),
                      ("kto", KTOConfig)):
        if isinstance(trl_config, cls):
            return kind
    raise TypeError(f"not a TRL trainer config: {type(trl_config).__name__}")


def resolve(trl_config) -> Resolution:
    """The preftune config a TRL config means, and the notes for the run's log. Raises
    ConfigError naming the first field preftune cannot honour."""
    kind, notes = kind_of(trl_config), []
    for f in dataclasses.fields(trl_config):
        value, default = getattr(trl_config, f.name), default_of(f)
        if f.name in MAPPED or value == default:
            continue
        if f.name in NO_EFFECT:
            notes.append(f"{f.name}={value!r}: no effect here ({NO_EFFECT[f.name]})")
            continue
        why = REASONS.get(f.name, "preftune has no such setting")
        raise ConfigError(f"{type(trl_config).__name__}.{f.name}={value!r}: preftune cannot "
                          f"honour it ({why}); leave it at TRL's default {default!r}")
    values = {**_training(trl_config, kind), **_schedule(trl_config), **_intervals(trl_config),
              **_model(trl_config), **_data(trl_config)}
    values.update(METHODS[kind](trl_config, notes))
    return Resolution(build_config(values, where=type(trl_config).__name__), notes)


def to_preftune(trl_config) -> Config:
    """:func:`resolve`'s config alone."""
    return resolve(trl_config).config


def _training(c, kind: str) -> dict:
    strategy = c.train_sampling_strategy
    if strategy == "sequential" and kind != "kto":
        raise ConfigError(f"{type(c).__name__}.train_sampling_strategy='sequential': preftune "
                          "shuffles the pairs every epoch (seeded); use random or "
                          "group_by_length")
    if c.hub_strategy not in ("every_save", "end"):
        raise ConfigError(f"{type(c).__name__}.hub_strategy={c.hub_strategy!r}: preftune "
                          "pushes the final model once, at the end (every_save or end)")
    if c.use_cpu and _cuda():
        raise ConfigError("use_cpu=True: preftune runs where accelerate puts it; hide the GPUs "
                          "instead (CUDA_VISIBLE_DEVICES=)")
    report = c.report_to
    keys = ("overwrite_output_dir", "seed", "learning_rate", "num_train_epochs", "max_steps",
            "per_device_train_batch_size", "per_device_eval_batch_size",
            "gradient_accumulation_steps", "lr_scheduler_type", "weight_decay", "adam_beta1",
            "adam_beta2", "adam_epsilon", "max_grad_norm", "optim", "bf16", "fp16",
            "logging_first_step", "run_name", "push_to_hub", "hub_model_id", "eval_strategy",
            "save_strategy", "save_total_limit")
    # transformers' enums (SchedulerType, IntervalStrategy ...) are str subclasses: their
    # plain values, so the run's config dumps as plain YAML.
    return {**{key: getattr(getattr(c, key), "value", getattr(c, key)) for key in keys},
            "output_dir": c.output_dir or "trainer_output",
            "report_to": None if report in (None, "none", [], ["none"]) else report,
            "progress_bar": not c.disable_tqdm,
            "group_by_length": strategy == "group_by_length",
            "resume": resume_flag(c.resume_from_checkpoint, c.output_dir or "trainer_output")}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resume_flag(value, output_dir: str) -> bool:
    """``resume_from_checkpoint`` as preftune's ``resume``: true, or a path to the newest
    checkpoint of ``output_dir`` that verifies (where preftune resumes from: it never
    resumes from an older one, whose later checkpoints would then mix two runs)."""
    if value in (None, False) or str(value).lower() in ("false", "none", ""):
        return False
    if value is True or str(value).lower() == "true":
        return True
    from preftune.train.checkpoint import find_resumable

    given = Path(str(value)).expanduser()
    newest = find_resumable(Path(output_dir).expanduser(), lambda *_: None)
    if newest is not None and given.is_dir() and given.resolve() == newest.resolve():
        return True
    where = (f"the newest intact checkpoint of {output_dir} is {newest}" if newest
             else f"{output_dir} has no intact checkpoint")
    raise ConfigError(f"resume_from_checkpoint={value!r}: preftune resumes from the newest "
                      f"checkpoint of output_dir that verifies, and {where}; give true, or "
                      "copy that checkpoint into a new output_dir and resume there")


def _schedule(c) -> dict:
    """transformers 5: ``warmup_steps`` below 1 is a share of the steps; transformers 4's
    ``warmup_ratio`` is that share (``warmup_steps`` >= 1 wins, in both)."""
    ratio, steps = c.warmup_ratio or 0.0, 0
    if 0 < c.warmup_steps < 1:
        ratio = c.warmup_steps
    elif c.warmup_steps >= 1:
        steps = _whole("warmup_steps", c.warmup_steps)
    return {"warmup_ratio": ratio, "warmup_steps": steps}


def _intervals(c) -> dict:
    """Logging, evaluation and checkpoint intervals. Below 1, transformers reads them as a
    share of the run's steps (rounded up): preftune resolves that share with ``max_steps``.
    With ``eval_strategy`` steps, an unset ``eval_steps`` is ``logging_steps``."""
    if c.logging_strategy != "steps":
        raise ConfigError(f"logging_strategy={c.logging_strategy!r}: preftune logs every "
                          "logging_steps steps (steps)")
    logging = _steps(c, "logging_steps", c.logging_steps)
    every = c.eval_steps if c.eval_steps is not None else c.logging_steps
    return {"logging_steps": logging, "eval_steps": _steps(c, "eval_steps", every),
            "save_steps": _steps(c, "save_steps", c.save_steps), "save_minutes": None}


def _steps(c, name: str, value: float) -> int:
    if 0 < value < 1:
        if c.max_steps <= 0:
            raise ConfigError(f"{name}={value}: a share of the run's steps, which preftune "
                              "resolves only with max_steps > 0; give a number of steps")
        return max(1, math.ceil(value * c.max_steps))
    return _whole(name, value)


def _whole(name: str, value: float) -> int:
    if value != int(value):
        raise ConfigError(f"{name}={value}: above 1 it must be a whole number of steps")
    return int(value)


def _model(c) -> dict:
    checkpointing = (c.activation_checkpointing if c.activation_checkpointing is not None
                     else c.gradient_checkpointing)
    kwargs = (c.activation_checkpointing_kwargs if c.activation_checkpointing_kwargs
              is not None else c.gradient_checkpointing_kwargs)
    kwargs = _dict("gradient_checkpointing_kwargs", kwargs)
    for key in ("every_n_layers", "offload"):
        if kwargs and key in kwargs:
            raise ConfigError(f"activation_checkpointing_kwargs[{key!r}]: preftune "
                              "checkpoints every layer, on the device")
    out = {"gradient_checkpointing": bool(checkpointing), "gradient_checkpointing_kwargs": kwargs}
    for key in ("trust_remote_code", "disable_dropout", "router_aux_loss_coef",
                "precompute_ref_log_probs", "sync_ref_model", "ref_model_mixup_alpha",
                "ref_model_sync_steps"):
        if hasattr(c, key):
            out[key] = getattr(c, key)
    out.update(_init_kwargs(_dict("model_init_kwargs", c.model_init_kwargs)))
    return out


def _dict(name: str, value) -> dict | None:
    """transformers accepts these dicts as JSON strings (from the command line)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"{name}: not a JSON object: {value!r}") from None
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a mapping, got {value!r}")
    return value


def _init_kwargs(kwargs: dict | None) -> dict:
    """``model_init_kwargs`` (used when the model is given by name): its dtype and attention
    kernel; any other key is refused, by name."""
    out = {}
    for key, value in (kwargs or {}).items():
        if key in ("dtype", "torch_dtype"):
            name = str(value).replace("torch.", "")
            if name == "auto":
                raise ConfigError("model_init_kwargs dtype 'auto' (the checkpoint's dtype): "
                                  "preftune loads float32 unless told; name the dtype")
            out["torch_dtype"] = name
        elif key == "attn_implementation":
            out["attn_implementation"] = value
        elif key == "trust_remote_code":
            out["trust_remote_code"] = bool(value)
        elif key == "revision":
            out["model_revision"] = None if value in (None, "main") else value
        elif not (key == "device_map" and value in (None, "auto")):
            raise ConfigError(f"model_init_kwargs[{key!r}]={value!r}: preftune loads models "
                              "with a dtype, an attention kernel, a revision and "
                              "trust_remote_code only")
    return out


def _data(c) -> dict:
    """TRL cuts prompt + completion to ``max_length`` keeping the start (no prompt limit of
    its own): a prompt cut only when it leaves no room for one completion token. There TRL
    drops the row (DPO, KTO) or trains on an empty completion (CPO, ORPO); preftune keeps
    the prompt's end and one completion token."""
    if getattr(c, "truncation_mode", "keep_start") != "keep_start":
        raise ConfigError(f"truncation_mode={c.truncation_mode!r}: preftune keeps the start "
                          "of each completion and cuts the prompt from the left")
    length = NO_LIMIT if c.max_length is None else c.max_length
    return {"max_length": length, "max_prompt_length": length - 1,
            "dataset_num_proc": getattr(c, "dataset_num_proc", None)}


def _cpo(c: CPOConfig, notes: list[str]) -> dict:
    """CPOTrainer's loss types: cpo_alpha adds its NLL term to every one of them, hinge
    and ipo score the policy alone (no reference model), ipo and simpo on mean log-probs."""
    names = {"sigmoid": "cpo", "simpo": "cpo-simpo" if c.cpo_alpha > 0 else "simpo",
             "hinge": "hinge", "ipo": "ipo"}
    if c.loss_type not in names:
        raise ConfigError(f"CPOConfig.loss_type={c.loss_type!r}: use one of "
                          f"{', '.join(names)} (alphapo with alpha 0)")
    values = {"method": names[c.loss_type], "cpo_alpha": c.cpo_alpha, "beta": c.beta}
    if c.loss_type in ("hinge", "ipo"):
        values["reference_free"] = True
        if c.label_smoothing:
            notes.append(f"label_smoothing={c.label_smoothing}: TRL's CPO {c.loss_type} loss "
                         "ignores it; so does this run")
    elif c.label_smoothing:
        values["label_smoothing"] = c.label_smoothing
    if c.loss_type == "simpo":
        values["simpo_gamma"] = c.simpo_gamma
    if c.alpha:
        values["alpha"] = c.alpha  # AlphaPO's reward shape (objectives/alphapo.py)
    return values


def _orpo(c: ORPOConfig, notes: list[str]) -> dict:
    return {"method": "orpo", "beta": c.beta}


DPO_LOSSES = {"sigmoid": "dpo", "hinge": "hinge", "ipo": "ipo"}


def _dpo_options(c: DPOConfig) -> dict:
    """WPO, LD-DPO and f-DPO (objectives/weighting.py), under TRL's names."""
    return {"use_weighting": c.use_weighting, "ld_alpha": c.ld_alpha,
            "f_divergence_type": c.f_divergence_type,
            "f_alpha_divergence_coef": c.f_alpha_divergence_coef}


def _dpo_mixture(c: DPOConfig, weights: list) -> dict:
    """Several preference losses, or weights other than 1: a weighted mixture
    (objectives/mixture.py) of registered objectives, refused here if one is not."""
    for name in c.loss_type:
        try:
            get_objective(DPO_LOSS_TYPE_NAMES.get(name, name))
        except ConfigError as error:
            raise ConfigError(f"DPOConfig.loss_type {name!r}: {error}") from None
    if c.label_smoothing:
        raise ConfigError(f"DPOConfig.label_smoothing={c.label_smoothing} with loss_type "
                          f"{c.loss_type}: TRL 1.16 applies it to some loss types and not "
                          "others (sigmoid ignores it); leave it at 0 for a mixture")
    return {"loss_type": list(c.loss_type), "loss_weights": list(weights), "beta": c.beta,
            **_dpo_options(c)}


def _dpo(c: DPOConfig, notes: list[str]) -> dict:
    """One preference loss (sigmoid, hinge or ipo) at weight 1, plus TRL's sft term at any
    weight: preftune's NLL term (``cpo_alpha``), a token mean over the chosen completions.
    Several preference losses, or weights other than 1, are a weighted mixture
    (objectives/mixture.py), as TRL sums it."""
    weights = c.loss_weights or [1.0] * len(c.loss_type)
    preference = [(name, w) for name, w in zip(c.loss_type, weights) if name != "sft"]
    nll = sum(w for name, w in zip(c.loss_type, weights) if name == "sft")
    if len(preference) > 1 or any(w != 1 for _, w in preference):
        return _dpo_mixture(c, weights)
    if not preference:
        return {"method": "sft", "cpo_alpha": nll, **_dpo_options(c)}
    name, _ = preference[0]
    objective = _dpo_objective(name)
    values = {"method": objective.name, "cpo_alpha": nll, "beta": c.beta, **_dpo_options(c)}
    if name in SMOOTHED_DPO_LOSSES:
        values["label_smoothing"] = c.label_smoothing
    elif c.label_smoothing:
        notes.append(f"label_smoothing={c.label_smoothing}: TRL 1.16's {name} loss ignores "
                     "it; so does this run (preftune train --method dpo --label_smoothing "
                     "gives cDPO)")
    if objective.declaration("discopop_tau") is not None:
        values["discopop_tau"] = c.discopop_tau
    elif c.discopop_tau != default_of(_field(c, "discopop_tau")):
        notes.append(f"discopop_tau={c.discopop_tau}: no effect here (TRL reads it only with "
                     "loss_type discopop)")
    return values


# DPOConfig loss types whose TRL formula reads label_smoothing (the others ignore it).
SMOOTHED_DPO_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")


def _dpo_objective(name: str):
    """The registered objective of one DPOConfig loss type (TRL's name, underscores)."""
    try:
        return get_objective(DPO_LOSSES.get(name, name))
    except ConfigError:
        raise ConfigError(f"DPOConfig.loss_type {name!r}: not among preftune's objectives "
                          "(`preftune methods` lists them)") from None


def _field(config, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(config) if f.name == name)


def _kto(c: KTOConfig, notes: list[str]) -> dict:
    """TRL keeps KTO's data in order because its KL term pairs each example with its batch
    neighbour; preftune pairs them when tokenizing, so it shuffles as for every objective."""
    if c.loss_type not in KTO_LOSSES:
        raise ConfigError(f"KTOConfig.loss_type={c.loss_type!r}: not among preftune's "
                          f"objectives; preftune has {', '.join(KTO_LOSSES)}")
    return {"method": KTO_LOSSES[c.loss_type], "beta": c.beta,
            "desirable_weight": c.desirable_weight, "undesirable_weight": c.undesirable_weight}


# KTOConfig's loss types: KTO, and APO-zero on unpaired data (no KL term).
KTO_LOSSES = {"kto": "kto", "apo_zero_unpaired": "apo-zero-unpaired"}


METHODS = {"cpo": _cpo, "dpo": _dpo, "orpo": _orpo, "kto": _kto}


def preftune_value(config: Config, key: str) -> Any:
    """A preftune key's value in ``config``: a section field or a hyperparameter."""
    if key in FIELDS:
        return getattr(getattr(config, FIELDS[key][0]), key)
    return config.method.hyperparameters.get(key)


def describe(trl_config) -> list[dict]:
    """One row per field: ``field``, ``value``, ``default`` (TRL's), ``kind`` (mapped, no
    effect, refused unless default) and ``preftune`` (the keys it set, with their values)."""
    resolution = resolve(trl_config)
    rows = []
    for f in dataclasses.fields(trl_config):
        targets = MAPPED.get(f.name, ())
        kind = "mapped" if targets else "no effect" if f.name in NO_EFFECT else \
            "refused unless default"
        shown = {key: preftune_value(resolution.config, key) for key in targets
                 if not key.startswith("tokenizer.")}
        rows.append({"field": f.name, "value": getattr(trl_config, f.name),
                     "default": default_of(f), "kind": kind, "preftune": shown})
    return rows
