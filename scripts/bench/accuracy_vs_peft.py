"""LoRA fine-tuning accuracy in transformers + PEFT with the recipe of
pipelines/accuracy-vs-peft.yaml (LoRA r=8, alpha 16 on query and value, AdamW lr 1e-3 without
weight decay, 6% warm-up then linear decay, clipping at 1.0, batch 32, 128 tokens padded per
batch, evaluation each epoch keeping the best; 3 epochs on MRPC, 5 on STS-B), on the same
GLUE files, seeds 1-3; prints one JSON line per task and seed: the best dev value and each
epoch's.

    GLUE_DIR=… .venv/bin/python scripts/bench/accuracy_vs_peft.py

TASKS (default "mrpc stsb"), SEEDS (default "1 2 3"), EPOCHS (default: the task's) and
THREADS narrow or widen the run. STOP_AFTER=N ends each run after its Nth epoch, the schedule
still planned over all EPOCHS (how fast seeds cross STS-B's learning threshold, at less cost).
"""
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from scipy.stats import pearsonr
from sklearn.metrics import f1_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

ROOT = Path(__file__).resolve().parents[2]
TASKS = {"mrpc": ("MRPC", 3, 4, 0, 2), "stsb": ("STS-B", 7, 8, 9, 1)}  # folder, text a, text b, label, labels
EPOCHS = {"mrpc": 3, "stsb": 5}


def read(path, task):
    _, a, b, label, labels = TASKS[task]
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8-sig").splitlines()[1:] if line]
    return [(r[a], r[b], float(r[label]) if labels == 1 else int(r[label])) for r in rows]


def evaluate(model, tokenizer, dev, task):
    model.eval()
    predictions = []
    with torch.no_grad():
        for s in range(0, len(dev), 64):
            rows = dev[s:s + 64]
            batch = tokenizer([r[0] for r in rows], [r[1] for r in rows], truncation=True, max_length=128, padding=True, return_tensors="pt")
            logits = model(**batch).logits
            predictions += (logits.squeeze(-1) if task == "stsb" else logits.argmax(-1)).tolist()
    gold = [r[2] for r in dev]
    model.train()
    return pearsonr(predictions, gold)[0] if task == "stsb" else f1_score(gold, predictions)


def run(task, seed, glue, epochs, stop_after):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    folder, *_, labels = TASKS[task]
    train, dev = read(glue / folder / "train.tsv", task), read(glue / folder / "dev.tsv", task)
    model_dir = ROOT / "models" / "all-MiniLM-L6-v2"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=labels)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"], task_type="SEQ_CLS"))
    steps_per_epoch = (len(train) + 31) // 32
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(opt, round(0.06 * steps_per_epoch * epochs), steps_per_epoch * epochs)
    per_epoch = []
    model.train()
    for epoch in range(min(epochs, stop_after)):
        order = torch.randperm(len(train)).tolist()
        for s in range(steps_per_epoch):
            rows = [train[i] for i in order[s * 32:(s + 1) * 32]]
            batch = tokenizer([r[0] for r in rows], [r[1] for r in rows], truncation=True, max_length=128, padding=True, return_tensors="pt")
            labels_tensor = torch.tensor([r[2] for r in rows], dtype=torch.float if task == "stsb" else torch.long)
            model(**batch, labels=labels_tensor).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            schedule.step()
            opt.zero_grad()
        per_epoch.append(evaluate(model, tokenizer, dev, task))
    return per_epoch


def stop_after(epochs):
    value = os.environ.get("STOP_AFTER", str(epochs))
    if not value.isdigit() or not 1 <= int(value) <= epochs:
        raise SystemExit(f"STOP_AFTER: {value!r} is not a number of epochs from 1 to {epochs}")
    return int(value)


def main():
    glue = Path(os.environ.get("GLUE_DIR", ROOT.parent / "shared" / "data" / "glue"))
    torch.set_num_threads(int(os.environ.get("THREADS", str(os.cpu_count() or 1))))
    for task in os.environ.get("TASKS", " ".join(TASKS)).split():
        if task not in TASKS:
            raise SystemExit(f"TASKS: unknown task {task!r} (one of {', '.join(TASKS)})")
        for seed in (int(s) for s in os.environ.get("SEEDS", "1 2 3").split()):
            epochs = int(os.environ.get("EPOCHS", EPOCHS[task]))
            per_epoch = run(task, seed, glue, epochs, stop_after(epochs))
            print(json.dumps({"task": task, "seed": seed, "value": max(per_epoch), "per_epoch": per_epoch}), flush=True)


if __name__ == "__main__":
    main()
