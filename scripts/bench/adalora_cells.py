"""PEFT's AdaLoRA as a baseline of the search-vs-baselines grid (pipelines/search-vs-adalora.yaml).

It trains with transformers + PEFT's own AdaLoRA (AdaLoraConfig, AdaLoraModel's orthogonal
regulariser and update_and_allocate) on the very examples petnas trains on: the tokenised
splits of the `data` stage of pipelines/adalora-data.yaml (the same files, the same seeded
10,000 of SST-2, the same validation share held out of train), read from that run folder.
The recipe is the grid's: AdamW without weight decay, 6% warm-up then linear decay, clipping
at 1.0, batch 32 bucketed by length (50 batches' worth sorted together, batches shuffled, a
new order each epoch), dropout as the checkpoint sets it, 3 epochs (MRPC, SST-2) or 5
(STS-B), and the last parameters evaluated once on dev.

AdaLoRA's schedule follows its paper's GLUE recipe (Zhang et al., ICLR 2023, appendix, for
DeBERTaV3-base), with tinit, tfinal and deltaT scaled by this run's steps over the paper's:
all six weight matrices of every layer, beta1 = beta2 = 0.85, lora_alpha 16, the
orthogonality weight of the task, b(0) = 1.5 b(T) (at least one rank per matrix).

The budget. PEFT's RankAllocator counts its budget in rank-1 triplets (P column, Lambda
entry, Q row) whatever their size; the grid counts parameters. The one change made to it
(ParameterBudget below) keeps its importance (sensitivity x uncertainty, smoothed), its
cubic schedule and its masking, and counts each triplet as the d_in + d_out + 1 parameters
it holds: the triplets kept are the best-scoring ones whose parameters fit the budget. The
reported `pet` parameters are those of the triplets kept at the end (P, Lambda and Q), at or
under 12,864 or 73,728; the task head (the classifier, 770 or 385) is counted apart as in
petnas.

Phases:
  select  seed 1 trains on train less the validation share with each candidate learning
          rate (the grid's 1e-3 and the paper's rate for the task), scored on the validation
          share; never on dev.
  final   seeds 1-3 on the whole training set with the chosen rate, evaluated on dev.
  lora    PEFT's LoRA r=8 on query and value with the same loop (its wall time is what
          AdaLoRA's is measured against).

    .venv/bin/python scripts/bench/adalora_cells.py PHASE --data RUNS/adalora-data --out RUNS \
        [--tasks mrpc stsb sst2] [--budgets 12864 73728] [--seeds 1 2 3] [--threads 1]

Each cell is written as petnas writes a glue.evaluate stage (`metrics.json`, `stage.json`)
under OUT/search-vs-adalora-peft/<cell>/adalora/, the cell named by the grid's matrix values,
so `petnas report` and `petnas compare` read it beside the grid's cells; a finished cell is
skipped on the next call, and a cell appears only once complete.
"""
import argparse
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from peft.tuners.adalora.layer import RankAllocator
from safetensors.torch import load_file
from scipy.stats import pearsonr, spearmanr
from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
PIPELINE = "search-vs-adalora-peft"

# The grid's recipe per task (pipelines/search-vs-baselines.yaml).
EPOCHS = {"mrpc": 3, "stsb": 5, "sst2": 3}
GRID_LR = 1e-3
BATCH = 32
WARMUP_RATIO = 0.06
BUCKET_BATCHES = 50
# U-LoRA's structured budget beside each budget: a matrix axis of the grid's cells.
STRUCTURED_BUDGET = {12864: 25728, 73728: 147456}

# AdaLoRA's GLUE recipe for DeBERTaV3-base (its paper's appendix): learning rate, epochs,
# orthogonality weight, tinit, tfinal, deltaT, with batch 32.
PAPER = {
    "mrpc": dict(lr=1e-3, epochs=30, orth=0.1, tinit=600, tfinal=1800, delta_t=1),
    "stsb": dict(lr=2.2e-3, epochs=25, orth=0.1, tinit=800, tfinal=2000, delta_t=10),
    "sst2": dict(lr=8e-4, epochs=24, orth=0.1, tinit=6000, tfinal=22000, delta_t=100),
}
PAPER_TRAIN_SIZE = {"mrpc": 3668, "stsb": 5749, "sst2": 67349}
ADALORA_TARGETS = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"


def read_split(tensors, name, labels_are_scores):
    ids, types, offsets = (tensors[f"{name}.{f}"].tolist() for f in ("ids", "type_ids", "offsets"))
    labels = tensors[f"{name}.labels"]
    labels = labels.float() if labels_are_scores else labels.long()
    rows = [(ids[offsets[i]:offsets[i + 1]], types[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]
    return rows, labels


def read_dataset(folder):
    """The tokenised splits of a petnas dataset artifact (outputs.safetensors + outputs.json)."""
    meta = json.loads((folder / "outputs.json").read_text())["meta"]
    tensors = load_file(str(folder / "outputs.safetensors"))
    regression = bool(meta.get("regression"))
    splits = {name: read_split(tensors, name, regression) for name in meta["splits"] if f"{name}.labels" in tensors}
    return meta, splits


def batch_rows(lengths, rng):
    """petnas's length bucketing (plugins/sdk/src/data.rs): shuffle, sort each 50 batches'
    worth by length, cut into batches, shuffle the batches."""
    rows = rng.permutation(len(lengths)).tolist()
    chunk = BATCH * BUCKET_BATCHES
    rows = [r for s in range(0, len(rows), chunk) for r in sorted(rows[s:s + chunk], key=lambda r: lengths[r])]
    batches = [rows[s:s + BATCH] for s in range(0, len(rows), BATCH)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(rows, labels, index, pad_id):
    width = max(len(rows[r][0]) for r in index)
    ids = torch.full((len(index), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(index), width), dtype=torch.long)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    for b, r in enumerate(index):
        n = len(rows[r][0])
        ids[b, :n] = torch.tensor(rows[r][0])
        types[b, :n] = torch.tensor(rows[r][1])
        mask[b, :n] = 1
    return dict(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels[index])


def scores(task, predictions, gold):
    if task == "stsb":
        return {"pearson": float(pearsonr(predictions, gold)[0]), "spearmanr": float(spearmanr(predictions, gold)[0])}
    predictions, gold = np.asarray(predictions), np.asarray(gold)
    out = {"accuracy": float((predictions == gold).mean())}
    if task == "mrpc":
        tp = float(((predictions == 1) & (gold == 1)).sum())
        fp = float(((predictions == 1) & (gold == 0)).sum())
        fn = float(((predictions == 0) & (gold == 1)).sum())
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return out


MAIN_METRIC = {"mrpc": "f1", "stsb": "pearson", "sst2": "accuracy"}


def evaluate(model, task, rows, labels, pad_id):
    model.eval()
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))
    out = [None] * len(rows)
    with torch.no_grad():
        for s in range(0, len(order), 64):
            index = order[s:s + 64]
            batch = collate(rows, labels, index, pad_id)
            batch.pop("labels")
            logits = model(**batch).logits
            values = logits.squeeze(-1) if task == "stsb" else logits.argmax(-1)
            for r, v in zip(index, values.tolist()):
                out[r] = v
    model.train()
    return scores(task, out, labels.tolist())


class ParameterBudget(RankAllocator):
    """PEFT's RankAllocator with its budget counted in parameters (see the module's doc)."""

    def __init__(self, model, peft_config, adapter_name, target_parameters):
        self.target_parameters = target_parameters
        super().__init__(model, peft_config, adapter_name)

    def _set_budget_scheduler(self, model):
        parameters = dict(model.named_parameters())
        self.cost, self.init_bgt = {}, 0
        for n, a in parameters.items():
            if f"lora_A.{self.adapter_name}" in n:
                b = parameters[n.replace("lora_A", "lora_B")]
                self.cost[n.replace("lora_A", "lora_E")] = a.shape[1] + b.shape[0] + 1
                self.init_bgt += a.shape[0] * (a.shape[1] + b.shape[0] + 1)
        self.name_set = sorted(n.replace("lora_E", "%s") for n in self.cost)
        self.target_bgt = self.target_parameters

    def triplet_scores(self, model):
        """Each triplet's importance as PEFT's mask_to_budget combines it: the score of its
        Lambda entry plus the mean scores of its Q row and P column."""
        parts = {}
        for n, _ in model.named_parameters():
            for name, dim in (("lora_A", 1), ("lora_B", 0)):
                if f"{name}.{self.adapter_name}" in n:
                    parts.setdefault(n.replace(name, "lora_E"), []).append(self._element_score(n).mean(dim=dim).view(-1))
        out = {}
        for n, _ in model.named_parameters():
            if f"lora_E.{self.adapter_name}" in n:
                out[n] = self._element_score(n).view(-1) + sum(parts[n])
        return out

    def mask_to_budget(self, model, budget):
        triplets = self.triplet_scores(model)
        ranked = sorted(((float(s), n, i) for n, v in triplets.items() for i, s in enumerate(v.tolist())), reverse=True)
        keep = {n: torch.zeros(len(v), dtype=torch.bool) for n, v in triplets.items()}
        spent = 0
        for _, n, i in ranked:
            if spent + self.cost[n] <= budget:
                keep[n][i] = True
                spent += self.cost[n]
        rank_pattern = {}
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in keep:
                    p.masked_fill_(~keep[n].view(-1, 1).to(p.device), 0.0)
                    rank_pattern[n] = keep[n].tolist()
        return rank_pattern


def kept_parameters(rank_pattern, allocator):
    """P, Lambda and Q of the triplets kept (their Lambda entries are not masked to 0)."""
    return sum(sum(rank_pattern[n]) * allocator.cost[n] for n in allocator.cost)


def schedule(task, total_steps):
    """AdaLoRA's paper schedule for the task, scaled to this run's steps."""
    p = PAPER[task]
    paper_steps = p["epochs"] * math.ceil(PAPER_TRAIN_SIZE[task] / BATCH)
    scale = total_steps / paper_steps
    return dict(tinit=round(p["tinit"] * scale), tfinal=round(p["tfinal"] * scale),
                deltaT=max(1, round(p["delta_t"] * scale)), orth_reg_weight=p["orth"], beta1=0.85, beta2=0.85)


def init_rank(budget, per_rank):
    """b(0) = 1.5 b(T), in whole ranks per matrix, at least one."""
    return max(1, math.ceil(1.5 * budget / per_rank))


def train(task, method, budget, lr, seed, train_split, eval_splits, pad_id, num_labels, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows, labels = train_split
    lengths = [len(r[0]) for r in rows]
    epochs = EPOCHS[task]
    steps_per_epoch = math.ceil(len(rows) / BATCH)
    total = steps_per_epoch * epochs
    model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=num_labels)
    record = {"method": method, "lr": lr, "epochs": epochs, "total_steps": total, "seed": seed}
    if method == "adalora":
        per_rank = sum(m.in_features + m.out_features + 1 for name, m in model.named_modules()
                       if isinstance(m, torch.nn.Linear) and re.fullmatch(ADALORA_TARGETS, name))
        plan = schedule(task, total)
        config = AdaLoraConfig(init_r=init_rank(budget, per_rank), target_r=1, lora_alpha=16, lora_dropout=0.0,
                               target_modules=ADALORA_TARGETS, task_type="SEQ_CLS", total_step=total, **plan)
        model = get_peft_model(model, config)
        allocator = ParameterBudget(model.base_model.model, config, "default", budget)
        model.base_model.rankallocator = allocator
        record.update(plan, init_r=config.init_r, lora_alpha=16, target_parameters=budget,
                      init_parameters=allocator.init_bgt)
    else:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"],
                                                 task_type="SEQ_CLS"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    lr_schedule = get_linear_schedule_with_warmup(opt, round(WARMUP_RATIO * total), total)
    model.train()
    started = time.monotonic()
    step = 0
    for _ in range(epochs):
        for index in batch_rows(lengths, rng):
            loss = model(**collate(rows, labels, index, pad_id)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            lr_schedule.step()
            step += 1
            if method == "adalora":
                model.base_model.update_and_allocate(step)
            opt.zero_grad()
    train_seconds = time.monotonic() - started
    head = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" in n)
    if method == "adalora":
        pattern = model.peft_config["default"].rank_pattern
        pet = kept_parameters(pattern, allocator)
        record["ranks"] = {n.split(".lora_E")[0]: sum(k) for n, k in sorted(pattern.items())}
    else:
        pet = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    started = time.monotonic()
    splits = {name: evaluate(model, task, r, l, pad_id) for name, (r, l) in eval_splits.items()}
    eval_seconds = time.monotonic() - started
    plm = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and "classifier" not in n)
    return record, {
        "metric": MAIN_METRIC[task],
        "parameters": {"head": head, "pet": pet, "pet_percent_of_plm": 100.0 * pet / plm, "plm": plm},
        "splits": splits,
        "task": task,
        "train_seconds": train_seconds,
        "train_samples_per_second": len(rows) * epochs / train_seconds,
        "eval_seconds": eval_seconds,
    }


def write_cell(folder, record, metrics, main_split):
    """Writes the cell's stage folder whole, or not at all."""
    metrics["value"] = metrics["splits"][main_split][metrics["metric"]]
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (tmp / "stage.json").write_text(json.dumps({"kind": "peft.adalora", "script": "scripts/bench/adalora_cells.py",
                                                "seed": record["seed"], "options": record}, indent=2, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def cell_name(task, seed, budget, extra=""):
    return f"task={task},epochs={EPOCHS[task]},seed={seed},budget={budget},structured_budget={STRUCTURED_BUDGET[budget]}{extra}"


def data_folder(data_run, task, seed, stage):
    folder = data_run / f"task={task},seed={seed}" / stage
    if not (folder / "outputs.safetensors").is_file():
        sys.exit(f"{folder}: no dataset artifact; run pipelines/adalora-data.yaml first (see its header)")
    return folder


def pipeline_dir(out, name):
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    run = folder / "run.json"
    if not run.exists():
        run.write_text(json.dumps({"pipeline": name, "file": "scripts/bench/adalora_cells.py", "status": "done"}, indent=1))
    return folder


def chosen_lr(out, task, budget):
    """The candidate rate with the best validation value of seed 1 (ties: the lower rate);
    the only one where the paper's rate is the grid's."""
    candidates = candidate_rates(task)
    if len(candidates) == 1:
        return candidates[0]
    folder = out / f"{PIPELINE}-selection"
    best = None
    for lr in candidates:
        m = folder / cell_name(task, 1, budget, f",lr={lr:g}") / "adalora" / "metrics.json"
        if not m.exists():
            sys.exit(f"{m}: missing; run the select phase first")
        value = json.loads(m.read_text())["value"]
        if best is None or value > best[1]:
            best = (lr, value)
    return best[0]


def candidate_rates(task):
    return sorted({GRID_LR, PAPER[task]["lr"]})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["select", "final", "lora"])
    parser.add_argument("--data", type=Path, required=True, help="the run folder of pipelines/adalora-data.yaml")
    parser.add_argument("--out", type=Path, required=True, help="the runs folder the cells are written to")
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "stsb", "sst2"], choices=sorted(EPOCHS))
    parser.add_argument("--budgets", nargs="+", type=int, default=[12864, 73728], choices=sorted(STRUCTURED_BUDGET))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for task in args.tasks:
        for budget in args.budgets if args.phase != "lora" else [73728]:
            if args.phase == "select":
                candidates = candidate_rates(task)
                jobs = [(1, lr, f",lr={lr:g}") for lr in candidates if len(candidates) > 1]
                folder = pipeline_dir(args.out, f"{PIPELINE}-selection")
            else:
                lr = chosen_lr(args.out, task, budget) if args.phase == "final" else GRID_LR
                jobs = [(seed, lr, "") for seed in args.seeds]
                folder = pipeline_dir(args.out, PIPELINE if args.phase == "final" else f"{PIPELINE}-lora")
            for seed, lr, extra in jobs:
                method = "adalora" if args.phase != "lora" else "peft_lora_r8"
                stage = folder / cell_name(task, seed, budget, extra) / method
                if (stage / "metrics.json").exists():
                    continue
                stage_name = "data_select" if args.phase == "select" else "data"
                meta, splits = read_dataset(data_folder(args.data, task, seed, stage_name))
                main_split = "validation" if args.phase == "select" else "dev"
                evals = {main_split: splits[main_split]}
                num_labels = 1 if meta.get("regression") else len(meta["labels"])
                record, metrics = train(task, method, budget, lr, seed, splits["train"], evals,
                                        int(meta.get("pad_id", 0)), num_labels, args.threads)
                stage.parent.mkdir(parents=True, exist_ok=True)
                write_cell(stage, record, metrics, main_split)
                print(json.dumps({"cell": stage.parent.name, "method": method, "lr": lr, "value": metrics["value"],
                                  "pet": metrics["parameters"]["pet"], "train_seconds": round(metrics["train_seconds"])}),
                      flush=True)


if __name__ == "__main__":
    main()
