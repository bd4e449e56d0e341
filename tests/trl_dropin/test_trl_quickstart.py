"""TRL's quick-start with only the import changed, on SmolLM2 and a datasets.Dataset built
in memory from the shared Orca pairs (turned into TRL's conversational format): it trains,
saves, and the saved model loads. Short: one step, four rows, max_length 128; checkpoints
off (a SmolLM2 checkpoint with its optimizer state is 1.6 GB of writes)."""

import json

import pytest
import torch

from shared_paths import ORCA_OPENAI, require

pytestmark = pytest.mark.slow


def orca_dataset(rows: int = 4):
    """The OpenAI-schema rows as TRL's conversational preference rows."""
    from datasets import Dataset

    lines = require(ORCA_OPENAI).read_text().splitlines()[:rows]
    return Dataset.from_list([{"prompt": row["input"]["messages"],
                               "chosen": row["preferred_output"],
                               "rejected": row["non_preferred_output"]}
                              for row in map(json.loads, lines)])


SHORT = dict(max_steps=1, per_device_train_batch_size=2, max_length=128, save_strategy="no",
             disable_tqdm=True)


def test_cpo_quick_start(tmp_path):
    from transformers import AutoModelForCausalLM

    from preftune.model_io import load_model, load_tokenizer
    from preftune.trl import CPOConfig, CPOTrainer   # was: from trl import ...

    model = load_model("smollm2")
    tokenizer = load_tokenizer("smollm2")
    train_dataset = orca_dataset()
    before = model.model.norm.weight.detach().clone()
    training_args = CPOConfig(output_dir=str(tmp_path / "SmolLM2-CPO"), logging_steps=10,
                              **SHORT)
    trainer = CPOTrainer(model=model, args=training_args, processing_class=tokenizer,
                         train_dataset=train_dataset)
    output = trainer.train()
    trainer.save_model()

    assert output.global_step == 1 and output.training_loss > 0
    assert trainer.state.log_history[0]["step"] == 1
    loaded = AutoModelForCausalLM.from_pretrained(training_args.output_dir)
    assert not torch.equal(loaded.model.norm.weight, before)  # trained, saved, loaded
    card = (tmp_path / "SmolLM2-CPO" / "README.md").read_text()
    assert "base_model: smollm2" not in card and "SmolLM2-135M-Instruct" in card


def test_dpo_with_peft_and_no_reference_model(tmp_path):
    pytest.importorskip("peft")
    from peft import AutoPeftModelForCausalLM, LoraConfig

    from preftune.model_io import load_model, load_tokenizer
    from preftune.trl import DPOConfig, DPOTrainer

    model, tokenizer = load_model("smollm2"), load_tokenizer("smollm2")
    dataset = orca_dataset(6)
    training_args = DPOConfig(output_dir=str(tmp_path / "SmolLM2-DPO"), logging_steps=1,
                              per_device_eval_batch_size=2, **SHORT)
    peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                             task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, ref_model=None, args=training_args,
                         processing_class=tokenizer, train_dataset=dataset.select(range(4)),
                         eval_dataset=dataset.select(range(4, 6)), peft_config=peft_config)
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()

    assert metrics["eval_rewards/margins"] != 0.0  # the adapters moved the policy
    assert "eval_loss" in trainer.state.log_history[-1]
    loaded = AutoPeftModelForCausalLM.from_pretrained(training_args.output_dir)
    assert loaded.peft_config["default"].r == 8
