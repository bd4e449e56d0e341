"""Step time, tokens/s and peak memory: preftune (padded / fast forward) vs TRL, SmolLM2.

    pip install -e '.[bench,smollm2]'
    python bench/preference_bench.py                      # everything -> docs/benchmarks.md
    python bench/preference_bench.py --steps 3 --methods simpo --impls fast trl

Every run is its own process (``... worker --impl fast --method simpo``), so each peak RSS
is that run's alone. Same rows, same order, same batch (8 pairs), AdamW, on CPU unless a
GPU is there. Two axes:

- settings: ``fp32`` (float32, no checkpointing) and ``bf16-gc``, the settings of every
  SimPO / CPO-SimPO training YAML: float32 weights, bf16 autocast, gradient checkpointing
  (TRL: ``bf16=True, gradient_checkpointing=True``). There TRL's memory-lean options run as
  well: ``precompute_ref_log_probs`` for DPO and ``use_liger_kernel`` (Triton kernels:
  GPU only, so on a CPU its row records TRL's own error).
- data: ``hh``, HH-RLHF (long prompts, ~30-token completions; max_length 512, prompts
  <= 256), and ``orca``, the Orca DPO pairs whose completions both have >= 150 tokens
  (median chosen 246, rejected 351: UltraFeedback-like lengths; max_length 1024, prompts
  <= 512).

TRL 1.16's CPO and DPO trainers never cut the prompt (a prompt that fills max_length leaves
an empty completion and a NaN loss), so the rows are the first ones of the file that fit
untruncated: neither trainer truncates anything and both see the same tokens. The first
step of each run is warm-up and is not timed.

Tokens/step counts the prompt once per completion, no padding (preftune.train.trainer.
count_tokens): the same number for every implementation. "Useful" FLOP/s is
(6 + 2 if a reference pass) x parameters x tokens / step time, the work a plain trainer
does (attention score FLOPs ignored); its fraction of a measured big fp32 matmul rate
says how close each run gets to what the machine can do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from measure import PeakRSS, machine, matmul_flops, wait_for_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Data:
    path: Path
    max_length: int
    max_prompt: int
    min_completion: int = 1


DATASETS = {"hh": Data(SHARED / "hh-rlhf-harmless-base-test.jsonl.gz", 512, 256),
            "orca": Data(SHARED / "orca-dpo-pairs-openai-format.jsonl", 1024, 512, 150)}
SETTINGS = ("fp32", "bf16-gc")
# smollm2: the real SmolLM2-135M-Instruct. The random ones need only its tokenizer (for a
# GPU machine without the GGUF package): its architecture, and a 1.2B Llama-3.2-1B-shaped one.
MODELS = {"smollm2": None,
          "smollm2-random": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                 num_hidden_layers=30, num_attention_heads=9,
                                 num_key_value_heads=3, tie_word_embeddings=True),
          "llama-1b-random": dict(vocab_size=128256, hidden_size=2048,
                                  intermediate_size=8192, num_hidden_layers=16,
                                  num_attention_heads=32, num_key_value_heads=8,
                                  tie_word_embeddings=True, rope_theta=500000.0),
          # A smoke test of the benchmark's plumbing in seconds.
          "tiny-random": dict(vocab_size=49152, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, tie_word_embeddings=True)}
IMPLS = {"fp32": ["padded", "fast", "trl"],
         "bf16-gc": ["fast", "trl", "trl-precompute", "trl-liger"]}
TRL_METHODS = {"simpo": ("CPO", {"loss_type": "simpo", "cpo_alpha": 0.0}),
               "cpo-simpo": ("CPO", {"loss_type": "simpo", "cpo_alpha": 0.05}),
               "dpo": ("DPO", {})}


# -- shared by every run -----------------------------------------------------------------
def bench_rows(tokenizer, count: int, data: Data) -> list[dict]:
    """The first ``count`` rows (prompt / chosen / rejected) that fit untruncated."""
    from preftune.data import normalize_rows, read_file, tokenize_rows

    _, rows = normalize_rows(read_file(data.path), errors=[])  # bad rows skipped
    rows = [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected} for _, r in rows]
    pairs, _ = tokenize_rows(rows, tokenizer, max_length=10**6, max_prompt_length=None)
    fits = [rows[p.example_id] for p in pairs if len(p.prompt_ids) <= data.max_prompt
            and len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= data.max_length
            and min(len(p.chosen_ids), len(p.rejected_ids)) >= data.min_completion]
    if len(fits) < count:
        raise SystemExit(f"only {len(fits)} rows fit; lower --steps")
    return fits[:count]


# -- one run (a child process) ------------------------------------------------------------
def bench_model(name: str) -> torch.nn.Module:
    """float32 weights (both trainers keep float32 masters under bf16 autocast)."""
    if MODELS[name] is None:
        from preftune.model_io import load_model

        return load_model("smollm2")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**MODELS[name], max_position_embeddings=4096,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).float()


class PeakMemory:
    """Peak resident memory on CPU (sampled), ``torch.cuda.max_memory_allocated`` on a GPU."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()

    def start(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        else:
            self.rss = PeakRSS().start()
            self.baseline = self.rss.baseline
        return self

    def stop(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self.rss.stop()


def preftune_run(args, tokenizer, rows) -> dict:
    from preftune.batching.plan import BatchPlan
    from preftune.config import load_config
    from preftune.data import tokenize_rows
    from preftune.train.metrics import MetricWindow, total_loss
    from preftune.train.trainer import Trainer, count_tokens

    data = DATASETS[args.data]
    pairs, _ = tokenize_rows(rows, tokenizer, max_length=data.max_length,
                             max_prompt_length=data.max_prompt)
    switches = ["true" if args.impl.startswith("fast") else "false"] * 3
    bf16_gc = args.settings == "bf16-gc"
    model = bench_model(args.model)
    if bf16_gc:  # as setup.build_model does for gradient_checkpointing: true
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    config = load_config(None, [
        "--method", args.method, "--per_device_train_batch_size", str(args.batch),
        "--max_steps", str(args.steps), "--learning_rate", "1e-6", "--progress_bar", "false",
        "--do_eval", "false", "--output_dir", tempfile.mkdtemp(),
        "--bf16", str(bf16_gc).lower(), "--gradient_checkpointing", str(bf16_gc).lower(),
        "--max_length", str(data.max_length), "--max_prompt_length", str(data.max_prompt),
        "--chunked_logps", switches[0], "--prefix_sharing", switches[1],
        "--packing", switches[2],
        "--fast_attention", "flex" if args.impl == "fast-flex" else "dense"])
    trainer = Trainer(config, model=model, tokenizer=tokenizer, train_pairs=pairs,
                      log=lambda line: print(line, file=sys.stderr),
                      plan=BatchPlan(len(pairs), args.batch, 1, 1, 0, shuffle=False))
    times, losses, tokens = [], [], []
    memory = PeakMemory().start()
    for step in range(args.steps):
        window = MetricWindow()
        start = time.perf_counter()
        trainer.train_step(window)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        means = window.means(lambda t: t)
        losses.append(total_loss(means, trainer.method.nll_weight))
        tokens.append(count_tokens(pairs[step * args.batch:(step + 1) * args.batch]))
    support = trainer.forward.support.get(trainer.model) if hasattr(trainer.forward,
                                                                      "support") else None
    return {"times": times, "losses": losses, "tokens": tokens, "peak_rss": memory.stop(),
            "baseline_rss": memory.baseline, "params": sum(p.numel() for p in model.parameters()),
            "fast_forward": support.summary if support is not None else "off"}


def trl_run(args, tokenizer, rows) -> dict:
    import trl
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    from preftune.config import MethodConfig
    from preftune.model_io import bundled_smollm2
    from preftune.objectives.method import resolve_method

    kind, extra = TRL_METHODS[args.method]
    hparams = resolve_method(MethodConfig(method=args.method)).hparams
    # TRL 1.16 turns gradient checkpointing on by default; preftune's default is off. The
    # fp32 "trl" runs use preftune's setting; "trl-gc" keeps TRL's default.
    bf16_gc = args.settings == "bf16-gc"
    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch,
                  gradient_checkpointing=args.impl == "trl-gc" or bf16_gc,
                  max_steps=args.steps, learning_rate=1e-6,
                  max_length=DATASETS[args.data].max_length,
                  logging_steps=1, report_to="none", save_strategy="no", bf16=bf16_gc,
                  use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
                  beta=hparams["beta"], use_liger_kernel=args.impl == "trl-liger",
                  model_init_kwargs={"dtype": torch.float32})
    if kind == "CPO":
        from trl.experimental.cpo import CPOConfig, CPOTrainer as Base

        config = CPOConfig(**common, simpo_gamma=hparams["gamma"], **extra)
    else:
        Base = trl.DPOTrainer
        config = trl.DPOConfig(**common, precompute_ref_log_probs=args.impl == "trl-precompute")

    class Sequential(Base):  # the same batches, in the same order, as preftune's run
        def _get_train_sampler(self, *unused, **unused_kw):
            return SequentialSampler(self.train_dataset)

    times, losses = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, *unused, **unused_kw):
            self.start = time.perf_counter()

        def on_step_end(self, *unused, **unused_kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

        def on_log(self, _args, _state, _control, logs=None, **unused):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    model = str(bundled_smollm2()) if MODELS[args.model] is None else bench_model(args.model)
    extra_models = {}
    if not isinstance(model, str):
        config.model_init_kwargs = None  # TRL refuses init kwargs with a model object
        if kind == "DPO":  # a model object has no hub name to load the reference from
            import copy

            extra_models["ref_model"] = copy.deepcopy(model)
    trainer = Sequential(model=model, args=config, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(rows), callbacks=[Clock()],
                         **extra_models)
    data = trainer.train_dataset
    if "chosen_input_ids" in data.column_names:  # CPO: prompt + completion per side
        tokens = [len(c) + len(r) for c, r in zip(data["chosen_input_ids"],
                                                  data["rejected_input_ids"])]
    else:
        tokens = [2 * len(p) + len(c) + len(r) for p, c, r in zip(
            data["prompt_ids"], data["chosen_ids"], data["rejected_ids"])]
    memory = PeakMemory().start()
    trainer.train()
    step_tokens = [sum(tokens[i:i + args.batch]) for i in range(0, len(tokens), args.batch)]
    return {"times": times, "losses": losses, "tokens": step_tokens[:args.steps],
            "peak_rss": memory.stop(), "baseline_rss": memory.baseline,
            "params": sum(p.numel() for p in trainer.model.parameters()),
            "trl_version": trl.__version__}


def worker(args) -> None:
    from preftune.model_io import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.tokenizer)
    rows = bench_rows(tokenizer, args.batch * args.steps, DATASETS[args.data])
    result = (trl_run if args.impl.startswith("trl") else preftune_run)(args, tokenizer, rows)
    result["load_average"] = os.getloadavg()[0]  # other jobs on a shared machine
    Path(args.json).write_text(json.dumps(result))


# -- the whole benchmark ------------------------------------------------------------------
def child(json_dir: Path, name: str, need_gib: float, patience: float, *options: str) -> dict:
    out = json_dir / f"{name}.json"
    command = [sys.executable, __file__, "worker", "--json", str(out), *options]
    print("$", " ".join(command[1:]), flush=True)
    if out.exists():  # --json-dir of an interrupted benchmark: keep what it measured
        return json.loads(out.read_text())
    if not wait_for_memory(need_gib * 2**30, patience):
        return {"error": f"skipped: {need_gib:.0f} GiB of free memory never became available"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-3000:], flush=True)
        if done.returncode in (-9, 137):  # SIGKILL: the kernel's out-of-memory killer
            error = "killed: out of memory (the kernel's OOM killer)"
        else:
            error = done.stderr.strip().splitlines()[-1] if done.stderr else "failed"
        out.write_text(json.dumps({"error": error}))  # a rerun of --json-dir keeps it
        return {"error": error}
    result = json.loads(out.read_text())
    print("  ", {k: v for k, v in result.items() if k != "params"}, flush=True)
    return result


def summary(result: dict, reference_pass: bool) -> dict:
    timed = slice(1, None) if len(result["times"]) > 1 else slice(None)
    seconds = sum(result["times"][timed]) / len(result["times"][timed])
    tokens = sum(result["tokens"][timed]) / len(result["tokens"][timed])
    flops = (8 if reference_pass else 6) * result["params"] * tokens / seconds
    baseline = result.get("baseline_rss", float("nan"))
    return {"step_s": seconds, "tokens_s": tokens / seconds, "flops": flops,
            "peak_gib": result["peak_rss"] / 2**30, "losses": result["losses"],
            "growth_gib": (result["peak_rss"] - baseline) / 2**30,
            "load": result.get("load_average", float("nan"))}


def planned(args) -> list[tuple[str, str, str, str, str]]:
    """(model, settings, data, impl, method) of every run asked for."""
    runs = []
    for model in args.models:
        for settings in args.settings:
            for data in args.data:
                for method in args.methods:
                    for impl in args.impls or IMPLS[settings]:
                        if impl == "trl-precompute" and method != "dpo":
                            continue  # reference-free objectives have nothing to precompute
                        runs.append((model, settings, data, impl, method))
    return runs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="all", choices=["all", "worker"])
    impls = ["padded", "fast", "fast-flex", "trl", "trl-gc", "trl-precompute", "trl-liger"]
    parser.add_argument("--impl", default="fast", choices=impls)
    parser.add_argument("--impls", nargs="+", choices=impls, default=None,
                        help="default: padded, fast, trl in fp32; fast and TRL's variants in "
                             "bf16-gc")
    parser.add_argument("--method", default="simpo", choices=list(TRL_METHODS))
    parser.add_argument("--methods", nargs="+", default=list(TRL_METHODS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", "--model", nargs="+", default=["smollm2"],
                        choices=list(MODELS))
    parser.add_argument("--tokenizer", default="smollm2",
                        help="tokenizer folder (smollm2: the bundled one)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", default="")
    parser.add_argument("--json-dir", default="", help="keep/reuse per-run results here")
    parser.add_argument("--need-gib", type=float, default=13.5,
                        help="free memory to wait for before a batch-8 SmolLM2 run")
    parser.add_argument("--patience", type=float, default=3600.0)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no run after this many seconds (their rows say so)")
    parser.add_argument("--matmul-gflops", nargs="*", type=float, default=[],
                        help="matmul rates measured at other times on this machine, to report with")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    if args.mode == "worker":
        args.settings, args.data, args.model = args.settings[0], args.data[0], args.models[0]
        return worker(args)
    from bench_report import write_report

    json_dir = Path(args.json_dir or tempfile.mkdtemp(prefix="preftune-bench-"))
    json_dir.mkdir(parents=True, exist_ok=True)
    rate_before = matmul_flops()
    runs = {}
    started = time.perf_counter()
    for model, settings, data, impl, method in planned(args):
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            runs[(model, settings, data, impl, method)] = {
                "error": f"not run: past the {args.budget_s:.0f} s budget"}
            continue
        need = args.need_gib * args.batch / 8 * (0.5 if impl.startswith("fast") else 1.0)
        name = ("" if model == "smollm2" else f"{model}-") + f"{settings}-{data}-{impl}-{method}"
        result = child(json_dir, name, need, args.patience, "--impl", impl, "--method", method,
                       "--settings", settings, "--data", data, "--model", model,
                       "--tokenizer", args.tokenizer, "--steps", str(args.steps),
                       "--batch", str(args.batch))
        runs[(model, settings, data, impl, method)] = result if "error" in result else summary(
            result, method == "dpo" and impl != "trl-precompute")
    # The CPU is shared: the rate moves with other jobs' load. Rates measured at other times
    # on the same machine (e.g. by an interrupted invocation) may be added.
    rates = sorted([rate_before, matmul_flops(), *(g * 1e9 for g in args.matmul_gflops)])
    command = "python bench/preference_bench.py " + " ".join(sys.argv[1:])
    write_report(Path(args.out), command=command.strip(), machine=machine(), matmul_rates=rates,
                 runs=runs, steps=args.steps, batch=args.batch, datasets=DATASETS,
                 block="gpu" if torch.cuda.is_available() else "preference")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
