#!/usr/bin/env bash
# The search in one fit against a LoRA r=8 run, in one petnas run (pipelines/one-run-search-cost.yaml):
# prints, for each seed, the wall seconds of the LoRA run (attach + fit) and of each search
# (supernet + nas.prune_while_training) from their stage records, and the ratio, then the
# median ratio. RUNS (default: a fresh temporary folder) keeps the run.
#
#   GLUE_DIR=../shared/data/glue scripts/bench/one_run_search_cost.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
runs="${RUNS:-$(mktemp -d)}"
"$root/target/release/petnas" run "$root/pipelines/one-run-search-cost.yaml" --jobs 1 --runs-dir "$runs" >&2
python3 - "$runs/one-run-search-cost" <<'PY'
import json, statistics, sys
from pathlib import Path
run = Path(sys.argv[1])
def seconds(cell, *stages):
    return sum(json.loads((cell / s / "stage.json").read_text())["seconds"] for s in stages)
ratios = {"s_lora_1run": [], "u_lora_1run": [], "s_lora_1run_early": []}
print("seed  lora_r8 s  " + "  ".join(f"{m} s (x)" for m in ratios) + "  dev F1: lora_r8 " + " ".join(ratios))
for cell in sorted(p for p in run.iterdir() if p.is_dir() and p.name.startswith("seed=")):
    lora = seconds(cell, "lora_r8_pets", "lora_r8_fit")
    row = [cell.name.split("=")[1], f"{lora:9.1f}"]
    for method in ratios:
        search = seconds(cell, "lora_supernet", f"{method}_search")
        ratios[method].append(search / lora)
        row.append(f"{search:9.1f} ({search / lora:.2f})")
    row.append(" ".join(f"{json.loads((cell / m / 'metrics.json').read_text())['value']:.4f}" for m in ["lora_r8", *ratios]))
    print("  ".join(row))
for method, values in ratios.items():
    print(f"{method}: median {statistics.median(values):.2f}x a LoRA r=8 run (min {min(values):.2f}, max {max(values):.2f})")
PY
