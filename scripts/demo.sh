#!/usr/bin/env bash
# Sets up a fresh machine (idempotent) and runs the CPU demo: SimPO-family preference
# tuning of the bundled SmolLM2-135M-Instruct on a checkable task, with a before/after table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m preftune.cli demo "$@"
