#!/usr/bin/env bash
# Sets up petnas (scripts/setup.sh), runs the quickstart pipeline — a small search on the
# default model and the GLUE samples in tests/fixtures/glue — and prints its report.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
./target/release/petnas run pipelines/quickstart.yaml "$@"
# The report reads the run where `run` wrote it: --runs-dir DIR or --runs-dir=DIR, else runs/.
runs=runs
while [ $# -gt 0 ]; do
  case "$1" in
    --runs-dir) runs="$2"; shift ;;
    --runs-dir=*) runs="${1#--runs-dir=}" ;;
  esac
  shift
done
./target/release/petnas report "$runs/quickstart"
cat "$runs/quickstart/default/architecture/summary.txt"
