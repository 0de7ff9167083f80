"""Benchmark: LoRA fine-tuning throughput and peak memory, petnas against transformers + PEFT,
in the same run on the same machine.

    scripts/bench/lora_vs_peft.sh        (sets up, installs transformers + peft, runs this)

The task: all-MiniLM-L6-v2, LoRA r=8 (alpha 16) on query and value, RTE train (the first
EXAMPLES examples; petnas takes a seeded subset of the same size), batch 32, every batch padded
to 128 tokens, fp32, one epoch, then the dev split. Peak memory is the peak resident set size
of each process (model loading included). Where a CUDA GPU is present, both train on it with
bf16 autocast instead, and the peak GPU memory of each run (CUDA context included: GPU 0's
memory in use above what it was before, as `nvidia-smi` reports it every 50 ms) too.

PETNAS (the binary), MODEL (the checkpoint folder) and GLUE_DIR say where things are when they
are not where a checkout has them (on a GPU machine: scripts/gpu/check.sh).
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("EXAMPLES", "640"))
THREADS = int(os.environ.get("THREADS", str(os.cpu_count() or 1)))
CUDA = __import__("torch").cuda.is_available()


def gpu_mib_in_use():
    """MiB of GPU 0's memory in use, as nvidia-smi reports it (process lists are often empty in
    containers; the tools run one after the other, on a GPU nothing else uses)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True).stdout
    return float(out.split()[0]) if out.split() else 0.0


def peak_memory(cmd, cwd=None):
    """Runs the command: its stdout, its peak resident set size (MiB) and, on CUDA, its peak
    GPU memory (MiB)."""
    proc = subprocess.Popen(list(map(str, cmd)), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output = {}
    readers = [threading.Thread(target=lambda name=name, f=f: output.__setitem__(name, f.read()))
               for name, f in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    done = threading.Event()
    idle = gpu_mib_in_use() if CUDA else 0.0
    gpu_peak = [0.0]

    def sample():
        while not done.is_set():
            gpu_peak[0] = max(gpu_peak[0], gpu_mib_in_use() - idle)
            time.sleep(0.05)

    threads = readers + ([threading.Thread(target=sample)] if CUDA else [])
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    for t in threads:
        t.join()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{output['stderr'][-3000:]}")
    return output["stdout"], usage.ru_maxrss / 1024, gpu_peak[0]


def main():
    glue = Path(os.environ.get("GLUE_DIR", ROOT.parent / "shared" / "data" / "glue"))
    model = Path(os.environ.get("MODEL", ROOT / "models" / "all-MiniLM-L6-v2"))
    petnas = Path(os.environ.get("PETNAS", ROOT / "target" / "release" / "petnas"))
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Path(tmp) / "bench.yaml"
        pipeline.write_text(f"""name: bench-lora
defaults: {{seed: 1, threads: {THREADS}, device: {'cuda' if CUDA else 'cpu'}}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: rte, dir: '{glue}', max_len: 128, max_train_examples: {EXAMPLES}, splits: [train, dev]}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: lora, targets: [query, value], rank: 8, alpha: 16}}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {{epochs: 1, batch_size: 32, lr: 1e-3, pad_to: 128, weight_decay: 0.0, checkpoint_every: 0, bf16: {'true' if CUDA else 'false'}}}}}
  eval: {{use: glue.evaluate, needs: [fit, data]}}
""")
        _, petnas_mib, petnas_gpu_mib = peak_memory([petnas, "run", pipeline, "--runs-dir", Path(tmp) / "runs"], cwd=tmp)
        metrics = json.loads((Path(tmp) / "runs" / "bench-lora" / "default" / "eval" / "metrics.json").read_text())
    out, peft_mib, peft_gpu_mib = peak_memory([sys.executable, ROOT / "scripts" / "bench" / "peft_lora.py", "--model", model, "--glue", glue,
                              "--examples", EXAMPLES, "--threads", THREADS,
                              *(["--device", "cuda", "--bf16"] if CUDA else [])])
    peft = json.loads(out.strip().splitlines()[-1])
    rows = [
        ("train samples/s", metrics["train_samples_per_second"], peft["train_samples_per_second"]),
        ("eval samples/s", metrics["eval_samples_per_second"], peft["eval_samples_per_second"]),
        ("peak memory MiB", petnas_mib, peft_mib),
    ]
    if CUDA:
        rows.append(("peak GPU MiB", petnas_gpu_mib, peft_gpu_mib))
    precision = "CUDA, bf16 autocast" if CUDA else f"fp32 · {THREADS} threads"
    print(f"LoRA r=8 on query,value · all-MiniLM-L6-v2 · RTE {EXAMPLES} examples · batch 32 × 128 tokens · {precision}")
    print(f"{'':18} {'petnas':>10} {'PEFT':>10} {'petnas/PEFT':>12}")
    for name, ours, theirs in rows:
        print(f"{name:18} {ours:10.1f} {theirs:10.1f} {ours / theirs:12.2f}")
    print(f"(dev accuracy after one epoch: petnas {metrics['value']:.3f}, PEFT {peft['accuracy']:.3f})")


if __name__ == "__main__":
    main()
