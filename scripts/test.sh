#!/usr/bin/env bash
# Sets up petnas (scripts/setup.sh) and runs the whole test suite against the release build:
# unit tests, and end-to-end tests of the `petnas` binary with the real plugins from disk.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
export PATH="$root/.venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1
# The exports are checked on the Python side too, with the versions users load them with.
if ! "$root/.venv/bin/python" -c "import transformers, peft" 2>/dev/null; then
  echo "[test] installing transformers and peft into .venv (one time)" >&2
  "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check "transformers==5.24.0" "peft==0.21.2"
fi
cd "$root"
# The full GLUE data, where it lies beside the checkout, lets the line-count test run.
if [ -z "${GLUE_DIR:-}" ] && [ -d "$root/../shared/data/glue" ]; then
  export GLUE_DIR="$root/../shared/data/glue"
fi
if [ -z "${PETNAS_TEST_DEVICE:-}" ]; then
  echo "[test] tests/gpu.rs skips its checks: PETNAS_TEST_DEVICE is unset (scripts/gpu/check.sh runs them on a GPU)" >&2
fi
# The plugin crates' unit-test executables link libtorch without a run path (only the
# `petnas` binary records one); the end-to-end tests start `petnas` without this variable.
LD_LIBRARY_PATH="$(python -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" \
  cargo test --release --workspace "$@"
