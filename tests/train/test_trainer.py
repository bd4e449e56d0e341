"""End-to-end behaviour of the loop on a tiny random Llama: accumulation, resume, saving."""


import pytest
import torch

from float64_bounds import assert_float64_close
from tiny import random_pairs, tiny_llama
from trainer_helpers import plain_trainer as make_trainer
from preftune.config import load_config
from preftune.train.metrics import read_jsonl
from preftune.train.trainer import Trainer


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["cpo-simpo", "dpo", "sampo", "orpo"])
def test_accumulation_equals_one_large_batch(tmp_path, tokenizer, method):
    """2 micro-batches x 4 accumulation steps == 8 pairs in one batch, in float64 (the bound
    holds on any CPU: tests/float64_bounds.py)."""
    big = make_trainer(tmp_path, tokenizer, "--method", method, "--max_steps", "3",
                       "--per_device_train_batch_size", "8", name="big",
                       model=tiny_llama(vocab_size=1000).double())
    small = make_trainer(tmp_path, tokenizer, "--method", method, "--max_steps", "3",
                         "--per_device_train_batch_size", "2",
                         "--gradient_accumulation_steps", "4", name="small",
                         model=tiny_llama(vocab_size=1000).double())
    big.train()
    small.train()
    big_log = read_jsonl(tmp_path / "big" / "metrics.jsonl")
    small_log = read_jsonl(tmp_path / "small" / "metrics.jsonl")
    train_big = [r["loss"] for r in big_log if "loss" in r]
    train_small = [r["loss"] for r in small_log if "loss" in r]
    assert len(train_big) == 3
    assert_float64_close(torch.tensor(train_small, dtype=torch.float64),
                         torch.tensor(train_big, dtype=torch.float64), "loss")
    assert_float64_close(weights(small.model), weights(big.model), "weights")


def test_resume_equals_uninterrupted_run(tmp_path, tokenizer):
    args = ["--method", "simpo", "--max_steps", "6", "--per_device_train_batch_size", "4",
            "--save_steps", "3"]
    full = make_trainer(tmp_path, tokenizer, *args, name="full")
    full.train()
    # The interrupted run: stop after step 3's checkpoint, then a fresh process resumes.
    first = make_trainer(tmp_path, tokenizer, *args, "--max_steps", "6", name="cut")
    first.total_steps = 4  # dies during step 4: its checkpoint at step 3 survives
    first.train()
    resumed = make_trainer(tmp_path, tokenizer, *args, "--resume", name="cut",
                           model=tiny_llama(vocab_size=1000, seed=99))
    resumed.train()
    assert resumed.step == 6
    wf, wr = weights(full.model), weights(resumed.model)
    for key in wf:
        assert torch.equal(wf[key], wr[key]), key
    full_losses = [r["loss"] for r in read_jsonl(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    cut_losses = [r["loss"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl") if "loss" in r]
    assert cut_losses == full_losses


def test_training_lowers_the_loss_and_saves_a_loadable_model(tmp_path, tokenizer):
    pairs = random_pairs(16, vocab=1000, seed=1)
    trainer = make_trainer(tmp_path, tokenizer, "--method", "simpo", "--max_steps", "15",
                           "--per_device_train_batch_size", "8", "--eval_steps", "5",
                           pairs=pairs, eval_pairs=pairs[:8])
    result = trainer.train()
    log = read_jsonl(result.output_dir / "metrics.jsonl")
    train = [r for r in log if "loss" in r]
    evals = [r for r in log if "eval_loss" in r]
    assert train[-1]["loss"] < train[0]["loss"] - 0.1
    required = {"step", "epoch", "loss", "rewards/chosen", "rewards/rejected",
                "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
                "lengths/chosen", "lengths/rejected", "grad_norm", "learning_rate",
                "tokens_per_second"}
    assert required <= set(train[0])
    assert {"eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"} <= set(evals[-1])
    assert len(evals) == 3  # steps 5 and 10, then the end
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(result.output_dir)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    card = (result.output_dir / "README.md").read_text()
    assert "simpo" in card and "beta=2" in card
    assert (result.output_dir / "tokenizer_config.json").exists()


def test_nll_metric_only_where_the_objective_has_one(tmp_path, tokenizer):
    with_nll = make_trainer(tmp_path, tokenizer, "--method", "cpo", "--max_steps", "1",
                            "--per_device_train_batch_size", "4", name="cpo")
    without = make_trainer(tmp_path, tokenizer, "--method", "simpo", "--max_steps", "1",
                           "--per_device_train_batch_size", "4", name="simpo")
    assert "nll_loss" in with_nll.train().train_metrics
    assert "nll_loss" not in without.train().train_metrics


def test_reference_free_objectives_build_no_reference(tmp_path, tokenizer):
    from preftune.reference.build import ModelReference

    assert make_trainer(tmp_path, tokenizer, "--method", "simpo").reference is None
    reference_based = make_trainer(tmp_path, tokenizer, "--method", "dpo", name="dpo")
    assert isinstance(reference_based.reference, ModelReference)
    frozen = reference_based.reference.model
    assert frozen is not reference_based.model
    assert not any(p.requires_grad for p in frozen.parameters())


def test_unpaired_kto_trains(tmp_path, tokenizer):
    pairs = random_pairs(16, vocab=1000, unpaired=True)
    trainer = make_trainer(tmp_path, tokenizer, "--method", "kto", "--max_steps", "2",
                           "--per_device_train_batch_size", "8", pairs=pairs)
    metrics = trainer.train().train_metrics
    assert {"rewards/chosen", "rewards/rejected", "kl"} <= set(metrics)
    assert all(isinstance(v, (int, float)) for v in metrics.values())
