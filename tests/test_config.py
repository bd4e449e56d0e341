import pytest

from preftune.config import ConfigError, build_config, load_config, parse_overrides
from preftune.objectives.method import resolve_method

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"
SIMPO_FILE = FIXTURES / "repository_configs" / "simpo" / "llama-3-8b-instruct-simpo.yaml"
CPO_SIMPO_FILE = (FIXTURES / "repository_configs" / "cpo_simpo"
                  / "llama-3-8b-instruct-cpo-simpo.yaml")


def test_cli_overrides_fill_typed_fields():
    config = load_config(None, ["--beta", "2.5", "--learning_rate=3e-7", "--bf16",
                                "--max_steps", "12", "--column_mapping", "{prompt: question}",
                                "--method", "simpo"])
    beta = config.method.hyperparameters["beta"]
    assert beta == 2.5 and isinstance(beta, float)
    assert config.training.learning_rate == 3e-7
    assert config.training.bf16 is True
    assert config.training.max_steps == 12
    assert config.data.column_mapping == {"prompt": "question"}


def test_yaml_then_cli_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: dpo\nbeta: 0.1\ntraining:\n  learning_rate: 1.0e-6\n")
    config = load_config(str(recipe), ["--beta", "0.3"])
    assert config.method.method == "dpo"
    assert config.method.hyperparameters["beta"] == 0.3
    assert config.training.learning_rate == 1e-6


def test_unknown_key_fails_with_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        build_config({"learnig_rate": 1e-6})
    with pytest.raises(ConfigError, match="did you mean 'simpo_gamma'"):
        load_config(None, ["--simpo_gama", "0.5"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="max_steps"):
        build_config({"max_steps": "many"})
    with pytest.raises(ConfigError, match="bf16"):
        build_config({"bf16": 3})


def test_bare_flag_is_true_and_positional_is_rejected():
    assert parse_overrides(["--resume"]) == {"resume": "true"}
    with pytest.raises(ConfigError):
        parse_overrides(["stray"])


def test_simpo_repository_yaml_runs_unchanged():
    config = load_config(str(SIMPO_FILE))
    resolved = resolve_method(config.method)
    assert resolved.objective.name == "simpo"
    assert resolved.hparams["beta"] == 2.5
    # gamma = gamma_beta_ratio x beta = 0.55 x 2.5
    assert resolved.hparams["gamma"] == pytest.approx(1.375)
    assert resolved.nll_weight == 0.0
    assert config.data.dataset_mixer == {"princeton-nlp/llama3-ultrafeedback": 1.0}
    assert config.model.attn_implementation == "flash_attention_2"
    assert config.training.eval_strategy == "steps"
    assert "log_level" in config.ignored and "preprocessing_num_workers" in config.ignored


def test_cpo_simpo_repository_yaml_runs_unchanged():
    config = load_config(str(CPO_SIMPO_FILE))
    resolved = resolve_method(config.method)
    assert resolved.objective.name == "cpo-simpo"
    assert resolved.hparams["beta"] == 10 and resolved.hparams["gamma"] == 5.4
    assert resolved.nll_weight == 0.05


@pytest.mark.parametrize("loss_type, alpha, expected, reference_free", [
    ("sigmoid", None, "cpo", False),     # TRL CPOConfig: cpo_alpha defaults to 1.0
    ("sigmoid", 0.0, "cpo", False),
    ("simpo", 0.0, "simpo", False),
    ("simpo", None, "cpo-simpo", False),
    ("simpo", 0.05, "cpo-simpo", False),
    ("hinge", 0.0, "hinge", True),       # TRL's CPO trainer has no reference model
    ("ipo", 0.0, "ipo", True),
])
def test_loss_type_resolves_like_trl_cpo_config(loss_type, alpha, expected, reference_free):
    args = ["--loss_type", loss_type] + ([] if alpha is None else ["--cpo_alpha", str(alpha)])
    resolved = resolve_method(load_config(None, args).method)
    assert resolved.objective.name == expected
    assert resolved.reference_free is reference_free
    assert resolved.nll_weight == (1.0 if alpha is None else alpha)


def test_simpo_margin_spellings_agree():
    for args in (["--gamma", "1.25"], ["--simpo_gamma", "1.25"], ["--gamma_beta_ratio", "0.5"]):
        resolved = resolve_method(load_config(None, ["--method", "simpo", "--beta", "2.5", *args]).method)
        assert resolved.hparams["gamma"] == pytest.approx(1.25)
    with pytest.raises(ConfigError, match="conflicting"):
        resolve_method(load_config(None, ["--method", "simpo", "--beta", "2", "--simpo_gamma", "1",
                                          "--gamma_beta_ratio", "0.8"]).method)


def test_sft_weight_is_cpo_alpha():
    resolved = resolve_method(load_config(None, ["--method", "dpo", "--sft_weight", "0.2"]).method)
    assert resolved.nll_weight == 0.2
    with pytest.raises(ConfigError):
        resolve_method(load_config(None, ["--method", "dpo", "--sft_weight", "0.2",
                                          "--cpo_alpha", "0.3"]).method)


def test_margin_on_objective_without_one_is_an_error():
    with pytest.raises(ConfigError, match="no margin"):
        resolve_method(load_config(None, ["--method", "dpo", "--simpo_gamma", "0.5"]).method)


def test_no_method_is_an_error():
    with pytest.raises(ConfigError, match="--method"):
        resolve_method(load_config(None, []).method)


# -- YAML aliases: bounded expansion ------------------------------------------------------

def laughs(levels: int) -> str:
    """A "billion laughs" recipe: level 0 lists 9 strings, each next level 9 aliases of the
    one before."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, levels):
        lines.append(f"l{k}: &l{k} [" + ",".join([f"*l{k - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_quickly(tmp_path):
    import time

    recipe = tmp_path / "laughs.yaml"
    recipe.write_text(laughs(9))
    assert len(recipe.read_bytes()) < 500  # a few hundred bytes
    # Values counted at each use: a level of size s_k = 1 + 9 s_(k-1) from s_0 = 10 gives
    # 10, 91, 820, 7381, 66430, 597871, 5380840, 48427561, 435848050; the mapping adds
    # itself, its 9 keys and those: 1 + 9 + 490,329,054.
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"{recipe}: YAML aliases expand to 490,329,064 "
                                          "values, past the limit of 100,000"):
        load_config(str(recipe))
    assert time.perf_counter() - start < 0.5


def test_expansion_limit_counts_every_use(tmp_path, monkeypatch):
    import preftune.config as config_module

    # 1 (outer list) + 3 uses x (1 list + 2 numbers) = 10 values.
    document = "[&x [1, 2], *x, *x]"
    monkeypatch.setattr(config_module, "MAX_YAML_VALUES", 10)
    assert config_module._safe_yaml(document, "doc") == [[1, 2], [1, 2], [1, 2]]
    monkeypatch.setattr(config_module, "MAX_YAML_VALUES", 9)
    with pytest.raises(ConfigError, match="doc: YAML aliases expand to 10 values"):
        config_module._safe_yaml(document, "doc")


def test_aliases_in_a_command_line_value_are_bounded():
    flow = "{" + laughs(7).strip().replace("\n", ", ") + "}"
    with pytest.raises(ConfigError, match="column_mapping: YAML aliases expand to"):
        load_config(None, ["--column_mapping", flow])


@pytest.mark.parametrize("document", ["a: &a [1, *a]\n", "a: &a {b: *a}\n"])
def test_recursive_alias_is_refused(tmp_path, document):
    recipe = tmp_path / "loop.yaml"
    recipe.write_text(document)
    with pytest.raises(ConfigError, match="refers to the value that contains it"):
        load_config(str(recipe))


def test_deep_nesting_is_a_config_error():
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(None, ["--column_mapping", "[" * 5000 + "]" * 5000])


def test_anchors_reused_normally_still_work(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: dpo\n"
                      "learning_rate: &lr 1e-6\n"
                      "adam_epsilon: *lr\n"
                      "max_length: &len 512\n"
                      "max_prompt_length: *len\n"
                      "dataset_mixer: {a.jsonl: &half 0.5, b.jsonl: *half}\n")
    config = load_config(str(recipe))
    assert config.training.learning_rate == 1e-6 and config.training.adam_epsilon == 1e-6
    assert config.data.max_length == 512 and config.data.max_prompt_length == 512
    assert config.data.dataset_mixer == {"a.jsonl": 0.5, "b.jsonl": 0.5}


# -- hyperparameters: declared by the objectives, read by the config ------------------------

def test_loss_type_ipo_with_a_reference_model_is_dpo_trainers_ipo():
    """TRL's DPOTrainer reads loss_type ipo against its reference model, with no NLL term;
    its CPOTrainer (no reference model) adds cpo_alpha 1.0 NLL and has no reference."""
    with_reference = resolve_method(load_config(None, ["--loss_type", "ipo"]).method, "smollm2")
    assert with_reference.objective.name == "ipo" and with_reference.needs_reference
    assert with_reference.nll_weight == 0.0 and "DPOTrainer" in with_reference.note
    alone = resolve_method(load_config(None, ["--loss_type", "ipo"]).method)
    assert not alone.needs_reference and alone.nll_weight == 1.0
    assert "CPOTrainer" in alone.note


def test_a_dumped_config_loads_back_the_same(tmp_path):
    from preftune.config import dump_config

    config = load_config(None, ["--method", "simpo", "--beta", "2.5", "--gamma_beta_ratio",
                                "0.55", "--max_length", "256"])
    dump_config(config, tmp_path / "preftune_config.yaml")
    text = (tmp_path / "preftune_config.yaml").read_text()
    assert "  hyperparameters:\n    beta: 2.5\n    gamma_beta_ratio: 0.55\n" in text
    assert load_config(str(tmp_path / "preftune_config.yaml")).to_dict() == config.to_dict()


def test_a_null_hyperparameter_is_unset():
    config = load_config(None, ["--beta", "2", "--beta", "null"])
    assert config.method.hyperparameters == {}


def test_resume_compares_hyperparameters_one_by_one():
    from preftune.train.resume import run_differences

    def state(**given):
        return {"config": {"method": {"method": "simpo", "hyperparameters": given}}}

    assert run_differences(state(beta=2.0), state(beta=2.0)) == []
    assert run_differences(state(beta=2.0), state(beta=2.0, gamma=1.0)) == [
        "gamma: None -> 1.0"]
    assert run_differences(state(simpo_gamma=1.0), state(gamma=1.0)) == [
        "gamma: None -> 1.0", "simpo_gamma: 1.0 -> None"]


@pytest.mark.parametrize("typed, meant", [("model", "model_name_or_path"),
                                          ("dataset", "dataset_name"),
                                          ("lr_scheduler", "lr_scheduler_type"),
                                          ("gradient_accumulation", "gradient_accumulation_steps"),
                                          ("simpo_gama", "simpo_gamma"),
                                          ("label_smoothin", "label_smoothing")])
def test_unknown_keys_suggest_trl_spellings(typed, meant):
    with pytest.raises(ConfigError, match=f"unknown key '{typed}' \\(did you mean '{meant}'"):
        load_config(None, [f"--{typed}", "1"])


def test_the_repository_yamls_pass_validation_where_they_can_run():
    """The CPO-SimPO one does; the SimPO one asks for flash attention, which needs CUDA
    and flash-attn (and wandb): refused on a machine without them, by name."""
    from preftune.validation import cuda_available, validate

    validate(load_config(str(CPO_SIMPO_FILE)))
    if not cuda_available():
        with pytest.raises(ConfigError, match="attn_implementation flash_attention_2"):
            validate(load_config(str(SIMPO_FILE),
                                 ["--report_to", "none"]))
