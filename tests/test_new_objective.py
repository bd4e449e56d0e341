"""A new objective with a new hyperparameter needs its own file and a registry line only:
this file declares one (``toy``, with ``temperature_scale``) and trains it from the
command line, with nothing changed in preftune's config or method code."""

from typing import Mapping

import pytest
import torch.nn.functional as F

from crash_helpers import tiny_run_files
from preftune.cli import main
from preftune.config import load_config
from preftune.objectives import REGISTRY, HyperParameter, Objective, register
from preftune.objectives.interval import POSITIVE
from preftune.train.metrics import read_jsonl
from preftune.types import ObjectiveTerms, ReducedLogps

SEEN: list[float] = []


def toy_loss(reduced: ReducedLogps, hparams: Mapping[str, float]) -> ObjectiveTerms:
    """``-log sigma(s [avg(y_w) - avg(y_l)])``: SimPO without a margin, s the scale."""
    scale = hparams["temperature_scale"]
    SEEN.append(scale)
    return ObjectiveTerms(losses=-F.logsigmoid(scale * (reduced.chosen - reduced.rejected)),
                          chosen_rewards=(scale * reduced.chosen).detach(),
                          rejected_rewards=(scale * reduced.rejected).detach())


TOY = Objective(
    name="toy", paper="none (a test objective)", equation="-log sigma(s [avg(y_w) - avg(y_l)])",
    needs_reference=False, paired=True, reduction="mean", loss_fn=toy_loss,
    hyperparameters=(HyperParameter("temperature_scale", 1.0, "scale s of the log-prob margin",
                                    POSITIVE, aliases=("toy_scale",)),))


@pytest.fixture
def toy():
    """``toy`` registered for one test (other tests count the registry's objectives)."""
    register(TOY)
    SEEN.clear()
    yield TOY
    del REGISTRY["toy"]


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    return tiny_run_files(tmp_path_factory.mktemp("toy"))


def train_args(run_files, output_dir, *extra) -> list[str]:
    model_dir, data = run_files
    return ["train", "--model_name_or_path", str(model_dir), "--dataset_name", str(data),
            "--method", "toy", "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--learning_rate", "1e-2", "--logging_steps", "1", "--max_length", "32",
            "--save_strategy", "no", "--progress_bar", "false", "--output_dir",
            str(output_dir), *extra]


def test_the_new_hyperparameter_reaches_the_loss_from_the_command_line(toy, run_files,
                                                                       tmp_path):
    out = tmp_path / "run"
    assert main(train_args(run_files, out, "--temperature_scale", "0.5")) == 0
    assert SEEN and set(SEEN) == {0.5}
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    # The logged reward is s x the mean log-prob: divided by s = 0.5 it is a mean log-prob,
    # negative and near log(1/64) = -4.2 for a random model over a 64-token vocabulary.
    assert all(-10 < r["rewards/chosen"] / 0.5 < 0 for r in rows)
    # The dumped config holds the value and loads back to the same settings.
    dumped = load_config(str(out / "preftune_config.yaml"))
    assert dumped.method.hyperparameters == {"temperature_scale": 0.5}
    assert dumped.to_dict() == load_config(None, train_args(run_files, out, "--temperature_scale",
                                                            "0.5")[1:]).to_dict()


def test_an_alias_and_the_default_work(toy, run_files, tmp_path):
    assert main(train_args(run_files, tmp_path / "a", "--toy_scale", "2")) == 0
    assert set(SEEN) == {2.0}
    SEEN.clear()
    assert main(train_args(run_files, tmp_path / "b")) == 0
    assert set(SEEN) == {1.0}


def test_its_bounds_and_its_owner_are_checked(toy, run_files, tmp_path, capsys):
    assert main(train_args(run_files, tmp_path / "a", "--temperature_scale", "0")) == 2
    assert "temperature_scale" in capsys.readouterr().err and not SEEN
    assert main(train_args(run_files, tmp_path / "b", "--method", "simpo",
                           "--temperature_scale", "0.5")) == 2
    err = capsys.readouterr().err
    assert "temperature_scale: simpo has no scale s of the log-prob margin; toy takes it" in err


def test_help_and_methods_list_it(toy, capsys):
    assert main(["train", "--help"]) == 0
    assert "--temperature_scale FLOAT (default 1 (toy); > 0)" in capsys.readouterr().out
    assert main(["methods"]) == 0
    assert "--temperature_scale 1 (> 0; also toy_scale): scale s" in capsys.readouterr().out


def test_unregistered_it_is_an_unknown_key(capsys):
    assert main(["train", "--temperature_scale", "0.5"]) == 2
    assert "unknown key 'temperature_scale'" in capsys.readouterr().err


def test_a_spelling_that_is_already_a_config_key_is_refused():
    clash = Objective(name="clash", paper="", equation="", needs_reference=False, paired=True,
                      reduction="mean", loss_fn=toy_loss,
                      hyperparameters=(HyperParameter("seed", 1.0, "a seed"),))
    with pytest.raises(ValueError, match=r"\['seed'\] are config keys"):
        register(clash)
    assert "clash" not in REGISTRY
