"""Reference outputs of Hugging Face transformers for petnas's parity tests.

Run from the repository root after set-up, with transformers in the project's venv:

    .venv/bin/pip install transformers
    .venv/bin/python scripts/reference/plm_parity.py

Writes tests/fixtures/plm/:
  minilm_cases.json, minilm_hidden.safetensors   the default model (models/all-MiniLM-L6-v2):
                                                 token ids and last hidden states
  tiny-roberta/                                  a small randomly initialised RoBERTa checkpoint
                                                 (byte-level BPE tokenizer trained here on SST-2
                                                 sentences), saved by transformers
  roberta_cases.json, roberta_hidden.safetensors its reference outputs
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders
from transformers import AutoModel, AutoTokenizer, RobertaConfig, RobertaModel, RobertaTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "plm"
GLUE = ROOT.parent / "shared" / "data" / "glue"

# Each case is one batch: (first, second-or-None) pairs, tokenised with padding to the longest
# and longest-first truncation to max_len.
CASES = [
    {"max_len": 128, "inputs": [["Hello world!", None]]},
    {"max_len": 128, "inputs": [["The cat sat on the mat.", "A cat was sitting on a mat."]]},
    {
        "max_len": 24,
        "inputs": [
            ["A short one.", None],
            ["Café crème — naïve façade, ÜBER résumé!", "Accents and CAPITALS are normalised."],
            ["This premise sentence is fairly long and will certainly need to be truncated somewhere.",
             "The hypothesis is short."],
            ["\"Quoted\" words, numbers like 3.14159 and e-mail@example.com", None],
        ],
    },
]


def reference(model_dir: Path, prefix: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    cases, hidden = [], {}
    for i, case in enumerate(CASES):
        first = [a for a, _ in case["inputs"]]
        second = [b for _, b in case["inputs"]]
        has_pairs = any(b is not None for b in second)
        if has_pairs:
            # Sentence-pair batches: tokenizers take text and text_pair lists; a missing
            # second sentence is encoded alone below and padded in.
            encodings = [tokenizer(a, b, truncation=True, max_length=case["max_len"]) for a, b in case["inputs"]]
            batch = tokenizer.pad(encodings, return_tensors="pt")
        else:
            batch = tokenizer(first, truncation=True, max_length=case["max_len"], padding=True, return_tensors="pt")
        if "token_type_ids" not in batch:
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        with torch.no_grad():
            out = model(**batch).last_hidden_state
        cases.append({
            "max_len": case["max_len"],
            "inputs": case["inputs"],
            "input_ids": batch["input_ids"].tolist(),
            "token_type_ids": batch["token_type_ids"].tolist(),
            "attention_mask": batch["attention_mask"].tolist(),
        })
        hidden[f"case{i}"] = out.contiguous()
    (OUT / f"{prefix}_cases.json").write_text(json.dumps({"model": str(model_dir.relative_to(ROOT)), "cases": cases}, indent=1, ensure_ascii=False))
    save_file(hidden, OUT / f"{prefix}_hidden.safetensors")


def sst2_sentences(n: int) -> list:
    lines = (GLUE / "SST-2" / "train.tsv").read_text().splitlines()[1:n + 1]
    return [line.split("\t")[0] for line in lines]


def tiny_roberta(target: Path) -> None:
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(sst2_sentences(2000) + [c[0] for case in CASES for c in case["inputs"]], trainer)
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                     cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                     model_max_length=64)
    config = RobertaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    model = RobertaModel(config, add_pooling_layer=False)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    reference(ROOT / "models" / "all-MiniLM-L6-v2", "minilm")
    tiny_roberta(OUT / "tiny-roberta")
    reference(OUT / "tiny-roberta", "roberta")
    return 0


if __name__ == "__main__":
    sys.exit(main())
