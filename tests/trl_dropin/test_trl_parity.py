"""TRL 1.16's own first-step metrics equal preftune's through the drop-in, on the same
batch: SimPO through CPOTrainer, DPO (with its sft term) through DPOTrainer.

One step over all rows (batch = every row, so the order cannot matter), a tiny float32
Llama, a word tokenizer both tokenize alike (trl_helpers). The logged numbers are computed
before the update, so they compare the loss, the rewards, the log-probs and the gradient.
Skipped where TRL is not installed."""

import copy
import warnings

import pytest

from tiny import tiny_llama
from trl_helpers import preference_rows, word_tokenizer_without_bos

ROWS = 6
SETTINGS = dict(max_steps=1, per_device_train_batch_size=ROWS, logging_steps=1, bf16=False,
                gradient_checkpointing=False, report_to="none", learning_rate=1e-3,
                save_strategy="no", max_length=64, disable_tqdm=True)
COMPARED = ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
            "rewards/margins", "logps/chosen", "logps/rejected", "nll_loss")


def first_step(trainer_class, config_class, model, ref_model, output_dir, **options):
    from datasets import Dataset

    kwargs = {"ref_model": copy.deepcopy(ref_model)} if ref_model is not None else {}
    trainer = trainer_class(model=copy.deepcopy(model), args=config_class(
        output_dir=str(output_dir), **SETTINGS, **options), processing_class=
        word_tokenizer_without_bos(), train_dataset=Dataset.from_list(preference_rows(ROWS)),
        **kwargs)
    trainer.train()
    return trainer.state.log_history[0]


def assert_same_metrics(theirs: dict, ours: dict) -> None:
    # TRL's CPOTrainer logs nll_loss 0 without the NLL term; preftune leaves it out.
    shared = [key for key in COMPARED if key in theirs and key in ours]
    assert {"loss", "grad_norm", "rewards/margins", "logps/chosen"} <= set(shared)
    for key in shared:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4, rel=1e-4), key


def test_simpo_through_cpo_trainer_matches_trl(tmp_path):
    pytest.importorskip("trl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOConfig, CPOTrainer
    from preftune import trl as drop_in

    model = tiny_llama(vocab_size=64, layers=1, hidden=32)
    options = dict(loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=0.5)
    theirs = first_step(CPOTrainer, CPOConfig, model, None, tmp_path / "trl", **options)
    ours = first_step(drop_in.CPOTrainer, drop_in.CPOConfig, model, None, tmp_path / "ours",
                      **options)
    assert_same_metrics(theirs, ours)
    assert theirs["rewards/margins"] != 0.0


def test_dpo_through_dpo_trainer_matches_trl(tmp_path):
    trl = pytest.importorskip("trl")
    from preftune import trl as drop_in

    # A reference other than the policy: the first step's rewards are then not all 0.
    model, reference = (tiny_llama(vocab_size=64, layers=1, hidden=32, seed=s) for s in (0, 1))
    options = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], beta=0.5)
    theirs = first_step(trl.DPOTrainer, trl.DPOConfig, model, reference, tmp_path / "trl",
                        **options)
    ours = first_step(drop_in.DPOTrainer, drop_in.DPOConfig, model, reference,
                      tmp_path / "ours", **options)
    assert_same_metrics(theirs, ours)
    assert theirs["rewards/margins"] != 0.0
