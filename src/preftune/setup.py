"""Building a run's parts from its config: tokenizer, pairs, model, reference, schedule,
and writing the final model. Kept apart from the loop so the loop reads straight through."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Callable


from preftune.config import Config, TrainingConfig, dump_config
from preftune.errors import ConfigError
from preftune.model_io import load_model, load_tokenizer, parse_dtype
from preftune.pauses import FINAL_SAVE_DELAY_ENV, pause


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
    options = dict(max_length=d.max_length, max_prompt_length=d.prompt_limit,
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
                       disable_dropout=config.training.disable_dropout,
                       load_in_4bit=m.load_in_4bit)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=m.gradient_checkpointing_kwargs or {"use_reentrant": False})
        model.config.use_cache = False
    return model


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


def build_reference_source(trainer, ref_model=None):
    """Reference log-probs for a reference-based objective, in the cheapest form the run
    allows: the policy with adapters off (LoRA), else a frozen model (``ref_model`` or a
    copy of the starting policy); with ``precompute_ref_log_probs`` computed once from that
    source and cached on disk, after which the model is released."""
    from preftune.distributed import prepare_reference
    from preftune.reference import AdapterReference, ModelReference

    config, acc = trainer.config, trainer.accelerator
    m = config.model
    if ref_model is None and m.ref_model is None and is_peft_model(acc.unwrap_model(trainer.model)):
        source = AdapterReference(trainer.model, trainer.forward, acc.unwrap_model, acc.autocast)
    else:
        if ref_model is None:
            if m.ref_model:
                ref_model = load_model(m.ref_model, parse_dtype(m.torch_dtype, acc.device),
                                       trust_remote_code=m.trust_remote_code,
                                       attn_implementation=m.attn_implementation)
            else:
                # Copied from the unwrapped starting policy, before any step.
                ref_model = copy.deepcopy(acc.unwrap_model(trainer.model))
        # Placed like the policy: sharded under FSDP2 / ZeRO-3 (preftune.distributed).
        source = ModelReference(prepare_reference(acc, ref_model), trainer.forward, acc.autocast)
    if m.precompute_ref_log_probs:
        return build_reference_cache(trainer, source)
    return source


def is_peft_model(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def build_reference_cache(trainer, source):
    """Reference log-probs of every train and eval pair, from the on-disk cache when the
    reference weights, tokenizer and pairs are unchanged."""
    from preftune.model_io import cache_dir
    from preftune.refcache import cached_reference

    folder = trainer.config.model.ref_cache_dir or cache_dir() / "reference"
    acc = trainer.accelerator
    return cached_reference(
        source, trainer.tokenizer, list(trainer.train_pairs) + list(trainer.eval_pairs),
        device=acc.device, batch_size=trainer.config.training.per_device_eval_batch_size,
        cache_dir=folder, log=trainer.log,
        progress=trainer.config.training.progress_bar and acc.is_local_main_process,
        is_main=acc.is_main_process, barrier=acc.wait_for_everyone)


def build_scheduler(t: TrainingConfig, optimizer, total_steps: int):
    from transformers import get_scheduler

    warmup = t.warmup_steps if t.warmup_steps > 0 else math.ceil(t.warmup_ratio * total_steps)
    return get_scheduler(t.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                         num_training_steps=total_steps)


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train",
                dynamic_ncols=True)


FINAL_STAGING = ".final.tmp"


def save_final(trainer, final_metrics: dict) -> Path:
    """The trained model in Hugging Face format (safetensors, tokenizer, chat template),
    the config that made it, a model card, what ran, and the final metrics.

    Written into a staging folder first and moved into ``output_dir`` file by file, the
    final metrics last: a kill during the writes leaves the staging folder (removed by the
    next run) and the previous contents, never a model folder with half a weights file."""
    import os
    import shutil

    from preftune.checkpoint import write_model_card
    from preftune.metrics import json_safe

    acc, out = trainer.accelerator, trainer.output_dir
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(trainer.model)
    if acc.is_main_process:
        staging = out / FINAL_STAGING
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        model = acc.unwrap_model(trainer.model)
        if is_peft_model(model) and trainer.config.model.merge_lora:
            model, state_dict = model.merge_and_unload(), None
        # A peft model saves its adapter alone (adapter_model.safetensors + config).
        model.save_pretrained(staging, state_dict=None if is_peft_model(model) else state_dict,
                              safe_serialization=True)
        trainer.tokenizer.save_pretrained(staging)
        pause(FINAL_SAVE_DELAY_ENV)
        dump_config(trainer.config, staging / "preftune_config.yaml")
        (staging / "run_info.json").write_text(
            json.dumps(json_safe(trainer.run_info()), indent=2) + "\n")
        write_model_card(staging, method=trainer.method,
                         base_model=trainer.config.model.model_name_or_path,
                         settings=_card_settings(trainer), final_metrics=final_metrics,
                         model_dir=out)
        (staging / "final_metrics.json").write_text(
            json.dumps(json_safe(final_metrics), indent=2, allow_nan=False))
        names = sorted(p.name for p in staging.iterdir())
        names.remove("final_metrics.json")
        for name in names + ["final_metrics.json"]:  # the metrics mark a complete save
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staging / name, target)
        staging.rmdir()
        c = trainer.config
        if c.training.push_to_hub:
            repo = c.training.hub_model_id or out.name
            model.push_to_hub(repo)
            trainer.tokenizer.push_to_hub(repo)
    acc.wait_for_everyone()
    return out


def _card_settings(trainer) -> dict:
    c = trainer.config
    settings = {"method": trainer.method.describe(), "learning_rate": c.training.learning_rate,
                "steps": trainer.step, "global batch (pairs)": trainer.plan.global_batch,
                "max_length": c.data.max_length, "max_prompt_length": c.data.prompt_limit,
                "dataset": c.data.dataset_name, "seed": c.training.seed}
    for forced in trainer.resumes_forced:
        settings[f"resumed at step {forced['step']} with changes"] = "; ".join(
            forced["changes"]).replace("|", "/")
    return settings
