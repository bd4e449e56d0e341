"""Where ``preftune train``'s defaults differ from TRL's, said when a run starts.

``preftune train`` keeps its own defaults (chosen for preference tuning on one machine:
a cosine schedule with warmup, checkpoints by time, one epoch); ``preftune cpo|dpo|orpo|kto``
and the classes in :mod:`preftune.trl` take TRL's. A user moving between them reads here
which defaults a run used that TRL would not have.
"""

from __future__ import annotations

import dataclasses

from preftune.config import FIELDS, Config
from preftune.trl.config import DPOConfig, ModelConfig
from preftune.trl.mapping import default_of

# Keys whose default is a training decision (not a path, a name or a method choice).
COMPARED = ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
            "lr_scheduler_type", "warmup_ratio", "optim", "gradient_checkpointing",
            "eval_strategy", "save_steps", "save_total_limit", "lora_dropout",
            "lora_target_modules")
# preftune's own readings of a default that has no plain value.
MEANING = {"save_steps": "every save_minutes (30) and at the last step",
           "warmup_ratio": "0.1"}
TRL_MEANING = {"warmup_ratio": "0", "save_total_limit": "all kept",
               "lora_target_modules": "the model's attention projections"}


def trl_defaults() -> dict:
    """TRL 1.16's defaults (DPOConfig and its ModelConfig), by field name."""
    return {f.name: default_of(f) for cls in (DPOConfig, ModelConfig)
            for f in dataclasses.fields(cls)}


def unlike_trl(config: Config) -> list[str]:
    """``key ours (TRL: theirs)`` for each compared key the config left at a default
    that differs from TRL's."""
    theirs, found = trl_defaults(), []
    for key in COMPARED:
        if key in config.given or key.startswith("lora_") and not config.model.use_peft:
            continue
        ours = default_of(FIELDS[key][1])
        if ours != theirs.get(key):
            found.append(f"{key} {MEANING.get(key, ours)} "
                         f"(TRL: {TRL_MEANING.get(key, theirs.get(key))})")
    return found


def defaults_note(config: Config) -> str:
    """One line for the run's log, empty when every compared key was set."""
    found = unlike_trl(config)
    return ("preftune's defaults where TRL's differ (set a key to change it): "
            + "; ".join(found)) if found else ""
