"""LoRA against full fine-tuning on SmolLM2-135M-Instruct: loss goes down, peak memory.

    python bench/lora_memory.py            # -> the LoRA section of docs/benchmarks.md
    python bench/lora_memory.py --methods simpo --json-dir runs/ ; ... --methods dpo --json-dir runs/

Each configuration runs in its own process (peak RSS is that run's alone): SimPO and DPO,
full fine-tuning and LoRA (r 16, all linear layers; DPO's reference is the base model with
the adapters off, so no second copy of the weights), on the demo preference set (a seeded
10% held out), batch 8, a fixed number of steps. "Held-out loss" is the objective on the
held-out pairs before and after training, the same pairs both times; the training loss
moves with each step's batch, so it is shown as the mean of the first and of the last
quarter of the steps. Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine, replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
RUNS = [("simpo", False), ("simpo", True), ("dpo", False), ("dpo", True)]
FULL_LR, LORA_LR = "1e-5", "3e-4"  # LoRA's usual ~10-30x higher rate


def worker(method: str, lora: bool, steps: int) -> dict:
    from preftune.config import load_config
    from preftune.demo.run import DATA
    from preftune.train.metrics import read_jsonl
    from preftune.train.trainer import Trainer

    out = tempfile.mkdtemp()
    args = ["--model_name_or_path", "smollm2", "--dataset_name", str(DATA / "train.jsonl"),
            "--method", method, "--max_steps", str(steps), "--per_device_train_batch_size", "8",
            "--learning_rate", LORA_LR if lora else FULL_LR, "--warmup_ratio", "0",
            "--eval_fraction", "0.1", "--logging_steps", "1", "--output_dir", out,
            "--progress_bar", "false", "--seed", "0"]
    if lora:
        args += ["--use_peft", "--lora_r", "16", "--lora_alpha", "32"]
    trainer = Trainer(load_config(None, args), log=lambda *_: None)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    before = trainer.evaluate()["eval_loss"]
    result = trainer.train()
    losses = [r["loss"] for r in read_jsonl(Path(out) / "metrics.jsonl") if "loss" in r]
    quarter = max(1, len(losses) // 4)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "lora": lora, "trainable": trainable,
            "eval_before": before, "eval_after": result.eval_metrics["eval_loss"],
            "first_losses": sum(losses[:quarter]) / quarter,
            "last_losses": sum(losses[-quarter:]) / quarter, "peak_rss_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "LORA"))
    parser.add_argument("--methods", nargs="+", default=["simpo", "dpo"])
    parser.add_argument("--json-dir", default="", help="keep/reuse per-run results here")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1] == "1", args.steps)))
        return
    json_dir = Path(args.json_dir or tempfile.mkdtemp(prefix="preftune-lora-"))
    json_dir.mkdir(parents=True, exist_ok=True)
    for method, lora in RUNS:
        out = json_dir / f"{method}-{'lora' if lora else 'full'}-{args.steps}.json"
        if method in args.methods and not out.exists():
            proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps),
                                   "--worker", method, "1" if lora else "0"],
                                  capture_output=True, text=True, check=True)
            out.write_text(proc.stdout.strip().splitlines()[-1])
            print(out.read_text(), flush=True)
    # Every run of this step count in the folder, so methods can be run one at a time.
    results = [json.loads(path.read_text()) for method, lora in RUNS
               if (path := json_dir / f"{method}-{'lora' if lora else 'full'}-{args.steps}.json").exists()]
    full = {r["method"]: r["peak_rss_mib"] for r in results if not r["lora"]}
    rows = [f"| {r['method']} | {'LoRA r16, lr ' + LORA_LR if r['lora'] else 'full, lr ' + FULL_LR} "
            f"| {r['trainable']:,} | {r['eval_before']:.3f} -> {r['eval_after']:.3f} "
            f"| {r['first_losses']:.3f} -> {r['last_losses']:.3f} | {r['peak_rss_mib']:.0f} MiB "
            f"| {r['peak_rss_mib'] / full[r['method']]:.2f}x |" for r in results]
    replace_section(DOC, "lora", "\n".join([
        "## LoRA against full fine-tuning", "",
        f"`python bench/lora_memory.py --steps {args.steps}` on {machine()}: fp32, "
        f"SmolLM2-135M-Instruct, the demo preference set (10% held out), batch 8, "
        f"{args.steps} steps, one process per run.", "",
        "| method | training | trainable parameters | held-out loss before -> after "
        "| training loss, first -> last quarter | peak RSS | vs full |",
        "|---|---|---|---|---|---|---|", *rows, "",
        "The held-out loss is the comparison: the same pairs before and after. The training "
        "loss averages different batches at the start and at the end (the same batches for "
        "the full and the LoRA run of a method), so it can rise while the model improves.", "",
        "DPO with LoRA keeps no reference copy: the reference is the base model with the "
        "adapters switched off. Full-model DPO holds a frozen copy of the weights."]))


if __name__ == "__main__":
    main()
