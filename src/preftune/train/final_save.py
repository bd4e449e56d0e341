"""What a run writes as a model folder: the final save into ``output_dir``, and the files
that make each ``checkpoint-N`` a model folder too (config, tokenizer, chat template and
the run's config beside accelerate's weights), so ``preftune eval out/checkpoint-4`` and
``from_pretrained("out/checkpoint-4")`` work."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from preftune import distributed
from preftune.config import RUN_CONFIG_FILE, dump_config
from preftune.model_io import is_peft_model
from preftune.train.metrics import json_safe
from preftune.train.pauses import FINAL_SAVE_DELAY_ENV, pause

FINAL_STAGING = ".final.tmp"


def save_final(parts, final_metrics: dict, *, run_info: dict, card_settings: dict) -> Path:
    """The trained model in Hugging Face format (safetensors, tokenizer, chat template),
    the config that made it, a model card, what ran, and the final metrics; ``parts`` is
    the run's (assemble.RunParts).

    Written into a staging folder first and moved into ``output_dir`` file by file, the
    final metrics last: a kill during the writes leaves the staging folder (removed by the
    next run) and the previous contents, never a model folder with half a weights file."""
    acc, out = parts.accelerator, parts.output_dir
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(parts.model)
    if acc.is_main_process:
        staging = out / FINAL_STAGING
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        model = acc.unwrap_model(parts.model)
        if is_peft_model(model) and parts.config.model.merge_lora:
            model, state_dict = model.merge_and_unload(), None
        # A peft model saves its adapter alone (adapter_model.safetensors + config).
        model.save_pretrained(staging, state_dict=None if is_peft_model(model) else state_dict,
                              safe_serialization=True)
        parts.tokenizer.save_pretrained(staging)
        pause(FINAL_SAVE_DELAY_ENV)
        _write_run_files(staging, parts, final_metrics, run_info, card_settings)
        _move_in(staging, out)
        t = parts.config.training
        if t.push_to_hub:
            repo = t.hub_model_id or out.name
            model.push_to_hub(repo)
            parts.tokenizer.push_to_hub(repo)
    acc.wait_for_everyone()
    return out


def _write_run_files(staging: Path, parts, final_metrics: dict, run_info: dict,
                     card_settings: dict) -> None:
    from preftune.train.checkpoint import write_model_card

    dump_config(parts.config, staging / RUN_CONFIG_FILE)
    (staging / "run_info.json").write_text(json.dumps(json_safe(run_info), indent=2) + "\n")
    write_model_card(staging, method=parts.method,
                     base_model=parts.config.model.model_name_or_path,
                     settings=card_settings, final_metrics=final_metrics,
                     model_dir=parts.output_dir)
    (staging / "final_metrics.json").write_text(
        json.dumps(json_safe(final_metrics), indent=2, allow_nan=False))


def _move_in(staging: Path, out: Path) -> None:
    """Every staged file into ``out``, the final metrics last: they mark a complete save."""
    names = sorted(p.name for p in staging.iterdir())
    names.remove("final_metrics.json")
    for name in names + ["final_metrics.json"]:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    staging.rmdir()


def card_settings(config, method, *, step: int, global_batch: int,
                  resumes_forced: list[dict]) -> dict:
    """The model card's table of settings."""
    settings = {"method": method.describe(), "learning_rate": config.training.learning_rate,
                "steps": step, "global batch (pairs)": global_batch,
                "max_length": config.data.max_length,
                "max_prompt_length": config.data.prompt_limit,
                "dataset": config.data.dataset_name, "seed": config.training.seed}
    for forced in resumes_forced:
        settings[f"resumed at step {forced['step']} with changes"] = "; ".join(
            forced["changes"]).replace("|", "/")
    return settings


def write_model_files(folder: Path, parts) -> None:
    """What makes a checkpoint a model folder beside accelerate's ``model.safetensors``:
    the model's config, the tokenizer with its chat template, and the run's config
    (``preftune eval`` reads the method and the reference from it). A LoRA run adds its
    adapters in peft's format (small), so the folder loads as base model + adapters.
    FSDP and DeepSpeed write their weights in formats of their own: their checkpoints get
    the tokenizer and the run's config only. Main process; before the manifest."""
    acc = parts.accelerator
    parts.tokenizer.save_pretrained(folder)
    dump_config(parts.config, folder / RUN_CONFIG_FILE)
    if distributed.is_fsdp(acc) or distributed.is_deepspeed(acc):
        return
    model = acc.unwrap_model(parts.model)
    if is_peft_model(model):
        model.save_pretrained(folder, safe_serialization=True)  # the adapters alone
        return
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
