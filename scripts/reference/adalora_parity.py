"""Checks petnas's `adalora` PET type against PEFT's AdaLoRA layer (`SVDLinear`): PEFT's
AdaLoRA on the user's base model, holding the P, E and Q of a `pet.export` folder's model
(`model/`) and its task head (from `merged/`), gives the logits petnas saved in check.json.
Sites whose rank the search cut are filled to PEFT's one rank with zero singular values, and
PEFT's `lora_alpha` is set so that its scaling (lora_alpha / ranknum) is petnas's.

    .venv/bin/python scripts/reference/adalora_parity.py runs/<pipeline>/<cell>/<export stage>
"""
import json
import sys
from pathlib import Path

import torch
from peft import AdaLoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification


def main():
    export = Path(sys.argv[1])
    check = json.loads((export / "check.json").read_text())
    meta = json.loads((export / "model" / "outputs.json").read_text())["meta"]
    tensors = load_file(export / "model" / "outputs.safetensors")
    modules = [p for p in meta["pets"] if p["type"] == "adalora"]
    assert modules and len(modules) == len(meta["pets"]), "a model of AdaLoRA modules only"

    def effective(site, name):
        value = tensors[f"pet.adalora@{site}:{name}"]
        mask = tensors.get(f"pet.adalora@{site}:mask.{name}")
        return value if mask is None else value * mask

    rank = max(effective(m["site"], "E").shape[0] for m in modules)
    scalings = {m["state"]["scaling"] for m in modules}
    assert len(scalings) == 1, f"one scaling for every site: {scalings}"
    alpha = scalings.pop() * (rank + 1e-5)

    base_dir = meta["backbone"]["info"]["dir"]
    config = AutoConfig.from_pretrained(export / "merged")
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, config=config, dtype=torch.float32)
    merged = AutoModelForSequenceClassification.from_pretrained(export / "merged", dtype=torch.float32)
    head = {k: v for k, v in merged.state_dict().items() if k.startswith(("classifier.", "score."))}
    base.load_state_dict(head, strict=False)
    sites = [m["site"] for m in modules]
    model = get_peft_model(
        base,
        AdaLoraConfig(init_r=rank, target_r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=sites,
                      total_step=1),
    )
    # petnas names a site below the backbone (`encoder.layer.0…`), PEFT below the task model.
    layers = {name: layer for name, layer in model.named_modules() if hasattr(layer, "lora_E")}
    with torch.no_grad():
        for site in sites:
            [layer] = [layer for name, layer in layers.items() if name.endswith(f".{site}")]
            p, e, q = (effective(site, n) for n in ("P", "E", "Q"))
            kept = e.shape[0]
            layer.lora_B["default"].zero_()[:, :kept] = p
            layer.lora_E["default"].zero_()[:kept] = e
            layer.lora_A["default"].zero_()[:kept] = q
    batch = {k: torch.tensor(check[k], dtype=torch.long) for k in ("input_ids", "attention_mask")}
    if getattr(config, "type_vocab_size", 0) > 1:
        batch["token_type_ids"] = torch.tensor(check["token_type_ids"], dtype=torch.long)
    want = torch.tensor(check["logits"])
    with torch.no_grad():
        logits = model.eval()(**batch).logits.float()
        with model.disable_adapter():
            without = model(**batch).logits.float()
    diff = (logits - want).abs().max().item()
    moved = (without - want).abs().max().item()
    print(f"PEFT's AdaLoRA with petnas's triplets ({len(sites)} sites, rank {rank}): max |logit difference| = "
          f"{diff:.2e} (without the triplets: {moved:.2e})")
    tolerance = check.get("tolerance", 1e-4)
    assert diff < tolerance, diff
    # The check means something only where the triplets change what the model computes.
    assert moved > 100 * tolerance, f"the triplets barely change the logits ({moved:.2e})"


if __name__ == "__main__":
    main()
