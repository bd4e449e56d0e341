"""LoRA through peft: the reference is the base model under the adapters, no second copy."""

import pytest
import torch

pytest.importorskip("peft")

from tiny import random_pairs, tiny_llama  # noqa: E402
from preftune.reference.build import AdapterReference  # noqa: E402
from preftune.train.metrics import read_jsonl  # noqa: E402
from trainer_helpers import plain_trainer as make_trainer  # noqa: E402


def test_lora_dpo_uses_the_adapter_free_base_as_reference(tmp_path, tokenizer):
    base = tiny_llama(vocab_size=1000)
    pairs = random_pairs(16, vocab=1000, seed=2)
    trainer = make_trainer(tmp_path, tokenizer, "--method", "dpo", "--use_peft", "--lora_r", "4",
                           "--max_steps", "12", "--per_device_train_batch_size", "8",
                           "--learning_rate", "5e-3", model=base, pairs=pairs)
    assert isinstance(trainer.reference, AdapterReference)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = trainer.reference(pairs[:4], torch.device("cpu"))
    trainer.train()
    after = trainer.reference(pairs[:4], torch.device("cpu"))
    # The base weights never move, so the reference is the same after training.
    assert torch.allclose(before.chosen, after.chosen, atol=1e-6)
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert losses[-1] < losses[0]
    assert (tmp_path / "run" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_lora_merge_saves_a_plain_model(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, "--method", "simpo", "--use_peft", "--merge_lora",
                           "--max_steps", "2", "--per_device_train_batch_size", "4")
    trainer.train()
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert not any("lora" in n for n, _ in loaded.named_parameters())
