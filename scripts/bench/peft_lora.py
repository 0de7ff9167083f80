"""The same LoRA fine-tune as petnas's benchmark, in transformers + PEFT: all-MiniLM-L6-v2,
LoRA r=8 on query and value, batch 32, sequences padded to 128 tokens, fp32, AdamW with linear
warm-up and decay, gradient clipping at 1.0. Prints one JSON line with throughput.

    python peft_lora.py --model DIR --glue DIR --task rte --examples 640 --threads 2 [--device cuda --bf16]
"""
import argparse
import json
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

LABELS = {"rte": ["entailment", "not_entailment"]}


def read(path: Path, task: str, limit=None):
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    rows = rows[:limit] if limit else rows
    return [(r[1], r[2], LABELS[task].index(r[3])) for r in rows]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--glue", required=True)
    p.add_argument("--task", default="rte")
    p.add_argument("--examples", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward passes")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    folder = Path(a.glue) / {"rte": "RTE"}[a.task]
    train = read(folder / "train.tsv", a.task, a.examples)
    dev = read(folder / "dev.tsv", a.task)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS"))
    model.to(a.device)
    device_type = torch.device(a.device).type

    def on_device(batch):
        return {k: v.to(a.device) for k, v in batch.items()}

    def synchronize():
        if device_type == "cuda":
            torch.cuda.synchronize()
    steps = (len(train) + a.batch_size - 1) // a.batch_size
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=a.lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(opt, round(0.06 * steps), steps)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(a.seed)).tolist()
    model.train()
    started = time.perf_counter()
    for s in range(steps):
        rows = [train[i] for i in order[s * a.batch_size:(s + 1) * a.batch_size]]
        batch = tokenizer([r[0] for r in rows], [r[1] for r in rows], truncation=True, max_length=a.max_len,
                          padding="max_length", return_tensors="pt")
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=a.bf16):
            out = model(**on_device(batch), labels=torch.tensor([r[2] for r in rows], device=a.device))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad()
    synchronize()
    train_seconds = time.perf_counter() - started
    model.eval()
    started = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(dev), 64):
            rows = dev[s:s + 64]
            batch = tokenizer([r[0] for r in rows], [r[1] for r in rows], truncation=True, max_length=a.max_len,
                              padding=True, return_tensors="pt")
            predicted = model(**on_device(batch)).logits.argmax(-1).cpu()
            correct += int((predicted == torch.tensor([r[2] for r in rows])).sum())
    synchronize()
    eval_seconds = time.perf_counter() - started
    print(json.dumps({"train_samples_per_second": len(train) / train_seconds, "eval_samples_per_second": len(dev) / eval_seconds,
                      "train_seconds": train_seconds, "accuracy": correct / len(dev)}))


if __name__ == "__main__":
    main()
