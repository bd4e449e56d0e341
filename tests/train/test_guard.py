"""Non-finite steps are skipped whole, logged with their rows, and stop the run after
``max_consecutive_nonfinite`` in a row, keeping the last good state (preftune/train/guard.py).

NaN is injected for real: a forward hook on the tiny model's embedding poisons any batch
holding a marker token (one pair carries it), or a gradient hook makes one parameter's
gradient infinite while the loss stays finite."""

import json

import pytest
import torch
from safetensors.torch import load_file

from trainer_helpers import assert_same, make_trainer, snapshot
from preftune.errors import TrainingStopped
from preftune.train.metrics import MetricWindow, read_jsonl

MARK = 1  # random_pairs draws ids from 3 up (2 pads): only the marked pair holds 1


def poison_marked_rows(model):
    def hook(module, inputs, output):
        return output * float("nan") if (inputs[0] == MARK).any() else output

    return model.get_input_embeddings().register_forward_hook(hook)


def mark_pair_of_step(trainer, step: int, micro_batch: int = 0) -> list[int]:
    """Marks the first pair of one micro-batch of ``step`` (0-based); returns the example
    ids of the whole step."""
    micro = trainer.plan.micro_batches(step, 0)
    trainer.train_pairs[micro[micro_batch][0]].prompt_ids[0] = MARK
    return sorted(trainer.train_pairs[i].example_id for batch in micro for i in batch)


@pytest.mark.parametrize("case", ["nan loss", "nan loss, 1 of 2 micro-batches", "inf grad"])
def test_nonfinite_step_changes_no_weight_and_no_optimizer_state(tmp_path, tokenizer, case):
    accumulation = "2" if "micro" in case else "1"
    trainer = make_trainer(tmp_path, tokenizer, "--max_steps", "4",
                           "--gradient_accumulation_steps", accumulation)
    handle = None
    if case == "inf grad":
        weight = trainer.model.model.norm.weight
    else:
        mark_pair_of_step(trainer, step=1)
        handle = poison_marked_rows(trainer.model)
    window = MetricWindow()
    assert trainer.train_step(window)
    before, logged = snapshot(trainer), dict(window.sums)
    if case == "inf grad":
        handle = weight.register_hook(lambda grad: grad * float("inf"))

    assert trainer.train_step(window) is False
    assert_same(before, snapshot(trainer))
    assert all(p.grad is None for p in trainer.model.parameters())
    assert window.sums == logged  # the skipped step's metrics are not averaged in
    assert trainer.step == 2 and trainer.skips.consecutive == 1
    handle.remove()

    assert trainer.train_step(window)
    after = snapshot(trainer)
    assert not torch.equal(after["weights"]["model.norm.weight"],
                           before["weights"]["model.norm.weight"])
    # AdamW counted 2 steps, not 3; the schedule moved once more, not twice.
    assert {float(s["step"]) for s in after["optimizer"]["state"].values()} == {2.0}
    assert after["scheduler"]["last_epoch"] == before["scheduler"]["last_epoch"] + 1
    assert trainer.skips.consecutive == 0


def test_skipped_step_is_logged_with_its_rows(tmp_path, tokenizer, capsys):
    trainer = make_trainer(tmp_path, tokenizer, "--max_steps", "4")
    rows = mark_pair_of_step(trainer, step=1)
    poison_marked_rows(trainer.model)
    result = trainer.train()
    assert result.steps == 4
    log = read_jsonl(tmp_path / "metrics.jsonl")
    skipped = [r for r in log if r.get("nonfinite_step_skipped")]
    assert skipped == [{"step": 2, "nonfinite_step_skipped": True, "grad_norm": "nan",
                        "consecutive_skips": 1, "rows": rows,
                        "reason": "non-finite loss or gradient"}]
    assert [r["step"] for r in log if "loss" in r] == [1, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log if "loss" in r)
    err = capsys.readouterr().err
    assert f"step 2 skipped: non-finite loss or gradient (rows {rows}); 1 in a row" in err


def test_consecutive_nonfinite_steps_stop_with_the_last_good_state(tmp_path, tokenizer):
    run = tmp_path / "run"
    trainer = make_trainer(run, tokenizer, "--max_steps", "6",
                           "--max_consecutive_nonfinite", "2")
    # Every step after the first overflows.
    trainer.model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: output * float("inf") if trainer.step >= 1 else output)
    reference = make_trainer(tmp_path / "ref", tokenizer, "--max_steps", "6")
    reference.train_step(MetricWindow())
    good = snapshot(reference)

    with pytest.raises(TrainingStopped) as stopped:
        trainer.train()
    assert stopped.value.exit_code == 3
    assert stopped.value.checkpoint == run / "checkpoint-1"
    message = str(stopped.value)
    assert "2 optimizer steps in a row" in message and "steps 2-3" in message
    assert "after step 1" in message and "--resume" in message

    checkpoint = run / "checkpoint-1"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 1
    saved = load_file(checkpoint / "model.safetensors")  # tied lm_head saved once
    assert_same({k: good["weights"][k] for k in saved}, saved)
    assert_same(good["optimizer"], torch.load(checkpoint / "optimizer.bin", weights_only=True))
    assert_same(good["scheduler"], torch.load(checkpoint / "lr_scheduler.pt", weights_only=True))

    resumed = make_trainer(run, tokenizer, "--max_steps", "6", "--resume")
    assert resumed.train().steps == 6
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r] == list(
        range(1, 7))
