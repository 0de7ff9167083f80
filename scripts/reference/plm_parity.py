"""Reference outputs of Hugging Face transformers for petnas's parity tests.

Run from the repository root after set-up, with transformers in the project's venv:

    .venv/bin/pip install transformers
    .venv/bin/python scripts/reference/plm_parity.py

Writes tests/fixtures/plm/:
  minilm_cases.json, minilm_hidden.safetensors   the default model (models/all-MiniLM-L6-v2):
                                                 token ids and last hidden states
  tiny-<family>/                                 small randomly initialised checkpoints saved by
                                                 transformers, each with its family's tokenizer
                                                 trained here on SST-2 sentences:
                                                   roberta     byte-level BPE (tokenizer.json)
                                                   distilbert  WordPiece (tokenizer.json)
                                                   electra     WordPiece (vocab.txt only: the
                                                               slow tokenizer's files), a
                                                               narrower embedding projected up
                                                   deberta-v3  Unigram with Metaspace
                                                               (tokenizer.json); relative
                                                               attention in log buckets, shared
                                                               keys, no absolute positions
                                                   deberta-v2  its own position projections,
                                                               no buckets, absolute positions
                                                               and token types, a projected
                                                               embedding
                                                   llama       byte-level BPE with Llama 3's
                                                               template and no padding token
                                                               (config.json names one),
                                                               grouped-query attention, llama3
                                                               rope scaling
                                                   qwen2       a Qwen2ForCausalLM (tied
                                                               embeddings): q/k/v biases, GQA,
                                                               <|endoftext|> as padding
                                                   mistral     SentencePiece-style BPE, a head
                                                               size apart from hidden/heads, a
                                                               sliding window shorter than the
                                                               cases
  <family>_cases.json, <family>_hidden.safetensors  their reference outputs (padded on the
                                                 right, as petnas pads)
  <family>_left_cases.json, …_left_hidden…       the decoders' outputs padded on the left, as
                                                 decoder users often pad

`plm_parity.py llama qwen2` remakes those families only (the others' random weights stay put);
`--references` recomputes the reference outputs of the committed checkpoints without remaking
them.
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (AutoModel, AutoTokenizer, DebertaV2Config, DebertaV2Model, DebertaV2TokenizerFast,
                          DistilBertConfig, DistilBertModel, DistilBertTokenizerFast, ElectraConfig, ElectraModel,
                          ElectraTokenizer, LlamaConfig, LlamaModel, MistralConfig, MistralModel,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, RobertaConfig, RobertaModel,
                          RobertaTokenizerFast)

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


def reference(model_dir: Path, prefix: str, padding_side: str = "right") -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token_id = json.loads((model_dir / "config.json").read_text())["pad_token_id"]
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
        # Families whose tokenizer gives no token types (DistilBERT) record none: the model
        # reads none.
        token_types = batch["token_type_ids"].tolist() if "token_type_ids" in batch else None
        with torch.no_grad():
            out = model(**batch).last_hidden_state
        cases.append({
            "max_len": case["max_len"],
            "inputs": case["inputs"],
            "input_ids": batch["input_ids"].tolist(),
            "token_type_ids": token_types,
            "attention_mask": batch["attention_mask"].tolist(),
        })
        hidden[f"case{i}"] = out.contiguous()
    name = prefix if padding_side == "right" else f"{prefix}_{padding_side}"
    record = {"model": str(model_dir.relative_to(ROOT)), "padding_side": padding_side, "cases": cases}
    (OUT / f"{name}_cases.json").write_text(json.dumps(record, indent=1, ensure_ascii=False))
    save_file(hidden, OUT / f"{name}_hidden.safetensors")


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


def training_text() -> list:
    return sst2_sentences(2000) + [c[0] for case in CASES for c in case["inputs"]] + \
        [c[1] for case in CASES for c in case["inputs"] if c[1]]


def wordpiece(special: list) -> Tokenizer:
    """A lower-casing WordPiece tokenizer with BERT's template, as BERT-style families use."""
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    wp.train_from_iterator(training_text(), trainers.WordPieceTrainer(vocab_size=300, special_tokens=special))
    cls, sep = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return wp


BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save(model, tokenizer, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def tiny_distilbert(target: Path) -> None:
    wp = wordpiece(BERT_SPECIAL)
    tokenizer = DistilBertTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                        cls_token="[CLS]", mask_token="[MASK]", model_max_length=64)
    config = DistilBertConfig(vocab_size=wp.get_vocab_size(), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                              max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(1)
    save(DistilBertModel(config), tokenizer, target)


def tiny_electra(target: Path) -> None:
    wp = wordpiece(BERT_SPECIAL)
    target.mkdir(parents=True, exist_ok=True)
    # Only the slow tokenizer's files: vocab.txt, read as ELECTRA's vocabulary.
    vocab = sorted(wp.get_vocab().items(), key=lambda kv: kv[1])
    (target / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab))
    tokenizer = ElectraTokenizer(vocab_file=str(target / "vocab.txt"), model_max_length=64)
    config = ElectraConfig(vocab_size=len(vocab), embedding_size=16, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(2)
    model = ElectraModel(config)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "tokenizer.json").unlink(missing_ok=True)


def unigram(special: list) -> Tokenizer:
    """A SentencePiece-style Unigram tokenizer with DeBERTa's template."""
    ug = Tokenizer(models.Unigram())
    ug.normalizer = normalizers.Sequence([normalizers.Replace("``", '"'), normalizers.Replace("''", '"')])
    ug.pre_tokenizer = pre_tokenizers.Metaspace()
    ug.decoder = decoders.Metaspace()
    ug.train_from_iterator(training_text(), trainers.UnigramTrainer(vocab_size=300, special_tokens=special, unk_token="[UNK]"))
    cls, sep = ug.token_to_id("[CLS]"), ug.token_to_id("[SEP]")
    ug.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return ug


def deberta_tokenizer() -> DebertaV2TokenizerFast:
    ug = unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"])
    return DebertaV2TokenizerFast(tokenizer_object=ug, bos_token="[CLS]", eos_token="[SEP]", unk_token="[UNK]",
                                  sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                                  model_max_length=64)


def tiny_deberta_v3(target: Path) -> None:
    tokenizer = deberta_tokenizer()
    config = DebertaV2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=64, type_vocab_size=0,
                             relative_attention=True, position_buckets=8, max_relative_positions=16,
                             norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                             position_biased_input=False, pad_token_id=0, layer_norm_eps=1e-7)
    torch.manual_seed(3)
    save(DebertaV2Model(config), tokenizer, target)


def tiny_deberta_v2(target: Path) -> None:
    tokenizer = deberta_tokenizer()
    config = DebertaV2Config(vocab_size=len(tokenizer), hidden_size=32, embedding_size=24, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                             type_vocab_size=2, relative_attention=True, position_buckets=-1,
                             max_relative_positions=8, share_att_key=False, pos_att_type="c2p|p2c",
                             position_biased_input=True, pad_token_id=0, layer_norm_eps=1e-7)
    torch.manual_seed(4)
    save(DebertaV2Model(config), tokenizer, target)


def byte_level_bpe(special: list) -> Tokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(training_text(), trainer)
    return bpe


def tiny_llama(target: Path) -> None:
    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    bpe = byte_level_bpe([bos, eos])
    bpe.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                      special_tokens=[(bos, bpe.token_to_id(bos))]),
    ])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos, model_max_length=64)
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rms_norm_eps=1e-5, bos_token_id=bpe.token_to_id(bos), eos_token_id=bpe.token_to_id(eos),
                         pad_token_id=bpe.token_to_id(eos), tie_word_embeddings=True,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 16})
    torch.manual_seed(5)
    save(LlamaModel(config), tokenizer, target)


def tiny_qwen2(target: Path) -> None:
    eos = "<|endoftext|>"
    bpe = byte_level_bpe([eos, "<|im_start|>", "<|im_end|>"])
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, pad_token=eos, model_max_length=64)
    config = Qwen2Config(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rms_norm_eps=1e-6, eos_token_id=bpe.token_to_id(eos), tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    torch.manual_seed(6)
    save(Qwen2ForCausalLM(config), tokenizer, target)


def tiny_mistral(target: Path) -> None:
    special = ["<unk>", "<s>", "</s>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    bpe.train_from_iterator(training_text(), trainers.BpeTrainer(vocab_size=600, special_tokens=special + bytes_))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s>:1 $B:1",
                                                       special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<unk>", model_max_length=64)
    config = MistralConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                           rms_norm_eps=1e-5, sliding_window=4, bos_token_id=1, eos_token_id=2,
                           tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(7)
    save(MistralModel(config), tokenizer, target)


FAMILIES = {
    "roberta": tiny_roberta,
    "distilbert": tiny_distilbert,
    "electra": tiny_electra,
    "deberta-v3": tiny_deberta_v3,
    "deberta-v2": tiny_deberta_v2,
    "llama": tiny_llama,
    "qwen2": tiny_qwen2,
    "mistral": tiny_mistral,
}


DECODERS = ["llama", "qwen2", "mistral"]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:]
    keep_checkpoints = "--references" in args
    only = [a for a in args if a != "--references"]
    if not only:
        reference(ROOT / "models" / "all-MiniLM-L6-v2", "minilm")
    for family, make in FAMILIES.items():
        if only and family not in only:
            continue
        target = OUT / f"tiny-{family}"
        if not keep_checkpoints:
            make(target)
        reference(target, family.replace("-", "_"))
        if family in DECODERS:
            reference(target, family, padding_side="left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
