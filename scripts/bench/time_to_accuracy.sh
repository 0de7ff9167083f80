#!/usr/bin/env bash
# Benchmark: time to the same dev accuracy, petnas's LoRA against PEFT's default recipe, in one
# run on this machine (scripts/bench/time_to_accuracy.py). Needs SST-2 (GLUE_DIR, default
# ../shared/data/glue).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
"$root/scripts/setup.sh"
"$root/.venv/bin/python" -c "import transformers, peft" 2>/dev/null \
  || "$root/.venv/bin/pip" install --quiet --disable-pip-version-check transformers peft
export GLUE_DIR="${GLUE_DIR:-$root/../shared/data/glue}"
exec "$root/.venv/bin/python" "$root/scripts/bench/time_to_accuracy.py"
