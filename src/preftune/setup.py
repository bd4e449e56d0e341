"""Building a run's parts from its config: tokenizer, pairs, model, reference, schedule,
and writing the final model. Kept apart from the loop so the loop reads straight through."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Callable

import torch

from preftune.config import Config, TrainingConfig, dump_config
from preftune.model_io import load_model, load_tokenizer, parse_dtype


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
    options = dict(max_length=d.max_length, max_prompt_length=d.max_prompt_length,
                   data_format=d.data_format, column_mapping=d.column_mapping,
                   skip_bad_rows=d.skip_bad_rows, unpaired=not method.objective.paired)
    train_pairs, report = tokenize_rows(train_rows, tokenizer, **options)
    log("train data: " + report.summary())
    eval_pairs = []
    if eval_rows:
        eval_pairs, eval_report = tokenize_rows(eval_rows, tokenizer, **options)
        log("eval data: " + eval_report.summary())
    if not train_pairs:
        raise ValueError("no training pairs left after tokenization (see the summary above)")
    return train_pairs, eval_pairs


def build_model(config: Config, accelerator):
    m = config.model
    model = load_model(m.model_name_or_path, parse_dtype(m.torch_dtype, accelerator.device),
                       trust_remote_code=m.trust_remote_code,
                       attn_implementation=m.attn_implementation,
                       disable_dropout=config.training.disable_dropout)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=m.gradient_checkpointing_kwargs or {"use_reentrant": False})
        model.config.use_cache = False
    return model


def build_reference(config: Config, policy, accelerator):
    """The frozen reference: ``ref_model`` if given, else a copy of the starting policy."""
    m = config.model
    if m.ref_model:
        reference = load_model(m.ref_model, parse_dtype(m.torch_dtype, accelerator.device),
                               trust_remote_code=m.trust_remote_code,
                               attn_implementation=m.attn_implementation)
    else:
        reference = copy.deepcopy(policy)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def place_reference(reference, accelerator):
    return reference.to(accelerator.device)


def build_scheduler(t: TrainingConfig, optimizer, total_steps: int):
    from transformers import get_scheduler

    warmup = t.warmup_steps if t.warmup_steps > 0 else math.ceil(t.warmup_ratio * total_steps)
    return get_scheduler(t.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                         num_training_steps=total_steps)


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train",
                dynamic_ncols=True)


def save_final(trainer, final_metrics: dict) -> Path:
    """The trained model in Hugging Face format (safetensors, tokenizer, chat template),
    the config that made it, a model card, and the final metrics."""
    from preftune.checkpoint import write_model_card

    acc, out = trainer.accelerator, trainer.output_dir
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(trainer.model)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        model = acc.unwrap_model(trainer.model)
        model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        trainer.tokenizer.save_pretrained(out)
        dump_config(trainer.config, out / "preftune_config.yaml")
        (out / "final_metrics.json").write_text(json.dumps(final_metrics, indent=2))
        c = trainer.config
        settings = {"method": trainer.method.describe(), "learning_rate": c.training.learning_rate,
                    "steps": trainer.step, "global batch (pairs)": trainer.plan.global_batch,
                    "max_length": c.data.max_length, "max_prompt_length": c.data.max_prompt_length,
                    "dataset": c.data.dataset_name, "seed": c.training.seed}
        write_model_card(out, method=trainer.method, base_model=c.model.model_name_or_path,
                         settings=settings, final_metrics=final_metrics)
        if c.training.push_to_hub:
            repo = c.training.hub_model_id or out.name
            model.push_to_hub(repo)
            trainer.tokenizer.push_to_hub(repo)
    acc.wait_for_everyone()
    return out
