"""A Trainer on a tiny random Llama and random pairs, and bitwise snapshots of its state."""

import copy

import torch

from tiny import random_pairs, tiny_llama
from preftune.config import load_config
from preftune.train.trainer import Trainer

BASE_ARGS = ["--learning_rate", "1e-3", "--warmup_ratio", "0.5", "--logging_steps", "1",
             "--progress_bar", "false", "--seed", "7", "--method", "cpo-simpo",
             "--per_device_train_batch_size", "4"]


def make_trainer(output_dir, tokenizer, *args, pairs=None, model=None, log=None):
    config = load_config(None, ["--output_dir", str(output_dir), *BASE_ARGS, *args])
    return Trainer(config, model=model if model is not None else tiny_llama(vocab_size=1000),
                   tokenizer=tokenizer, train_pairs=pairs or random_pairs(24, vocab=1000),
                   log=log or (lambda *_: None))


def plain_trainer(tmp_path, tokenizer, *args, pairs=None, eval_pairs=None, model=None, name="run"):
    """A Trainer with the config's own defaults but for a fast, quiet, seeded run."""
    config = load_config(None, ["--output_dir", str(tmp_path / name), "--learning_rate", "1e-3",
                                "--warmup_ratio", "0", "--logging_steps", "1",
                                "--progress_bar", "false", "--seed", "7", *args])
    return Trainer(config, model=model if model is not None else tiny_llama(vocab_size=1000),
                   tokenizer=tokenizer, train_pairs=pairs or random_pairs(24, vocab=1000),
                   eval_pairs=eval_pairs, log=lambda *_: None)


def snapshot(trainer) -> dict:
    """Weights, AdamW state (moments and step counts), scheduler state: deep copies."""
    return {"weights": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
            "scheduler": copy.deepcopy(trainer.scheduler.state_dict())}


def assert_same(a, b, where: str = "") -> None:
    """Bitwise equality of nested dicts/lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)
