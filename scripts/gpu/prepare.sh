#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for scripts/gpu/check.sh, the GPU checks of issue 18, to run on
# a GPU machine that has PyTorch but no Rust, no network, and takes 64 MiB of files along:
#   .gpu/bin.tar.xz  the release binary, the plugins and the GPU test executable, stripped,
#                    in target/release's layout (the tests find petnas beside their folder)
#   .gpu/model16/    the default model with its weights in fp16 (half the size); check.sh
#                    widens them back to fp32 there, so both tools of the benchmark read the
#                    same fp32 checkpoint (rounded to fp16's precision)
#   .gpu/glue/RTE/   the full RTE files the benchmark and the many-cells run read
# Then, with the device tool: run(command="scripts/gpu/check.sh", carry=[".gpu"], timeout_s=600).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
scripts/setup.sh
export PATH="$root/.venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1
glue="${GLUE_DIR:-$root/../shared/data/glue}"
tests=$(cargo build --release --tests -p petnas-e2e --message-format=json --quiet \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
rm -rf .gpu
stage=.gpu/stage/release
mkdir -p "$stage/deps" .gpu/glue .gpu/model16
for f in target/release/petnas target/release/libpetnas_*.so target/release/libpetnastest_*.so; do
  strip -o "$stage/$(basename "$f")" "$f"
done
strip -o "$stage/deps/gpu" "$tests"
tar -cJf .gpu/bin.tar.xz -C .gpu/stage release
rm -rf .gpu/stage
cp -r "$glue/RTE" .gpu/glue/
model=models/all-MiniLM-L6-v2
cp "$model"/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt,LICENSE,NOTICE} .gpu/model16/
.venv/bin/python - "$model/model.safetensors" .gpu/model16/model.safetensors <<'PY'
import sys
from safetensors.torch import load_file, save_file
weights = load_file(sys.argv[1])
save_file({k: v.half().contiguous() for k, v in weights.items()}, sys.argv[2], metadata={"format": "pt"})
PY
du -sh .gpu
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carried=$(du -sb .gpu | cut -f1)
echo "travels: $(( (tracked + carried) / 1048576 )) MiB of the 64 MiB a call takes"
