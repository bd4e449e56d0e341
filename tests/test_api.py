"""preftune.train from Python: rows and models in memory, the CLI's typed config, a
notebook's second run."""

import pytest
import torch

from crash_helpers import word_tokenizer
from preftune.api import dataset_rows, rows_of, train
from preftune.config import ConfigError, load_config
from tiny import tiny_llama
from trl_dropin.trl_helpers import preference_rows

QUIET = {"progress_bar": False, "logging_steps": 1, "max_length": 32,
         "per_device_train_batch_size": 2, "learning_rate": 1e-2, "save_strategy": "no"}


def test_rows_from_every_container():
    datasets = pytest.importorskip("datasets")
    pandas = pytest.importorskip("pandas")
    rows = preference_rows(4)
    dataset = datasets.Dataset.from_list(rows)
    assert rows_of(dataset, "x") == rows
    assert rows_of(dataset.to_iterable_dataset(), "x") == rows
    assert rows_of(pandas.DataFrame(rows), "x") == rows
    assert rows_of(tuple(rows), "x") == rows
    splits = datasets.DatasetDict({"train": dataset, "validation": dataset.select([0])})
    assert dataset_rows(splits, "train", None) == (rows, rows[:1])  # the eval split found
    with pytest.raises(ConfigError, match="dataset_test_split"):
        dataset_rows(splits, "train", "test")
    with pytest.raises(ConfigError, match="pick a split"):
        rows_of(splits, "eval_dataset")
    # UltraFeedback's layout: the preference splits, never the SFT or generation ones.
    feedback = datasets.DatasetDict({name: dataset.select([k]) for k, name in enumerate(
        ["train_sft", "train_prefs", "test_prefs", "train_gen"])})
    assert dataset_rows(feedback, "train", None) == (rows[1:2], rows[2:3])
    held_out = datasets.DatasetDict({"train": dataset, "heldout": dataset.select([3])})
    assert dataset_rows(held_out, "train", None) == (rows, rows[3:])
    with pytest.raises(ConfigError, match="got int"):
        rows_of(3, "train_dataset")


def test_train_twice_in_one_process(tmp_path):
    """bf16 then float32: accelerate refuses a second precision in one process unless the
    first run's state is dropped. The caller's config is not changed."""
    from accelerate.state import AcceleratorState
    from transformers import AutoModelForCausalLM

    rows = preference_rows(8)
    config = load_config(None, ["--method", "simpo", "--max_steps", "2"])
    for precision, folder in ((True, "bf16"), (False, "fp32")):
        model = tiny_llama(vocab_size=64, layers=1, hidden=32)
        model.config._name_or_path = "org/tiny-llama"
        before = model.model.norm.weight.detach().clone()
        out = train({**QUIET, "method": "simpo", "max_steps": 2, "bf16": precision,
                     "output_dir": str(tmp_path / folder)}, model=model,
                    tokenizer=word_tokenizer(), train_dataset=rows[:6], eval_dataset=rows[6:],
                    log=lambda *_: None)
        assert out.model is model and not torch.equal(model.model.norm.weight, before)
        assert out.steps == 2 and {"loss", "eval_loss", "rewards/margins"} <= set(out.metrics)
        assert not AcceleratorState._shared_state  # nothing left for the next run
        card = (out.output_dir / "README.md").read_text()
        assert "base_model: org/tiny-llama" in card
        assert AutoModelForCausalLM.from_pretrained(out.output_dir) is not None
    assert config.training.output_dir == "outputs/run" and config.training.bf16 is None


def test_peft_config_wraps_the_model_and_the_base_is_the_reference(tmp_path):
    peft = pytest.importorskip("peft")
    out = train({**QUIET, "method": "dpo", "max_steps": 1, "bf16": False,
                 "output_dir": str(tmp_path)},
                model=tiny_llama(vocab_size=64, layers=1, hidden=32),
                tokenizer=word_tokenizer(), train_dataset=preference_rows(4),
                peft_config=peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]),
                log=lambda *_: None)
    assert isinstance(out.model, peft.PeftModel)
    # The first step's policy is the base model (LoRA's B starts at 0): against the base
    # with adapters off as reference, every reward is 0.
    assert out.metrics["rewards/chosen"] == 0.0 == out.metrics["rewards/margins"]
    assert (tmp_path / "adapter_config.json").is_file()
    assert "lora_r: 4" in (tmp_path / "preftune_config.yaml").read_text()


def test_a_reference_model_for_a_method_without_one_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="ref_model: simpo uses no reference model"):
        train({"method": "simpo", "output_dir": str(tmp_path)},
              model=tiny_llama(vocab_size=64, layers=1, hidden=32), tokenizer=word_tokenizer(),
              ref_model=tiny_llama(vocab_size=64, layers=1, hidden=32),
              train_dataset=preference_rows(2))
