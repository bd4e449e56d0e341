"""``--resume`` continues the checkpoint's own run (preftune/train/resume.py): changed settings
are refused, listed, unless ``--resume_force``, which then honours them (a new learning
rate takes effect) and records them; free settings (logging, checkpointing, the fast
path's switches) may change."""

import json

import pytest

from tiny import random_pairs
from trainer_helpers import make_trainer
from preftune.errors import ConfigError
from preftune.train import resume
from preftune.train.checkpoint import STATE_FILE
from preftune.train.metrics import MetricWindow

RUN = ("--max_steps", "4", "--save_steps", "2", "--warmup_ratio", "0",
       "--lr_scheduler_type", "linear")


@pytest.fixture
def run_at_step_2(tmp_path, tokenizer):
    """A run that stopped at step 2 of 4, with checkpoint-2."""
    trainer = make_trainer(tmp_path, tokenizer, *RUN)
    window = MetricWindow()
    trainer.train_step(window), trainer.train_step(window)
    trainer.save_checkpoint()
    return tmp_path


@pytest.mark.parametrize("change, listed", [
    (("--learning_rate", "5e-4"), "learning_rate: 0.001 -> 0.0005"),
    (("--method", "dpo"), "method: 'cpo-simpo' -> 'dpo'"),
    (("--beta", "3.0"), "beta: None -> 3.0"),
    (("--model_name_or_path", "other-model"), "model_name_or_path: 'smollm2' -> 'other-model'"),
    (("--max_steps", "2"), "max_steps: 4 -> 2"),
    (("--per_device_train_batch_size", "2"), "per_device_train_batch_size: 4 -> 2"),
    (("--gradient_accumulation_steps", "2"), "gradient_accumulation_steps: 1 -> 2"),
])
def test_a_changed_setting_is_refused_and_listed(run_at_step_2, tokenizer, change, listed):
    resumed = make_trainer(run_at_step_2, tokenizer, *RUN, "--resume", *change)
    with pytest.raises(ConfigError) as refused:
        resumed.train()
    message = str(refused.value)
    assert "checkpoint-2 was written by a run with other settings" in message
    assert listed in message and "--resume_force true" in message
    assert not (run_at_step_2 / "checkpoint-4").exists()


def test_other_training_pairs_are_refused(run_at_step_2, tokenizer):
    resumed = make_trainer(run_at_step_2, tokenizer, *RUN, "--resume",
                           pairs=random_pairs(24, vocab=1000, seed=5))
    with pytest.raises(ConfigError, match="training pairs: other rows, order or tokenization"):
        resumed.train()


def test_free_settings_may_change(run_at_step_2, tokenizer):
    lines = []
    resumed = make_trainer(run_at_step_2, tokenizer, *RUN, "--resume", "--logging_steps", "3",
                           "--save_total_limit", "5", "--chunked_logps", "false",
                           log=lines.append)
    assert resumed.train().steps == 4
    assert any(line.startswith("resumed from") for line in lines)


def test_a_forced_resume_takes_the_new_learning_rate_from_that_step(run_at_step_2, tokenizer):
    lines = []
    resumed = make_trainer(run_at_step_2, tokenizer, *RUN, "--resume", "--resume_force",
                           "true", "--learning_rate", "5e-4", log=lines.append)
    resumed._maybe_resume()
    # linear decay over 4 steps, no warmup: after 2 steps, half of the base rate.
    assert resumed.scheduler.get_last_lr() == [pytest.approx(2.5e-4, rel=1e-12)]
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4, rel=1e-12)
    resumed.train_step(MetricWindow())
    assert resumed.scheduler.get_last_lr() == [pytest.approx(1.25e-4, rel=1e-12)]
    assert any("--resume_force: from this step on the run takes the new values: "
               "learning_rate: 0.001 -> 0.0005" in line for line in lines)
    assert resumed.resumes_forced == [{"step": 2,
                                       "changes": ["learning_rate: 0.001 -> 0.0005"]}]


def test_a_forced_resume_is_recorded_in_the_checkpoints_and_the_model(run_at_step_2,
                                                                      tokenizer):
    resumed = make_trainer(run_at_step_2, tokenizer, *RUN, "--resume", "--resume_force",
                           "true", "--learning_rate", "5e-4")
    resumed.train()
    forced = [{"step": 2, "changes": ["learning_rate: 0.001 -> 0.0005"]}]
    state = json.loads((run_at_step_2 / "checkpoint-4" / STATE_FILE).read_text())
    assert state["resumes_forced"] == forced
    assert json.loads((run_at_step_2 / "run_info.json").read_text())["resumes_forced"] == forced
    card = (run_at_step_2 / "README.md").read_text()
    assert "| resumed at step 2 with changes | learning_rate: 0.001 -> 0.0005 |" in card


def test_differences_ignore_keys_a_checkpoint_predates():
    saved = {"config": {"training": {"learning_rate": 1e-3}}, "processes": 1}
    now = {"config": {"training": {"learning_rate": 1e-3, "new_key": 1}}, "processes": 2,
           "pairs_fingerprint": "abc"}
    assert resume.run_differences(saved, now) == ["processes: 1 -> 2"]
