"""LoRA against full fine-tuning on SmolLM2-135M-Instruct: loss goes down, peak memory.

    python bench/lora_memory.py            # -> the LoRA section of docs/benchmarks.md

Each configuration runs in its own process (peak RSS is that run's alone): SimPO and DPO,
full fine-tuning and LoRA (r 16, all linear layers; DPO's reference is the base model with
the adapters off, so no second copy of the weights), on the demo preference set, batch 8,
a fixed number of steps. Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- lora:start -->", "<!-- lora:end -->"
RUNS = [("simpo", False), ("simpo", True), ("dpo", False), ("dpo", True)]


def worker(method: str, lora: bool, steps: int) -> dict:
    from preftune.config import load_config
    from preftune.demo.run import DATA
    from preftune.metrics import read_jsonl
    from preftune.trainer import Trainer

    out = tempfile.mkdtemp()
    args = ["--model_name_or_path", "smollm2", "--dataset_name", str(DATA / "train.jsonl"),
            "--method", method, "--max_steps", str(steps), "--per_device_train_batch_size", "8",
            "--learning_rate", "1e-4" if lora else "5e-6", "--warmup_ratio", "0",
            "--logging_steps", "1", "--eval_strategy", "no", "--output_dir", out,
            "--progress_bar", "false", "--seed", "0"]
    if lora:
        args += ["--use_peft", "--lora_r", "16", "--lora_alpha", "32"]
    trainer = Trainer(load_config(None, args), log=lambda *_: None)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    losses = [r["loss"] for r in read_jsonl(Path(out) / "metrics.jsonl")]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "lora": lora, "trainable": trainable, "first_loss": losses[0],
            "last_loss": losses[-1], "peak_rss_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "LORA"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1] == "1", args.steps)))
        return
    results = []
    for method, lora in RUNS:
        proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--worker",
                               method, "1" if lora else "0"], capture_output=True, text=True,
                              check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    full = {r["method"]: r["peak_rss_mib"] for r in results if not r["lora"]}
    rows = [f"| {r['method']} | {'LoRA r16' if r['lora'] else 'full'} | {r['trainable']:,} | "
            f"{r['first_loss']:.3f} -> {r['last_loss']:.3f} | {r['peak_rss_mib']:.0f} MiB | "
            f"{r['peak_rss_mib'] / full[r['method']]:.2f}x |" for r in results]
    section = "\n".join([
        START, "## LoRA against full fine-tuning", "",
        f"`python bench/lora_memory.py --steps {args.steps}` on {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores, fp32, SmolLM2-135M-Instruct, demo preference set, batch 8, "
        f"{args.steps} steps, one process per run.", "",
        "| method | training | trainable parameters | loss first -> last step | peak RSS | vs full |",
        "|---|---|---|---|---|---|", *rows, "",
        "DPO with LoRA keeps no reference copy: the reference is the base model with the "
        "adapters switched off. Full-model DPO holds a frozen copy of the weights.", END])
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if START in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)


if __name__ == "__main__":
    main()
