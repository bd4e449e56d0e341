"""Every training config of the SimPO and CPO-SimPO repositories (tests/fixtures/
repository_configs, keys and values as published) resolves to the objective and
hyperparameters that repository's own trainer would train with:

- princeton-nlp/SimPO's run_simpo.py reads SimPOConfig: loss ``sigmoid`` (its default) is
  SimPO; the margin is ``gamma`` in its earlier files and ``gamma_beta_ratio`` x beta in
  later ones (default ratio 0.25); ``sft_weight`` > 0 adds the NLL term (CPO-SimPO).
- fe1ixxu/CPO_SIMPO's run_cpo.py reads a CPOConfig whose ``cpo_alpha`` defaults to 1.0,
  and its ``simpo`` file is run by run_simpo.py (absolute ``gamma``).
- The SimPO repository's SFT file is run by the alignment handbook's run_sft.py; its
  ``max_seq_length`` is a key only TRL's SFTConfig has.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared_paths import ROOT
from preftune.config import load_config
from preftune.errors import ConfigError
from preftune.objectives.method import resolve_method
from preftune.validation import cuda_available, validate

CONFIGS = Path(__file__).parent / "fixtures" / "repository_configs"

# file -> (objective, beta, gamma, NLL weight); gamma of the SimPO files by hand:
# gemma 0.5 x 10 = 5, llama-3 base 0.5 x 2 = 1, instruct-v2 0.3 x 10 = 3,
# instruct 0.55 x 2.5 = 1.375; the mistral files and CPO_SIMPO's simpo give gamma itself.
EXPECTED = {
    "simpo/gemma-2-9b-it-simpo.yaml": ("simpo", 10.0, 5.0, 0.0),
    "simpo/llama-3-8b-base-simpo.yaml": ("simpo", 2.0, 1.0, 0.0),
    "simpo/llama-3-8b-instruct-simpo-v2.yaml": ("simpo", 10.0, 3.0, 0.0),
    "simpo/llama-3-8b-instruct-simpo.yaml": ("simpo", 2.5, 1.375, 0.0),
    "simpo/mistral-7b-base-simpo.yaml": ("simpo", 2.0, 1.6, 0.0),
    "simpo/mistral-7b-instruct-simpo.yaml": ("simpo", 2.5, 0.3, 0.0),
    "simpo/llama-3-8b-base-sft.yaml": ("sft", None, None, 1.0),
    "cpo_simpo/llama-3-8b-instruct-cpo-simpo.yaml": ("cpo-simpo", 10.0, 5.4, 0.05),
    # loss_type simpo and no cpo_alpha: CPOConfig's default alpha 1.0 makes it CPO-SimPO.
    "cpo_simpo/llama-3-8b-instruct-cpo.yaml": ("cpo-simpo", 2.5, 1.4, 1.0),
    "cpo_simpo/llama-3-8b-instruct-simpo.yaml": ("simpo", 2.5, 1.4, 0.0),
}


def test_every_file_of_both_repositories_is_covered():
    assert sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")) == \
        sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_repository_config_resolves_as_its_trainer_would(name):
    objective, beta, gamma, nll = EXPECTED[name]
    resolved = resolve_method(load_config(str(CONFIGS / name)).method)
    assert resolved.objective.name == objective
    assert resolved.hparams.get("beta") == (pytest.approx(beta) if beta else None)
    assert resolved.hparams.get("gamma") == (pytest.approx(gamma) if gamma else None)
    assert resolved.nll_weight == pytest.approx(nll)


def _local(tmp_path, name: str) -> list[str]:
    """Model and data pointed at local ones; everything else as published."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text(
            '{"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"}\n' * 16)
    args = ["--model_name_or_path", "smollm2", "--dataset_mixer", f"{{{data}: 1.0}}",
            "--dataset_splits", "[train, test]", "--report_to", "none",
            "--output_dir", str(tmp_path / "out")]
    return args


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_repository_config_passes_validation_with_local_model_and_data(tmp_path, name):
    """Flash attention needs CUDA and flash-attn: refused by name elsewhere, and the rest
    of the file valid once another kernel is named."""
    config = load_config(str(CONFIGS / name), _local(tmp_path, name))
    if config.model.attn_implementation == "flash_attention_2" and not cuda_available():
        with pytest.raises(ConfigError, match="attn_implementation flash_attention_2"):
            validate(config)
        config.model.attn_implementation = "sdpa"
    assert validate(config).objective.name == EXPECTED[name][0]


def test_a_simpo_repository_file_with_its_hinge_loss_is_refused_by_name(tmp_path):
    cfg = tmp_path / "hinge.yaml"
    cfg.write_text("beta: 2.0\ngamma_beta_ratio: 0.5\nloss_type: hinge\n")
    with pytest.raises(ConfigError, match="SimPO repository's keys .* hinge variant"):
        resolve_method(load_config(str(cfg)).method)


def test_a_simpo_repository_file_without_a_margin_takes_its_default_ratio(tmp_path):
    cfg = tmp_path / "plain.yaml"
    cfg.write_text("beta: 10\nsft_weight: 0.0\n")
    resolved = resolve_method(load_config(str(cfg)).method)
    # SimPOConfig's gamma_beta_ratio default, 0.25, x beta 10.
    assert (resolved.objective.name, resolved.hparams["gamma"]) == ("simpo", 2.5)


def test_a_model_revision_on_a_local_folder_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    config = load_config(None, ["--method", "sft", "--model_name_or_path", str(folder),
                                "--model_revision", "v2"])
    with pytest.raises(ConfigError, match="model_revision 'v2' names a hub revision"):
        validate(config, loads_data=False)


@pytest.mark.slow
def test_the_cpo_simpo_file_trains_unchanged_but_for_model_and_data(tmp_path):
    """As a user runs it: its own process (the file asks for bf16, which accelerate fixes
    once per process)."""
    name = "cpo_simpo/llama-3-8b-instruct-cpo-simpo.yaml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "preftune.cli", "train", "--config", str(CONFIGS / name),
         *_local(tmp_path, name), "--max_steps", "1", "--max_length", "64",
         "--max_prompt_length", "32", "--progress_bar", "false"],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("method: cpo-simpo ("))
    assert line.startswith("method: cpo-simpo (beta=10, gamma=5.4, label_smoothing=0, "
                           "nll_weight=0.05)"), line
    assert (tmp_path / "out" / "model.safetensors").exists()
