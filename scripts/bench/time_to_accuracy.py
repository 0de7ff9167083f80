"""Benchmark: time to the same dev accuracy, petnas's LoRA against PEFT's default recipe, in
one run on this machine.

    scripts/bench/time_to_accuracy.sh   (sets up, installs transformers + peft, runs this)

Both train LoRA r=8, alpha 16 on query and value of all-MiniLM-L6-v2 for one epoch over the
same 10,000 SST-2 movie reviews, tokenised once by petnas (pipelines/time-to-accuracy.yaml's
`data` stage), with AdamW lr 1e-3, 6% warm-up then linear decay, clipping at 1.0, batch 32,
on one thread each, fp32:
- PEFT's default recipe: `LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16)` (PEFT's
  default targets for BERT: query and value) in a plain PyTorch loop that does what
  `Trainer` does with transformers' GLUE example defaults: every batch padded to
  `max_seq_length` 128 (`run_glue.py`'s `pad_to_max_length`), batches drawn at random;
  its dev accuracy after the epoch is the target;
- PEFT again, each batch padded to its longest (what `Trainer` does with
  `DataCollatorWithPadding`, as PEFT's own examples use it);
- petnas: the same, with length bucketing (its default) and without it.
Every run scores dev every 20 steps. The target is the default recipe's dev accuracy after
the epoch; each run's time to it is the training time up to its first evaluation at or above
it. Time is the training steps' own wall time (evaluations excluded on both sides), summed:
PEFT's from `time.perf_counter` around each step, petnas's from each step's
`samples_per_second` in its train_log.jsonl. Prints a Markdown table and writes
results/time-to-accuracy.json.

RUNS (default ../runs) is where petnas's run folder goes; GLUE_DIR as for petnas.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

ROOT = Path(__file__).resolve().parents[2]
RUNS = Path(os.environ.get("RUNS", ROOT.parent / "runs")).resolve()
MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
PIPELINE = ROOT / "pipelines" / "time-to-accuracy.yaml"
BATCH, LR, WARMUP, MAX_LEN, SEED, EVERY = 32, 1e-3, 0.06, 128, 1, 20


def petnas_run():
    subprocess.run([str(ROOT / "target" / "release" / "petnas"), "run", str(PIPELINE), "--jobs", "1",
                    "--runs-dir", str(RUNS)], check=True)
    return RUNS / "time-to-accuracy"


def dataset(run):
    folder = run / "seed=1,bucket=true" / "data"
    meta = json.loads((folder / "outputs.json").read_text())["meta"]
    tensors = load_file(str(folder / "outputs.safetensors"))

    def split(name):
        ids, types, offsets = (tensors[f"{name}.{f}"].tolist() for f in ("ids", "type_ids", "offsets"))
        rows = [(ids[offsets[i]:offsets[i + 1]], types[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]
        return rows, tensors[f"{name}.labels"].long()

    return meta, split("train"), split("dev")


def collate(rows, labels, index, pad_id, width=None):
    width = width or max(len(rows[r][0]) for r in index)
    ids = torch.full((len(index), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(index), width), dtype=torch.long)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    for b, r in enumerate(index):
        n = len(rows[r][0])
        ids[b, :n], types[b, :n], mask[b, :n] = torch.tensor(rows[r][0]), torch.tensor(rows[r][1]), 1
    return dict(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels[index])


def accuracy(model, rows, labels, pad_id):
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(rows), 64):
            index = list(range(s, min(s + 64, len(rows))))
            batch = collate(rows, labels, index, pad_id)
            gold = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == gold).sum())
    model.train()
    return correct / len(rows)


def peft_run(train, dev, pad_id, width):
    """PEFT's default LoRA, trained one epoch; dev scored every EVERY steps (not timed)."""
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    rows, labels = train
    model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=2)
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
    steps = -(-len(rows) // BATCH)
    schedule = get_linear_schedule_with_warmup(opt, round(WARMUP * steps), steps)
    order = np.random.default_rng(SEED).permutation(len(rows)).tolist()
    model.train()
    seconds, evaluations = 0.0, []
    for step, s in enumerate(range(0, len(order), BATCH), start=1):
        started = time.perf_counter()
        loss = model(**collate(rows, labels, order[s:s + BATCH], pad_id, width=width)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad()
        seconds += time.perf_counter() - started
        if step % EVERY == 0 or step == steps:
            evaluations.append((step, accuracy(model, *dev, pad_id), seconds))
    return {"train_seconds": seconds, "evaluations": evaluations}


def petnas_fit(run, bucket):
    log = run / f"seed=1,bucket={'true' if bucket else 'false'}" / "fit" / "train_log.jsonl"
    seconds, at, evaluations = 0.0, {}, []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if "samples_per_second" in entry:
            # Every batch holds 32 examples but one of 16 (10,000 = 312 × 32 + 16): counting
            # it as 32 adds its half-step, under 0.2% of an epoch.
            seconds += BATCH / entry["samples_per_second"]
            at[entry["step"]] = seconds
        elif "evaluated" in entry:
            evaluations.append((entry["step"], entry["value"]))
    return {"train_seconds": seconds, "evaluations": [(s, v, at[s]) for s, v in evaluations]}


def main():
    run = petnas_run()
    meta, train, dev = dataset(run)
    pad_id = int(meta["pad_id"])
    runs = {
        f"PEFT's default recipe: padded to {MAX_LEN} (run_glue.py's default), random batches": peft_run(train, dev, pad_id, MAX_LEN),
        "PEFT, padded to each batch's longest (DataCollatorWithPadding), random batches": peft_run(train, dev, pad_id, None),
        "petnas, bucketed by length (its default)": petnas_fit(run, True),
        "petnas, batches at random": petnas_fit(run, False),
    }
    default = next(iter(runs.values()))
    target = default["evaluations"][-1][1]
    out = {"target": target, "runs": runs}
    print(f"Target: the dev accuracy of PEFT's default recipe after the epoch, {target:.4f}.\n")
    print("| run | dev accuracy after the epoch | training seconds | first at or above the target: step, seconds | the default recipe's time to it over this |")
    print("|---|---:|---:|---:|---:|")
    default_time = next(t for _, v, t in default["evaluations"] if v >= target)
    for name, r in runs.items():
        reached = next(((st, t) for st, v, t in r["evaluations"] if v >= target), None)
        r["reached"] = reached
        cells = f"| {name} | {r['evaluations'][-1][1]:.4f} | {r['train_seconds']:.0f} |"
        if reached:
            print(f"{cells} {reached[0]}, {reached[1]:.0f} | {default_time / reached[1]:.2f}× |")
        else:
            print(f"{cells} not reached | — |")
    (ROOT / "results" / "time-to-accuracy.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
