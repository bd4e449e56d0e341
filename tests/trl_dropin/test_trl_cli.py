"""``preftune cpo|dpo|orpo|kto``: TRL's script flags and YAML, with TRL's defaults and
meanings; ``preftune train`` keeps its own."""

import yaml

import pytest

from crash_helpers import tiny_run_files
from preftune.cli import main
from preftune.config import ConfigError
from preftune.trl.cli import build, read_arguments
from preftune.trl.mapping import resolve
from preftune.validation import validate


def resolved(kind, argv):
    script, args, model_args = build(kind, read_arguments(kind, argv))
    return script, model_args, resolve(args).config


def test_sigmoid_means_what_the_command_means():
    _, _, dpo = resolved("dpo", ["--loss_type", "sigmoid"])
    _, _, cpo = resolved("cpo", ["--loss_type", "sigmoid"])
    assert validate(dpo, loads_data=False, loads_model=False).objective.name == "dpo"
    assert validate(cpo, loads_data=False, loads_model=False).objective.name == "cpo"
    # TRL's defaults, not preftune train's: linear, no warmup, 3 epochs, batch 8.
    t = dpo.training
    assert (t.lr_scheduler_type, t.warmup_ratio, t.num_train_epochs,
            t.per_device_train_batch_size) == ("linear", 0.0, 3.0, 8)


def test_flag_forms_and_lists():
    script, model_args, config = resolved("dpo", [
        "--dataset_name", "d.jsonl", "--loss_type", "sigmoid", "sft", "--loss_weights", "1",
        "0.2", "--no_gradient_checkpointing", "--bf16=false", "--use_peft",
        "--lora_target_modules", "q_proj", "v_proj", "--dtype", "bfloat16"])
    assert script.dataset_name == "d.jsonl"
    assert model_args.use_peft and model_args.lora_target_modules == ["q_proj", "v_proj"]
    assert config.method.cpo_alpha == 0.2 and config.method.method == "dpo"
    assert config.model.gradient_checkpointing is False and config.training.bf16 is False


def test_yaml_in_trl_format_with_env_and_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFTUNE_TRL_TEST", raising=False)
    path = tmp_path / "cpo.yaml"
    path.write_text(yaml.safe_dump({
        "model_name_or_path": "smollm2", "dataset_name": "pairs.jsonl", "loss_type": "simpo",
        "cpo_alpha": 0.0, "simpo_gamma": 0.8, "learning_rate": 5e-7, "warmup_steps": 0.1,
        "max_steps": 20, "env": {"PREFTUNE_TRL_TEST": "1"}}))
    _, model_args, config = resolved("cpo", ["--config", str(path), "--beta", "2.5"])
    method = validate(config, loads_data=False, loads_model=False)
    assert (method.objective.name, method.hparams["beta"], method.hparams["gamma"]) == \
        ("simpo", 2.5, 0.8)
    assert config.training.learning_rate == 5e-7 and config.training.warmup_ratio == 0.1
    assert model_args.model_name_or_path == "smollm2"
    import os
    assert os.environ["PREFTUNE_TRL_TEST"] == "1"


def test_unknown_and_refused_keys():
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        read_arguments("dpo", ["--learning_rte", "1e-6"])
    assert main(["orpo", "--model_name_or_path", "smollm2", "--dataset_name", "x.jsonl",
                 "--torch_compile"]) == 2
    assert main(["dpo", "--model_name_or_path", "smollm2", "--load_in_8bit"]) == 2


def test_a_tiny_run_from_the_command_line(tmp_path, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.delenv(name, raising=False)  # the run sets them (all inputs local)
    model_dir, data = tiny_run_files(tmp_path, rows=8)
    out = tmp_path / "out"
    assert main(["kto", "--model_name_or_path", str(model_dir), "--dataset_name", str(data),
                 "--max_steps", "2", "--per_device_train_batch_size", "2", "--bf16", "false",
                 "--max_length", "32", "--save_strategy", "no", "--disable_tqdm",
                 "--output_dir", str(out)]) == 0
    saved = yaml.safe_load((out / "preftune_config.yaml").read_text())
    assert saved["method"]["method"] == "kto" and saved["training"]["lr_scheduler_type"] == "linear"
    assert (out / "model.safetensors").is_file()
