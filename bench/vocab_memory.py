"""Does a step's memory grow with the vocabulary? 32k against 128k, same model body.

    python bench/vocab_memory.py          # -> the vocabulary section of docs/benchmarks.md

A random model with SmolLM2-135M-Instruct's body (30 layers, hidden 576, tied embeddings)
and a 32,000 or 128,256 token vocabulary takes two SimPO steps on the same 4 HH-RLHF pairs
(the preference benchmark's rows, token ids taken modulo the vocabulary); each run is its
own process. Growth = peak RSS during the second step minus RSS just before it: what a step
adds on top of the weights and AdamW's state (activations, logits, gradients). Every
allocation of 1 MiB or more is its own mapping (MALLOC_MMAP_THRESHOLD_), returned to the
system when freed, so the resident set follows the live tensors instead of what the
allocator keeps from the first step.

Two settings, because two different things have the vocabulary's size:
- embedding trained: the embedding matrix (tied to the head) gets a gradient, which any
  trainer holds, 4 x vocab x 576 bytes; "beyond gradients" subtracts every parameter
  gradient (4 bytes x trainable parameters) from the growth;
- embedding frozen (as in LoRA or frozen-embedding fine-tuning): the step's only
  vocabulary-sized memory is then the output head's logits.
The padded path builds [rows, tokens, vocab] logits; the fast path one chunk of
CHUNK_ELEMENTS logit values at a time, whatever the vocabulary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from measure import PeakRSS, machine, replace_section  # noqa: E402
from preference_bench import bench_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
VOCABS = (32000, 128256)
RUNS = [("padded", "frozen"), ("fast", "frozen"), ("padded", "trained"), ("fast", "trained")]


def worker(impl: str, embedding: str, vocab: int, batch: int) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    from preftune.batching.plan import BatchPlan
    from preftune.config import load_config
    from preftune.data import tokenize_rows
    from preftune.model_io import bundled_smollm2, load_tokenizer
    from preftune.train.metrics import MetricWindow
    from preftune.train.trainer import Trainer

    tokenizer = load_tokenizer("smollm2")
    pairs, _ = tokenize_rows(bench_rows(tokenizer, batch), tokenizer, max_length=512,
                             max_prompt_length=256)
    for p in pairs:
        for ids in (p.prompt_ids, p.chosen_ids, p.rejected_ids):
            ids[:] = [i % vocab for i in ids]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(bundled_smollm2(), vocab_size=vocab)).float()
    if embedding == "frozen":
        model.get_input_embeddings().weight.requires_grad_(False)
    on = "true" if impl == "fast" else "false"
    config = load_config(None, [
        "--method", "simpo", "--per_device_train_batch_size", str(batch), "--max_steps", "2",
        "--learning_rate", "1e-6", "--progress_bar", "false", "--do_eval", "false",
        "--output_dir", tempfile.mkdtemp(), "--bf16", "false", "--chunked_logps", on,
        "--prefix_sharing", on, "--packing", on])
    trainer = Trainer(config, model=model, tokenizer=tokenizer, train_pairs=pairs * 2,
                      log=lambda line: print(line, file=sys.stderr),
                      plan=BatchPlan(len(pairs) * 2, batch, 1, 1, 0, shuffle=False))
    trainer.train_step(MetricWindow())  # AdamW's state exists from here on
    memory = PeakRSS().start()
    start = time.perf_counter()
    trainer.train_step(MetricWindow())
    seconds = time.perf_counter() - start
    peak = memory.stop()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"impl": impl, "embedding": embedding, "vocab": vocab, "step_s": seconds,
            "growth_gib": (peak - memory.baseline) / 2**30, "peak_gib": peak / 2**30,
            "gradient_gib": 4 * trainable / 2**30, "trainable": trainable}


def table(results: list[dict]) -> list[str]:
    by = {(r["impl"], r["embedding"], r["vocab"]): r for r in results}
    small, large = VOCABS
    lines = ["| embedding | forward | growth 32k (GiB) | growth 128k (GiB) | 128k / 32k "
             "| beyond gradients 32k | beyond gradients 128k | 128k / 32k | step 32k (s) "
             "| step 128k (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for impl, embedding in RUNS:
        a, b = by.get((impl, embedding, small)), by.get((impl, embedding, large))
        if a is None or b is None:
            continue
        rest = [r["growth_gib"] - r["gradient_gib"] for r in (a, b)]
        lines.append(f"| {embedding} | {impl} | {a['growth_gib']:.2f} | {b['growth_gib']:.2f} "
                     f"| {b['growth_gib'] / a['growth_gib']:.2f} | {rest[0]:.2f} | {rest[1]:.2f} "
                     f"| {rest[1] / rest[0]:.2f} | {a['step_s']:.1f} | {b['step_s']:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "EMBEDDING", "VOCAB"))
    parser.add_argument("--json-dir", default="", help="keep/reuse per-run results here")
    args = parser.parse_args()
    if args.worker:
        impl, embedding, vocab = args.worker
        print(json.dumps(worker(impl, embedding, int(vocab), args.batch)))
        return
    json_dir = Path(args.json_dir or tempfile.mkdtemp(prefix="preftune-vocab-"))
    json_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for impl, embedding in RUNS:
        for vocab in VOCABS:
            out = json_dir / f"{impl}-{embedding}-{vocab}.json"
            if not out.exists():
                done = subprocess.run([sys.executable, __file__, "--batch", str(args.batch),
                                       "--worker", impl, embedding, str(vocab)],
                                      capture_output=True, text=True, check=True,
                                      env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)})
                out.write_text(done.stdout.strip().splitlines()[-1])
            results.append(json.loads(out.read_text()))
            print(results[-1], flush=True)
    from preftune.forward.fast.chunked_logps import CHUNK_ELEMENTS, auto_chunk_size

    section = "\n".join([
        "## Peak memory by vocabulary size", "",
        f"`python bench/vocab_memory.py --batch {args.batch}` on {machine()}.", "",
        "A random model with SmolLM2-135M-Instruct's body (30 layers, hidden 576, tied "
        "embeddings) and a 32,000 or 128,256 token vocabulary takes two SimPO steps on the "
        f"same {args.batch} HH-RLHF pairs (token ids modulo the vocabulary), one process per "
        "run. Growth = peak RSS during the second step minus RSS just before it: what a step "
        "adds on top of the weights and AdamW's state. Allocations of 1 MiB or more are "
        "their own mappings (MALLOC_MMAP_THRESHOLD_), so the resident set follows the live "
        "tensors. \"Beyond gradients\" subtracts the parameter gradients (4 bytes x trainable "
        "parameters), which any trainer holds and which include the embedding's own "
        "vocab x 576 gradient when it is trained. With the embedding frozen (LoRA, frozen-"
        "embedding fine-tuning) the output head's logits are the step's only "
        "vocabulary-sized memory.", "",
        f"The fast forward's default chunk holds {CHUNK_ELEMENTS:,} logit values "
        f"({auto_chunk_size(VOCABS[0])} tokens at 32k, {auto_chunk_size(VOCABS[1])} at 128k); "
        "the padded path builds [rows, tokens, vocab] logits.", "",
        *table(results), "",
        "The CPU is shared with other jobs: step times carry tens of percent of noise.",
    ])
    replace_section(DOC, "vocab", section)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
