"""Checks that petnas trains LoRA exactly as transformers + PEFT do, step by step.

petnas attaches LoRA (r=8, alpha 16 on query and value) to the default model and exports that
untrained state (a fit with lr 0) as a PEFT adapter folder; petnas then trains the same state
while this script loads the export with peft.PeftModel and replays the same steps in PyTorch
(AdamW lr 1e-3, linear warm-up and decay, clipping at 1.0, batches in the same order, dropout
off). It prints both curves side by side.

- default: STEPS (20) full-batch steps on the 256 STS-B pairs of tests/fixtures/glue, no
  warm-up; fails when the losses part by more than 1e-4. 1.5-3.5 min.
- FULL=1: a whole STS-B run on GLUE_DIR, EPOCHS (5) epochs of batch 32 with 6% warm-up, the
  training rows in one seeded order per epoch (written out and trained in file order by both);
  prints each epoch's mean training loss and dev Pearson; fails when either parts by more
  than 1e-3. One thread each, run side by side: about 17 min.
- DROPOUT=1 (with either): dropout on, at the checkpoint's rates, in both. PyTorch then draws
  no mask of its own: every dropout call of the PEFT model (eager attention, so that attention
  probabilities are dropped by a call too) takes the mask petnas draws at the same place of
  the same step, recomputed here from petnas's generator (plugins/sdk/src/dropout.rs). The
  runs then differ in nothing random, and the same tolerances hold (FULL=1 DROPOUT=1: about
  20 min).

    .venv/bin/pip install transformers peft
    .venv/bin/python scripts/reference/trajectory_vs_peft.py   # after scripts/setup.sh
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from scipy.stats import pearsonr
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))
from accuracy_vs_peft import read  # noqa: E402

MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
FIT = ("{{max_steps: {steps}, batch_size: {batch}, lr: {lr}, warmup_ratio: {warmup}, max_grad_norm: 1.0, "
       "{dropout}eval_every: {eval_every}, keep_best: false, shuffle: false}}")
SEED = 1
PIPELINE = """name: {name}
defaults: {{device: cpu, seed: {seed}, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: stsb, dir: '{glue}', max_len: 128, splits: {splits}}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: lora, targets: [query, value], rank: 8, alpha: 16}}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {fit}}}
"""
EXPORT = """  checks: {{use: glue.load, needs: [model], with: {{task: stsb, dir: '{glue}', max_len: 128, splits: [train, dev]}}}}
  export: {{use: pet.export, needs: [fit, checks]}}
"""


class Recipe:
    def __init__(self, full, dropout):
        self.full, self.dropout = full, dropout
        if full:
            self.epochs = int(os.environ.get("EPOCHS", "5"))
            self.batch, self.warmup = 32, 0.06
        else:
            self.epochs, self.batch, self.warmup = 1, 256, 0.0

    def write_data(self, glue):
        """The training rows in the order both tools train them, and the dev split."""
        source = Path(os.environ.get("GLUE_DIR", ROOT.parent / "shared" / "data" / "glue")) if self.full \
            else ROOT / "tests" / "fixtures" / "glue"
        lines = (source / "STS-B" / "train.tsv").read_text(encoding="utf-8-sig").splitlines()
        header, rows = lines[0], [line for line in lines[1:] if line]
        ordered = []
        for epoch in range(self.epochs):
            order = list(range(len(rows)))
            if self.full:
                random.Random(epoch).shuffle(order)
            ordered += [rows[i] for i in order]
        (glue / "STS-B").mkdir(parents=True)
        (glue / "STS-B" / "train.tsv").write_text("\n".join([header] + ordered) + "\n", encoding="utf-8")
        shutil.copy(source / "STS-B" / "dev.tsv", glue / "STS-B" / "dev.tsv")
        self.steps_per_epoch = (len(rows) + self.batch - 1) // self.batch
        self.file_steps = (len(ordered) + self.batch - 1) // self.batch
        self.steps = self.file_steps if self.full else int(os.environ.get("STEPS", "20"))
        self.eval_every = self.steps_per_epoch if self.full else 1

    def pipeline(self, runs, glue, name, lr, steps, export):
        fit = FIT.format(steps=steps, batch=self.batch, lr=lr, warmup=self.warmup, eval_every=self.eval_every,
                         dropout="" if self.dropout else "dropout: 0.0, ")
        splits = "[train, dev]" if self.full else "[train]"
        text = PIPELINE.format(name=name, seed=SEED, model=MODEL, glue=glue, splits=splits, fit=fit)
        if export:
            text += EXPORT.format(glue=glue)
        path = Path(runs) / f"{name}.yaml"
        path.write_text(text)
        return [str(ROOT / "target" / "release" / "petnas"), "run", str(path), "--runs-dir", runs]


MASK64 = (1 << 64) - 1


def splitmix64(z):
    """SplitMix64's output function on uint64 arrays (or one Python int), wrapping as Rust does."""
    if not isinstance(z, np.ndarray):
        return int(splitmix64(np.array(z, dtype=np.uint64)))
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def derive_seed(seed, part):
    """petnas_sdk::init::derive_seed: FNV-1a over `part`, mixed with `seed`."""
    value = 0xCBF29CE484222325 ^ ((seed * 0x9E3779B97F4A7C15) & MASK64)
    for byte in part.encode():
        value = ((value ^ byte) * 0x100000001B3) & MASK64
    return value


class PetnasMasks:
    """torch.nn.functional.dropout, with the masks petnas draws in the same step at the same call.

    petnas's last layer computes only the first token's rows (the classifier reads nothing
    else), so its last three masks cover those rows; the other rows of PyTorch's full-length
    tensors keep everything, which changes nothing the loss depends on."""

    def __init__(self, layers):
        self.last_layer_calls = range(1 + 3 * (layers - 1), 1 + 3 * layers)
        self.key, self.call = None, 0

    def start_step(self, step):
        self.key, self.call = splitmix64(derive_seed(SEED, f"step {step}")), 0

    def mask(self, shape, p):
        n = int(np.prod(shape))
        key = splitmix64(self.key ^ ((self.call * 0xD1B54A32D192ED03) & MASK64))
        with np.errstate(over="ignore"):
            words = np.arange((n + 3) // 4, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key)
        bits = splitmix64(words)
        draws = np.stack([(bits >> np.uint64(16 * j)) & np.uint64(0xFFFF) for j in range(4)], axis=1).reshape(-1)[:n]
        kept = np.where(draws >= round(p * 65536), np.float32(1.0 / (1.0 - p)), np.float32(0.0))
        return torch.from_numpy(kept.reshape(shape))

    def __call__(self, x, p=0.5, training=True, inplace=False):
        if not training or p == 0.0:
            return x
        if self.call in self.last_layer_calls:
            mask = torch.ones(x.shape)
            first = list(x.shape)
            first[-2] = 1
            mask[..., :1, :] = self.mask(first, p)
        else:
            mask = self.mask(list(x.shape), p)
        self.call += 1
        return x * mask


def finished(returncode, output, what):
    if returncode != 0:
        sys.exit(f"petnas failed ({what}):\n{output}")


def petnas_history(runs, name):
    outputs = Path(runs) / name / "default" / "fit" / "outputs.json"
    return json.loads(outputs.read_text())["meta"]["training"]["history"]


def peft_history(recipe, peft_dir, glue):
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    if recipe.dropout:
        base = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=1, attn_implementation="eager")
        masks = PetnasMasks(base.config.num_hidden_layers)
        torch.nn.functional.dropout = masks
    else:
        base = AutoModelForSequenceClassification.from_pretrained(
            MODEL, num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = PeftModel.from_pretrained(base, peft_dir, is_trainable=True)
    rows = read(glue / "STS-B" / "train.tsv", "stsb")
    dev = read(glue / "STS-B" / "dev.tsv", "stsb")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(opt, round(recipe.warmup * recipe.steps), recipe.steps)

    def encode(part):
        return tokenizer([r[0] for r in part], [r[1] for r in part], truncation=True, max_length=128,
                         padding=True, return_tensors="pt")

    def pearson():
        model.eval()
        with torch.no_grad():
            predictions = [v for s in range(0, len(dev), 2 * recipe.batch)
                           for v in model(**encode(dev[s:s + 2 * recipe.batch])).logits.squeeze(-1).tolist()]
        model.train()
        return pearsonr(predictions, [r[2] for r in dev])[0]

    model.train()
    history, losses = [], []
    for step in range(1, recipe.steps + 1):
        start = (step - 1) % recipe.file_steps * recipe.batch
        part = rows[start:start + recipe.batch]
        if recipe.dropout:
            masks.start_step(step - 1)
        loss = model(**encode(part), labels=torch.tensor([r[2] for r in part], dtype=torch.float)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad()
        losses.append(loss.item())
        if step % recipe.eval_every == 0 or step == recipe.steps:
            entry = {"step": step, "train_loss": sum(losses) / len(losses)}
            if recipe.full:
                entry["pearson"] = pearson()
            history.append(entry)
            losses = []
    return history


def main():
    recipe = Recipe(os.environ.get("FULL") == "1", os.environ.get("DROPOUT") == "1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as runs:
        glue = Path(runs) / "glue"
        recipe.write_data(glue)
        export = subprocess.run(recipe.pipeline(runs, glue, "untrained", 0.0, 1, export=True),
                                capture_output=True, text=True)
        finished(export.returncode, export.stdout + export.stderr, "export")
        peft_dir = Path(runs) / "untrained" / "default" / "export" / "export" / "peft"
        training = subprocess.Popen(recipe.pipeline(runs, glue, "trained", 0.001, recipe.steps, export=False),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        theirs = peft_history(recipe, peft_dir, glue)
        output, _ = training.communicate()
        finished(training.returncode, output, "training")
        ours = petnas_history(runs, "trained")
    # Pairs (petnas, PEFT) per evaluation: the mean training loss, and with FULL the dev Pearson.
    pairs = [[(a["train_loss"], b["train_loss"])] + ([(a["metrics"]["pearson"], b["pearson"])] if recipe.full else [])
             for a, b in zip(ours, theirs)]
    header = "| step | petnas loss | PEFT loss |" + (" petnas Pearson | PEFT Pearson |" if recipe.full else "")
    print(header + " largest difference |\n" + "|---:" * (header.count("|") - 1) + "|---:|")
    for b, row in zip(theirs, pairs):
        values = " | ".join(f"{x:.6f} | {y:.6f}" for x, y in row)
        print(f"| {b['step']} | {values} | {max(abs(x - y) for x, y in row):.1e} |")
    worst = max(abs(x - y) for row in pairs for x, y in row)
    tolerance = 1e-3 if recipe.full else 1e-4
    if len(ours) != len(theirs) or worst > tolerance:
        sys.exit(f"the runs part: {len(ours)} petnas evaluations against {len(theirs)}, "
                 f"largest difference {worst:.2e} (tolerance {tolerance:.0e})")
    print(f"ok: {recipe.steps} steps, largest difference {worst:.1e}")

if __name__ == "__main__":
    main()
