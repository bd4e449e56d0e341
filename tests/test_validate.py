"""Every refused config value ends ``preftune train`` with exit code 2 and a message naming
the key, before any tokenizer, row or model is read, within seconds (preftune/validation.py).

The runs go through the real command line in-process (``preftune.cli.main``), with the
loaders replaced by functions that fail the test if reached; a base config that passes
validation is shown to reach them, so the refusals really happen before them.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from shared_paths import ROOT
from preftune import setup
from preftune.cli import main
from preftune.config import load_config
from preftune.errors import ConfigError
from preftune.validation import cuda_available, validate


class Loaded(Exception):
    """Raised by a loader: the run got past validation."""


@pytest.fixture
def base(tmp_path, monkeypatch) -> list[str]:
    """A valid command line, and loaders that raise :class:`Loaded` if reached."""
    def reached(what):
        def loader(*_, **__):
            raise Loaded(what)
        return loader

    monkeypatch.setattr(setup, "build_tokenizer", reached("tokenizer"))
    monkeypatch.setattr(setup, "build_pairs", reached("data"))
    monkeypatch.setattr(setup, "build_model", reached("model"))
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    return ["train", "--method", "simpo", "--dataset_name", str(data),
            "--output_dir", str(tmp_path / "out"), "--progress_bar", "false"]


def test_the_base_config_passes_and_reaches_the_loaders(base):
    with pytest.raises(Loaded, match="tokenizer"):
        main(base)


NO_CUDA_FLASH = cuda_available() and importlib.util.find_spec("flash_attn") is not None
BNB_RUNS = cuda_available() and importlib.util.find_spec("bitsandbytes") is not None

# (extra arguments, the key the message must name)
REFUSED = [
    (["--beta", "0"], "beta"),
    (["--beta", "-1"], "beta"),
    (["--label_smoothing", "0.5"], "label_smoothing"),
    (["--label_smoothing", "-0.1"], "label_smoothing"),
    (["--simpo_gamma", "-1"], "simpo_gamma"),
    (["--gamma_beta_ratio", "-0.5"], "gamma_beta_ratio"),
    (["--gamma", "1", "--simpo_gamma", "2"], "gamma"),
    (["--desirable_weight", "2"], "desirable_weight"),
    (["--method", "dpo", "--simpo_gamma", "0.5"], "simpo_gamma"),
    (["--method", "ppo"], "method"),
    (["--loss_type", "simpo"], "loss_type"),
    (["--cpo_alpha", "-1"], "cpo_alpha"),
    (["--optim", "adamw_apex"], "optim"),
    pytest.param(["--optim", "paged_adamw_8bit"], "optim",
                 marks=pytest.mark.skipif(BNB_RUNS, reason="bitsandbytes runs here")),
    (["--torch_dtype", "bfloat16", "--optim", "sgd"], "optim"),
    (["--lr_scheduler_type", "cosine_schedule"], "lr_scheduler_type"),
    (["--lr_scheduler_type", "reduce_lr_on_plateau"], "lr_scheduler_type"),
    (["--eval_strategy", "epochs"], "eval_strategy"),
    (["--save_strategy", "sometimes"], "save_strategy"),
    (["--per_device_train_batch_size", "0"], "per_device_train_batch_size"),
    (["--per_device_eval_batch_size", "0"], "per_device_eval_batch_size"),
    (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps"),
    (["--learning_rate", "0"], "learning_rate"),
    (["--warmup_ratio", "1.5"], "warmup_ratio"),
    (["--num_train_epochs", "0"], "num_train_epochs"),
    (["--max_steps", "0"], "max_steps"),
    (["--max_steps", "many"], "max_steps"),
    (["--logging_steps", "0"], "logging_steps"),
    (["--eval_steps", "0"], "eval_steps"),
    (["--save_total_limit", "0"], "save_total_limit"),
    (["--adam_beta2", "1"], "adam_beta2"),
    (["--max_consecutive_nonfinite", "0"], "max_consecutive_nonfinite"),
    (["--rounds", "0"], "rounds"),
    (["--report_to", "comet"], "report_to"),
    (["--fast_attention", "fastest"], "fast_attention"),
    (["--max_length", "256", "--max_prompt_length", "512"], "max_prompt_length"),
    (["--max_prompt_length", "1024"], "max_prompt_length"),
    (["--data_format", "pairs"], "data_format"),
    (["--column_mapping", "{question: prompt}"], "column_mapping"),
    (["--eval_fraction", "1"], "eval_fraction"),
    (["--dataset_name", "missing.jsonl"], "dataset_name"),
    (["--eval_dataset", "missing/eval.jsonl"], "eval_dataset"),
    (["--dataset_name", "", "--dataset_mixer", "{missing.jsonl: 1.0}"], "dataset_mixer"),
    (["--dataset_name", ""], "dataset_name"),
    (["--model_name_or_path", "./no-such-model"], "model_name_or_path"),
    (["--tokenizer_name_or_path", "/no/such/tokenizer"], "tokenizer_name_or_path"),
    (["--chat_template", "templates/chat.jinja"], "chat_template"),
    (["--torch_dtype", "float8"], "torch_dtype"),
    (["--torch_dtype", "float16"], "torch_dtype"),
    pytest.param(["--attn_implementation", "flash_attention_2"], "attn_implementation",
                 marks=pytest.mark.skipif(NO_CUDA_FLASH, reason="flash attention runs here")),
    pytest.param(["--use_flash_attention_2", "true"], "attn_implementation",
                 marks=pytest.mark.skipif(NO_CUDA_FLASH, reason="flash attention runs here")),
    (["--attn_implementation", "fastest"], "attn_implementation"),
    (["--lora_dropout", "1"], "lora_dropout"),
    (["--lora_r", "0"], "lora_r"),
    (["--merge_lora", "true"], "merge_lora"),
    (["--load_in_4bit", "true"], "load_in_4bit"),
    # Reference settings on a method that does not use them.
    (["--ref_model", "smollm2"], "ref_model"),
    (["--precompute_ref_log_probs", "true"], "precompute_ref_log_probs"),
    (["--reference_free", "true"], "reference_free"),
    (["--method", "dpo", "--reference_free", "true", "--ref_model", "smollm2"], "ref_model"),
    (["--method", "", "--loss_type", "sigmoid", "--ref_model", "smollm2"], "ref_model"),
    # Unknown keys name the key meant, in TRL's spelling.
    (["--model", "smollm2"], "model_name_or_path"),
    (["--dataset", "x.jsonl"], "dataset_name"),
]


@pytest.mark.parametrize("extra, key", REFUSED, ids=lambda v: " ".join(v) if isinstance(
    v, list) else v)
def test_refused_value_exits_2_naming_the_key_before_loading(base, capsys, extra, key):
    start = time.perf_counter()
    code = main(base + extra)  # a Loaded exception here would mean it got past validation
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert key in err, err
    assert seconds < 5


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 2
    assert "--config" in capsys.readouterr().err


def test_a_refusal_from_the_shell_imports_no_model_code(tmp_path):
    """``python -m preftune.cli`` as users run it: exit 2 with the key named, and
    transformers (which every tokenizer and model load goes through) never imported."""
    probe = ("import sys; from preftune.cli import main; code = main(sys.argv[1:]); "
             "assert 'transformers' not in sys.modules, 'transformers imported'; "
             "sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe, "train", "--method", "dpo", "--beta",
                           "0", "--dataset_name", "trl-lib/ultrafeedback_binarized",
                           "--output_dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr
    assert "beta" in done.stderr and "must be > 0" in done.stderr
    assert seconds < 5


def test_max_prompt_length_defaults_to_half_of_max_length():
    config = load_config(None, ["--max_length", "256"])
    assert config.data.max_prompt_length is None and config.data.prompt_limit == 128
    assert load_config(None, ["--max_prompt_length", "100"]).data.prompt_limit == 100


def test_validate_leaves_out_what_the_caller_hands_in():
    """A Trainer given its pairs and model does not read dataset_name or load weights."""
    config = load_config(None, ["--method", "simpo", "--torch_dtype", "float16"])
    validate(config, loads_data=False, loads_model=False)
    with pytest.raises(ConfigError, match="no data"):
        validate(config, loads_model=False)
    with pytest.raises(ConfigError, match="torch_dtype float16"):
        validate(config, loads_data=False)


def test_the_default_prompt_budget_cuts_long_prompts_instead_of_dropping_rows(tokenizer):
    """HH-RLHF at max_length 256: a prompt budget of 512 (the old default) leaves no room
    for the completion of rows with long prompts, which are dropped; the default now is
    half of max_length, so those prompts are cut from the left and every row is kept."""
    from shared_paths import HH_RLHF, require
    from preftune.data import load_rows, tokenize_rows

    rows = load_rows(str(require(HH_RLHF)), "train")[:300]
    _, old = tokenize_rows(rows, tokenizer, max_length=256, max_prompt_length=512,
                           skip_bad_rows=True)
    assert old.dropped_too_long > 0
    lines = []
    config = load_config(None, ["--method", "simpo", "--dataset_name", str(HH_RLHF),
                                "--max_length", "256", "--max_train_samples", "300",
                                "--skip_bad_rows", "true"])  # a few empty final turns
    pairs, _ = setup.build_pairs(config, tokenizer, validate(config, loads_model=False),
                                 log=lines.append)
    assert "dropped" not in lines[0] and "truncated 0 prompts" not in lines[0]
    assert len(pairs) == old.pairs_out + old.dropped_too_long
    assert all(len(p.prompt_ids) <= 128 for p in pairs)


def test_lora_target_modules_the_model_lacks_are_a_config_error(tmp_path, tokenizer):
    """Known only once the model is loaded: refused then, naming the key, not a traceback."""
    pytest.importorskip("peft")
    from tiny import random_pairs, tiny_llama
    from preftune.train.trainer import Trainer

    config = load_config(None, ["--method", "simpo", "--use_peft", "true",
                                "--lora_target_modules", "[attention_block]",
                                "--output_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="lora_target_modules \\['attention_block'\\]"):
        Trainer(config, model=tiny_llama(vocab_size=1000), tokenizer=tokenizer,
                train_pairs=random_pairs(4), log=lambda *_: None)
