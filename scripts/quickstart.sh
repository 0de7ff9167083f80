#!/usr/bin/env bash
# Sets up petnas (scripts/setup.sh) and runs the quickstart pipeline.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
exec ./target/release/petnas run pipelines/quickstart.yaml --jobs 2 "$@"
