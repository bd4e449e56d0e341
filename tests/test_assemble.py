"""One function assembles a run (preftune/assemble.py); the Trainer runs the loop over its
parts, and one scorer serves training's evaluation and preference_metrics alike."""

import json
from dataclasses import fields

import pytest

from shared_paths import ROOT
from tiny import random_pairs, tiny_llama
from trainer_helpers import BASE_ARGS, make_trainer
from preftune.assemble import RunParts, assemble
from preftune.config import load_config
from preftune.evaluation.metrics import preference_metrics
from preftune.reference.build import ModelReference
from preftune.train.metrics import MetricWindow
from preftune.train.scoring import rank_batches
from preftune.train.trainer import Trainer

DEMO_TRAIN = ROOT / "src" / "preftune" / "demo" / "train.jsonl"


def test_assemble_returns_the_parts_of_a_run(tmp_path, tokenizer):
    config = load_config(None, ["--output_dir", str(tmp_path / "run"), *BASE_ARGS,
                                "--method", "dpo", "--max_steps", "2"])
    parts = assemble(config, model=tiny_llama(vocab_size=1000), tokenizer=tokenizer,
                     train_pairs=random_pairs(8, vocab=1000), log=lambda *_: None)
    try:
        assert isinstance(parts, RunParts) and parts.method.objective.name == "dpo"
        assert isinstance(parts.reference, ModelReference)
        assert parts.reference.model is not parts.model
        assert parts.total_steps == 2 and parts.plan.global_batch == 4
        assert parts.eval_pairs == [] and len(parts.train_pairs) == 8
        assert parts.lock.held  # from before anything loaded until training ends
    finally:
        parts.lock.release()


def test_the_trainers_parts_are_the_assembled_ones_and_read_only(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, "--max_steps", "1")
    for part in fields(RunParts):
        assert getattr(trainer, part.name) == getattr(trainer.parts, part.name)
    with pytest.raises(AttributeError):
        trainer.plan = None  # a different plan is passed in: Trainer(..., plan=...)
    trainer.lock.release()


def test_eval_pairs_handed_in_join_pairs_built_from_the_config(tmp_path, tokenizer):
    """The demo's way: its held-out pairs are the run's eval pairs, nothing patched in."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(DEMO_TRAIN.read_text().splitlines(keepends=True)[:8]))
    held_out = random_pairs(3, vocab=1000)
    config = load_config(None, ["--output_dir", str(tmp_path / "run"), *BASE_ARGS,
                                "--dataset_name", str(data), "--max_steps", "1"])
    trainer = Trainer(config, model=tiny_llama(), tokenizer=tokenizer, eval_pairs=held_out,
                      log=lambda *_: None)
    assert trainer.eval_pairs is held_out and len(trainer.train_pairs) == 8
    trainer.lock.release()


def test_training_evaluation_and_preference_metrics_share_the_scorer(tmp_path, tokenizer):
    held_out = random_pairs(10, vocab=1000, seed=5)
    config = load_config(None, ["--output_dir", str(tmp_path / "run"), *BASE_ARGS,
                                "--method", "simpo", "--per_device_eval_batch_size", "3"])
    trainer = Trainer(config, model=tiny_llama(vocab_size=1000), tokenizer=tokenizer,
                      train_pairs=random_pairs(8, vocab=1000), eval_pairs=held_out,
                      log=lambda *_: None)
    in_run = trainer.evaluate()
    alone = preference_metrics(trainer.model, held_out, trainer.method, trainer.forward,
                               batch_size=3)
    assert in_run["eval_rewards/accuracies"] == alone["reward_accuracy"]
    assert in_run["eval_rewards/margins"] == pytest.approx(alone["reward_margin"], abs=1e-6)
    assert in_run["eval_nll/chosen"] == pytest.approx(alone["nll_chosen"], abs=1e-6)
    trainer.lock.release()


@pytest.mark.parametrize("pairs,batch,world", [(7, 2, 3), (1, 4, 2), (9, 3, 2), (8, 2, 4)])
def test_every_rank_scores_the_same_number_of_batches(pairs, batch, world):
    """FSDP and ZeRO-3 gather weights inside each forward pass, on every rank at once; the
    counted batches still cover each pair exactly once."""
    per_rank = [rank_batches(pairs, batch, rank, world) for rank in range(world)]
    assert len({len(batches) for batches in per_rank}) == 1
    counted = sorted(i for batches in per_rank for batch_, kept in batches if kept
                     for i in batch_)
    assert counted == list(range(pairs))


def test_a_checkpoint_is_a_model_folder(tmp_path, tokenizer):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from preftune.train.checkpoint import MANIFEST_FILE, verify_checkpoint

    trainer = make_trainer(tmp_path, tokenizer, "--max_steps", "1")
    trainer.train_step(MetricWindow())
    folder = trainer.save_checkpoint()
    listed = json.loads((folder / MANIFEST_FILE).read_text())["files"]
    assert {"config.json", "tokenizer_config.json", "preftune_config.yaml"} <= set(listed)
    assert verify_checkpoint(folder) is None
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    saved = load_file(folder / "model.safetensors")
    state = loaded.state_dict()
    for name, tensor in saved.items():
        assert (state[name] == tensor).all(), name
    assert load_config(str(folder / "preftune_config.yaml")).method.method == "cpo-simpo"
    trainer.lock.release()


def test_weights_named_as_ddp_names_them_load_under_the_models_names(tmp_path):
    """A checkpoint written by several DDP processes names its weights ``module.*`` (the
    wrapper's names); ``preftune eval`` loads it as the model all the same."""
    import torch
    from safetensors.torch import save_file

    from preftune.model_io import load_model

    model = tiny_llama(vocab_size=1000)
    model.config.save_pretrained(tmp_path)
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    # As accelerate saves them: a tied head once, under the embedding's name.
    save_file({f"module.{k}": v.clone() for k, v in model.state_dict().items()
               if not (tied and k == "lm_head.weight")}, str(tmp_path / "model.safetensors"))
    loaded = load_model(str(tmp_path)).state_dict()
    assert tied  # the case that needs tying again
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
