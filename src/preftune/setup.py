"""Builders of a run's parts from its config: tokenizer, pairs, model, LoRA adapters,
schedule. assemble.py calls them in order; each takes what it needs, explicitly."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

from preftune.config import Config, TrainingConfig
from preftune.errors import ConfigError
from preftune.model_io import load_model, load_tokenizer, load_trained_model, parse_dtype


def build_tokenizer(config: Config):
    m = config.model
    tokenizer = load_tokenizer(m.tokenizer_name_or_path or m.model_name_or_path,
                               trust_remote_code=m.trust_remote_code)
    if m.chat_template:
        template = Path(m.chat_template)
        tokenizer.chat_template = template.read_text() if template.is_file() else m.chat_template
    return tokenizer


def build_pairs(config: Config, tokenizer, method, log: Callable[[str], None] = print):
    """Rows from the configured sources -> tokenized train and eval pairs; prints what was
    truncated, dropped or skipped before any training starts."""
    from preftune.data import load_splits, tokenize_rows

    d = config.data
    if not d.dataset_name and not d.dataset_mixer:
        raise ValueError("no data: set dataset_name (hub id, file or folder) or dataset_mixer")
    train_rows, eval_rows = load_splits(d, seed=config.training.seed)
    from preftune.preflight import check_rows

    check_rows(train_rows, tokenizer, d.data_format, d.column_mapping)
    options = tokenize_options(config, method)
    train_pairs, report = tokenize_rows(train_rows, tokenizer, **options)
    log("train data: " + report.summary())
    eval_pairs = []
    if eval_rows:
        eval_pairs, eval_report = tokenize_rows(eval_rows, tokenizer, **options)
        log("eval data: " + eval_report.summary())
    if not train_pairs:
        raise ValueError("no training pairs left after tokenization (see the summary above)")
    return train_pairs, eval_pairs


def tokenize_options(config: Config, method) -> dict:
    """How rows become pairs: the same for training, its evaluation and ``preftune eval``."""
    d = config.data
    return dict(max_length=d.max_length, max_prompt_length=d.prompt_limit,
                data_format=d.data_format, column_mapping=d.column_mapping,
                skip_bad_rows=d.skip_bad_rows, unpaired=not method.objective.paired)


def tokenize_held_out(config: Config, tokenizer, method, rows: Sequence[dict],
                      log: Callable[[str], None] = print) -> list:
    from preftune.data import tokenize_rows

    pairs, report = tokenize_rows(list(rows), tokenizer, **tokenize_options(config, method))
    log("eval data: " + report.summary())
    return pairs


def build_model(config: Config, accelerator):
    m = config.model
    model = load_model(m.model_name_or_path, parse_dtype(m.torch_dtype, accelerator.device),
                       trust_remote_code=m.trust_remote_code,
                       attn_implementation=m.attn_implementation,
                       disable_dropout=config.training.disable_dropout,
                       load_in_4bit=m.load_in_4bit)
    return enable_checkpointing(model, m)


def enable_checkpointing(model, m):
    """Gradient checkpointing as ``ModelConfig`` asks (non-reentrant unless told), with
    the generation cache off, which checkpointing cannot use."""
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=m.gradient_checkpointing_kwargs or {"use_reentrant": False})
        model.config.use_cache = False
    return model


def build_scored_model(config: Config, device):
    """The model ``preftune eval`` scores, as its run saved it: a folder of LoRA adapters
    loads over its base model (model_io.load_trained_model)."""
    m = config.model
    return load_trained_model(m.model_name_or_path, parse_dtype(m.torch_dtype, device),
                              trust_remote_code=m.trust_remote_code,
                              attn_implementation=m.attn_implementation)


def wrap_lora(model, m):
    try:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError as error:
        raise ImportError("use_peft needs `pip install peft` (or preftune[peft])") from error
    if m.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=m.gradient_checkpointing)
    elif m.gradient_checkpointing:
        # Reentrant checkpointing passes gradients only to inputs that require them; with a
        # frozen embedding nothing does, and the adapters inside checkpointed layers would
        # get no gradient at all.
        model.enable_input_require_grads()
    lora = LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                      target_modules=m.lora_target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as error:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"lora_target_modules {m.lora_target_modules!r}: {error}") from None


def build_scheduler(t: TrainingConfig, optimizer, total_steps: int):
    from transformers import get_scheduler

    warmup = t.warmup_steps if t.warmup_steps > 0 else math.ceil(t.warmup_ratio * total_steps)
    return get_scheduler(t.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                         num_training_steps=total_steps)


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train",
                dynamic_ncols=True)
