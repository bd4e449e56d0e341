"""Pre-flight checks fail a run before any heavy work, with a message saying what to change.

The command-line tests point at a model folder holding a config and a tokenizer but no
weights: a check that came after the model load would fail there, differently."""

import json

import pytest

from crash_helpers import WORDS, word_tokenizer
from preftune.cli import main
from preftune.errors import ConfigError
from preftune.preflight import (check_output_dir, check_tokenizer, check_vocabularies,
                                checkpoint_bytes, local_parameter_bytes, model_vocab_size,
                                offline_when_local)

ROW = {"prompt": "what is the answer", "chosen": "yes", "rejected": "no"}


@pytest.fixture(scope="module")
def weightless(tmp_path_factory):
    """A model folder with config.json (vocabulary 64) and a tokenizer, without weights."""
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("weightless")
    LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def train(tmp_path, model, rows, *extra):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return main(["train", "--model_name_or_path", str(model), "--dataset_name", str(data),
                 "--method", "simpo", "--output_dir", str(tmp_path / "out"), *extra])


def test_unknown_columns_fail_before_the_model_loads(tmp_path, weightless, capsys):
    assert train(tmp_path, weightless, [{"question": "q", "answer": "a"}] * 3) == 2
    err = capsys.readouterr().err
    assert "cannot recognise the data format from columns ['answer', 'question']" in err


def test_messages_without_a_chat_template_fail_before_tokenizing(tmp_path, weightless, capsys):
    user = {"role": "user", "content": "what is the answer"}
    rows = [{"prompt": [user], "chosen": "yes", "rejected": "no"}]
    assert train(tmp_path, weightless, rows) == 2
    assert "need a chat template, and the tokenizer has none" in capsys.readouterr().err


def test_missing_dataset_and_model_folders(tmp_path, weightless, capsys):
    assert main(["train", "--model_name_or_path", str(weightless), "--dataset_name",
                 str(tmp_path / "nope.jsonl"), "--method", "simpo"]) == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="model folder /nonexistent/model does not exist"):
        model_vocab_size("/nonexistent/model")


def test_tokenizer_with_more_ids_than_the_embedding_table(tmp_path, weightless, capsys):
    assert train(tmp_path, weightless, [ROW], "--tokenizer_name_or_path", "smollm2") == 2
    assert ("token ids run up to 49151 (the tokenizer's) but the model's embedding table has "
            "64 rows") in capsys.readouterr().err


def test_reference_with_another_vocabulary(tmp_path, weightless, capsys):
    from transformers import LlamaConfig

    other = tmp_path / "other"
    LlamaConfig(vocab_size=80).save_pretrained(other)
    assert model_vocab_size(str(other)) == 80
    assert train(tmp_path, weightless, [ROW], "--method", "dpo", "--ref_model", str(other)) == 2
    assert "ref_model has a vocabulary of 80 tokens, the policy 64" in capsys.readouterr().err
    check_vocabularies(len(WORDS) + 4, 64, 64)  # a matching pair passes


def test_output_dir_must_be_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="output_dir .*a-file/run is not writable"):
        check_output_dir(blocker / "run")


def test_output_dir_must_hold_two_checkpoints_and_the_final_model(tmp_path):
    import shutil

    free = shutil.disk_usage(tmp_path).free
    check_output_dir(tmp_path, need_bytes=free // 2)
    with pytest.raises(ConfigError,
                       match="GiB free; 2 checkpoints and the final model need about"):
        check_output_dir(tmp_path, need_bytes=free + 2 ** 40)


def test_checkpoint_size_estimate_from_safetensors_headers(tmp_path):
    from tiny import tiny_llama

    model = tiny_llama(vocab_size=64, layers=1, hidden=32)
    model.save_pretrained(tmp_path)
    # Tied embeddings are saved once, as parameters() counts them.
    assert local_parameter_bytes(str(tmp_path)) == (model.num_parameters(), 4)


def test_checkpoint_size_estimate_counts_two_checkpoints_and_the_export():
    """Two checkpoints are on disk while the second is written; the export is weights only.

    1000 float32 weights, all training: a checkpoint holds 4 kB of weights and 8 kB of
    AdamW moments (2 x 4 bytes): 2 x 12 kB + 4 kB = 28 kB.
    1000 bf16 weights, all training: 2 kB of weights, 8 kB of float32 moments and 4 kB of
    float32 master weights: 2 x 14 kB + 2 kB = 30 kB.
    1000 bf16 weights under LoRA (adapters' optimizer state left out): 2 x 2 kB + 2 kB."""
    assert checkpoint_bytes(1000, 4) == 28_000
    assert checkpoint_bytes(1000, 2) == 30_000
    assert checkpoint_bytes(1000, 2, full_optimizer=False) == 6_000
    assert checkpoint_bytes(1000, 4, full_optimizer=False) == 12_000


def test_tokenizer_without_eos():
    tokenizer = word_tokenizer()
    tokenizer.eos_token = None
    with pytest.raises(ConfigError, match="no eos_token"):
        check_tokenizer(tokenizer)


def test_offline_only_when_every_input_is_local(tmp_path):
    from preftune.config import load_config

    local = load_config(None, ["--model_name_or_path", "smollm2", "--dataset_name",
                               str(tmp_path)])
    environ = {}
    assert offline_when_local(local, environ)
    assert environ == {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       "HF_HUB_DISABLE_TELEMETRY": "1"}
    hub_data = load_config(None, ["--dataset_name", "trl-lib/ultrafeedback_binarized"])
    environ = {}
    assert not offline_when_local(hub_data, environ) and "HF_HUB_OFFLINE" not in environ
    pushed = load_config(None, ["--dataset_name", str(tmp_path), "--push_to_hub"])
    assert not offline_when_local(pushed, {})
    environ = {"HF_HUB_OFFLINE": "0"}  # the user's choice stands
    offline_when_local(local, environ)
    assert environ["HF_HUB_OFFLINE"] == "0"


def test_run_logs_the_space_the_checkpoints_and_the_export_need(tmp_path):
    """A float32 model passed in, all weights training: 12 bytes a weight per checkpoint
    (weights, two AdamW moments) and 4 for the final model; save_total_limit 2 keeps two
    checkpoints and writes a third before removing the oldest."""
    from tiny import tiny_llama
    from preftune.config import load_config
    from preftune.preflight import check_run

    model = tiny_llama(vocab_size=64, layers=1, hidden=32)
    lines = []
    check_run(load_config(None, ["--output_dir", str(tmp_path)]), word_tokenizer(),
              model=model, log=lines.append)
    gib = model.num_parameters() * (3 * 12 + 4) / 2 ** 30
    assert lines == [(f"pre-flight: output_dir writable; 3 checkpoints and the final model "
                      f"need about {gib:.2f} GiB")]
    lines.clear()
    check_run(load_config(None, ["--output_dir", str(tmp_path), "--save_total_limit", "1"]),
              word_tokenizer(), model=model, log=lines.append)
    gib = model.num_parameters() * (2 * 12 + 4) / 2 ** 30
    assert lines == [(f"pre-flight: output_dir writable; 2 checkpoints and the final model "
                      f"need about {gib:.2f} GiB")]
