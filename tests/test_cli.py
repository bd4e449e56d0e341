"""The command line and the shipped recipes."""

import json
import math

import pytest

from shared_paths import HH_RLHF, ROOT, require
from preftune.cli import main
from preftune.config import ConfigError, load_config
from preftune.objectives import REGISTRY
from preftune.objectives.method import resolve_method

# Installed with the package; `recipes/` in a checkout points here.
RECIPE_DIR = ROOT / "src" / "preftune" / "recipes"
RECIPES = sorted(RECIPE_DIR.rglob("*.yaml"))


def test_methods_lists_every_objective(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name, objective in REGISTRY.items():
        assert f"\n{name}\n" in f"\n{out}"
        assert objective.paper in out
    assert out.count("reference:  yes") == sum(o.needs_reference for o in REGISTRY.values())


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_parses_and_names_its_command(recipe):
    first_lines = recipe.read_text().splitlines()[:6]
    assert any("preftune" in line and "train --config" in line for line in first_lines)
    resolve_method(load_config(str(recipe)).method)


def test_one_recipe_per_method():
    stems = {p.stem for p in RECIPES}
    assert set(REGISTRY) <= stems


def test_recipes_lists_every_bundled_recipe(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [p.relative_to(RECIPE_DIR).with_suffix("").as_posix() for p in RECIPES]
    assert [line.split()[0] for line in lines] == sorted(names)
    simpo = next(line for line in lines if line.split()[0] == "simpo")
    assert "SimPO, Llama-3-8B-Instruct" in simpo


def test_config_finds_a_bundled_recipe_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here, as for an installed preftune
    from_file = load_config(str(RECIPE_DIR / "simpo.yaml"))
    assert load_config("simpo") == from_file == load_config("recipes/simpo.yaml")
    assert load_config("cpu/simpo-hh-rlhf") == load_config(str(RECIPE_DIR / "cpu" /
                                                               "simpo-hh-rlhf.yaml"))
    with pytest.raises(ConfigError, match="preftune recipes"):
        load_config("simpo-v3")


def test_unknown_key_exits_with_a_message(capsys):
    assert main(["train", "--learnig_rate", "1e-6"]) == 2
    assert "did you mean 'learning_rate'" in capsys.readouterr().err


def test_bad_row_exits_naming_row_and_field(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
            {"prompt": "3+3?", "chosen": "6", "rejected": "6"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["train", "--method", "simpo", "--dataset_name", str(data),
                 "--output_dir", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "row 1" in err and "'rejected'" in err and "--skip_bad_rows" in err


def test_hh_rlhf_at_256_tokens_has_only_finite_losses(tmp_path, tokenizer):
    """TRL's CPO trainer logs NaN here from the first step (empty completions after
    truncation); preftune cuts prompts first and drops rows that cannot fit."""
    from preftune.train.trainer import Trainer
    from tiny import tiny_llama

    config = load_config(None, [
        "--method", "simpo", "--dataset_name", str(require(HH_RLHF)), "--max_length", "256",
        "--max_prompt_length", "200", "--skip_bad_rows", "--max_train_samples", "40",
        "--per_device_train_batch_size", "4", "--max_steps", "5", "--logging_steps", "1",
        "--learning_rate", "1e-3", "--output_dir", str(tmp_path), "--progress_bar", "false"])
    trainer = Trainer(config, model=tiny_llama(), tokenizer=tokenizer, log=lambda *_: None)
    assert all(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= 256
               and p.chosen_ids and p.rejected_ids for p in trainer.train_pairs)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 5
    for record in records:
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in record.values()), record


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_passes_validation(recipe):
    from preftune.validation import validate

    validate(load_config(str(recipe)), loads_data=False)


def test_version_and_an_unknown_command(capsys):
    from preftune import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"preftune {__version__}"
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian' (did you mean 'train'?)" in err
    assert "train, methods, demo, eval, judge, pairs, report" in err


def test_train_help_lists_every_key(capsys):
    import dataclasses

    from preftune.config import SECTIONS
    from preftune.objectives import hyperparameter_spellings

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    keys = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)
            if f.name != "hyperparameters"] + list(hyperparameter_spellings())
    missing = [key for key in keys if f"\n  --{key} " not in out]
    assert not missing
    assert "  --learning_rate FLOAT (default 1e-06; > 0)\n      Peak learning rate.\n" in out
    assert "  --eval_strategy STR (default steps; steps | epoch | no)\n" in out


def test_every_key_is_documented_and_docs_config_md_is_current():
    """docs/config.md is generated (python -m preftune.config_docs docs/config.md)."""
    import dataclasses

    from preftune.config import FIELDS, SECTIONS
    from preftune.config_docs import field_docs, markdown
    from preftune.validation import BOUNDS, CHOICES

    for cls in SECTIONS.values():
        docs = field_docs(cls)
        assert [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)] == []
    assert set(BOUNDS) | set(CHOICES) <= set(FIELDS)
    assert (ROOT / "docs" / "config.md").read_text() == markdown(), \
        "regenerate with: python -m preftune.config_docs docs/config.md"
