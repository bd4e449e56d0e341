"""``preftune demo``: a real preference-tuning run on a CPU, with a before/after table.

    preftune demo                       # defaults below, about 5-8 minutes on 2 cores
    preftune demo --method simpo --max_steps 30 --output_dir outputs/demo

Loads the bundled SmolLM2-135M-Instruct, measures held-out task accuracy (greedy answers
checked by the task's program) and reward accuracy (does the implicit reward rank the
correct answer above the wrong one), trains on the shipped preference set, measures again
and prints the table. Everything it prints is also written to ``OUTPUT_DIR/demo.md``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from preftune.config import load_config
from preftune.demo.accuracy import task_accuracy
from preftune.demo.task import pair_for, question_records, split_items
from preftune.train.metrics import read_jsonl

DATA = Path(__file__).parent
# Chosen on this task by sweeps on a 2-core CPU (see the README's demo section).
DEFAULTS = ["--model_name_or_path", "smollm2", "--dataset_name", str(DATA / "train.jsonl"),
            "--method", "simpo", "--beta", "2.5", "--simpo_gamma", "1.4",
            "--learning_rate", "1e-5", "--per_device_train_batch_size", "8", "--max_steps", "30",
            "--warmup_ratio", "0.1",
            "--lr_scheduler_type", "cosine", "--logging_steps", "5", "--eval_strategy", "no",
            "--max_length", "256", "--max_prompt_length", "128", "--seed", "0",
            "--output_dir", "outputs/demo",
            # A rerun replaces the last demo; a five-minute demo needs no checkpoints.
            "--overwrite_output_dir", "true", "--save_strategy", "no"]


def held_out_pairs(seed: int = 1) -> list[dict]:
    """Preference rows for the held-out facts, to measure reward accuracy."""
    _, held_out = split_items()
    rng = random.Random(seed)
    return [pair_for(record, item, rng) for kind in ("times", "convert")
            for item in held_out[kind] for record in question_records(item, rng)]


def main(argv: list[str]) -> int:
    from preftune.data import tokenize_rows
    from preftune.setup import build_tokenizer
    from preftune.train.trainer import Trainer

    torch.manual_seed(0)
    config = load_config(None, DEFAULTS + list(argv))
    start = time.perf_counter()
    trainer_log: list[str] = []
    records = read_jsonl(DATA / "eval.jsonl")
    # The held-out pairs are the run's eval pairs, tokenized by the run's tokenizer.
    tokenizer = build_tokenizer(config)
    d = config.data
    eval_pairs, _ = tokenize_rows(held_out_pairs(), tokenizer, max_length=d.max_length,
                                  max_prompt_length=d.prompt_limit)
    trainer = Trainer(config, tokenizer=tokenizer, eval_pairs=eval_pairs,
                      log=lambda m: (print(m), trainer_log.append(m)))
    model = trainer.accelerator.unwrap_model(trainer.model)

    print(f"held-out: {len(records)} questions, {len(eval_pairs)} preference pairs")
    before_task = task_accuracy(model, tokenizer, records, progress=True, batch_size=50)
    before_reward = trainer.evaluate()["eval_rewards/accuracies"]
    trainer.train()
    after_task, replies = task_accuracy(model, tokenizer, records, progress=True, batch_size=50,
                                        return_replies=True)
    after_reward = trainer.evaluate()["eval_rewards/accuracies"]
    minutes = (time.perf_counter() - start) / 60

    table = "\n".join([
        f"| held-out ({len(records)} questions) | before | after | change |",
        "|---|---|---|---|",
        f"| task accuracy (checked answers) | {before_task:.1%} | {after_task:.1%} | "
        f"{(after_task - before_task) * 100:+.1f} points |",
        f"| reward accuracy (implicit reward) | {before_reward:.1%} | {after_reward:.1%} | "
        f"{(after_reward - before_reward) * 100:+.1f} points |",
    ])
    examples = "\n".join(f"- {r['question']} -> {reply.strip()[:80]!r}"
                         for r, reply in list(zip(records, replies))[:5])
    report = (f"# preftune demo\n\n{trainer.method.describe()}, {trainer.step} steps of "
              f"{trainer.plan.global_batch} pairs, {minutes:.1f} minutes in all.\n\n{table}\n\n"
              f"Replies after tuning:\n{examples}\n")
    print("\n" + report)
    Path(config.training.output_dir, "demo.md").write_text(report)
    return 0
