"""Iterative SamPO / DPO: each round starts from, and is referenced against, the last."""

import torch

from tiny import random_pairs, tiny_llama
from preftune.config import load_config
from preftune.train.rounds import split_parts, train_rounds


def test_parts_cover_the_data_once():
    parts = split_parts(10, 3, seed=1)
    assert sorted(i for p in parts for i in p) == list(range(10))
    assert [len(p) for p in parts] == [3, 4, 3]
    assert split_parts(10, 3, seed=1) == parts


def test_each_round_is_referenced_against_the_last_rounds_policy(tmp_path, tokenizer, monkeypatch):
    import preftune.train.rounds as rounds_module

    trainers = []

    class Recording(rounds_module.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)
            self.reference_at_start = {k: v.clone() for k, v in self.reference.model.state_dict().items()}

        def train(self):
            result = super().train()
            self.final = {k: v.clone() for k, v in self.model.state_dict().items()}
            return result

    monkeypatch.setattr(rounds_module, "Trainer", Recording)
    config = load_config(None, ["--method", "sampo", "--rounds", "2", "--max_steps", "2",
                                "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
                                "--output_dir", str(tmp_path), "--progress_bar", "false"])
    start = tiny_llama(vocab_size=1000)
    initial = {k: v.clone() for k, v in start.state_dict().items()}
    results = train_rounds(config, model=start, tokenizer=tokenizer,
                           train_pairs=random_pairs(16, vocab=1000), log=lambda *_: None)
    assert len(results) == 2 and len(trainers) == 2
    first_final = trainers[0].final
    for key, value in trainers[1].reference_at_start.items():
        assert torch.equal(trainers[0].reference_at_start[key], initial[key])
        assert torch.equal(value, first_final[key])  # round 2's reference = round 1's policy
    assert not all(torch.equal(first_final[k], initial[k]) for k in initial)
    assert (tmp_path / "round-1" / "model.safetensors").exists()
    assert (tmp_path / "model.safetensors").exists()
