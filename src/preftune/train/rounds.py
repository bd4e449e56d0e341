"""Iterative training: several rounds, each on its own part of the data, each starting
from the previous round's policy, which also becomes that round's reference model
(iterative SamPO, Lu et al. 2024; iterative DPO).

The data are tokenized once and split by a seeded permutation into ``rounds`` parts.
Round k writes ``OUTPUT_DIR/round-k``; the last round's model is also saved in
``OUTPUT_DIR`` itself.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch

from preftune.config import Config
from preftune.train.trainer import Trainer, TrainResult


def split_parts(n: int, parts: int, seed: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [order[bounds[i]:bounds[i + 1]] for i in range(parts)]


def train_rounds(config: Config, *, model=None, tokenizer=None, train_pairs=None,
                 eval_pairs=None, log: Optional[Callable[[str], None]] = None
                 ) -> list[TrainResult]:
    from preftune.assemble import load_data
    from preftune.validation import validate

    rounds = config.training.rounds
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    log = log or print
    # The data are read and tokenized once, as a single run would (assemble.py), then split.
    method = validate(config, loads_data=train_pairs is None, loads_model=model is None)
    tokenizer, train_pairs, eval_pairs = load_data(
        config, method, tokenizer=tokenizer, model=model, train_pairs=train_pairs,
        eval_pairs=eval_pairs, log=log)
    parts = split_parts(len(train_pairs), rounds, config.training.seed)
    output_dir = Path(config.training.output_dir)
    results, accelerator = [], None
    for k, part in enumerate(parts, start=1):
        log(f"round {k}/{rounds}: {len(part)} pairs")
        round_config = dataclasses.replace(
            config, training=dataclasses.replace(config.training,
                                                 output_dir=str(output_dir / f"round-{k}")))
        # The reference is built from the model as handed in: last round's final policy.
        trainer = Trainer(round_config, model=model, tokenizer=tokenizer,
                          train_pairs=[train_pairs[i] for i in part], eval_pairs=eval_pairs,
                          accelerator=accelerator, log=log)
        results.append(trainer.train())
        accelerator = trainer.accelerator
        model = accelerator.unwrap_model(trainer.model)
    if accelerator is not None and accelerator.is_main_process:
        last = output_dir / f"round-{rounds}"
        for item in last.iterdir():
            if item.is_file():
                shutil.copy2(item, output_dir / item.name)
    return results
