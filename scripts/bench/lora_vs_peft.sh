#!/usr/bin/env bash
# Benchmark: LoRA training throughput and peak memory, petnas against transformers + PEFT, in
# one run on this machine. Needs the full RTE files (GLUE_DIR, default ../shared/data/glue).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
"$root/scripts/setup.sh"
"$root/.venv/bin/python" -c "import transformers, peft" 2>/dev/null \
  || "$root/.venv/bin/pip" install --quiet --disable-pip-version-check transformers peft
exec "$root/.venv/bin/python" "$root/scripts/bench/lora_vs_peft.py"
