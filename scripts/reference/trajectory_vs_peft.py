"""Checks that petnas trains LoRA exactly as transformers + PEFT do, step by step.

petnas attaches LoRA (r=8, alpha 16 on query and value) to the default model, exports that
untrained state (a fit with lr 0) as a PEFT adapter folder, and trains the same state for
STEPS full-batch steps on the 256 STS-B pairs of tests/fixtures/glue (AdamW lr 1e-3, linear
decay, clipping at 1.0, dropout off: the one thing the two tools cannot draw alike). This
script loads the export with peft.PeftModel, replays the steps in PyTorch, and prints both
loss curves; it fails when they part by more than 1e-4.

    .venv/bin/pip install transformers peft
    .venv/bin/python scripts/reference/trajectory_vs_peft.py   # after scripts/setup.sh
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))
from accuracy_vs_peft import read  # noqa: E402

STEPS = int(os.environ.get("STEPS", "20"))
GLUE = ROOT / "tests" / "fixtures" / "glue"
MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
FIT = "{{max_steps: {steps}, batch_size: 256, lr: {lr}, warmup_ratio: 0.0, max_grad_norm: 1.0, dropout: 0.0, eval_every: 1, keep_best: false}}"
PIPELINE = """name: trajectory
defaults: {{device: cpu, seed: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: stsb, dir: '{glue}', max_len: 128, splits: [train]}}}}
  checks: {{use: glue.load, needs: [model], with: {{task: stsb, dir: '{glue}', max_len: 128, splits: [train, dev]}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: lora, targets: [query, value], rank: 8, alpha: 16}}]}}}}
  untrained: {{use: train.fit, needs: [pets, data], with: {untrained}}}
  export: {{use: pet.export, needs: [untrained, checks]}}
  fit: {{use: train.fit, needs: [pets, data], with: {fit}}}
"""


def petnas_losses(runs):
    pipeline = Path(runs) / "trajectory.yaml"
    pipeline.write_text(PIPELINE.format(
        model=MODEL, glue=GLUE, untrained=FIT.format(steps=1, lr=0.0), fit=FIT.format(steps=STEPS, lr=0.001)))
    run = subprocess.run([str(ROOT / "target" / "release" / "petnas"), "run", str(pipeline), "--runs-dir", runs],
                         capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"petnas failed:\n{run.stdout}{run.stderr}")
    cell = Path(runs) / "trajectory" / "default"
    history = json.loads((cell / "fit" / "outputs.json").read_text())["meta"]["training"]["history"]
    return [h["train_loss"] for h in history], cell / "export" / "export" / "peft"


def peft_losses(peft_dir):
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    base = AutoModelForSequenceClassification.from_pretrained(
        MODEL, num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = PeftModel.from_pretrained(base, peft_dir, is_trainable=True)
    rows = read(GLUE / "STS-B" / "train.tsv", "stsb")
    batch = tokenizer([r[0] for r in rows], [r[1] for r in rows], truncation=True, max_length=128,
                      padding=True, return_tensors="pt")
    labels = torch.tensor([r[2] for r in rows], dtype=torch.float)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(opt, 0, STEPS)
    model.train()
    losses = []
    for _ in range(STEPS):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def main():
    with tempfile.TemporaryDirectory() as runs:
        ours, peft_dir = petnas_losses(runs)
        theirs = peft_losses(peft_dir)
    print("| step | petnas loss | PEFT loss | difference |\n|---:|---:|---:|---:|")
    for step, (a, b) in enumerate(zip(ours, theirs), 1):
        print(f"| {step} | {a:.6f} | {b:.6f} | {a - b:+.1e} |")
    worst = max(abs(a - b) for a, b in zip(ours, theirs))
    if len(ours) != STEPS or worst > 1e-4:
        sys.exit(f"the trajectories part: {len(ours)} petnas steps, largest difference {worst:.2e}")
    print(f"ok: {STEPS} steps, largest difference {worst:.1e}")


if __name__ == "__main__":
    main()
