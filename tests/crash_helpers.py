"""Real ``python -m preftune.cli train`` processes on a tiny model saved to disk, for
tests that kill them: a word-level tokenizer and a 64-token Llama make a step and a
checkpoint take milliseconds, so a run is mostly process start-up."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("what is the answer to this question yes no maybe good bad fine thanks "
         "hello world a b c d e f g h i j k l m n o p").split()


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def tiny_run_files(folder: Path, rows: int = 24) -> tuple[Path, Path]:
    """(model folder, data file): a saved tiny Llama with its tokenizer, and preference rows."""
    import random

    from tiny import tiny_llama

    model_dir = folder / "tiny-model"
    tiny_llama(vocab_size=64, layers=1, hidden=32).save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    rng = random.Random(0)
    data = folder / "pairs.jsonl"
    with data.open("w") as handle:
        for _ in range(rows):
            def text(n):
                return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, n)))
            handle.write(json.dumps({"prompt": text(8), "chosen": text(6),
                                     "rejected": text(6)}) + "\n")
    return model_dir, data


def plain_args(model_dir: Path, data: Path, output_dir: Path, steps: int) -> list[str]:
    """A run with the default checkpoint settings (by time and at the last step)."""
    return ["--model_name_or_path", str(model_dir), "--dataset_name", str(data),
            "--method", "simpo", "--max_steps", str(steps), "--per_device_train_batch_size",
            "2", "--learning_rate", "1e-2", "--warmup_ratio", "0.2", "--logging_steps", "1",
            "--max_length", "32", "--max_prompt_length", "16", "--progress_bar", "false",
            "--seed", "3", "--output_dir", str(output_dir)]


def train_args(model_dir: Path, data: Path, output_dir: Path, steps: int) -> list[str]:
    """A checkpoint after every step, the newest two kept."""
    return plain_args(model_dir, data, output_dir, steps) + ["--save_steps", "1",
                                                              "--save_total_limit", "2"]


def launch(args: list[str], env: dict | None = None, preexec_fn=None) -> subprocess.Popen:
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    environment = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1",
                   "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "preftune.cli", "train", *args],
                            cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=preexec_fn)


def run(args: list[str], env: dict | None = None, timeout: float = 300.0,
        preexec_fn=None) -> tuple[int, str]:
    """(exit code, stdout and stderr) of a whole run; killed past ``timeout``."""
    process = launch(args, env, preexec_fn)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise TimeoutError(f"still running after {timeout:.0f} s:\n{process.communicate()[0]}")
    return process.returncode, output


def wait_until(predicate, process: subprocess.Popen, timeout: float = 180.0) -> bool:
    """Polls every 5 ms; False if the process ended first (successfully: a failed run
    fails the test with its output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            output = process.stdout.read()
            assert process.returncode == 0, output
            return predicate()
        time.sleep(0.005)
    process.kill()
    raise TimeoutError(f"no progress in {timeout:.0f} s:\n{process.communicate()[0]}")


def logged_steps(output_dir: Path) -> int:
    path = output_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"loss"' in line)


def final_weights(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(output_dir / "model.safetensors")


def losses(output_dir: Path) -> list[tuple[int, float]]:
    from preftune.train.metrics import read_jsonl

    return [(r["step"], r["loss"]) for r in read_jsonl(output_dir / "metrics.jsonl")
            if "loss" in r]


def assert_same_run(output_dir: Path, reference: Path) -> None:
    """The final weights bit for bit, and the logged losses of every step, as the
    reference run's."""
    import torch

    expected, got = final_weights(reference), final_weights(output_dir)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert losses(output_dir) == losses(reference)


def tree(folder: Path) -> dict[str, bytes | None]:
    """Relative path -> bytes of every file, None for every folder, under ``folder``: two
    snapshots are equal when nothing was written, removed or made there."""
    return {path.relative_to(folder).as_posix(): None if path.is_dir() else path.read_bytes()
            for path in sorted(folder.rglob("*"))}


def strict_json(text: str):
    """``json.loads`` that refuses ``NaN`` and ``Infinity``, as JSON parsers other than
    Python's do."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)
