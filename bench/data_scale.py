"""The data phase at scale: rows -> tokenized pairs, preftune against TRL 1.16's DPOTrainer.

    python bench/data_scale.py --case hh --rows 100000              # ~98-token prompts, ~30-token completions
    python bench/data_scale.py --case hh --rows 1000000
    python bench/data_scale.py --case chat --rows 20000             # ~5,000-token conversations
    python bench/data_scale.py --case hh --rows 100000 --num_proc 2 --tools preftune
    python bench/data_scale.py --case hh --rows 1000000 --tools preftune --preftune_modes stream

Each measurement runs in a fresh process (``--measure``), so its peak RSS (the kernel's
VmHWM, main process only) is its own. Per case, for the same synthetic rows (a seeded
JSON-lines file written once under ``--work``):

- preftune, rows read whole (``setup.build_pairs``: read, pre-flight, tokenize into the
  tokenized cache); preftune with ``streaming: true``; TRL: ``datasets.load_dataset("json")``
  then ``DPOTrainer._prepare_dataset`` (its own preprocessing: prompt extraction, EOS,
  tokenization by ``Dataset.map`` with ``dataset_num_proc``), with a fresh
  ``HF_DATASETS_CACHE``;
- each twice: a first run on an empty cache, then a cached run (preftune's tokenized
  cache; TRL's datasets cache);
- data seconds (from rows on disk to pairs ready), seconds to the first batch (plus
  the batch plan and reading the first 8 pairs), peak RSS, and the resident bytes per
  token held afterwards (RSS after the data phase minus RSS before it, over the token ids
  held; then again after reading every pair once, as an epoch does).

Model loading is left out: it does not depend on the row count.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HH_WORDS = 56         # words per prompt: ~98 SmolLM2 tokens with the markers
ANSWER_WORDS = 20     # ~30 tokens
CHAT_TURNS = 10       # 5 user + 5 assistant turns before the answer
CHAT_TURN_WORDS = 318  # ~5,000 tokens per conversation
MAX_LENGTH = {"hh": 1024, "chat": 8192}
MAX_PROMPT = {"hh": 512, "chat": 8000}


# -- synthetic rows ---------------------------------------------------------------------

def vocabulary(seed: int = 0) -> list[str]:
    """Lower-case pseudo-words of 2-8 letters: one SmolLM2 token each, about."""
    rng = random.Random(seed)
    common = ("the of and to in is you that it he was for on are as with his they at be "
              "this have from or one had by word but not what all were we when your can said "
              "there use an each which she do how their if will up other about out many then "
              "them these so some her would make like him into time has look two more write go "
              "see number no way could people my than first water been call who oil its now "
              "find long down day did get come made may part").split()
    return common + ["".join(rng.choice("etaoinshrdlu") for _ in range(rng.randint(2, 4)))
                     for _ in range(200)]


def text(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choices(words, k=n))


def write_rows(path: Path, case: str, rows: int, seed: int = 0) -> Path:
    """The case's rows, seeded, written once (distinct rows: each starts with its number)."""
    if path.exists():
        return path
    rng, words = random.Random(seed), vocabulary(seed)
    staging = path.with_suffix(".tmp")
    with staging.open("w") as out:
        for i in range(rows):
            out.write(json.dumps(_row(rng, words, case, i)) + "\n")
    staging.replace(path)
    return path


def _row(rng: random.Random, words: list[str], case: str, i: int) -> dict:
    if case == "hh":
        return {"prompt": f"\n\nHuman: {i} {text(rng, words, HH_WORDS)}\n\nAssistant:",
                "chosen": " " + text(rng, words, ANSWER_WORDS),
                "rejected": " " + text(rng, words, ANSWER_WORDS)}
    turns = [{"role": "user" if t % 2 == 0 else "assistant",
              "content": f"{i} {text(rng, words, CHAT_TURN_WORDS)}"} for t in range(CHAT_TURNS)]
    turns.append({"role": "user", "content": text(rng, words, 20)})
    return {"prompt": turns,
            "chosen": [{"role": "assistant", "content": text(rng, words, ANSWER_WORDS)}],
            "rejected": [{"role": "assistant", "content": text(rng, words, ANSWER_WORDS)}]}


# -- one measurement (its own process) ----------------------------------------------------

def status(field: str) -> int:
    """A /proc/self/status value in bytes (VmRSS now, VmHWM the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure(args) -> dict:
    from preftune.model_io import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    tokenizer(["warm up"], add_special_tokens=False)
    _import_everything(args.tool)  # modules are not data: their memory is in the baseline
    gc.collect()
    before, start = status("VmRSS"), time.perf_counter()
    if args.tool == "trl":
        pairs, tokens, read_all = _trl(args, tokenizer)
    else:
        pairs, tokens, read_all = _preftune(args, tokenizer)
    data_seconds = time.perf_counter() - start
    first_batch = _first_batch(pairs)
    to_first_batch = time.perf_counter() - start
    peak = status("VmHWM")
    gc.collect()
    held = status("VmRSS") - before
    read_all()
    held_after_epoch = status("VmRSS") - before
    return {"tool": args.tool, "case": args.case, "rows": args.rows, "num_proc": args.num_proc,
            "streaming": args.streaming, "pairs": len(pairs), "tokens": tokens,
            "data_seconds": round(data_seconds, 2), "first_batch_seconds": round(to_first_batch, 2),
            "first_batch_pairs": first_batch, "peak_rss_mb": round(peak / 2**20),
            "held_bytes_per_token": round(held / tokens, 2),
            "held_bytes_per_token_after_epoch": round(held_after_epoch / tokens, 2)}


def _import_everything(tool: str) -> None:
    import importlib

    names = ["numpy", "pyarrow", "pyarrow.ipc", "pyarrow.compute", "jinja2",
             "preftune.batching.plan"]
    names += (["datasets", "trl", "trl.trainer.dpo_trainer"] if tool == "trl" else
              ["preftune.config", "preftune.setup", "preftune.validation", "preftune.preflight",
               "preftune.data", "preftune.data.prepare", "preftune.data.store",
               "preftune.data.stream", "preftune.reference.cache"])
    for name in names:
        importlib.import_module(name)


def _first_batch(pairs) -> int:
    from preftune.batching.plan import BatchPlan

    plan = BatchPlan(len(pairs), 8, seed=42)
    return len([pairs[i] for i in plan.micro_batches(0)[0]])


def _preftune(args, tokenizer):
    from preftune.config import load_config
    from preftune.setup import build_pairs
    from preftune.validation import validate

    config = load_config(None, [
        "--method", "dpo", "--dataset_name", str(args.data), "--dataset_cache_dir",
        str(args.cache), "--dataset_num_proc", str(args.num_proc), "--max_length",
        str(MAX_LENGTH[args.case]), "--max_prompt_length", str(MAX_PROMPT[args.case]),
        "--streaming", str(args.streaming).lower()])
    pairs, _ = build_pairs(config, tokenizer, validate(config, loads_model=False),
                           log=lambda line: print(line, file=sys.stderr))
    tokens = int(pairs.lengths.sum())

    def read_all():
        for pair in pairs:
            pass

    return pairs, tokens, read_all


def _trl(args, tokenizer):
    """TRL 1.16's data phase: load_dataset, then DPOTrainer._prepare_dataset (what its
    ``__init__`` calls for the train set), without building a model."""
    from types import SimpleNamespace

    import pyarrow.compute as pc
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    dataset = load_dataset("json", data_files=str(args.data), split="train",
                           cache_dir=str(args.cache))
    config = DPOConfig(output_dir=str(args.cache / "out"), report_to=[], use_cpu=True, bf16=False,
                       dataset_num_proc=args.num_proc if args.num_proc > 1 else None,
                       max_length=MAX_LENGTH[args.case])
    trainer = SimpleNamespace(_tokenizer=tokenizer)
    dataset = DPOTrainer._prepare_dataset(trainer, dataset, tokenizer, config, "train")
    table = dataset.data
    tokens = sum(int(pc.sum(pc.list_value_length(table.column(name))).as_py())
                 for name in ("prompt_ids", "chosen_ids", "rejected_ids"))

    def read_all():
        for i in range(len(dataset)):
            dataset[i]

    return dataset, tokens, read_all


# -- the comparison -----------------------------------------------------------------------

def run_one(args, tool: str, streaming: bool, cache: Path) -> dict:
    command = [sys.executable, __file__, "--measure", "--tool", tool, "--case", args.case,
               "--rows", str(args.rows), "--num_proc", str(args.num_proc),
               "--data", str(args.data), "--cache", str(cache)]
    command += ["--streaming"] if streaming else []
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache / "hf")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args) -> list[dict]:
    args.work.mkdir(parents=True, exist_ok=True)
    args.data = write_rows(args.work / f"{args.case}-{args.rows}.jsonl", args.case, args.rows)
    results = []
    modes = [mode == "stream" for mode in args.preftune_modes]
    variants = [(tool, streaming) for tool in args.tools
                for streaming in (modes if tool == "preftune" else (False,))]
    for tool, streaming in variants:
        cache = args.work / f"cache-{tool}-{'stream' if streaming else 'whole'}-{args.case}-{args.rows}-np{args.num_proc}"
        shutil.rmtree(cache, ignore_errors=True)
        for run in ("first", "cached"):
            result = {**run_one(args, tool, streaming, cache), "run": run}
            print(json.dumps(result), flush=True)
            results.append(result)
        shutil.rmtree(cache, ignore_errors=True)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=["hh", "chat"], default="hh")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--num_proc", type=int, default=1)
    parser.add_argument("--tools", nargs="+", default=["preftune", "trl"])
    parser.add_argument("--preftune_modes", nargs="+", choices=["whole", "stream"],
                        default=["whole", "stream"], help="rows read whole, streamed, or both")
    parser.add_argument("--work", type=Path, default=Path("/tmp/preftune-data-scale"))
    parser.add_argument("--out", type=Path, help="append the results (JSON lines) here")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tool", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--streaming", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args)))
        return
    results = compare(args)
    if args.out:
        with args.out.open("a") as out:
            out.writelines(json.dumps(r) + "\n" for r in results)


if __name__ == "__main__":
    main()
