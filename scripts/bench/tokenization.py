"""Benchmark: reading, tokenising and batching SST-2's training split (67,349 sentences) —
petnas (`petnas glue-throughput`) against the Python `tokenizers` package with the same
tokenizer.json, truncation to 128 tokens and batches of 32 padded to their longest — in one run
on this machine. Prints sentences/s for both.

    scripts/bench/tokenize.sh
"""
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]


def python_side(glue: Path, model: Path, max_len=128, batch_size=32):
    started = time.perf_counter()
    lines = (glue / "SST-2" / "train.tsv").read_text().split("\n")[1:]
    sentences = [line.split("\t")[0] for line in lines if line]
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_len)
    encodings = tokenizer.encode_batch(sentences)
    order = np.random.default_rng(0).permutation(len(encodings))
    tokens = sum(len(e.ids) for e in encodings)
    for start in range(0, len(order), batch_size):
        rows = [encodings[i] for i in order[start:start + batch_size]]
        width = max(len(e.ids) for e in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for b, e in enumerate(rows):
            ids[b, :len(e.ids)] = e.ids
            mask[b, :len(e.ids)] = 1
    seconds = time.perf_counter() - started
    return len(sentences), seconds, tokens


def main():
    glue = Path(os.environ.get("GLUE_DIR", ROOT.parent / "shared" / "data" / "glue"))
    model = ROOT / "models" / "all-MiniLM-L6-v2"
    out = subprocess.run([ROOT / "target" / "release" / "petnas", "glue-throughput", "--task", "sst2", "--dir", glue, "--model", model],
                         capture_output=True, text=True, check=True)
    ours = json.loads(out.stdout)
    n, seconds, tokens = python_side(glue, model)
    assert n == ours["sentences"] and tokens == ours["tokens"], (n, tokens, ours)
    print(f"SST-2 train: {n} sentences, truncation to 128 tokens, batches of 32 padded to their longest, {os.cpu_count()} cores")
    print(f"{'':28} {'sentences/s':>12} {'seconds':>8}")
    print(f"{'petnas':28} {ours['sentences_per_second']:12.0f} {ours['seconds']:8.2f}")
    print(f"{'Python tokenizers + numpy':28} {n / seconds:12.0f} {seconds:8.2f}")
    print(f"petnas / Python: {ours['sentences_per_second'] / (n / seconds):.2f}")


if __name__ == "__main__":
    main()
