#!/usr/bin/env bash
# Benchmark: GLUE reading, tokenisation and batching, petnas against Python tokenizers.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
"$root/scripts/setup.sh"
"$root/.venv/bin/python" -c "import tokenizers, numpy" 2>/dev/null \
  || "$root/.venv/bin/pip" install --quiet --disable-pip-version-check tokenizers numpy
exec "$root/.venv/bin/python" "$root/scripts/bench/tokenization.py"
