"""Every check a config can fail without reading its data or loading a model.

``preftune train`` runs :func:`validate` right after reading the config, and the Trainer
runs it for configs built in Python, so a run that cannot work stops in a second, before
any tokenizer, row or weight is read. Each failure is a :class:`ConfigError` that names the
key and what to give instead. The tables below (``CHOICES``, ``BOUNDS``) are also what
``preftune train --help`` and docs/config.md print.

Checks that need the data or the model (the rows' format, the tokenizer's vocabulary, a
checkpoint's size on disk) run later, in preflight.py, still before any training.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from preftune.config import Config, DataConfig, ModelConfig, TrainingConfig
from preftune.data.formats import FORMATS, TARGETS
from preftune.errors import ConfigError
from preftune.forward.fast.forward import ATTENTION_CHOICES as FAST_ATTENTION
from preftune.model_io import DTYPES as MODEL_DTYPES
from preftune.objectives.interval import (AT_LEAST_ONE, BELOW_ONE, NON_NEGATIVE, POSITIVE, UNIT,
                                          Interval)
from preftune.objectives.method import ResolvedMethod, resolve_method
from preftune.objectives.weighting import F_DIVERGENCES
from preftune.train.optim import (ADAMW, FLOAT16_WEIGHTS, OPTIMIZERS, low_precision_refusal,
                                  optimizer_problem)
from preftune.train.saving import STRATEGIES

# transformers' schedules that run with the warmup and step count alone.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt")
# The rest of transformers' SchedulerType, and why they cannot run here.
UNSUPPORTED_SCHEDULERS = {
    "reduce_lr_on_plateau": "it steps on an evaluation metric, not once per step",
    "greedy": "it steps on an evaluation metric, not once per step",
    "cosine_with_min_lr": "it needs min_lr (scheduler arguments preftune does not take)",
    "cosine_warmup_with_min_lr": "it needs min_lr (scheduler arguments preftune does not take)",
    "warmup_stable_decay": "it needs num_decay_steps (scheduler arguments preftune does not "
                           "take)"}
DTYPES = ("auto", *MODEL_DTYPES)
# transformers' names; a hub kernel ("org/repo") is passed through as well.
ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")

CHOICES: dict[str, tuple[str, ...]] = {
    "torch_dtype": DTYPES, "attn_implementation": ATTENTION, "data_format": FORMATS,
    "lr_scheduler_type": SCHEDULERS, "optim": OPTIMIZERS, "eval_strategy": STRATEGIES,
    "save_strategy": STRATEGIES, "fast_attention": FAST_ATTENTION,
    "logging_strategy": ("steps", "no"), "f_divergence_type": F_DIVERGENCES,
}
BOUNDS: dict[str, Interval] = {
    "lora_r": AT_LEAST_ONE, "lora_alpha": POSITIVE, "lora_dropout": BELOW_ONE,
    "max_length": Interval(2.0), "max_prompt_length": AT_LEAST_ONE,
    "eval_fraction": BELOW_ONE, "max_train_samples": AT_LEAST_ONE,
    "max_eval_samples": AT_LEAST_ONE, "dataset_num_proc": AT_LEAST_ONE,
    "cpo_alpha": NON_NEGATIVE, "sft_weight": NON_NEGATIVE,
    "learning_rate": POSITIVE, "num_train_epochs": POSITIVE,
    "per_device_train_batch_size": AT_LEAST_ONE, "per_device_eval_batch_size": AT_LEAST_ONE,
    "gradient_accumulation_steps": AT_LEAST_ONE, "warmup_ratio": UNIT,
    "warmup_steps": NON_NEGATIVE, "weight_decay": NON_NEGATIVE, "adam_beta1": BELOW_ONE,
    "adam_beta2": BELOW_ONE, "adam_epsilon": NON_NEGATIVE, "max_grad_norm": NON_NEGATIVE,
    "logging_steps": AT_LEAST_ONE, "eval_steps": AT_LEAST_ONE, "save_steps": AT_LEAST_ONE,
    "save_minutes": POSITIVE, "save_total_limit": AT_LEAST_ONE,
    "max_consecutive_nonfinite": AT_LEAST_ONE, "max_nonfinite_fraction": UNIT,
    "rounds": AT_LEAST_ONE, "router_aux_loss_coef": NON_NEGATIVE,
    "logps_chunk_size": AT_LEAST_ONE, "max_tokens_per_row": AT_LEAST_ONE,
    "ld_alpha": UNIT, "ref_model_mixup_alpha": Interval(0.0, 1.0, low_open=True),
    "ref_model_sync_steps": AT_LEAST_ONE,
}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def validate(config: Config, *, loads_data: bool = True, loads_model: bool = True
             ) -> ResolvedMethod:
    """Check ``config`` and return its resolved method. ``loads_data``/``loads_model``: the
    run reads its rows / loads its model and tokenizer from the config (False where a
    caller hands them in, so the settings for them are not used)."""
    for section in (config.model, config.data, config.method, config.training):
        for key, value in vars(section).items():
            check_value(key, value)
    _check_training(config.training)
    _check_model(config.model, config.training, loads_model)
    _check_data(config.data, loads_data)
    method = resolve_method(config.method, config.model.ref_model)
    _check_reference(config, method)
    _check_scoring_options(config, method)
    _check_reference_sync(config, method)
    return method


def check_value(key: str, value) -> None:
    """``value`` against the key's choices or bounds, if it has any (None: unset, fine)."""
    if value is None:
        return
    if key in CHOICES and value not in CHOICES[key] and not (
            key == "attn_implementation" and "/" in str(value)):
        why = UNSUPPORTED_SCHEDULERS.get(value) if key == "lr_scheduler_type" else None
        reason = f" ({why})" if why else ""
        raise ConfigError(f"{key}: {value!r} is not available{reason}; use one of "
                          f"{', '.join(CHOICES[key])}")
    if key in BOUNDS and value not in BOUNDS[key]:
        raise ConfigError(f"{key} must be {BOUNDS[key]}, got {value!r}")


def _check_training(t: TrainingConfig) -> None:
    from preftune.train.trackers import parse_report_to

    if t.max_steps == 0 or t.max_steps < -1:
        raise ConfigError(f"max_steps must be -1 (train num_train_epochs) or >= 1, got "
                          f"{t.max_steps}")
    problem = optimizer_problem(t.optim, cuda_available())
    if problem:
        raise ConfigError(problem)
    parse_report_to(t.report_to)


def _check_data(d: DataConfig, loads_data: bool) -> None:
    if d.max_prompt_length is not None and d.max_prompt_length >= d.max_length:
        raise ConfigError(
            f"max_prompt_length ({d.max_prompt_length}) must be below max_length "
            f"({d.max_length}), which also holds the completion: lower max_prompt_length, or "
            "leave it unset for half of max_length")
    unknown = sorted(set(d.column_mapping or {}) - set(TARGETS))
    if unknown:
        raise ConfigError(f"column_mapping: keys {unknown} are not among {', '.join(TARGETS)}")
    if not loads_data:
        return
    if not d.dataset_name and not d.dataset_mixer:
        raise ConfigError("no data: set dataset_name (a hub id, file or folder) or "
                          "dataset_mixer")
    if d.dataset_name and d.dataset_mixer:
        raise ConfigError("dataset_name and dataset_mixer both give the training data: set one")
    check_local("dataset_name", d.dataset_name)
    check_local("eval_dataset", d.eval_dataset)
    for name, fraction in (d.dataset_mixer or {}).items():
        check_local(f"dataset_mixer entry {name}", name)
        if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ConfigError(f"dataset_mixer: the fraction of {name} must be in (0, 1], got "
                              f"{fraction!r}")


def check_local(key: str, name: Optional[str], is_model: bool = False) -> None:
    """A name that looks like a local path must exist (a hub id is checked when loaded).
    Models: ``./x``, ``/x``, ``~/x`` or more than one slash; data also by file suffix."""
    from preftune.data.sources import _looks_like_path

    if not name:
        return
    local = (name.startswith((".", "/", "~")) or name.count("/") > 1 if is_model
             else _looks_like_path(name))
    if local and not Path(name).expanduser().exists():
        raise ConfigError(f"{key}: {name} does not exist")


def _check_model(m: ModelConfig, t: TrainingConfig, loads_model: bool) -> None:
    if m.merge_lora and not m.use_peft:
        raise ConfigError("merge_lora merges LoRA adapters: it needs use_peft: true")
    if m.use_peft and importlib.util.find_spec("peft") is None:
        raise ConfigError("use_peft needs peft: pip install peft")
    targets = m.lora_target_modules
    if not (targets is None or isinstance(targets, str) or isinstance(targets, list)
            and all(isinstance(x, str) for x in targets)):
        raise ConfigError(f"lora_target_modules: a module name or a list of names, got "
                          f"{targets!r}")
    if not loads_model:
        return
    dtype = str(m.torch_dtype).lower()
    if dtype in ("float16", "fp16") and not m.use_peft:
        raise ConfigError(FLOAT16_WEIGHTS)
    if dtype in ("bfloat16", "bf16") and not m.use_peft and t.optim not in ADAMW:
        raise ConfigError(low_precision_refusal(t.optim, "bfloat16"))
    _check_kernels(m)
    for key in ("model_name_or_path", "ref_model", "tokenizer_name_or_path"):
        check_local(key, getattr(m, key), is_model=True)
    if m.model_revision not in (None, "main") and Path(m.model_name_or_path).expanduser().is_dir():
        raise ConfigError(f"model_revision {m.model_revision!r} names a hub revision, but "
                          f"model_name_or_path {m.model_name_or_path} is a local folder: "
                          "check out that revision there, or drop model_revision")
    template = m.chat_template
    if template and "{" not in template and (Path(template).suffix or "/" in template) \
            and not Path(template).expanduser().is_file():
        raise ConfigError(f"chat_template: {template} is not a file (give a Jinja template "
                          "or the path to one)")


def _check_kernels(m: ModelConfig) -> None:
    """flash attention and 4-bit loading need CUDA and their packages."""
    if m.attn_implementation in ("flash_attention_2", "flash_attention_3"):
        package = "flash_attn" if m.attn_implementation.endswith("2") else "flash_attn_interface"
        if not cuda_available():
            raise ConfigError(f"attn_implementation {m.attn_implementation} runs on CUDA GPUs "
                              "only: use sdpa (or leave it unset) here")
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"attn_implementation {m.attn_implementation} needs its package "
                              f"(pip install {package.replace('_', '-')}), or use sdpa")
    if m.load_in_4bit:
        if not m.use_peft:
            raise ConfigError("load_in_4bit (QLoRA) trains adapters over 4-bit weights: it "
                              "needs use_peft: true")
        if not cuda_available() or importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("load_in_4bit needs a CUDA GPU and bitsandbytes "
                              "(pip install bitsandbytes)")


def _check_reference(config: Config, method: ResolvedMethod) -> None:
    """Reference settings must meet a method that uses a reference."""
    m, name = config.model, method.objective.name
    if config.method.reference_free and not method.objective.needs_reference:
        raise ConfigError(f"reference_free: {name} uses no reference model anyway; drop it")
    if method.needs_reference:
        return
    if method.objective.needs_reference:  # reference_free turned the reference off
        why, other = f"{name} with reference_free scores against a uniform reference", \
            "drop reference_free"
    else:
        why, other = f"{name} is reference-free", "choose a method with a reference (dpo, ipo, ...)"
    if method.note:
        why += f" ({method.note})"
    for key in ("ref_model", "precompute_ref_log_probs", "ref_cache_dir"):
        if getattr(m, key):
            raise ConfigError(f"{key}: {why}, so no reference would be used: drop {key}, or "
                              f"{other}")


def _components(method: ResolvedMethod) -> list:
    """The objectives a run computes: a mixture's components, or the one objective."""
    return [c.objective for c in getattr(method.objective, "components", ())] or [method.objective]


def _check_scoring_options(config: Config, method: ResolvedMethod) -> None:
    """WPO, LD-DPO and f-DPO (objectives/weighting.py) need what they act on."""
    o, name = config.method, method.objective.name
    if (o.use_weighting or o.ld_alpha is not None) and not method.objective.paired:
        key = "use_weighting" if o.use_weighting else "ld_alpha"
        raise ConfigError(f"{key}: {name} is unpaired; WPO and LD-DPO weigh preference pairs")
    sorting = [c.name for c in _components(method) if c.name in ("aot", "aot-unpaired")]
    if o.use_weighting and sorting:
        raise ConfigError(f"use_weighting with {sorting[0]}: it sorts the batch, so each "
                          "pair's WPO weight would fall on another pair's loss (TRL refuses "
                          "this too)")
    if o.ld_alpha is not None and any(c.reduction == "sampo" for c in _components(method)):
        raise ConfigError(f"ld_alpha: {name} down-samples the longer completion already "
                          "(SamPO); give one of the two")
    if o.f_divergence_type != "reverse_kl" and not method.needs_reference:
        raise ConfigError(f"f_divergence_type {o.f_divergence_type}: {name} takes no log-ratio "
                          "against a reference; use a reference objective (dpo, ipo, ...)")


def _check_reference_sync(config: Config, method: ResolvedMethod) -> None:
    """TR-DPO mixes the policy into a reference model held in memory."""
    m = config.model
    if not m.sync_ref_model:
        return
    if not method.needs_reference:
        raise ConfigError(f"sync_ref_model: {method.objective.name} uses no reference model, "
                          "so there is none to update; drop sync_ref_model")
    if m.precompute_ref_log_probs:
        raise ConfigError("sync_ref_model with precompute_ref_log_probs: the cached reference "
                          "log-probs would go stale at the first update; drop one of the two")
    if m.use_peft:
        raise ConfigError("sync_ref_model with use_peft: the LoRA reference is the base model "
                          "under the adapters, with no weights of its own to mix the policy "
                          "into; train all weights (use_peft false) or drop sync_ref_model")
