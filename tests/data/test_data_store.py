"""Tokenized pairs in the on-disk cache: the same pairs as tokenize_rows, from a list, a stream
or two worker processes; reused on a second run; a new key for any changed input; one
tokenization shared by two ranks."""

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from preftune.data import DataError, tokenize_rows
from preftune.data.prepare import TokenCache, tokenize_to_store
from preftune.data.store import ChainedPairs, TokenizedPairs, pair_lengths
from preftune.data.tokenize import ChunkTokenizer, TokenizeSettings
from preftune.reference.cache import digest_pairs, fingerprint_pairs

SETTINGS = TokenizeSettings(max_length=24, max_prompt_length=12)


def rows(n: int) -> list[dict]:
    """``n`` distinct pairs; every 7th prompt is long enough to be cut (12 of ~20 tokens)
    and every 11th chosen completion too (24 - prompt)."""
    out = []
    for i in range(n):
        prompt = f"Question {i}: " + ("why is the sky blue today " * 3 if i % 7 == 0 else "hi")
        chosen = f" Answer {i}" + (" with many more words than fit here" * 2 if i % 11 == 0
                                   else "")
        out.append({"prompt": prompt, "chosen": chosen, "rejected": f" No {i}."})
    return out


def reference(data, tokenizer, settings=SETTINGS):
    return tokenize_rows(data, tokenizer, max_length=settings.max_length,
                         max_prompt_length=settings.max_prompt_length,
                         data_format=settings.data_format, skip_bad_rows=settings.skip_bad_rows,
                         unpaired=settings.unpaired)


def stored(data, tokenizer, folder, settings=SETTINGS, **kwargs):
    logs = []
    pairs, report = tokenize_to_store(data, tokenizer, settings, cache=TokenCache(folder),
                                      log=logs.append, **kwargs)
    return pairs, report, logs


@pytest.mark.parametrize("unpaired", [False, True])
def test_the_store_holds_exactly_the_pairs_tokenize_rows_gives(tokenizer, tmp_path, unpaired):
    """Several chunks (7 rows each), KTO's split (all chosen halves first, the rejected
    half of row i numbered 50 + i, each mismatched completion the next example's)."""
    data = rows(50)
    settings = TokenizeSettings(24, 12, unpaired=unpaired)
    expected, expected_report = reference(data, tokenizer, settings)
    pairs, report, _ = stored(data, tokenizer, tmp_path, settings, chunk_rows=7)
    assert isinstance(pairs, TokenizedPairs) and len(pairs) == len(expected) == 50 * (1 + unpaired)
    assert list(pairs) == expected
    assert pairs[-1] == expected[-1] and pairs[3:6] == expected[3:6]
    assert list(pairs.lengths) == [p.num_tokens for p in expected] == pair_lengths(pairs)
    assert report.summary() == expected_report.summary()
    assert report.prompts_truncated == 8 * (1 + unpaired)  # rows 0, 7, ..., 49 (x2: KTO)
    assert list(pickle.loads(pickle.dumps(pairs))) == expected
    assert fingerprint_pairs(pairs) == digest_pairs(expected)  # kept beside the store
    assert fingerprint_pairs(TokenizedPairs(pairs.folder)) == digest_pairs(expected)
    with pytest.raises(IndexError):
        pairs[len(pairs)]


def test_the_prompt_cut_is_counted_per_row(tokenizer, tmp_path):
    """rows 0, 7, ..., 49: 8 long prompts cut from the left to 12 tokens."""
    pairs, report, _ = stored(rows(50), tokenizer, tmp_path, chunk_rows=7)
    assert report.prompts_truncated == 8
    assert [len(pairs[i].prompt_ids) for i in (0, 7, 1)] == [12, 12, len(pairs[1].prompt_ids)]


def test_unpaired_rows_round_trip(tokenizer, tmp_path):
    data = [{"prompt": f"Q{i}?", "completion": f" A{i}.", "label": i % 3 == 0}
            for i in range(30)]
    settings = TokenizeSettings(24, 12, unpaired=True)
    pairs, _, _ = stored(data, tokenizer, tmp_path, settings, chunk_rows=4)
    assert list(pairs) == reference(data, tokenizer, settings)[0]
    assert [p.label for p in pairs] == [i % 3 == 0 for i in range(30)]


def test_a_second_run_reads_the_cache_and_tokenizes_nothing(tokenizer, tmp_path, monkeypatch):
    data = rows(20)
    first, _, logs = stored(data, tokenizer, tmp_path)
    assert logs == [f"tokenized 20 rows into {first.folder}"]

    def refuse(*_):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(ChunkTokenizer, "__call__", refuse)
    second, report, logs = stored([dict(row) for row in data], tokenizer, tmp_path)
    assert logs == [f"tokenized pairs from cache {first.folder}"]
    assert second.folder == first.folder and list(second) == list(first)
    assert report.summary() == first.report.summary()


@pytest.mark.parametrize("change", ["max_length", "max_prompt_length", "skip_bad_rows",
                                    "unpaired", "data_format", "row", "chat_template",
                                    "tokenizer template"])
def test_any_changed_input_is_a_new_key(tokenizer, tmp_path, change):
    data = rows(10)
    first, _, _ = stored(data, tokenizer, tmp_path)
    settings, changed_rows, changed_tokenizer = SETTINGS, [dict(r) for r in data], tokenizer
    if change == "row":
        changed_rows[9]["rejected"] = " Nope."
    elif change == "chat_template":
        settings = TokenizeSettings(24, 12, chat_template="{{ messages }}")
    elif change == "tokenizer template":
        changed_tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
        changed_tokenizer.chat_template = "{{ messages }}"
    else:
        settings = TokenizeSettings(**{**SETTINGS.__dict__, change: {
            "max_length": 30, "max_prompt_length": 10, "skip_bad_rows": True,
            "unpaired": True, "data_format": "standard"}[change]})
    second, _, logs = stored(changed_rows, changed_tokenizer, tmp_path, settings)
    assert second.folder != first.folder and logs[0].startswith("tokenized 10 rows")


def test_two_worker_processes_give_the_pairs_of_one(tokenizer, tmp_path):
    data = rows(60)
    one, one_report, _ = stored(data, tokenizer, tmp_path / "one", chunk_rows=5)
    two, two_report, _ = stored(data, tokenizer, tmp_path / "two", chunk_rows=5, num_proc=2)
    assert list(two) == list(one) == reference(data, tokenizer)[0]
    assert two_report.summary() == one_report.summary()
    assert two.folder.name == one.folder.name  # the key does not depend on num_proc


def test_workers_do_not_wait_on_the_parents_tokenizer_threads(tmp_path):
    """TOKENIZERS_PARALLELISM=true and the tokenizer's thread pool already used in the
    parent: forked workers must still finish (its threads do not survive a fork)."""
    code = ("from preftune.model_io import load_tokenizer\n"
            "from preftune.data.prepare import TokenCache, tokenize_to_store\n"
            "from preftune.data.tokenize import TokenizeSettings\n"
            "tokenizer = load_tokenizer('smollm2')\n"
            "tokenizer(['many words here ' * 50] * 200)\n"
            "rows = [{'prompt': f'Q{i}', 'chosen': ' yes', 'rejected': ' no'} for i in range(400)]\n"
            f"pairs, _ = tokenize_to_store(rows, tokenizer, TokenizeSettings(16), "
            f"cache=TokenCache({str(tmp_path)!r}), num_proc=2, chunk_rows=100)\n"
            "print(len(pairs))\n")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0 and done.stdout.split()[-1] == "400", done.stderr


def test_streamed_rows_give_the_pairs_of_a_list(tokenizer, tmp_path):
    """A generator and a ``datasets.IterableDataset``, read 100 rows at a time (chunks
    are at least the 100 rows the format is detected from)."""
    from datasets import IterableDataset

    data = rows(250)
    listed, report, _ = stored(data, tokenizer, tmp_path / "list", chunk_rows=100)
    streamed, streamed_report, _ = stored((row for row in data), tokenizer,
                                          tmp_path / "gen", chunk_rows=100)
    iterable = IterableDataset.from_generator(lambda: iter(data))
    from_datasets, _, _ = stored(iterable, tokenizer, tmp_path / "ds", num_proc=2,
                                 chunk_rows=100)
    assert list(streamed) == list(from_datasets) == list(listed)
    assert streamed_report.summary() == report.summary()
    assert streamed.folder.name == listed.folder.name  # same rows, same key


@pytest.mark.parametrize("num_proc", [1, 2])
def test_a_bad_row_is_named_by_its_row_in_the_source(tokenizer, tmp_path, num_proc):
    """Bad rows 130 and 250 in chunks of 100: the run stops at row 130 (the first), with
    skipping both are counted, and the pairs are those of the list without them."""
    data = rows(300)
    data[130]["chosen"], data[250] = 7, "not an object"
    with pytest.raises(DataError, match=r"^row 130, field 'chosen'"):
        stored(iter(data), tokenizer, tmp_path / "stop", chunk_rows=100, num_proc=num_proc)
    assert not list((tmp_path / "stop").iterdir())  # nothing half-written is left
    skipping = TokenizeSettings(24, 12, skip_bad_rows=True)
    pairs, report, _ = stored(data, tokenizer, tmp_path / "skip", skipping, chunk_rows=100,
                              num_proc=num_proc)
    expected, expected_report = reference(data, tokenizer, skipping)
    assert sum(report.skipped.values()) == 2 and list(pairs) == expected
    assert report.summary() == expected_report.summary()


def test_chained_pairs_read_as_one_sequence(tokenizer, tmp_path):
    first, _, _ = stored(rows(5), tokenizer, tmp_path)
    extra = reference(rows(8)[5:], tokenizer)[0]
    chained = ChainedPairs(first, extra)
    assert len(chained) == 8 and list(chained) == list(first) + extra
    assert chained[-1] == extra[-1] and chained[4:6] == [first[4], extra[0]]


def test_a_run_from_the_config_reuses_its_tokenized_pairs(tokenizer, tmp_path, monkeypatch):
    """The second run reads no row (keyed by the file's path, size and time and the data
    settings); a changed setting or file is tokenized again. 600 demo rows, eval_fraction
    0.1: 540 + 60; 0.2: 480 + 120; the file without its first 10 rows, 0.2: 472 + 118."""
    from preftune import setup
    from preftune.config import load_config
    from preftune.data import sources
    from preftune.validation import validate

    demo = Path(__file__).resolve().parents[2] / "src" / "preftune" / "demo" / "train.jsonl"
    data_file = tmp_path / "train.jsonl"
    data_file.write_text(demo.read_text())
    config = load_config(None, ["--method", "dpo", "--dataset_name", str(data_file),
                                "--max_length", "64", "--dataset_cache_dir", str(tmp_path / "c"),
                                "--eval_fraction", "0.1", "--dataset_num_proc", "2"])
    method = validate(config, loads_model=False)

    def build() -> list[str]:
        logs = []
        setup.build_pairs(config, tokenizer, method, log=logs.append)
        return [line[:line.index(" into ")] if " into " in line else line
                for line in tokenizing(logs)]

    assert build() == ["tokenized 540 rows", "tokenized 60 rows"]
    read = []
    monkeypatch.setattr(sources, "load_source", lambda *a, **k: read.append(a))
    again = build()
    assert len(again) == 2 and all(line.startswith("tokenized pairs from cache ")
                                   for line in again)
    assert not read
    monkeypatch.undo()
    config.data.eval_fraction = 0.2
    assert build() == ["tokenized 480 rows", "tokenized 120 rows"]
    data_file.write_text("".join(demo.read_text().splitlines(keepends=True)[10:]))
    assert build() == ["tokenized 472 rows", "tokenized 118 rows"]
    config.data.tokenized_cache = False
    assert build() == ["tokenized 472 rows", "tokenized 118 rows"]
    assert len(list((tmp_path / "c").iterdir())) == 6  # nothing added without the cache


def tokenizing(logs: list[str]) -> list[str]:
    return [line for line in logs if line.startswith("tokenized")]


def write_jsonl(path: Path, data: list) -> Path:
    import json

    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n"
                            for row in data))
    return path


def streaming_config(data_file: Path, cache: Path, *extra: str):
    from preftune.config import load_config
    from preftune.validation import validate

    config = load_config(None, ["--method", "dpo", "--dataset_name", str(data_file),
                                "--max_length", "24", "--max_prompt_length", "12",
                                "--dataset_cache_dir", str(cache), *extra])
    return config, validate(config, loads_model=False)


def test_a_streamed_file_gives_the_pairs_of_the_file_read_whole(tokenizer, tmp_path,
                                                                monkeypatch):
    """250 rows streamed from a .jsonl file: the pairs and report of the file read whole;
    a second run finds them by the file's path, size and time without reading the rows
    beyond the pre-flight's first 100."""
    from preftune.data import stream
    from preftune.setup import build_pairs

    data_file = write_jsonl(tmp_path / "pairs.jsonl", rows(250))
    whole_config, method = streaming_config(data_file, tmp_path / "whole")
    whole, _ = build_pairs(whole_config, tokenizer, method, log=lambda *_: None)
    config, _ = streaming_config(data_file, tmp_path / "streamed", "--streaming", "true")
    logs = []
    streamed, _ = build_pairs(config, tokenizer, method, log=logs.append)
    assert isinstance(streamed, TokenizedPairs) and list(streamed) == list(whole)
    read, original = [], stream._FileRows.__iter__
    monkeypatch.setattr(stream._FileRows, "__iter__",
                        lambda self: (read.append(row) or row for row in original(self)))
    again_logs = []
    again, _ = build_pairs(config, tokenizer, method, log=again_logs.append)
    assert list(again) == list(whole)
    assert len(read) <= 101  # the pre-flight look at the first 100 rows, no more
    assert tokenizing(again_logs) == [f"tokenized pairs from cache {streamed.folder}"]
    assert [line for line in again_logs if line.startswith("train data")] == \
        [line for line in logs if line.startswith("train data")]


def test_a_bad_streamed_row_is_named_as_in_the_file(tokenizer, tmp_path):
    """Line 4 of the file (row 3, after one blank line) is not JSON: both readings name it
    alike."""
    from preftune.setup import build_pairs

    data = rows(5)
    data_file = write_jsonl(tmp_path / "pairs.jsonl", data[:2] + [""] + ["{oops"] + data[3:])
    messages = []
    for streaming in ("false", "true"):
        config, method = streaming_config(data_file, tmp_path / streaming, "--streaming",
                                          streaming)
        with pytest.raises(DataError) as error:
            build_pairs(config, tokenizer, method, log=lambda *_: None)
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "line 4 (row 2)" in messages[0]


def test_streaming_refuses_what_needs_every_row_at_once(tmp_path):
    from preftune.data.stream import streamed_rows
    from preftune.errors import ConfigError

    config, _ = streaming_config(write_jsonl(tmp_path / "p.jsonl", rows(3)), tmp_path,
                                 "--streaming", "true", "--eval_fraction", "0.5")
    with pytest.raises(ConfigError, match="eval_fraction"):
        streamed_rows(config.data)
    config.data.eval_fraction, config.data.dataset_name = 0.0, str(tmp_path)
    with pytest.raises(ConfigError, match="one JSON-lines file"):
        streamed_rows(config.data)


def test_an_iterable_dataset_from_python_is_tokenized_as_a_list(tokenizer, tmp_path):
    from datasets import IterableDataset

    from preftune.api import prepare

    data = rows(30)
    options = {"method": "simpo", "max_length": 24, "max_prompt_length": 12,
               "output_dir": str(tmp_path / "out")}
    from tiny import tiny_llama

    streamed = prepare(options, model=tiny_llama(), tokenizer=tokenizer,
                       train_dataset=IterableDataset.from_generator(lambda: iter(data)),
                       log=lambda *_: None)
    listed = prepare(options, model=tiny_llama(), tokenizer=tokenizer, train_dataset=data,
                     log=lambda *_: None)
    assert list(streamed.train_pairs) == list(listed.train_pairs)
    assert len(streamed.train_pairs) == 30


# -- two ranks --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_share_one_tokenization(tmp_path):
    """The main rank tokenizes; the other waits, then reads the main rank's store."""
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
           "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), __file__, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    logs = [(tmp_path / f"rank-{rank}.txt").read_text().splitlines() for rank in (0, 1)]
    folder = tmp_path / "cache"
    (key,) = [p.name for p in folder.iterdir()]
    assert logs[0] == [f"tokenized 40 rows into {folder / key}", "40"]
    assert logs[1] == [f"tokenized pairs from cache {folder / key}", "40"]


def rank_main(folder: Path) -> None:
    from accelerate import PartialState

    from preftune.model_io import load_tokenizer

    state = PartialState(cpu=True)
    logs = []
    pairs, _ = tokenize_to_store(rows(40), load_tokenizer("smollm2"), SETTINGS,
                                 cache=TokenCache(folder / "cache"), log=logs.append)
    (folder / f"rank-{state.process_index}.txt").write_text("\n".join(logs + [str(len(pairs))]))
    state.wait_for_everyone()
    import torch.distributed

    torch.distributed.destroy_process_group()
    os._exit(0)  # gloo's teardown now and then aborts; what is checked is written above


if __name__ == "__main__":
    rank_main(Path(sys.argv[1]))


def test_a_streamed_run_caps_its_eval_file_as_a_whole_read_does(tokenizer, tmp_path):
    from preftune.setup import build_pairs

    train = write_jsonl(tmp_path / "pairs.jsonl", rows(6))
    held_out = write_jsonl(tmp_path / "held_out.jsonl", rows(5))
    counts = []
    for streaming in ("false", "true"):
        config, method = streaming_config(train, tmp_path / streaming, "--streaming",
                                          streaming, "--eval_dataset", str(held_out),
                                          "--max_eval_samples", "2")
        _, eval_pairs = build_pairs(config, tokenizer, method, log=lambda *_: None)
        counts.append(len(eval_pairs))
    assert counts == [2, 2]
