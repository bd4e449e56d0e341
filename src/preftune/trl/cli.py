"""``preftune cpo|dpo|orpo|kto``: TRL's example scripts, with TRL's flags, defaults and
meanings.

    preftune dpo --model_name_or_path Qwen/Qwen2-0.5B-Instruct \\
        --dataset_name trl-lib/ultrafeedback_binarized --learning_rate 5e-7 \\
        --per_device_train_batch_size 2 --gradient_accumulation_steps 8 --output_dir Qwen2-DPO
    preftune cpo --config cpo.yaml --loss_type simpo      # a YAML file in TRL's format

The flags are the fields of TRL's ``ScriptArguments`` (dataset_name, dataset_config,
splits), the trainer's config (``DPOConfig`` ...) and ``ModelConfig`` (model_name_or_path,
dtype, use_peft and the lora_* flags), as ``trl dpo`` reads them: ``--key value``,
``--key=value``, ``--flag`` for true, ``--no_flag`` for false, several values for a list
(``--loss_type sigmoid sft``). ``--config`` reads a YAML file of the same keys (its ``env:``
mapping sets environment variables), the command line overriding it. ``--loss_type
sigmoid`` is DPO under ``preftune dpo`` and CPO under ``preftune cpo``, as in TRL.
``preftune train`` keeps preftune's own keys and defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any

from preftune.config import ConfigError, coerce, coerce_to
from preftune.trl.config import CONFIGS, ModelConfig, ScriptArguments

FLOAT_ITEMS = {"loss_weights"}
"""List fields of numbers; the items of the others are strings."""


def is_list(f: dataclasses.Field) -> bool:
    """A field that takes several values (``list`` or ``Optional[list]``)."""
    return str(f.type) in ("list", "Optional[list]")


def groups(kind: str) -> dict[str, dict[str, dataclasses.Field]]:
    """The three argument groups of TRL's script for ``kind``, field name -> field."""
    return {name: {f.name: f for f in dataclasses.fields(cls)} for name, cls in
            (("script", ScriptArguments), ("config", CONFIGS[kind]), ("model", ModelConfig))}


def main(kind: str, argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(usage(kind))
        return 0
    values = read_arguments(kind, argv)
    script, args, model_args = build(kind, values)
    return run(kind, script, args, model_args)


def read_arguments(kind: str, argv: list[str]) -> dict:
    """``--config`` YAML, then the flags over it: key -> typed value."""
    fields = {name: f for group in groups(kind).values() for name, f in group.items()}
    flags = split_flags(argv)
    values: dict = {}
    if "config" in flags:
        path = Path(single("config", flags.pop("config")))
        # Plain YAML only, aliases bounded, as preftune's own configs are read.
        loaded = dict(coerce_to(str(path), path.read_text(), dict) or {})
        for name, value in (loaded.pop("env", None) or {}).items():
            os.environ[str(name)] = str(value)  # TrlParser sets the YAML's env the same way
        values.update({key: typed(key, value, fields) for key, value in loaded.items()})
    for key, given in flags.items():
        if key.startswith("no_") and key[3:] in fields and not given:
            values[key[3:]] = False  # HfArgumentParser's --no_flag
        else:
            values[key] = typed(key, given, fields, from_command_line=True)
    return values


def split_flags(argv: list[str]) -> dict[str, list[str]]:
    """``--key v1 v2``, ``--key=v``, bare ``--flag`` -> {key: [values]} in order."""
    flags: dict[str, list[str]] = {}
    key = None
    for token in argv:
        if token.startswith("--"):
            key, _, value = token[2:].replace("-", "_").partition("=")
            flags[key] = [value] if "=" in token else []
        elif key is None:
            raise ConfigError(f"unexpected argument {token!r}; options look like --key value")
        else:
            flags[key].append(token)
    return flags


def single(key: str, values: list) -> Any:
    if len(values) != 1:
        raise ConfigError(f"--{key}: expected one value, got {len(values)}")
    return values[0]


def typed(key: str, value: Any, fields: dict, from_command_line: bool = False) -> Any:
    """A value checked and converted to its field's type (YAML scalars for strings)."""
    if key not in fields:
        if key == "datasets":
            raise ConfigError("datasets (TRL's dataset mixtures): preftune reads one "
                              "dataset_name here; `preftune train` takes dataset_mixer")
        close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown key {key!r}{hint}; `--help` lists TRL's keys")
    if from_command_line:
        if is_list(fields[key]):
            kind = float if key in FLOAT_ITEMS else str
            return [coerce_to(key, item, kind) for item in value]
        if len(value) > 1:
            return [coerce_to(key, item, Any) for item in value]
        value = single(key, value) if value else "true"
    elif is_list(fields[key]) and isinstance(value, (str, int, float)):
        value = [value]
    return coerce(key, value, fields[key])


def build(kind: str, values: dict):
    """(ScriptArguments, the trainer's config, ModelConfig) from the keys of all three."""
    made = []
    for name, fields in groups(kind).items():
        cls = {"script": ScriptArguments, "config": CONFIGS[kind], "model": ModelConfig}[name]
        made.append(cls(**{key: value for key, value in values.items() if key in fields}))
    return tuple(made)


def model_settings(model_args: ModelConfig, args) -> Any:
    """What TRL's script makes of ModelConfig: ``model_init_kwargs`` (dtype, attention
    kernel, revision) and a peft ``LoraConfig`` (None without ``use_peft``)."""
    for name, why in (("load_in_8bit", "8-bit loading is not in preftune"),
                      ("load_in_4bit", "preftune's QLoRA is `preftune train --use_peft true "
                                       "--load_in_4bit true` (nf4, double quantization)")):
        if getattr(model_args, name):
            raise ConfigError(f"--{name}: {why}")
    args.model_init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype,
                              "attn_implementation": model_args.attn_implementation,
                              **(args.model_init_kwargs or {})}
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    extra = ({"target_parameters": model_args.lora_target_parameters}
             if model_args.lora_target_parameters is not None else {})
    return LoraConfig(task_type=model_args.lora_task_type, r=model_args.lora_r,
                      target_modules=model_args.lora_target_modules,
                      lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                      bias="none", use_rslora=model_args.use_rslora,
                      use_dora=model_args.use_dora,
                      modules_to_save=model_args.lora_modules_to_save, **extra)


def script_rows(script: ScriptArguments, evaluate: bool) -> tuple[list[dict], list[dict]]:
    """The train split, and the test split when evaluation is on (TRL's script reads it
    only then). A single file is one split: it has no test split to evaluate on."""
    from preftune.data import load_rows

    if not script.dataset_name:
        raise ConfigError("--dataset_name: give a dataset (a hub id, a file or a folder)")
    name = script.dataset_name
    train = load_rows(name, script.dataset_train_split, script.dataset_config)
    if not evaluate:
        return train, []
    if Path(name).expanduser().is_file():
        raise ConfigError(f"--dataset_test_split {script.dataset_test_split}: {name} is one "
                          "file, one split; evaluation needs a folder or hub dataset with that "
                          "split (or --eval_strategy no)")
    return train, load_rows(name, script.dataset_test_split, script.dataset_config)


def run(kind: str, script: ScriptArguments, args, model_args: ModelConfig) -> int:
    from preftune.trl.trainers import CPOTrainer, DPOTrainer, KTOTrainer, ORPOTrainer

    from preftune.trl.mapping import resolve

    if not model_args.model_name_or_path:
        raise ConfigError("--model_name_or_path: give a model (a hub id, a folder or smollm2)")
    peft_config = model_settings(model_args, args)
    config = resolve(args).config  # refusals before any row is read
    config.model.model_name_or_path = model_args.model_name_or_path
    config.data.dataset_name = script.dataset_name
    from preftune.preflight import offline_when_local

    offline_when_local(config)  # every input local: no library looks anything up online
    train, evaluation = script_rows(script, args.eval_strategy != "no")
    trainer_class = {"cpo": CPOTrainer, "dpo": DPOTrainer, "orpo": ORPOTrainer,
                     "kto": KTOTrainer}[kind]
    trainer = trainer_class(model=model_args.model_name_or_path, args=args, train_dataset=train,
                            eval_dataset=evaluation or None, peft_config=peft_config)
    trainer.train()
    print(f"saved to {trainer.config.training.output_dir}")
    return 0


def usage(kind: str) -> str:
    lines = [f"preftune {kind} [--config trl.yaml] [--key value ...]: TRL's `trl {kind}` "
             "flags, defaults and meanings (docs/coming-from-trl.md)"]
    for name, fields in groups(kind).items():
        lines.append(f"\n{name} arguments:")
        lines += [f"  --{f.name} (default {_default(f)!r})" for f in fields.values()]
    return "\n".join(lines)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


TRL_COMMANDS = {kind: (lambda argv, kind=kind: main(kind, argv)) for kind in CONFIGS}
"""``preftune cpo|dpo|orpo|kto``, for preftune.cli's COMMANDS."""
