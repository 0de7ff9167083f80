"""Checks a `pet.export` folder on the Python side: the merged checkpoint loads with
transformers' AutoModelForSequenceClassification, and the LoRA adapter with
peft.PeftModel.from_pretrained on the user's own base model (the folder petnas loaded,
untouched; `base_model_name_or_path` names it) with the task's config from the adapter
folder (the same label names as the merged checkpoint), as the README tells users to load it; for
two-label tasks also with AutoPeftModelForSequenceClassification, which reads the base from
there. All give the logits petnas saved in check.json.

    .venv/bin/pip install transformers peft
    .venv/bin/python scripts/reference/check_peft_export.py runs/<pipeline>/<cell>/<stage>/export
"""
import json
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification


def logits_of(model, check):
    batch = {k: torch.tensor(check[k], dtype=torch.long) for k in ("input_ids", "attention_mask")}
    # Token types where the family embeds them (BERT, ELECTRA, DeBERTa with type_vocab_size).
    if getattr(model.config, "type_vocab_size", 0) > 1:
        batch["token_type_ids"] = torch.tensor(check["token_type_ids"], dtype=torch.long)
    with torch.no_grad():
        return model.eval()(**batch).logits.float()


TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main():
    export = Path(sys.argv[1])
    check = json.loads((export / "check.json").read_text())
    want = torch.tensor(check["logits"])
    # The base as petnas held it (check.json says: fp32, bf16 or fp16), and what the exports
    # promise at that precision.
    held = TORCH_DTYPES[check.get("dtype", "fp32")]
    tolerance = check.get("tolerance", 1e-4)
    worst = 0.0
    if (export / "merged").exists():
        merged = AutoModelForSequenceClassification.from_pretrained(export / "merged", dtype="auto")
        assert merged.dtype == held, f"the merged checkpoint loads as {merged.dtype}, petnas held {held}"
        diff = (logits_of(merged, check) - want).abs().max().item()
        print(f"merged checkpoint: max |logit difference| = {diff:.2e}")
        worst = max(worst, diff)
    peft_dir = export / "peft"
    if peft_dir.exists():
        from peft import PeftModel
        config = json.loads((peft_dir / "adapter_config.json").read_text())
        num_labels = len(want[0])
        # The task's label names ride in the adapter folder's config.json (PEFT reads only
        # adapter_config.json), the same as the merged checkpoint's.
        task_config = AutoConfig.from_pretrained(peft_dir)
        base = AutoModelForSequenceClassification.from_pretrained(
            config["base_model_name_or_path"], config=task_config, dtype=held
        )
        assert base.config.num_labels == num_labels, (base.config.num_labels, num_labels)
        if (export / "merged").exists():
            assert base.config.id2label == merged.config.id2label, (base.config.id2label, merged.config.id2label)
        print(f"PEFT adapter labels: {base.config.id2label}")
        if base.config.pad_token_id is None:
            # As users of decoders do: the tokenizer's padding token, for the head to find
            # the last real token (petnas's merged export writes it into config.json).
            from transformers import AutoTokenizer
            base.config.pad_token_id = AutoTokenizer.from_pretrained(config["base_model_name_or_path"]).pad_token_id
        model = PeftModel.from_pretrained(base, peft_dir)
        diff = (logits_of(model, check) - want).abs().max().item()
        print(f"PEFT adapter on the user's base model: max |logit difference| = {diff:.2e}")
        worst = max(worst, diff)
        if num_labels == 2:
            from peft import AutoPeftModelForSequenceClassification
            auto = AutoPeftModelForSequenceClassification.from_pretrained(peft_dir, dtype=held)
            if auto.config.pad_token_id is None:
                auto.config.pad_token_id = base.config.pad_token_id
            diff = (logits_of(auto, check) - want).abs().max().item()
            print(f"AutoPeftModelForSequenceClassification: max |logit difference| = {diff:.2e}")
            worst = max(worst, diff)
    if worst > tolerance:
        sys.exit(f"the exports differ from petnas by {worst:.2e}, more than the {tolerance:.0e} promised on a {check.get('dtype', 'fp32')} base")
    print("ok")


if __name__ == "__main__":
    main()
