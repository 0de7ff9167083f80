#!/usr/bin/env bash
# The GPU checks of issue 18, one run on a machine with a CUDA GPU, after scripts/gpu/prepare.sh
# here: run(command="scripts/gpu/check.sh", carry=[".gpu"], timeout_s=600). Everything it
# prints is also in $OUT/gpu.log, for results/gpu.md.
#   1. petnas version; the quickstart with device auto (run.json must say cuda:0)
#   2. tests/gpu.rs on cuda: tensors across plugins without a copy, bf16 autocast against
#      fp32, an evaluation from a checkpoint on the CPU and the GPU, a killed fit resumed
#   3. the LoRA benchmark against transformers + PEFT, bf16 autocast
#   4. the same LoRA cell N = 1, 4, 16 times at once: aggregate training samples/s
#   5. peak GPU memory of a LoRA step on a Llama-3.2-1B shape (random weights, bf16) at batch
#      8 x 512, with and without gradient checkpointing, against scripts/lora_step_memory.py
# QUICK=1 runs every step small, to try the script itself on a CPU machine.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out="${OUT:-/tmp/petnas-gpu}"
mkdir -p "$out"
exec > >(tee -a "$out/gpu.log") 2>&1
quick="${QUICK:-0}"
step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }
python3 -c "import tarfile; tarfile.open('.gpu/bin.tar.xz').extractall('.gpu')"
torch_lib="$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin="$root/.gpu/release"
petnas="$bin/petnas"
model="$root/.gpu/model"
if [ ! -f "$model/model.safetensors" ]; then
  mkdir -p "$model"
  cp .gpu/model16/*.json .gpu/model16/vocab.txt .gpu/model16/LICENSE .gpu/model16/NOTICE "$model/"
  python3 - .gpu/model16/model.safetensors "$model/model.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
save_file({k: v.float().contiguous() for k, v in load_file(sys.argv[1]).items()}, sys.argv[2], metadata={"format": "pt"})
PY
fi
# The quickstart reads the default model from its usual place.
[ -e models/all-MiniLM-L6-v2 ] || { mkdir -p models && ln -s "$model" models/all-MiniLM-L6-v2; }
export GLUE_DIR="$root/.gpu/glue"
runs=/tmp/petnas-gpu-runs
rm -rf "$runs"

step "1. petnas version"
"$petnas" version
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

step "1. the quickstart, device auto"
timeout 300 "$petnas" run pipelines/quickstart.yaml --runs-dir "$runs" 2> /tmp/quickstart.log || tail -20 /tmp/quickstart.log
python3 -c "import json; r = json.load(open('$runs/quickstart/run.json')); print('run.json device:', r['device'])"
"$petnas" report "$runs/quickstart"

step "2. tests/gpu.rs"
device=cuda
[ "$quick" = 1 ] && device=cpu
PETNAS_WORKSPACE="$root" PETNAS_TEST_DEVICE=$device PETNAS_TEST_MODEL="$model" \
  timeout 400 "$bin/deps/gpu" --nocapture --test-threads 1

step "3. LoRA against transformers + PEFT"
examples=2490
[ "$quick" = 1 ] && examples=64
PETNAS="$petnas" MODEL="$model" EXAMPLES=$examples THREADS=4 timeout 400 python3 scripts/bench/lora_vs_peft.py

step "4. many LoRA cells on one GPU"
steps=400
[ "$quick" = 1 ] && steps=4
for n in 1 4 16; do
  seeds=$(python3 -c "print(', '.join(str(s) for s in range(1, $n + 1)))")
  cat > /tmp/cells-$n.yaml <<YAML
name: cells-$n
defaults: {device: auto, threads: 1}
matrix:
  seed: [$seeds]
stages:
  model: {use: plm.load, with: {model: '$model'}}
  data: {use: glue.load, needs: [model], with: {task: rte, dir: '$GLUE_DIR', max_len: 128, splits: [train]}}
  pets: {use: pet.attach, needs: [model], with: {pets: [{type: lora, targets: [query, value], rank: 8, alpha: 16}]}}
  fit: {use: train.fit, needs: [pets, data], with: {max_steps: $steps, batch_size: 32, pad_to: 128, bf16: true, checkpoint_every: 0, eval_every: 1000000}}
YAML
  started=$(date +%s.%N)
  timeout 300 "$petnas" run /tmp/cells-$n.yaml --jobs $n --runs-dir "$runs" > /dev/null 2> /tmp/cells-$n.log \
    || tail -20 /tmp/cells-$n.log
  ended=$(date +%s.%N)
  python3 - "$runs/cells-$n" "$started" "$ended" "$n" <<'PY'
import glob, json, sys
folder, started, ended, n = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
fits = [json.load(open(f))["meta"]["training"] for f in glob.glob(f"{folder}/*/fit/outputs.json")]
samples = sum(f["train_samples_per_second"] * f["train_seconds"] for f in fits)
slowest = max(f["train_seconds"] for f in fits)
print(f"{n:2d} cells: {len(fits)} fits, {samples:.0f} samples, aggregate {samples / slowest:.0f} samples/s over the "
      f"slowest fit's {slowest:.1f} s ({samples / (ended - started):.0f} over the whole run's {ended - started:.1f} s)")
PY
done

step "5. a LoRA step's peak GPU memory on a Llama-3.2-1B shape"
llama=/tmp/llama-1b
python3 - "$llama" "$quick" <<'PY'
import shutil, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
target, quick = sys.argv[1], sys.argv[2] == "1"
shape = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=128256) if not quick else \
    dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
         vocab_size=512)
config = LlamaConfig(**shape, max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=1,
                     bos_token_id=0, eos_token_id=1)
torch.manual_seed(0)
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
    model = LlamaForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(target)
for f in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(f"tests/fixtures/plm/tiny-llama/{f}", target)
print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters in bf16 at {target}")
PY
for recompute in false true; do
  cat > /tmp/llama-$recompute.yaml <<YAML
name: llama-$recompute
defaults: {device: auto, seed: 1, threads: 4}
stages:
  model: {use: plm.load, with: {model: '$llama'}}
  data: {use: glue.load, needs: [model], with: {task: rte, dir: '$GLUE_DIR', max_len: 512, max_train_examples: 64, splits: [train]}}
  pets: {use: pet.attach, needs: [model], with: {pets: [{type: lora, targets: [q_proj, v_proj], rank: 8}]}}
  fit: {use: train.fit, needs: [pets, data], with: {max_steps: 3, batch_size: 8, pad_to: 512, checkpoint_every: 0, eval_every: 1000000, gradient_checkpointing: $recompute}}
YAML
  echo "gradient_checkpointing: $recompute"
  timeout 300 python3 scripts/bench/peak_memory.py "$petnas" run /tmp/llama-$recompute.yaml --runs-dir "$runs" | tail -1
done
python3 scripts/lora_step_memory.py
step "done"
