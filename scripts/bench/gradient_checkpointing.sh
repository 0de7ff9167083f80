#!/usr/bin/env bash
# Benchmark: train.fit's gradient_checkpointing against the plain backward pass, in one run on
# this machine: peak memory (RSS; on CUDA also GPU memory) and training samples/s of the same
# fit both ways — the default model, LoRA r=8 on every linear layer, MRPC, batch 64 padded to
# 256 tokens, 6 steps, the checkpoint's dropout.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
"$root/scripts/setup.sh"
glue="${GLUE_DIR:-$root/../shared/data/glue}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for recompute in false true; do
  cat > "$tmp/p.yaml" <<YAML
name: recompute-$recompute
defaults: {seed: 1, threads: 0, device: auto}
stages:
  model: {use: plm.load, with: {model: '$root/models/all-MiniLM-L6-v2'}}
  data: {use: glue.load, needs: [model], with: {task: mrpc, dir: '$glue', max_len: 256, max_train_examples: 640, splits: [train]}}
  pets: {use: pet.attach, needs: [model], with: {pets: [{type: lora, targets: all-linear, rank: 8}]}}
  fit: {use: train.fit, needs: [pets, data], with: {max_steps: 6, batch_size: 64, pad_to: 256, checkpoint_every: 0, eval_every: 1000000, gradient_checkpointing: $recompute}}
YAML
  memory=$("$root/.venv/bin/python" "$root/scripts/bench/peak_memory.py" "$root/target/release/petnas" run "$tmp/p.yaml" --runs-dir "$tmp/runs" 2> /dev/null | tail -1)
  rate=$(python3 -c "import json; t = json.load(open('$tmp/runs/recompute-$recompute/default/fit/outputs.json'))['meta']['training']; print(f\"{t['train_samples_per_second']:.2f} samples/s\")")
  echo "gradient_checkpointing: $recompute · $memory · $rate"
done
