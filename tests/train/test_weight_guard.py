"""A step never leaves a non-finite weight behind (preftune/train/guard.py, Trainer._roll_back),
float16 weights are refused for training, fp16 autocast trains under a loss scaler, and
skipped steps are bounded in total as well as in a row.

The faults are real: AdamW with ``eps`` 0 divides 0 by 0 wherever a gradient entry is 0
(an embedding row no token of the batch uses), which is what AdamW's default ``eps`` of
1e-8 becomes in float16."""

import json

import pytest
import torch

from tiny import random_pairs, tiny_llama
from trainer_helpers import assert_same, make_trainer, snapshot
from preftune.errors import ConfigError, TrainingStopped
from preftune.train import guard
from preftune.train.metrics import MetricWindow, read_jsonl


def all_finite(trainer) -> bool:
    return all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_adam_epsilon_zero_stops_before_any_checkpoint_and_saves_nothing(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, "--max_steps", "4", "--adam_epsilon", "0",
                           model=tiny_llama(vocab_size=1000, tie=False))
    with pytest.raises(TrainingStopped) as stopped:
        trainer.train()
    assert stopped.value.exit_code == guard.EXIT_CODE and stopped.value.checkpoint is None
    assert "step 1 left non-finite values in the weights" in str(stopped.value)
    assert "no checkpoint holds an earlier state, and this one is not saved" in str(stopped.value)
    assert not list(tmp_path.glob("checkpoint-*"))
    assert not list(tmp_path.glob("*.safetensors"))


def test_a_step_that_breaks_the_weights_is_rolled_back_and_skipped(tmp_path, tokenizer,
                                                                    capsys):
    # Untied embeddings: rows of tokens a batch does not use get a gradient of exactly 0.
    trainer = make_trainer(tmp_path / "run", tokenizer, "--max_steps", "6",
                           model=tiny_llama(vocab_size=1000, tie=False))
    reference = make_trainer(tmp_path / "ref", tokenizer, "--max_steps", "6",
                             model=tiny_llama(vocab_size=1000, tie=False))
    window = MetricWindow()
    for _ in range(2):
        assert trainer.train_step(window) and reference.train_step(window)
    trainer.save_checkpoint()
    at_two = snapshot(trainer)
    assert trainer.train_step(window) and reference.train_step(window)
    # eps 0 for the next step only: the checkpoint's optimizer state carries eps 1e-8.
    for group in trainer.optimizer.param_groups:
        group["eps"] = 0.0

    assert trainer.train_step(window) is False
    assert trainer.step == 2 and trainer.rolled_back == {4}
    assert all_finite(trainer)
    assert_same(at_two, snapshot(trainer))
    assert trainer.optimizer.param_groups[0]["eps"] == 1e-8

    assert trainer.train_step(window)  # step 3 again: the same as before
    assert_same(snapshot(reference), snapshot(trainer))
    assert trainer.train_step(window) is False  # step 4: its batch consumed, no update
    assert trainer.step == 4
    assert_same(snapshot(reference), snapshot(trainer))
    assert ("step 4 skipped: non-finite weights after the update, rolled back to "
            "checkpoint-2 (rows") in capsys.readouterr().err
    # A checkpoint written later remembers the rolled-back step for a resume.
    state = json.loads((trainer.save_checkpoint() / "trainer_state.json").read_text())
    assert state["rolled_back"] == [4] and state["skipped_steps"] == 1


def test_skipped_steps_are_bounded_in_total_not_only_in_a_row(tmp_path, tokenizer):
    assert guard.allowed_skips(0.1, 16) == 1 and guard.allowed_skips(0.1, 5) == 1
    assert guard.allowed_skips(0.25, 16) == 4
    trainer = make_trainer(tmp_path, tokenizer, "--max_steps", "6", "--save_steps", "1",
                           "--max_nonfinite_fraction", "0.2")
    # Steps 2 and 5 (never two in a row) overflow: 2 skips of 6 steps > 20%.
    trainer.model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: output * float("inf") if trainer.step in (1, 4)
        else output)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.train()
    assert stopped.value.exit_code == guard.EXIT_CODE
    assert "2 optimizer steps were skipped as non-finite by step 5" in str(stopped.value)
    assert "max_nonfinite_fraction allows (1)" in str(stopped.value)
    assert stopped.value.checkpoint == tmp_path / "checkpoint-4"


def test_float16_weights_are_refused_for_training_before_anything_loads(tmp_path, tokenizer):
    from preftune.config import load_config
    from preftune.train.trainer import Trainer

    config = load_config(None, ["--output_dir", str(tmp_path), "--torch_dtype", "float16",
                                "--model_name_or_path", str(tmp_path / "nothing-here")])
    with pytest.raises(ConfigError, match="gradients underflow to 0 without loss scaling"):
        Trainer(config)
    with pytest.raises(ConfigError, match="torch_dtype float16 trains float16 weights"):
        make_trainer(tmp_path, tokenizer, model=tiny_llama(vocab_size=1000).half())


def test_fp16_autocast_on_a_cpu_is_refused_not_ignored(tmp_path, tokenizer):
    if torch.cuda.is_available():
        pytest.skip("a GPU runs fp16 autocast")
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        make_trainer(tmp_path, tokenizer, "--fp16", "true")


def test_fp16_loss_scale_overflows_lower_the_scale_without_counting_as_skips(tmp_path,
                                                                              tokenizer,
                                                                              request):
    """torch's GradScaler on CPU, handed to accelerate as it builds one on a GPU."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from preftune.config import load_config
    from preftune.train.trainer import Trainer
    from trainer_helpers import BASE_ARGS

    AcceleratorState._reset_state(reset_partial_state=True)  # one setting per process
    request.addfinalizer(lambda: AcceleratorState._reset_state(reset_partial_state=True))
    accelerator = Accelerator(mixed_precision="fp16", cpu=True)
    accelerator.native_amp = True
    # A scale far too high: the first steps' scaled gradients overflow float16.
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40,
                                              backoff_factor=2.0 ** -10)
    config = load_config(None, ["--output_dir", str(tmp_path), *BASE_ARGS, "--max_steps", "6",
                                "--max_consecutive_nonfinite", "1"])
    model = tiny_llama(vocab_size=1000)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(config, model=model, tokenizer=tokenizer,
                      train_pairs=random_pairs(24, vocab=1000), accelerator=accelerator,
                      log=lambda *_: None)
    assert trainer.train().steps == 6
    log = read_jsonl(tmp_path / "metrics.jsonl")
    overflows = [r for r in log if r.get("loss_scale_overflow")]
    assert overflows and overflows[0]["loss_scale"] == 2.0 ** 30
    assert not [r for r in log if r.get("nonfinite_step_skipped")]
    assert all_finite(trainer)
    moved = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    assert any(not torch.equal(start[k], moved[k]) for k in start)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_state_check_finds_one_non_finite_value_among_millions(bad):
    tensors = [torch.full((1_000_000,), 1e20), torch.zeros(0), torch.randn(3, 5)]
    assert guard.state_is_finite(tensors, lambda flags: flags)
    tensors[0][123_456] = bad
    assert not guard.state_is_finite(tensors, lambda flags: flags)
    # +inf in one tensor and -inf in another do not cancel out.
    assert not guard.state_is_finite([torch.tensor([float("inf")]),
                                      torch.tensor([float("-inf")])], lambda flags: flags)
