"""`preftune eval` on what a run saved: the run's folder and its checkpoint folders are
scored as the run trained (its objective, its reference), by the scorer training's
evaluation uses, so the numbers equal the training log's last evaluation."""

import json

import pytest

from shared_paths import ROOT
from preftune.cli import main

DEMO_TRAIN = ROOT / "src" / "preftune" / "demo" / "train.jsonl"
TRAIN = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
         "--max_length", "128", "--progress_bar", "false", "--per_device_eval_batch_size", "4"]


def train_run(folder, model_dir, *args):
    rows = DEMO_TRAIN.read_text().splitlines(keepends=True)
    (folder / "train.jsonl").write_text("".join(rows[:16]))
    (folder / "heldout.jsonl").write_text("".join(rows[16:22]))
    out = folder / "out"
    assert main(["train", "--model_name_or_path", str(model_dir), "--dataset_name",
                 str(folder / "train.jsonl"), "--eval_dataset", str(folder / "heldout.jsonl"),
                 "--output_dir", str(out), *TRAIN, *args]) == 0
    return out


def evaluate(model, data, out, *args) -> dict:
    assert main(["eval", str(model), "--data", str(data), "--output_dir", str(out),
                 "--max_new_tokens", "0", "--progress_bar", "false", *args]) == 0
    return json.loads((out / "eval.json").read_text())["preference"]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("dpo-run")
    return folder, train_run(folder, tiny_model_dir, "--method", "dpo", "--beta", "0.2")


def test_a_run_folder_is_scored_as_the_run_trained(dpo_run, tiny_model_dir, capsys):
    folder, out = dpo_run
    capsys.readouterr()
    got = evaluate(out, folder / "heldout.jsonl", folder / "eval")
    printed = capsys.readouterr().out
    assert got["method"].startswith("dpo (beta=0.2")
    assert f"reference: {tiny_model_dir} (the model the run started from)" in printed
    final = json.loads((out / "final_metrics.json").read_text())
    assert got["pairs"] == 6
    assert got["reward_accuracy"] == final["eval_rewards/accuracies"]
    assert got["reward_margin"] == pytest.approx(final["eval_rewards/margins"], abs=1e-6)
    assert got["nll_chosen"] == pytest.approx(final["eval_nll/chosen"], abs=1e-6)


def test_a_checkpoint_folder_scores_like_the_model_it_holds(dpo_run):
    folder, out = dpo_run
    from_run = evaluate(out, folder / "heldout.jsonl", folder / "eval-run")
    from_checkpoint = evaluate(out / "checkpoint-2", folder / "heldout.jsonl",
                               folder / "eval-checkpoint")
    assert from_checkpoint == from_run  # the last step's checkpoint holds the final model


def test_the_command_line_replaces_the_runs_objective(dpo_run):
    folder, out = dpo_run
    got = evaluate(out, folder / "heldout.jsonl", folder / "eval-simpo", "--method", "simpo")
    assert got["method"].startswith("simpo (")


def test_a_lora_run_is_referenced_against_the_base_under_its_adapters(
        tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("peft")
    out = train_run(tmp_path, tiny_model_dir, "--method", "dpo", "--use_peft", "--lora_r", "4")
    capsys.readouterr()
    got = evaluate(out, tmp_path / "heldout.jsonl", tmp_path / "eval")
    assert "reference: the base model under the LoRA adapters" in capsys.readouterr().out
    final = json.loads((out / "final_metrics.json").read_text())
    assert got["reward_margin"] == pytest.approx(final["eval_rewards/margins"], abs=1e-5)
