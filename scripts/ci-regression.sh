#!/usr/bin/env bash
# Runs the CI GLUE regression (pipelines/ci-regression.yaml) and checks it against the
# committed baseline; writes JUnit XML to runs/ci-regression/junit.xml. Needs the GLUE data
# (GLUE_DIR, default ../shared/data/glue beside the checkout).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
export GLUE_DIR="${GLUE_DIR:-$root/../shared/data/glue}"
if [ ! -d "$GLUE_DIR/RTE" ]; then
  echo "error: no GLUE data at $GLUE_DIR (set GLUE_DIR)" >&2
  exit 2
fi
started=$(date +%s)
./target/release/petnas run pipelines/ci-regression.yaml
./target/release/petnas regress runs/ci-regression --baseline pipelines/ci-regression.baseline.yaml \
  --junit runs/ci-regression/junit.xml
echo "ci regression: $(( $(date +%s) - started ))s"
