#!/usr/bin/env bash
# Sets up petnas (scripts/setup.sh), runs the quickstart pipeline — a small search on the
# default model and the GLUE samples in tests/fixtures/glue — and prints its report.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
./target/release/petnas run pipelines/quickstart.yaml "$@"
./target/release/petnas report runs/quickstart
cat runs/quickstart/default/architecture/summary.txt
