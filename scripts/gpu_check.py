#!/usr/bin/env python3
"""Everything that needs a CUDA GPU, in one command (about 8 minutes on one GPU):

    pip install -e . --no-deps                     # transformers, accelerate, peft present
    pip install --no-index --find-links WHEELS trl liger-kernel   # or from the registry
    python scripts/gpu_check.py --tokenizer TOKENIZER_DIR

1. the CUDA exactness tests (tests/gpu): the fast path in bf16 autocast, dense 4-D masks
   and FlexAttention block masks, forward and backward, against the padded path, judged
   against float64; bf16 weights with float32 master copies;
2. the benchmark at users' settings (bf16 autocast over float32 weights, gradient
   checkpointing), SmolLM2-shaped and Llama-3.2-1B-shaped random models, on HH-RLHF and on
   the long Orca pairs: preftune (dense, flex) against TRL and TRL with Liger, tokens/s and
   ``torch.cuda.max_memory_allocated``, written to docs/benchmarks.md (its ``gpu`` block).

Random weights need only a tokenizer folder (``--tokenizer``; the bundled SmolLM2's is
under ~/.cache/preftune/SmolLM2-135M-Instruct once ``preftune demo`` or any test ran).
Data: ``../shared/data`` beside the project, as for the CPU benchmark.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", default="smollm2",
                        help="tokenizer folder; smollm2: the bundled model's")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="seconds the benchmark may start runs for")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; nothing to do", file=sys.stderr)
        return 2
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    failed = 0
    start = time.perf_counter()
    if not args.skip_tests:
        failed |= subprocess.call([sys.executable, "-m", "pytest", "-q", "-p",
                                   "no:cacheprovider", "tests/gpu", "-rs"], cwd=ROOT)
        print(f"gpu_check: tests took {time.perf_counter() - start:.0f} s", flush=True)
    if not args.skip_bench:
        failed |= subprocess.call([
            sys.executable, "bench/preference_bench.py", "--settings", "bf16-gc",
            "--data", "hh", "orca", "--models", "smollm2-random", "llama-1b-random",
            "--methods", "simpo", "dpo", "--impls", "fast", "fast-flex", "trl", "trl-liger",
            "--steps", "4", "--batch", "8", "--tokenizer", args.tokenizer,
            "--budget-s", str(args.budget_s), "--need-gib", "4"], cwd=ROOT)
    print(f"gpu_check: done in {time.perf_counter() - start:.0f} s", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
