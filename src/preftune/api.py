"""Training from Python, with data and models in memory.

    import preftune
    out = preftune.train({"method": "simpo", "max_steps": 100, "output_dir": "out/simpo"},
                         model=model, tokenizer=tokenizer, train_dataset=dataset)
    out.model, out.metrics, out.output_dir

The config is the command line's (a :class:`~preftune.config.Config`, a mapping of the
same keys, flat or grouped, or a YAML file or bundled recipe by name). Data may be a
``datasets.Dataset``, ``DatasetDict`` (its train split; its test split for evaluation),
``IterableDataset``, a list of dicts, a pandas DataFrame, or a file or hub id; rows go
through the same format detection and tokenization as files (preftune.data). The model,
tokenizer and reference model may be objects or names; ``peft_config`` (a peft
``LoraConfig``) wraps the model in adapters exactly as given.

It runs in a notebook: errors are exceptions, never ``sys.exit``; a second ``train()`` in
the same process works (the accelerate state a run creates is dropped when it ends, and
one left by another run in this process is replaced first).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from preftune.config import Config, ConfigError, build_config, load_config


@dataclass
class TrainOutput:
    model: Any
    """The trained model (a peft model when trained with adapters), unwrapped."""
    metrics: dict
    """The last logged training metrics and the final evaluation's ``eval_*``."""
    output_dir: Path
    steps: int
    tokenizer: Any


@dataclass
class PreparedRun:
    """Everything a run needs that can exist before the training loop: the config (with the
    in-memory parts recorded in it), the resolved method, and the parts themselves. Pairs
    are None where the config's own data sources are read by the trainer."""

    config: Config
    method: Any
    model: Any
    tokenizer: Any
    ref_model: Any
    train_pairs: Optional[list]
    eval_pairs: Optional[list]


def train(config: Config | Mapping | str | None = None, *, model=None, tokenizer=None,
          train_dataset=None, eval_dataset=None, ref_model=None, peft_config=None,
          log: Optional[Callable[[str], None]] = None) -> TrainOutput:
    """Train, save to ``output_dir`` as ``preftune train`` does, and return the model and
    metrics. ``model``/``ref_model``: objects or names; ``train_dataset``/``eval_dataset``:
    rows in memory (see the module docstring) or None for the config's data sources."""
    log = log or print
    try:
        run = prepare(config, model=model, tokenizer=tokenizer, train_dataset=train_dataset,
                      eval_dataset=eval_dataset, ref_model=ref_model,
                      peft_config=peft_config, log=log)
        trainer = build_trainer(run, log)
        result = trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.model)
    finally:
        # The state is this run's: one left by earlier work was replaced when it began.
        drop_accelerate_state()
    return TrainOutput(model=model, metrics={**result.train_metrics, **result.eval_metrics},
                       output_dir=Path(result.output_dir), steps=result.steps,
                       tokenizer=trainer.tokenizer)


def as_config(config: Config | Mapping | str | Path | None) -> Config:
    """A copy: the caller's object is never changed."""
    if config is None:
        return Config()
    if isinstance(config, Config):
        return copy.deepcopy(config)
    if isinstance(config, Mapping):
        return build_config(dict(config), where="train()")
    if isinstance(config, (str, Path)):
        return load_config(str(config))
    raise TypeError(f"config: a preftune Config, a mapping of its keys or a YAML path, got "
                    f"{type(config).__name__}")


def prepare(config, *, model=None, tokenizer=None, train_dataset=None, eval_dataset=None,
            ref_model=None, peft_config=None, log: Callable[[str], None] = print
            ) -> PreparedRun:
    """Config checked, model and tokenizer ready, rows tokenized: all before the run's
    folder is claimed. A model given by name is loaded here (the config's dtype, attention
    kernel, dropout and gradient checkpointing), so that ``peft_config`` can wrap it."""
    from preftune.validation import validate

    config = as_config(config)
    m = config.model
    if isinstance(model, (str, Path)):
        m.model_name_or_path, model = str(model), None
    if isinstance(ref_model, (str, Path)):
        m.ref_model, ref_model = str(ref_model), None
    if model is not None:
        # The model card's base_model and the run's record name the model passed in.
        m.model_name_or_path = name_of(model)
    if peft_config is not None:
        record_adapters(m, peft_config)
    in_memory = train_dataset is not None or eval_dataset is not None
    method = validate(config, loads_data=not in_memory, loads_model=model is None)
    if ref_model is not None and not method.needs_reference:
        raise ConfigError(f"ref_model: {method.objective.name} uses no reference model")
    tokenizer = ready_tokenizer(config, tokenizer)
    model = ready_model(config, model if model is not None else load_policy(config),
                        peft_config)
    train_pairs = eval_pairs = None
    if in_memory:
        train_rows, eval_rows = split_rows(config, train_dataset, eval_dataset)
        train_pairs = tokenize(train_rows, tokenizer, config, method, "train", log)
        eval_pairs = tokenize(eval_rows, tokenizer, config, method, "eval", log)
        if not train_pairs:
            raise ValueError("no training pairs left after tokenization (see the summary above)")
    return PreparedRun(config, method, model, tokenizer, ref_model, train_pairs, eval_pairs)


def build_trainer(run: PreparedRun, log: Optional[Callable[[str], None]] = None):
    """preftune's Trainer over the prepared parts (claims ``output_dir``, builds the
    optimizer, schedule and reference)."""
    from preftune.train.trainer import Trainer

    replace_foreign_accelerate_state()
    return Trainer(run.config, model=run.model, tokenizer=run.tokenizer,
                   ref_model=run.ref_model, train_pairs=run.train_pairs,
                   eval_pairs=run.eval_pairs, log=log)


# -- models and tokenizers --------------------------------------------------------------

def name_of(model) -> str:
    """The hub id or folder a model object was loaded from; "" for one built in memory."""
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")


def record_adapters(m, peft_config) -> None:
    """The run's record of the adapters (the adapters themselves are ``peft_config``)."""
    targets = getattr(peft_config, "target_modules", None)
    m.use_peft = True
    m.lora_r = int(getattr(peft_config, "r", m.lora_r))
    m.lora_alpha = getattr(peft_config, "lora_alpha", m.lora_alpha)
    m.lora_dropout = float(getattr(peft_config, "lora_dropout", m.lora_dropout))
    m.lora_target_modules = sorted(targets) if isinstance(targets, (set, list, tuple)) \
        else targets


def load_policy(config: Config):
    """The policy named by the config, loaded as ``preftune train`` loads it."""
    from preftune.model_io import load_model, parse_dtype

    m = config.model
    return load_model(m.model_name_or_path, parse_dtype(m.torch_dtype, None),
                      trust_remote_code=m.trust_remote_code,
                      attn_implementation=m.attn_implementation,
                      disable_dropout=config.training.disable_dropout,
                      load_in_4bit=m.load_in_4bit, revision=m.model_revision)


def ready_model(config: Config, model, peft_config=None):
    """Dropout off and gradient checkpointing on as the config says (TRL does both to a
    model passed in as well), then the adapters of ``peft_config``."""
    from preftune.model_io import disable_dropout_in, is_peft_model

    m = config.model
    if config.training.disable_dropout:
        disable_dropout_in(model)
    from preftune.setup import enable_checkpointing

    enable_checkpointing(model, m)
    if peft_config is None:
        return model
    if is_peft_model(model):
        raise ConfigError("peft_config: the model already has adapters; pass the base model, "
                          "or the peft model without peft_config")
    from peft import get_peft_model

    if m.gradient_checkpointing:
        # Checkpointed layers pass gradients only to inputs that need them; with the
        # embedding frozen nothing would, and the adapters inside would get none.
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config)


def ready_tokenizer(config: Config, tokenizer=None):
    """The tokenizer given, else the model's; a pad token (the EOS) if it has none, as TRL
    sets; the config's chat template if any."""
    from preftune.model_io import load_tokenizer

    m = config.model
    if tokenizer is None:
        name = m.tokenizer_name_or_path or m.model_name_or_path
        if not name:
            raise ConfigError("no tokenizer: the model was built in memory, so pass its "
                              "tokenizer (processing_class in TRL's trainers)")
        tokenizer = load_tokenizer(
            name, trust_remote_code=m.trust_remote_code,
            revision=None if m.tokenizer_name_or_path else m.model_revision)
    if not hasattr(tokenizer, "eos_token_id") and hasattr(tokenizer, "tokenizer"):
        tokenizer = tokenizer.tokenizer  # a processor's text tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if m.chat_template:
        template = Path(m.chat_template)
        tokenizer.chat_template = template.read_text() if template.is_file() else m.chat_template
    return tokenizer


# -- rows in memory ---------------------------------------------------------------------

def split_rows(config: Config, train_dataset, eval_dataset) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) from the data given, the config's sources filling in the
    train split when only eval rows are given; then eval_fraction and the row caps."""
    from preftune.data import hold_out, load_splits

    d, seed = config.data, config.training.seed
    if train_dataset is None:
        train, from_split = load_splits(d, seed)
    elif streams(train_dataset):
        train, from_split = train_dataset, []
    else:
        train, from_split = dataset_rows(train_dataset, d.dataset_train_split,
                                         d.dataset_test_split)
    evaluation = (from_split if eval_dataset is None else eval_dataset if streams(eval_dataset)
                  else rows_of(eval_dataset, "eval_dataset"))
    if not evaluation and d.eval_fraction:
        if not isinstance(train, list):
            raise ConfigError("eval_fraction draws from all training rows at once, and an "
                              "IterableDataset streams them: pass eval_dataset instead")
        train, evaluation = hold_out(train, d.eval_fraction, seed)
    cap = (lambda rows, n: (rows.take(n) if hasattr(rows, "take") else rows[:n]) if n
           else rows)
    return cap(train, d.max_train_samples), cap(evaluation, d.max_eval_samples)


def streams(data) -> bool:
    """An ``IterableDataset``: tokenized chunk by chunk as it streams (data/prepare.py),
    never held whole."""
    return type(data).__name__ == "IterableDataset"


def dataset_rows(data, train_split: str, test_split: Optional[str]
                 ) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of a dataset; only a ``DatasetDict`` (or a dict of splits)
    has eval rows, picked by the split names a data folder's files go by (data/splits.py:
    ``train_prefs`` over ``train_sft``, ``test_prefs`` with it, ``validation``/``val``/
    ``dev``/``heldout``/``test``). A name is loaded from its file, folder or the hub."""
    from preftune.data.splits import choose

    if isinstance(data, (str, Path)):
        from preftune.data import load_rows

        return load_rows(str(data), train_split), []
    if not isinstance(data, Mapping):
        return rows_of(data, "train_dataset"), []
    names = [str(name) for name in data]
    if test_split is not None and test_split not in names:
        raise ConfigError(f"train_dataset has no split {test_split!r} (dataset_test_split); "
                          f"it has {', '.join(names)}")
    train = choose(names, "train", "train_dataset", wanted=train_split, strict=False)
    if len(train) != 1:
        raise ConfigError(f"train_dataset has no split {train_split!r} (dataset_train_split); "
                          f"it has {', '.join(names)}")
    found = choose(names, "eval", "train_dataset", wanted=test_split, partner=train[0],
                   strict=False)
    return (rows_of(data[train[0]], "train_dataset"),
            rows_of(data[found[0]], "eval_dataset") if found else [])


def rows_of(data, what: str) -> list[dict]:
    """Plain dict rows of a Dataset, IterableDataset, list of dicts or pandas DataFrame."""
    if isinstance(data, (str, Path)):
        from preftune.data import load_rows

        return load_rows(str(data), None)
    if isinstance(data, Mapping):
        raise ConfigError(f"{what}: one set of rows is expected, got a mapping of "
                          f"{', '.join(map(str, data))} (pick a split)")
    if hasattr(data, "to_json") and hasattr(data, "columns"):  # pandas: plain Python values
        return json.loads(data.to_json(orient="records"))
    if hasattr(data, "to_list"):  # datasets.Dataset
        return data.to_list()
    if isinstance(data, (list, tuple)) or hasattr(data, "__iter__"):
        return [dict(row) for row in data]
    raise ConfigError(f"{what}: expected a datasets.Dataset, IterableDataset, list of dicts or "
                      f"pandas DataFrame, got {type(data).__name__}")


def tokenize(rows: list[dict], tokenizer, config: Config, method, what: str,
             log: Callable[[str], None]) -> list:
    """Rows -> pairs as the config's files become pairs (the same options and the same
    tokenized cache as training)."""
    from preftune.setup import tokenize_cached

    return tokenize_cached(rows, tokenizer, config, method, what, log)


# -- accelerate's process-wide state ------------------------------------------------------

def _single_process() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1


def accelerate_state_exists() -> bool:
    from accelerate.state import AcceleratorState

    return bool(AcceleratorState._shared_state)


def drop_accelerate_state() -> None:
    """Forget accelerate's process-wide state (one process only: under ``accelerate
    launch`` it holds the process group), so the next run may choose another precision."""
    from accelerate.state import AcceleratorState, GradientState

    if _single_process():
        with contextlib.suppress(Exception):
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()


def replace_foreign_accelerate_state() -> None:
    """accelerate refuses a second Accelerator with another precision in one process: a
    state left by an earlier run (TRL's, or an earlier trainer) is dropped first."""
    if accelerate_state_exists():
        drop_accelerate_state()
