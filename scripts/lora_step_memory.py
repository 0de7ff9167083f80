"""Peak memory of one LoRA training step on a Llama shape, computed from the shapes.

    python3 scripts/lora_step_memory.py            # the README's table (batch 8 x 512 tokens)

What a step holds at its peak, the end of the forward pass, as petnas runs a decoder (the
frozen base in bf16, `plm.load`'s default for bf16 checkpoints; LoRA and the head in fp32):
  - the frozen weights, 2 bytes each;
  - the trainable parameters with their gradient and AdamW's two moments, 16 bytes each;
  - per layer, the tensors autograd keeps for the backward pass. With frozen weights a
    linear layer keeps nothing of its input (the weight gradient is not needed); LoRA keeps
    the input of each adapted projection (once for projections that read the same tensor). RMSNorm runs in fp32 (as LlamaRMSNorm) and keeps
    its fp32 input; fused attention keeps q, the repeated k and v, and its output (no
    len x len scores); the SwiGLU MLP keeps gate, silu(gate) and up.
  - With `gradient_checkpointing: true`, one hidden state per layer instead, plus one layer's
    tensors while it is recomputed.
Embedding lookups, the head and the loss hold a few MB and are left out.
"""

SHAPES = {
    # config.json of meta-llama/Llama-3.2-1B and meta-llama/Llama-2-7b-hf
    "Llama 1B (Llama-3.2-1B)": dict(hidden=2048, layers=16, heads=32, kv_heads=8, inter=8192, vocab=128256, tied=True),
    "Llama 7B (Llama-2-7b)": dict(hidden=4096, layers=32, heads=32, kv_heads=32, inter=11008, vocab=32000, tied=False),
}
BATCH, TOKENS, RANK = 8, 512, 8
GIB = 2 ** 30


def step_memory(s: dict, targets: list) -> dict:
    d, f, L = s["hidden"], s["inter"], s["layers"]
    kv = d // s["heads"] * s["kv_heads"]
    shapes = {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
              "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    per_layer = sum(i * o for i, o in shapes.values()) + 2 * d
    frozen = L * per_layer + s["vocab"] * d * (1 if s["tied"] else 2) + d
    lora = L * sum(RANK * (shapes[t][0] + shapes[t][1]) for t in targets)
    t = BATCH * TOKENS
    bf16, fp32 = 2, 4
    # Projections that read one tensor keep it once: q, k, v the normed input; gate, up the
    # normed residual.
    inputs = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "attn_out",
              "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "mlp_inner"}
    read = {inputs[n]: shapes[n][0] for n in targets}
    lora_inputs = sum(t * width * bf16 for width in read.values())
    saved = (2 * t * d * fp32          # the two RMSNorms' fp32 inputs
             + 4 * t * d * bf16        # attention: q, k and v repeated to every head, output
             + 3 * t * f * bf16        # gate, silu(gate), up
             + lora_inputs)
    weights = frozen * bf16 + lora * 16
    return {
        "parameters": frozen,
        "lora": lora,
        "weights": weights,
        "plain": weights + L * saved,
        "checkpointed": weights + L * t * d * bf16 + saved,
    }


def main() -> None:
    qv, seven = ["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    print(f"| shape | LoRA r={RANK} on | weights + optimizer | peak, plain | peak, gradient_checkpointing |")
    print("|---|---|---:|---:|---:|")
    for name, shape in SHAPES.items():
        for targets, label in [(qv, "q, v"), (seven, "all seven")]:
            m = step_memory(shape, targets)
            print(f"| {name}, {m['parameters'] / 1e9:.2f} B | {label} ({m['lora'] / 1e6:.1f} M) "
                  f"| {m['weights'] / GIB:.1f} GiB | {m['plain'] / GIB:.1f} GiB | {m['checkpointed'] / GIB:.1f} GiB |")


if __name__ == "__main__":
    main()
