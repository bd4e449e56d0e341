"""Builders of a run's parts from its config: tokenizer, pairs, model, LoRA adapters,
schedule. assemble.py calls them in order; each takes what it needs, explicitly."""

from __future__ import annotations

import math
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Sequence

from preftune.config import Config, TrainingConfig
from preftune.errors import ConfigError
from preftune.model_io import load_model, load_tokenizer, load_trained_model, parse_dtype


def build_tokenizer(config: Config):
    m = config.model
    tokenizer = load_tokenizer(m.tokenizer_name_or_path or m.model_name_or_path,
                               trust_remote_code=m.trust_remote_code,
                               revision=None if m.tokenizer_name_or_path else m.model_revision)
    if m.chat_template:
        template = Path(m.chat_template)
        tokenizer.chat_template = template.read_text() if template.is_file() else m.chat_template
    return tokenizer


def build_pairs(config: Config, tokenizer, method, log: Callable[[str], None] = print):
    """Rows from the configured sources -> tokenized train and eval pairs; prints what was
    truncated, dropped or skipped before any training starts. With several processes the
    main one goes first; the others then find its pairs in the tokenized cache."""
    from preftune.data.prepare import main_process_first, release_freed_memory

    with main_process_first():
        pairs = _build_pairs(config, tokenizer, method, log)
    release_freed_memory()  # the rows, read whole, are garbage now
    return pairs


def _build_pairs(config: Config, tokenizer, method, log: Callable[[str], None]):
    from preftune.data import load_splits

    d = config.data
    if not d.dataset_name and not d.dataset_mixer:
        raise ValueError("no data: set dataset_name (hub id, file or folder) or dataset_mixer")
    from preftune.data.source_key import local_sources_key

    # Local files: keyed by the files themselves, so a cached run reads no row.
    source_key = None if d.streaming else local_sources_key(d, config.training.seed)
    cached = source_key and d.tokenized_cache and cached_splits(config, tokenizer, method,
                                                                source_key, log)
    if cached:
        return cached
    keys = (f"{source_key}:train", f"{source_key}:eval") if source_key else (None, None)
    if d.streaming:
        train_rows, eval_rows, stream_key = streamed_splits(d)
        keys = (stream_key, None)
    else:
        train_rows, eval_rows = load_splits(d, seed=config.training.seed, log=log)
    from preftune.preflight import check_rows

    check_rows(list(islice(iter(train_rows), 100)), tokenizer, d.data_format, d.column_mapping)
    train_pairs = tokenize_cached(train_rows, tokenizer, config, method, "train", log,
                                  rows_key=keys[0])
    eval_pairs = tokenize_cached(eval_rows, tokenizer, config, method, "eval", log,
                                 rows_key=keys[1])
    if not train_pairs:
        raise ValueError("no training pairs left after tokenization (see the summary above)")
    return train_pairs, eval_pairs


def cached_splits(config: Config, tokenizer, method, source_key: str,
                  log: Callable[[str], None]):
    """(train pairs, eval pairs) from the tokenized cache, or None unless both are there."""
    from preftune.data.prepare import find_store
    from preftune.data.tokenize import TokenizeSettings

    settings = TokenizeSettings(**tokenize_options(config, method))
    stores = [find_store(f"{source_key}:{what}", tokenizer, settings, token_cache(config))
              for what in ("train", "eval")]
    if None in stores or not len(stores[0]):
        return None  # (no pairs left: the run that tokenized them says why)
    for what, pairs in zip(("train", "eval"), stores):
        if pairs.rows_in:  # (an empty eval store only records that there was none)
            log(f"tokenized pairs from cache {pairs.folder}")
            log(f"{what} data: " + pairs.report.summary())
    return stores[0], stores[1] if len(stores[1]) else []


def token_cache(config: Config):
    """The tokenized cache's folder from the config (a temporary one without the cache)."""
    from preftune.data.prepare import TokenCache, default_cache_dir

    d = config.data
    if not d.tokenized_cache:
        return TokenCache(None)
    return TokenCache(Path(d.dataset_cache_dir).expanduser() if d.dataset_cache_dir
                      else default_cache_dir())


def streamed_splits(d) -> tuple:
    """``streaming: true``: (train rows as they stream, eval rows, the train source's key)."""
    from preftune.data import load_rows
    from preftune.data.stream import streamed_rows

    train_rows, rows_key = streamed_rows(d)
    eval_rows = (load_rows(d.eval_dataset, d.dataset_test_split, d.dataset_config,
                           default_split="test", role="eval") if d.eval_dataset else [])
    if d.max_eval_samples:
        eval_rows = eval_rows[:d.max_eval_samples]
    return train_rows, eval_rows, rows_key


def tokenize_options(config: Config, method) -> dict:
    """How rows become pairs: the same for training, its evaluation and ``preftune eval``."""
    d = config.data
    return dict(max_length=d.max_length, max_prompt_length=d.prompt_limit,
                data_format=d.data_format, column_mapping=d.column_mapping,
                skip_bad_rows=d.skip_bad_rows, unpaired=not method.objective.paired)


def tokenize_held_out(config: Config, tokenizer, method, rows: Sequence[dict],
                      log: Callable[[str], None] = print):
    return tokenize_cached(list(rows), tokenizer, config, method, "eval", log)


def tokenize_cached(rows: Iterable[dict], tokenizer, config: Config, method, what: str,
                    log: Callable[[str], None] = print, rows_key=None):
    """Rows -> pairs stored on disk and memory-mapped (data/store.py), reused from the
    tokenized cache when a run before tokenized the same rows the same way; ``[]`` for
    no rows."""
    from preftune.data.prepare import tokenize_to_store
    from preftune.data.tokenize import TokenizeSettings

    if rows_key is None and isinstance(rows, (list, tuple)) and not rows:
        return []  # (with a key, an empty store records that there were none)
    pairs, report = tokenize_to_store(
        rows, tokenizer, TokenizeSettings(**tokenize_options(config, method)),
        cache=token_cache(config), num_proc=config.data.dataset_num_proc, rows_key=rows_key,
        log=log if report_rows(rows) else lambda _: None)
    if report.rows_in or what == "train":
        log(f"{what} data: " + report.summary())
    if what == "train" and not len(pairs):
        from preftune.data.origin import no_pairs_left

        # How many rows were skipped or dropped, and why.
        raise no_pairs_left(report, config.data.dataset_name or "the dataset_mixer sources")
    return pairs if len(pairs) else []


def report_rows(rows) -> bool:
    """False for no rows in a list (their empty store is not worth a log line)."""
    return not isinstance(rows, (list, tuple)) or bool(rows)


def build_model(config: Config, accelerator):
    m = config.model
    model = load_model(m.model_name_or_path, parse_dtype(m.torch_dtype, accelerator.device),
                       trust_remote_code=m.trust_remote_code,
                       attn_implementation=m.attn_implementation,
                       disable_dropout=config.training.disable_dropout,
                       load_in_4bit=m.load_in_4bit, revision=m.model_revision)
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
