"""docs/benchmarks.md from the runs of preference_bench.py."""

from __future__ import annotations

import math
import time
from pathlib import Path

from preftune.forward.fast.chunked_logps import auto_chunk_size

NAMES = {"padded": "preftune, padded forward", "fast": "preftune, fast forward",
         "fast-flex": "preftune, fast forward, FlexAttention",
         "trl": "TRL 1.16", "trl-gc": "TRL 1.16, gradient checkpointing on (its default)",
         "trl-precompute": "TRL 1.16, precompute_ref_log_probs",
         "trl-liger": "TRL 1.16, use_liger_kernel"}
SETTINGS_TITLES = {"fp32": "float32, no gradient checkpointing",
                   "bf16-gc": "bf16 autocast over float32 weights, gradient checkpointing "
                              "(the SimPO repositories' training settings)"}
MODEL_TITLES = {"smollm2": "SmolLM2-135M-Instruct",
                "smollm2-random": "SmolLM2-135M architecture, random weights",
                "llama-1b-random": "Llama-3.2-1B architecture (1.2B), random weights",
                "tiny-random": "a 2-layer random Llama (plumbing check only)"}
DATA_TITLES = {"hh": "HH-RLHF: long prompts, short completions",
               "orca": "Orca DPO pairs: completions of several hundred tokens"}


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _table(runs: dict, section: tuple, matmul_rate: float, memory: str) -> list[str]:
    lines = [f"| method | implementation | step time (s) | tokens/s | speed vs TRL | step time "
             f"vs TRL | {memory} (GiB) | memory vs TRL | useful GFLOP/s | of matmul rate "
             "| load avg | losses |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    methods = list(dict.fromkeys(key[-1] for key in runs if key[:3] == section))
    for method in methods:
        trl = runs.get((*section, "trl", method), {})
        for impl in NAMES:
            run = runs.get((*section, impl, method))
            if run is None:
                continue
            if "error" in run:
                lines.append(f"| {method} | {NAMES[impl]} | failed: {run['error'][:120]} "
                             "| | | | | | | | | |")
                continue
            speed = run["tokens_s"] / trl["tokens_s"] if "tokens_s" in trl else float("nan")
            time_ratio = run["step_s"] / trl["step_s"] if "step_s" in trl else float("nan")
            memory = run["peak_gib"] / trl["peak_gib"] if "peak_gib" in trl else float("nan")
            losses = ", ".join(_fmt(x, 3) for x in run["losses"])
            lines.append(
                f"| {method} | {NAMES[impl]} | {_fmt(run['step_s'])} | {_fmt(run['tokens_s'], 0)} "
                f"| {_fmt(speed)}x | {_fmt(time_ratio)}x | {_fmt(run['peak_gib'])} "
                f"| {_fmt(memory)}x | {_fmt(run['flops'] / 1e9, 1)} "
                f"| {_fmt(100 * run['flops'] / matmul_rate, 1)}% | {_fmt(run['load'], 1)} "
                f"| {losses} |")
    return lines


def write_report(path: Path, *, command: str, machine: str, matmul_rates: list, runs: dict,
                 steps: int, batch: int, datasets: dict, block: str = "preference") -> None:
    """``runs``: {(model, settings, data, impl, method): summary}; written into the
    ``block`` section of ``path`` (``preference`` on CPU, ``gpu`` on a GPU)."""
    memory = "peak CUDA memory" if block == "gpu" else "peak RSS"
    matmul_rate = sorted(matmul_rates)[len(matmul_rates) // 2]
    lines = [
        "# Benchmarks",
        "",
        "Written by `bench/preference_bench.py` (see its docstring for what is measured and "
        "how the rows are chosen); not part of the test suite.",
        "",
        f"- command: `{command}` (`--json-dir` reuses the per-run results an interrupted "
        "invocation left there)",
        f"- machine: {machine}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        "- measured fp32 matmul rate (2048^3, best of 5), at several times since the CPU is "
        f"shared: {', '.join(f'{r / 1e9:.1f}' for r in matmul_rates)} GFLOP/s; fractions "
        f"below use the median, {matmul_rate / 1e9:.1f}",
        f"- batch {batch} pairs, AdamW, {steps} steps per run, the first one untimed; one "
        "process per run; no row truncated by either trainer; memory: "
        + ("`torch.cuda.max_memory_allocated`" if block == "gpu" else
           "the process's peak resident memory") + ".",
        "",
        "The fast forward (`src/preftune/forward/fast/`, on by default; `--chunked_logps`, "
        "`--prefix_sharing`, `--packing` switch its parts off) returns the padded path's "
        "numbers: tests/forward/fast checks per-token log-probs, SimPO/DPO losses and every parameter "
        "gradient against it, in float64 on tiny models and in float32 on SmolLM2 (no "
        "farther from a float64 run than 4x the padded path), and under bf16 autocast, bf16 "
        "weights, gradient checkpointing and LoRA (tests/forward/fast/test_fast_settings.py).",
        "",
        f"Chunked head: the default chunk, {auto_chunk_size(49152)} tokens at SmolLM2's "
        "49,152 vocabulary.",
    ]
    present = list(dict.fromkeys(key[:3] for key in runs))
    for model, settings, data in present:
        spec = datasets[data]
        lines += ["", f"## {MODEL_TITLES.get(model, model)}: "
                      f"{SETTINGS_TITLES.get(settings, settings)}; "
                      f"{DATA_TITLES.get(data, data)}", "",
                  f"max_length {spec.max_length}, prompts <= {spec.max_prompt} tokens"
                  + (f", both completions >= {spec.min_completion} tokens"
                     if spec.min_completion > 1 else "") + ".", ""]
        lines += _table(runs, (model, settings, data), matmul_rate, memory)
    lines += [
        "",
        "Tokens/s counts the prompt once per completion and no padding, the same count for "
        "every implementation. Useful GFLOP/s = (6, or 8 with the DPO reference pass) x "
        "parameters x tokens / step time: the fast forward does less work for the same "
        "tokens (prompt once, no padding, head only on completion tokens), so its useful "
        "rate can exceed what the machine executes.",
        "",
        "Peak RSS is the whole process: weights, gradients, AdamW state (about 2.2 GB at "
        "135M parameters in fp32) plus activations. The CPU is shared with other jobs, so "
        "step times carry noise of tens of percent; ratios within a table row are more "
        "reliable than absolute numbers. Load avg: the 1-minute load average when the run "
        "ended (2 cores).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_keep_other_sections(path, "\n".join(lines), block))


def _keep_other_sections(path: Path, ours: str, block: str = "preference") -> str:
    """Other benchmarks add their own ``<!-- name:start --> ... <!-- name:end -->`` blocks
    to the same file: keep them after this report."""
    import re

    old = path.read_text() if path.exists() else ""
    blocks = {m.group(1): m.group(0) for m in re.finditer(
        r"<!-- (\w+):start -->.*?<!-- \1:end -->", old, flags=re.S)}
    if block != "preference":  # a GPU report follows the CPU one
        ours = ours.replace("# Benchmarks", "# Benchmarks on a GPU", 1)
    blocks[block] = f"<!-- {block}:start -->\n" + ours.rstrip() + f"\n<!-- {block}:end -->"
    first = [name for name in ("preference", "gpu") if name in blocks]
    order = first + [name for name in blocks if name not in first]
    return "\n\n".join(blocks[name] for name in order) + "\n"
