"""Checkpoints (resumable training state) and the final Hugging Face export.

A checkpoint is written under a temporary name and renamed into place once complete,
so ``--resume`` never meets a half-written one: it takes the newest ``checkpoint-N``
that holds a ``trainer_state.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


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


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict,
                    keep: Optional[int] = None) -> Path:
    """Model, optimizer, scheduler and RNG state (through accelerate) plus our own state."""
    final = output_dir / f"checkpoint-{step}"
    staging = output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
        _fsync_tree(staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        if keep:
            for _, old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, checkpoint: Path) -> dict:
    accelerator.load_state(str(checkpoint))
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
