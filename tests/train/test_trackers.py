"""report_to: the rows of metrics.jsonl reach the trackers; a missing package is a ConfigError."""

import importlib.util
import math

import pytest

from tiny import random_pairs, tiny_llama
from preftune.config import load_config
from preftune.errors import ConfigError
from preftune.train.metrics import read_jsonl
from preftune.train.trackers import accelerator_options, flat_config, parse_report_to
from preftune.train.trainer import Trainer


def test_report_to_spellings():
    assert parse_report_to(None) == []
    assert parse_report_to("none") == []
    assert parse_report_to("") == []
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'"):
        parse_report_to("tensorbord")


def test_missing_tracker_package_names_the_package():
    missing = [n for n in ("wandb", "mlflow", "trackio") if importlib.util.find_spec(n) is None]
    if not missing:
        pytest.skip("wandb, mlflow and trackio are all installed; none is missing to test with")
    name = missing[0]
    with pytest.raises(ConfigError, match=f"{name} needs its package: pip install {name}"):
        parse_report_to(f"tensorboard,{name}")
    config = load_config(None, ["--report_to", name, "--method", "simpo",
                                "--output_dir", "unused"])
    # Raised while the trainer is being built, before any data or model is touched.
    with pytest.raises(ConfigError, match=f"pip install {name}"):
        Trainer(config, log=lambda *_: None)


def test_flat_config_is_scalars_only():
    config = load_config(None, ["--learning_rate", "3e-4", "--report_to", "none",
                                "--column_mapping", "{prompt: question}"])
    flat = flat_config(config)
    assert flat["training/learning_rate"] == 3e-4
    assert flat["data/column_mapping"] == "{'prompt': 'question'}"
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_flat_config_gives_each_hyperparameter_its_own_key():
    flat = flat_config(load_config(None, ["--method", "simpo", "--beta", "2.5"]))
    assert flat["method/beta"] == 2.5 and "method/hyperparameters" not in flat


def read_scalars(folder):
    """tag -> [(step, value)] from every TensorBoard event file under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return scalars


def test_tensorboard_receives_the_rows_of_metrics_jsonl(tmp_path, tokenizer):
    pytest.importorskip("tensorboard", reason="pip install tensorboard to test report_to")
    out = tmp_path / "run"
    config = load_config(None, [
        "--output_dir", str(out), "--method", "simpo", "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--logging_steps", "1", "--eval_steps", "2",
        "--learning_rate", "1e-3", "--progress_bar", "false", "--report_to", "tensorboard"])
    assert accelerator_options(config.training)["log_with"] == ["tensorboard"]
    pairs = random_pairs(12, vocab=1000)
    Trainer(config, model=tiny_llama(vocab_size=1000), tokenizer=tokenizer, train_pairs=pairs,
            eval_pairs=pairs[:4], log=lambda *_: None).train()
    rows = read_jsonl(out / "metrics.jsonl")
    scalars = read_scalars(out / "runs")
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3]
    assert [s for s, _ in scalars["eval_loss"]] == [r["step"] for r in evals] == [2, 3]
    for name in ("loss", "rewards/margins", "rewards/accuracies", "tokens_per_second"):
        logged = [v for _, v in scalars[name]]
        # TensorBoard stores float32.
        assert logged == pytest.approx([r[name] for r in train], rel=1e-6), name
    assert [v for _, v in scalars["eval_rewards/margins"]] == pytest.approx(
        [r["eval_rewards/margins"] for r in evals], rel=1e-6)
    assert not any(math.isnan(v) for _, v in scalars["loss"])
