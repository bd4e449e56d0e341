"""``preftune train`` keeps its own defaults and says, when a run starts, which of them
differ from TRL's (preftune/trl/defaults.py); a key the user set is not listed."""

from preftune.config import load_config
from preftune.trl.defaults import defaults_note, unlike_trl


def test_the_defaults_that_differ_from_trl_are_listed_with_trls_values():
    found = unlike_trl(load_config(None, ["--method", "simpo"]))
    assert "lr_scheduler_type cosine (TRL: linear)" in found
    assert "warmup_ratio 0.1 (TRL: 0)" in found
    assert "num_train_epochs 1.0 (TRL: 3.0)" in found
    assert "per_device_train_batch_size 2 (TRL: 8)" in found
    assert "save_steps every save_minutes (30) and at the last step (TRL: 500)" in found
    assert not any(item.startswith("lora_") for item in found)  # no LoRA in this run


def test_a_key_set_by_the_user_is_not_listed_and_none_left_gives_no_line():
    given = ["--method", "simpo", "--lr_scheduler_type", "cosine"]
    assert not any(x.startswith("lr_scheduler_type") for x in unlike_trl(load_config(None, given)))
    everything = ["--num_train_epochs", "3", "--per_device_train_batch_size", "8",
                  "--per_device_eval_batch_size", "8", "--lr_scheduler_type", "linear",
                  "--warmup_ratio", "0", "--optim", "adamw_torch_fused",
                  "--gradient_checkpointing", "true", "--eval_strategy", "no",
                  "--save_steps", "500", "--save_total_limit", "2"]
    assert defaults_note(load_config(None, ["--method", "simpo", *everything])) == ""


def test_lora_defaults_are_listed_for_a_lora_run():
    found = unlike_trl(load_config(None, ["--method", "simpo", "--use_peft", "true"]))
    assert "lora_dropout 0.0 (TRL: 0.05)" in found
