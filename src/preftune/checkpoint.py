"""Checkpoints (resumable training state) and the final Hugging Face export.

A checkpoint is written under a temporary name and renamed into place once complete,
so ``--resume`` never meets a half-written one: it takes the newest ``checkpoint-N``
that holds a ``trainer_state.json``. Everything is read back without unpickling code:
weights from safetensors, optimizer, scheduler and RNG states through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

import torch

from preftune.errors import ConfigError

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "lr_scheduler.pt"
# Crash tests set this to hold a checkpoint write open (seconds) between its files and its
# rename, so that a kill lands inside the write for certain.
WRITE_DELAY_ENV = "PREFTUNE_CHECKPOINT_WRITE_DELAY"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    found = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            match = CHECKPOINT.match(child.name)
            if match and (child / STATE_FILE).is_file():
                found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Optional[Path]:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    # A rename is durable only once the folder holding it is synced (power loss, not kills).
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict,
                    scheduler=None, keep: Optional[int] = None) -> Path:
    """Model, optimizer and RNG state (through accelerate), the learning-rate schedule, and
    our own state. The schedule is not registered with accelerate: accelerate pickles
    registered objects and unpickles them with ``weights_only=False``."""
    final = output_dir / f"checkpoint-{step}"
    staging = output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        if staging.exists():
            shutil.rmtree(staging)
        # Made before the barrier: accelerate creates it on the main process only, and
        # another rank writing its RNG state there first would find no folder.
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        if scheduler is not None:
            torch.save(scheduler.state_dict(), staging / SCHEDULER_FILE)
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
        _fsync_tree(staging)
        if os.environ.get(WRITE_DELAY_ENV):
            time.sleep(float(os.environ[WRITE_DELAY_ENV]))
        if final.exists():
            # Only when re-saving a step (a resumed run may); move the old one out of the
            # checkpoint-N namespace first, so a kill here leaves the staging copy behind,
            # never a half-deleted checkpoint-N.
            stale = output_dir / f".checkpoint-{step}.old"
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
            shutil.rmtree(stale)
        os.replace(staging, final)
        _fsync_dir(output_dir)
        if keep:
            for _, old in list_checkpoints(output_dir)[:-keep]:
                # Out of the namespace first for the same reason.
                doomed = old.with_name(f".{old.name}.old")
                os.replace(old, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def remove_partial(output_dir: Path) -> list[str]:
    """Leftovers of writes a kill interrupted (``.checkpoint-N.tmp``, ``.checkpoint-N.old``);
    none of them is ever resumed from. Returns their names."""
    found = [p for p in output_dir.glob(".checkpoint-*") if p.is_dir()] \
        if output_dir.is_dir() else []
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return sorted(p.name for p in found)


# Keys that fix which pairs each step trains on: changed on resume, the run goes on over
# another data order than the one it started.
ORDER_KEYS = ("seed", "per_device_train_batch_size", "gradient_accumulation_steps",
              "group_by_length", "dataset_name", "dataset_mixer", "max_train_samples",
              "max_length", "max_prompt_length", "data_format", "column_mapping", "max_steps",
              "num_train_epochs")


def resume_mismatches(saved: dict, current: dict) -> list[str]:
    """What differs, between a checkpoint's state and the resuming run's, in the things
    that decide the data order: those ``ORDER_KEYS``, the process count and the pairs."""
    def flat(state: dict) -> dict:
        return {k: v for section in (state.get("config") or {}).values() for k, v in
                section.items()}

    before, now = flat(saved), flat(current)
    found = [f"{key}: {before[key]!r} -> {now.get(key)!r}" for key in ORDER_KEYS
             if key in before and before[key] != now.get(key)]
    for key, what in (("processes", "processes"), ("pairs_fingerprint", "training pairs")):
        if key in saved and saved[key] != current.get(key):
            found.append(f"{what}: {saved[key]} -> {current.get(key)}")
    return found


def load_checkpoint(accelerator, checkpoint: Path, scheduler=None) -> dict:
    pickles = sorted(p.name for p in checkpoint.glob("custom_checkpoint_*.pkl"))
    if pickles:
        # accelerate would unpickle these with weights_only=False: arbitrary code.
        raise ConfigError(f"{checkpoint} holds {', '.join(pickles)}, which only loads by "
                          "unpickling arbitrary objects; preftune does not load it (a "
                          "checkpoint from an older preftune, or not from preftune)")
    accelerator.load_state(str(checkpoint))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(checkpoint / SCHEDULER_FILE, weights_only=True))
    return json.loads((checkpoint / STATE_FILE).read_text())


MODEL_CARD = """---
library_name: transformers
tags:
- preftune
- {method}
base_model: {base_model}
---

# {name}

Fine-tuned from `{base_model}` with preftune, objective **{method}**.

| setting | value |
|---|---|
{rows}

Objective: {paper}

    {equation}

Load it with:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
```
"""


def write_model_card(folder: Path, *, method, base_model: str, settings: dict,
                     final_metrics: dict) -> None:
    rows = [f"| {k} | {v} |" for k, v in settings.items() if v is not None]
    rows += [f"| final {k} | {v:.4g} |" for k, v in sorted(final_metrics.items())
             if isinstance(v, float)]
    (folder / "README.md").write_text(MODEL_CARD.format(
        method=method.objective.name, base_model=base_model, name=folder.name,
        rows="\n".join(rows), paper=method.objective.paper,
        equation=method.objective.equation, path=str(folder)))
