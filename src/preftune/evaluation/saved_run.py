"""What ``preftune eval MODEL`` takes from the run that saved MODEL.

A run's output folder and each of its ``checkpoint-N`` folders hold the run's config
(``preftune_config.yaml``): the objective it trained (method, hyperparameters, NLL weight,
``reference_free``), where its reference came from, and how it tokenized. Those are the
evaluation's defaults, so a DPO run is scored with DPO's reward against the model it
started from; keys given on the command line win. With no objective from either, the
evaluation scores with SimPO's reward, which needs no reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from preftune.config import RUN_CONFIG_FILE, Config, build_config, load_config
from preftune.model_io import ADAPTER_CONFIG
from preftune.objectives.method import chooses_objective, resolve_method

DEFAULT_METHOD = "simpo"
# The run's settings an evaluation takes over (the model to score is MODEL itself, and its
# folder holds the tokenizer and chat template the run saved).
CARRIED = {"model": ("torch_dtype",),
           "data": ("max_length", "max_prompt_length", "data_format", "column_mapping"),
           "training": ("per_device_eval_batch_size", "seed", "bf16")}
METHOD_KEYS = ("method", "loss_type", "cpo_alpha", "sft_weight", "reference_free",
               "hyperparameters")
REFERENCE_KEYS = ("precompute_ref_log_probs", "ref_cache_dir")


def saved_config(model: str) -> Optional[Config]:
    """The config of the run that saved the folder ``model``, or None (a hub id, or a
    folder no preftune run wrote)."""
    path = Path(model) / RUN_CONFIG_FILE
    return load_config(str(path)) if path.is_file() else None


def eval_values(model: str, given: dict) -> tuple[dict, list[str]]:
    """The evaluation's config keys (``given`` over the saved run's) and lines for the log
    saying what came from where."""
    run = saved_config(model)
    values, notes = {}, []
    if run is not None:
        for section, keys in CARRIED.items():
            values.update({k: getattr(getattr(run, section), k) for k in keys
                           if getattr(getattr(run, section), k) is not None})
        if not chooses_objective(build_config(given).method):
            values.update({k: getattr(run.method, k) for k in METHOD_KEYS
                           if getattr(run.method, k) is not None})
            notes.append(f"scoring with the objective the run trained ({RUN_CONFIG_FILE})")
    values.update(given)
    if not chooses_objective(build_config(values).method):
        values["method"] = DEFAULT_METHOD
        notes.append(f"no --method given: scoring with {DEFAULT_METHOD}'s implicit reward")
    config = build_config(values)
    # The run's ref_model also decides how a loss_type spelling reads (method.py).
    if run is not None and not config.model.ref_model and resolve_method(
            config.method, run.model.ref_model).needs_reference:
        values.update(_run_reference(model, run, notes))
    return values, notes


def _run_reference(model: str, run: Config, notes: list[str]) -> dict:
    """The run's reference: its ``ref_model``, else the base under MODEL's LoRA adapters,
    else the model the run started from; with its cache settings."""
    m = run.model
    values = {k: getattr(m, k) for k in REFERENCE_KEYS if getattr(m, k)}
    if not m.ref_model and (Path(model) / ADAPTER_CONFIG).is_file():
        notes.append("reference: the base model under the LoRA adapters")
        return values
    values["ref_model"] = m.ref_model or m.model_name_or_path
    why = "the run's ref_model" if m.ref_model else "the model the run started from"
    notes.append(f"reference: {values['ref_model']} ({why})")
    return values
