"""Training moves the weights in every precision: float32, bf16 autocast over float32
weights (the default on a GPU), and bf16 weights with float32 master copies.

At lr 1e-6 an AdamW step is about 1e-6 per weight, far below bf16's spacing (1/128 of the
weight): plain AdamW on bf16 weights leaves nearly all of them where they were."""

from __future__ import annotations

import pytest
import torch

from tiny import random_pairs, tiny_llama
from preftune.config import load_config
from preftune.train.optim import MasterWeightAdamW, build_optimizer
from preftune.train.trainer import Trainer


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one process-wide mixed-precision setting: these tests change it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def one_step(tmp_path, tokenizer, model, *args) -> Trainer:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    config = load_config(None, ["--output_dir", str(tmp_path), "--method", "simpo",
                                "--learning_rate", "1e-6", "--warmup_ratio", "0",
                                "--max_steps", "1", "--per_device_train_batch_size", "2",
                                "--logging_steps", "1", "--progress_bar", "false",
                                "--do_eval", "false", "--save_strategy", "no", *args])
    pairs = random_pairs(2, vocab=1000, seed=1)
    return Trainer(config, model=model, tokenizer=tokenizer, train_pairs=pairs,
                   log=lambda *_: None)


def trained_values(trainer) -> list[torch.Tensor]:
    """What the optimizer holds: float32 master copies where there are any."""
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    if isinstance(optimizer, MasterWeightAdamW):
        return [m.detach().clone() for m in optimizer.masters()]
    return [p.detach().float().clone() for p in trainer.model.parameters() if p.requires_grad]


def changed_share(tmp_path, tokenizer, model, *args) -> float:
    trainer = one_step(tmp_path, tokenizer, model, *args)
    before = trained_values(trainer)
    trainer.train()
    after = trained_values(trainer)
    changed = sum(int((a != b).sum()) for a, b in zip(after, before))
    return changed / sum(b.numel() for b in before)


@pytest.fixture(scope="module")
def smollm2_state():
    from preftune.model_io import load_model

    return load_model("smollm2").state_dict()


def smollm2(state, dtype):
    from preftune.model_io import load_model

    model = load_model("smollm2")
    model.load_state_dict(state)
    return model.to(dtype)


@pytest.mark.slow
def test_every_precision_moves_the_weights_at_lr_1e_6(tmp_path, tokenizer, smollm2_state):
    float32 = changed_share(tmp_path / "fp32", tokenizer, smollm2(smollm2_state, torch.float32))
    autocast = changed_share(tmp_path / "autocast", tokenizer,
                             smollm2(smollm2_state, torch.float32), "--bf16", "true")
    masters = changed_share(tmp_path / "bf16", tokenizer, smollm2(smollm2_state, torch.bfloat16),
                            "--bf16", "true")
    assert float32 > 0.9
    assert abs(autocast - float32) < 0.03 and abs(masters - float32) < 0.03, \
        (float32, autocast, masters)


def test_plain_adamw_on_bf16_weights_loses_the_step():
    """The failure the master copies prevent, on a tiny model: same step, bf16 weights."""
    model = tiny_llama(vocab_size=1000).to(torch.bfloat16)
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    torch.optim.AdamW(params, lr=1e-6).step()
    share = sum(int((p != b).sum()) for p, b in zip(params, before)) / sum(
        b.numel() for b in before)
    assert share < 0.05


def test_master_copies_accumulate_updates_below_bf16_resolution():
    """100 steps of 1e-6 on a weight of 0.5 (bf16 spacing there: 2**-8 = 0.0039): plain
    AdamW never moves it; with master copies it moves by 1e-4, and the bf16 weight follows
    once the float32 copy crosses a rounding boundary."""
    weight = torch.nn.Parameter(torch.full((4,), 0.5, dtype=torch.bfloat16))
    optimizer = MasterWeightAdamW([weight], lr=1e-6, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=0.0)
    for _ in range(100):
        weight.grad = torch.ones_like(weight)
        optimizer.step()
        optimizer.zero_grad()
    (master,) = optimizer.masters()
    assert master.dtype == torch.float32
    assert torch.allclose(master, torch.full((4,), 0.5 - 1e-4), atol=1e-6)
    assert torch.equal(weight.detach(), master.to(torch.bfloat16))
    # Resume: the copies are part of the state dict, so a resumed run holds the same ones.
    resumed_weight = torch.nn.Parameter(weight.detach().clone())
    resumed = MasterWeightAdamW([resumed_weight], lr=1e-6)
    resumed.load_state_dict(optimizer.state_dict())
    assert torch.equal(resumed.masters()[0], master)


def test_optimizer_choice_is_said():
    from types import SimpleNamespace

    t = SimpleNamespace(learning_rate=1e-6, adam_beta1=0.9, adam_beta2=0.999,
                        adam_epsilon=1e-8, weight_decay=0.0, optim="adamw_torch")
    optimizer, said = build_optimizer(tiny_llama(vocab_size=1000), t)
    assert type(optimizer) is torch.optim.AdamW and said == "AdamW on float32 weights"
    optimizer, said = build_optimizer(tiny_llama(vocab_size=1000).to(torch.bfloat16), t)
    assert isinstance(optimizer, MasterWeightAdamW)
    assert said == "AdamW on float32 master copies of the bfloat16 weights"
    from preftune.errors import ConfigError

    with pytest.raises(ConfigError, match="FSDP2"):
        build_optimizer(tiny_llama(vocab_size=1000).to(torch.bfloat16), t, "fsdp")
