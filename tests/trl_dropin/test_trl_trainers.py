"""The four drop-in trainers on a tiny model: train, evaluate, save_model and log_history
behave as a TRL user expects; data comes as a Dataset, a list of dicts or a DataFrame."""

import pytest
import torch

from preftune.trl import (CPOConfig, CPOTrainer, DPOConfig, DPOTrainer, KTOConfig, KTOTrainer,
                          ORPOConfig, ORPOTrainer)
from tiny import tiny_llama
from trl_helpers import preference_rows, word_tokenizer_without_bos

TINY = dict(max_steps=2, per_device_train_batch_size=2, per_device_eval_batch_size=2,
            logging_steps=1, bf16=False, learning_rate=1e-2, save_strategy="no",
            max_length=32, disable_tqdm=True, eval_strategy="steps", eval_steps=1)


@pytest.mark.parametrize("trainer_class, config_class", [
    (CPOTrainer, CPOConfig), (DPOTrainer, DPOConfig), (ORPOTrainer, ORPOConfig),
    (KTOTrainer, KTOConfig)])
def test_train_evaluate_save_and_history(trainer_class, config_class, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    rows = preference_rows(8)
    model = tiny_llama(vocab_size=64, layers=1, hidden=32)
    before = model.model.norm.weight.detach().clone()
    trainer = trainer_class(model=model, args=config_class(output_dir=str(tmp_path / "run"),
                                                           **TINY),
                            processing_class=word_tokenizer_without_bos(),
                            train_dataset=Dataset.from_list(rows[:6]), eval_dataset=rows[6:])
    output = trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "saved"))

    history = trainer.state.log_history
    assert [row["step"] for row in history if "loss" in row] == [1, 2]
    assert [row["step"] for row in history if "eval_loss" in row] == [1, 2, 2]
    assert "train_runtime" in history[-2] and output.metrics["train_loss"] == output.training_loss
    assert metrics["eval_loss"] == history[-1]["eval_loss"] and "eval_runtime" in metrics
    assert trainer.state.global_step == output.global_step == 2
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert not torch.equal(loaded.model.norm.weight, before)


def test_kto_takes_unpaired_rows_and_a_data_frame(tmp_path):
    pandas = pytest.importorskip("pandas")
    rows = [{"prompt": row["prompt"], "completion": row[key], "label": key == "chosen"}
            for row in preference_rows(4) for key in ("chosen", "rejected")]
    trainer = KTOTrainer(model=tiny_llama(vocab_size=64, layers=1, hidden=32),
                         args=KTOConfig(output_dir=str(tmp_path), max_steps=1, bf16=False,
                                        save_strategy="no", disable_tqdm=True),
                         processing_class=word_tokenizer_without_bos(),
                         train_dataset=pandas.DataFrame(rows))
    assert len(trainer._run.train_pairs) == 8
    assert trainer.train().global_step == 1


def test_evaluate_scores_a_dataset_given_to_it_and_each_of_a_dict(tmp_path):
    """evaluate(eval_dataset=X) scores X; the trainer's own eval rows passed that way give
    its own numbers (CPO: no reference, so an untrained model scores sets apart); a dict is scored set by set as eval_<name>_* (TRL's naming)."""
    from datasets import Dataset

    rows = preference_rows(10)
    trainer = CPOTrainer(model=tiny_llama(vocab_size=64, layers=1, hidden=32),
                         args=CPOConfig(output_dir=str(tmp_path / "run"), **TINY),
                         processing_class=word_tokenizer_without_bos(),
                         train_dataset=Dataset.from_list(rows[:6]), eval_dataset=rows[6:8])
    own = trainer.evaluate()
    assert trainer.evaluate(Dataset.from_list(rows[6:8]))["eval_loss"] == own["eval_loss"]
    other = trainer.evaluate(rows[8:])
    both = trainer.evaluate({"a": rows[6:8], "b": rows[8:]})
    assert both["eval_a_loss"] == own["eval_loss"] and both["eval_b_loss"] == other["eval_loss"]
    assert other["eval_loss"] != own["eval_loss"] and "eval_b_runtime" in both
    with pytest.raises(ValueError, match="requires an eval_dataset"):
        CPOTrainer(model=tiny_llama(vocab_size=64, layers=1, hidden=32),
                   args=CPOConfig(output_dir=str(tmp_path / "none"), **TINY),
                   processing_class=word_tokenizer_without_bos(),
                   train_dataset=rows[:6]).evaluate()


def test_resume_from_checkpoint_takes_the_newest_intact_checkpoint_by_path(tmp_path):
    from preftune.config import ConfigError
    from preftune.trl.mapping import resume_flag

    run = tmp_path / "run"
    args = CPOConfig(output_dir=str(run), **{**TINY, "save_strategy": "steps", "save_steps": 1,
                                            "eval_strategy": "no"})
    CPOTrainer(model=tiny_llama(vocab_size=64, layers=1, hidden=32), args=args,
               processing_class=word_tokenizer_without_bos(),
               train_dataset=preference_rows(6)).train()
    assert resume_flag(str(run / "checkpoint-2"), str(run)) is True
    with pytest.raises(ConfigError, match="newest intact checkpoint of .* is .*checkpoint-2"):
        resume_flag(str(run / "checkpoint-1"), str(run))
    with pytest.raises(ConfigError, match="has no intact checkpoint"):
        resume_flag(str(run / "checkpoint-2"), str(tmp_path / "elsewhere"))
