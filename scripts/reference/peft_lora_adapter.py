"""Trains a LoRA adapter with PEFT, as a user does before bringing it into petnas (`pet.load`),
and writes beside it the logits PEFT gives on a few inputs (`check.json`, the layout of
`pet.export`'s), which petnas must reproduce from the folder.

    .venv/bin/python scripts/reference/peft_lora_adapter.py BASE OUT

BASE is a Hugging Face checkpoint folder (the tests use tests/fixtures/plm/tiny-roberta). The
adapter uses what petnas must read: several target modules, a rank_pattern and an
alpha_pattern, use_rslora, dropout, and a two-label classifier in modules_to_save.
"""
import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification


def main():
    base, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["query", "value", "dense"],
                        rank_pattern={"value": 2}, alpha_pattern={"dense": 3}, use_rslora=True,
                        task_type="SEQ_CLS")
    model = get_peft_model(model, config)
    vocab = model.config.vocab_size
    inputs = torch.randint(5, vocab, (8, 12))
    mask = torch.ones_like(inputs)
    mask[4:, 9:] = 0
    labels = torch.randint(0, 2, (8,))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(5):
        model(input_ids=inputs, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=inputs, attention_mask=mask).logits
    model.save_pretrained(out)
    check = {
        "input_ids": inputs.tolist(),
        "token_type_ids": torch.zeros_like(inputs).tolist(),
        "attention_mask": mask.tolist(),
        "logits": logits.tolist(),
    }
    (out / "check.json").write_text(json.dumps(check))
    print(json.dumps({"adapter": str(out), "keys": sorted(json.loads((out / "adapter_config.json").read_text()))}))


if __name__ == "__main__":
    main()
