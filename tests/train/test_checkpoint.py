"""Checkpoint files: partial writes are never resumed from, re-saving a step is safe.
(A resume with other settings: test_resume_rules.py.)"""


from trainer_helpers import make_trainer
from preftune.runfolder import LOCK_FILE
from preftune.train.checkpoint import STATE_FILE, latest_checkpoint, remove_partial


def test_partial_writes_are_ignored_then_removed(tmp_path):
    for name in ("checkpoint-2", ".checkpoint-3.tmp", ".checkpoint-1.old", "checkpoint-4"):
        (tmp_path / name).mkdir()
    for name in ("checkpoint-2", ".checkpoint-3.tmp", ".checkpoint-1.old"):
        (tmp_path / name / STATE_FILE).write_text("{}")
    # checkpoint-4 has no state file: its write never finished.
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert remove_partial(tmp_path) == [".checkpoint-1.old", ".checkpoint-3.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_saving_a_step_again_replaces_it_whole(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, "--max_steps", "2", "--save_total_limit", "1")
    first = trainer.save_checkpoint()
    (first / "stale-file").write_text("from the first write")
    assert trainer.save_checkpoint() == first
    assert not (first / "stale-file").exists()
    trainer.step = 1
    trainer.save_checkpoint()
    # Beside the lock the trainer holds on its folder until it has trained.
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, "checkpoint-1"]
