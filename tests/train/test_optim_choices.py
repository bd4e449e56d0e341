"""``optim`` selects a real optimizer, ``lr_scheduler_type`` a schedule that runs, and the
strategies act: ``eval_strategy: epoch`` evaluates at each epoch's end, ``logging_first_step``
logs step 1."""

import importlib.util

import pytest
import torch

from tiny import random_pairs, tiny_llama
from preftune.config import TrainingConfig, load_config
from preftune.errors import ConfigError
from preftune.setup import build_scheduler
from preftune.train import resume
from preftune.train.metrics import read_jsonl
from preftune.train.optim import MasterWeightAdamW, build_optimizer
from preftune.train.trainer import Trainer
from preftune.validation import SCHEDULERS, UNSUPPORTED_SCHEDULERS, validate

# optim -> (optimizer class name, the start line's words)
CHOICES = {"adamw_torch": ("AdamW", "AdamW on float32 weights"),
           "adamw_torch_fused": ("AdamW", "fused AdamW on float32 weights"),
           "adafactor": ("Adafactor", "Adafactor on float32 weights"),
           "sgd": ("SGD", "SGD on float32 weights")}


@pytest.mark.parametrize("optim", sorted(CHOICES))
def test_each_optimizer_takes_a_step(optim):
    model = tiny_llama(vocab_size=1000, layers=1, hidden=32)
    optimizer, said = build_optimizer(model, TrainingConfig(optim=optim, learning_rate=1e-2))
    kind, words = CHOICES[optim]
    assert type(optimizer).__name__ == kind and said == words
    before = [p.detach().clone() for p in model.parameters()]
    ids = torch.tensor([[5, 6, 7, 8]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert all(moved)


def test_sgd_is_plain_gradient_descent():
    """No momentum: one step moves each weight by exactly -lr x its gradient."""
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    model = torch.nn.Module()
    model.weight = weight
    optimizer, _ = build_optimizer(model, TrainingConfig(optim="sgd", learning_rate=0.5))
    weight.grad = torch.tensor([0.2, 0.4])
    optimizer.step()
    assert weight.tolist() == pytest.approx([1.0 - 0.1, -2.0 - 0.2])


def test_only_adamw_trains_bf16_weights():
    model = tiny_llama(vocab_size=1000, layers=1, hidden=32).to(torch.bfloat16)
    optimizer, said = build_optimizer(model, TrainingConfig(optim="adamw_torch_fused"))
    assert isinstance(optimizer, MasterWeightAdamW)
    assert said == "fused AdamW on float32 master copies of the bfloat16 weights"
    with pytest.raises(ConfigError, match="optim adafactor on bfloat16 weights"):
        build_optimizer(model, TrainingConfig(optim="adafactor"))


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None,
                    reason="bitsandbytes is installed")
@pytest.mark.parametrize("optim", ["adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"])
def test_bitsandbytes_choices_name_the_package_when_it_is_missing(optim):
    with pytest.raises(ConfigError, match="pip install bitsandbytes"):
        validate(load_config(None, ["--method", "simpo", "--optim", optim]),
                 loads_data=False, loads_model=False)


def test_a_forced_resume_keeps_adafactors_own_eps():
    """resume.apply_changes writes AdamW's settings into AdamW groups only: Adafactor's eps
    is a pair of its own (1e-30, 1e-3)."""
    model = tiny_llama(vocab_size=1000, layers=1, hidden=32)
    t = TrainingConfig(optim="adafactor", learning_rate=1e-3, weight_decay=0.1)
    optimizer, _ = build_optimizer(model, t)
    scheduler = build_scheduler(t, optimizer, total_steps=4)
    resume.apply_changes(optimizer, scheduler, t)
    group = optimizer.param_groups[0]
    assert group["eps"] == (1e-30, 1e-3) and group["weight_decay"] == 0.1


def test_schedules_offered_are_exactly_those_that_run():
    from transformers.trainer_utils import SchedulerType

    assert set(SCHEDULERS) | set(UNSUPPORTED_SCHEDULERS) == {s.value for s in SchedulerType}
    for name in SCHEDULERS:
        weight = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([weight], lr=0.1)
        scheduler = build_scheduler(TrainingConfig(lr_scheduler_type=name, warmup_steps=1),
                                    optimizer, total_steps=4)
        for _ in range(4):
            optimizer.step()
            scheduler.step()


def make_trainer(tmp_path, tokenizer, *args):
    config = load_config(None, ["--output_dir", str(tmp_path), "--method", "simpo",
                                "--learning_rate", "1e-3", "--warmup_ratio", "0",
                                "--per_device_train_batch_size", "4", "--progress_bar",
                                "false", *args])
    pairs = random_pairs(12, vocab=1000)
    return Trainer(config, model=tiny_llama(vocab_size=1000), tokenizer=tokenizer,
                   train_pairs=pairs, eval_pairs=pairs[:4], log=lambda *_: None)


def test_epoch_strategies_evaluate_and_save_at_each_epochs_end(tmp_path, tokenizer):
    """12 pairs in steps of 4: 3 steps an epoch, 2 epochs. Evaluations after steps 3 and 6
    (the last one being the final evaluation); checkpoints after steps 3 and 6."""
    make_trainer(tmp_path, tokenizer, "--num_train_epochs", "2", "--eval_strategy", "epoch",
                 "--save_strategy", "epoch", "--save_minutes", "null", "--logging_steps",
                 "10").train()
    evals = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "eval_loss" in r]
    assert evals == [3, 6]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3",
                                                                     "checkpoint-6"]


@pytest.mark.parametrize("first, logged", [("true", [1, 3]), ("false", [3])])
def test_logging_first_step(tmp_path, tokenizer, first, logged):
    make_trainer(tmp_path, tokenizer, "--max_steps", "3", "--logging_steps", "10",
                 "--logging_first_step", first, "--do_eval", "false",
                 "--save_strategy", "no").train()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == logged
