#!/usr/bin/env python3
"""Writes the ModernBERT reference fixture for crates/embedfleet-model (tests/fixtures/modernbert/ and
modernbert_reference.json), as make_family_fixtures.py does for MPNet and XLM-RoBERTa.

The model is transformers' own ModernBertModel with random weights, in Alibaba-NLP/gte-modernbert-base's
configuration (no biases, GeGLU with exact gelu, rotary theta 160,000 global / 10,000 local, every third
layer global) but 4 layers (0 and 3 global, 1 and 2 local), 32 wide, and a local window of 16 tokens so
that most of the 243 texts are longer than the window. It is saved by sentence-transformers 6.2 with CLS
pooling and Normalize, as gte-modernbert-base is, and max_seq_length 512 (gte's is 8192) so that the
long texts are truncated. config.json is written in the hub's form (global_attn_every_n_layers,
global_rope_theta, local_rope_theta), which is what real checkpoints carry; transformers 5 reads it into
layer_types / rope_parameters, and the script checks it built the same layers.

Tokenizer: no PyPI package ships ModernBERT's tokenizer (the ModernBERT packages found there are
small wheels of code only), so a byte-level BPE is trained with the `tokenizers` library in ModernBERT's
configuration: NFC normaliser, ByteLevel pre-tokenizer without a prefix space, <|endoftext|> and
<|padding|> first, the BPE vocabulary, then [UNK] [CLS] [SEP] [PAD] [MASK] (lstrip) at the end,
[CLS] $A [SEP] post-processing, no token type ids. Training text: the sample corpus and pycountry's
names in 160-odd languages, as for the XLM-RoBERTa tokenizer.

Besides the CLS embeddings it stores the same model's mean-pooled embeddings (no Normalize), which
depend on every token's hidden state, padded batches included, and the first-step MNRL loss.

    ~/.cache/embedfleet/reference-venv/bin/python tools/reference/make_modernbert_fixture.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_family_fixtures import (  # noqa: E402
    FIXTURES, MNRL_PAIRS, build_texts, embed, first_step_mnrl, load_st, multilingual_lines, say, token_ids,
    versions, write_json,
)

# Alibaba-NLP/gte-modernbert-base's config.json (the fields ModernBertModel reads).
GTE_MODERNBERT_CONFIG = dict(
    vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12,
    hidden_activation="gelu", max_position_embeddings=8192, norm_eps=1e-5, norm_bias=False, attention_bias=False,
    mlp_bias=False, attention_dropout=0.0, embedding_dropout=0.0, mlp_dropout=0.0, global_attn_every_n_layers=3,
    local_attention=128, global_rope_theta=160000.0, local_rope_theta=10000.0,
    pad_token_id=50283, bos_token_id=50281, eos_token_id=50282, cls_token_id=50281, sep_token_id=50282,
)
TINY = dict(hidden_size=32, num_attention_heads=2, intermediate_size=48, num_hidden_layers=4, local_attention=16,
            initializer_range=0.08)
LEGACY_KEYS = ("global_attn_every_n_layers", "global_rope_theta", "local_rope_theta")
MAX_SEQ_LENGTH = 512
SEED = 17
BPE_VOCAB = 8000


def modernbert_tokenizer(dest: Path):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, min_frequency=2, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(multilingual_lines(), trainer=trainer)
    specials = [AddedToken(t, special=True, normalized=False) for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]")]
    specials.append(AddedToken("[MASK]", lstrip=True, special=True, normalized=False))
    tok.add_special_tokens(specials)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
        mask_token="[MASK]", model_max_length=8192, model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=True)
    fast.save_pretrained(str(dest))
    return fast


def hf_model(tok, size: str = "tiny"):
    import torch
    from transformers import ModernBertConfig, ModernBertModel

    shape = dict(GTE_MODERNBERT_CONFIG, **TINY) if size == "tiny" else dict(GTE_MODERNBERT_CONFIG)
    if size == "tiny":
        # ModernBERT pads its vocabulary to a multiple of 64 (50,368 rows for 50,285 tokens); the base
        # size keeps the real 50,368 rows, of which the trained tokenizer uses the first 8,005.
        shape["vocab_size"] = (len(tok) + 63) // 64 * 64
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in
           [("pad_token_id", "[PAD]"), ("cls_token_id", "[CLS]"), ("bos_token_id", "[CLS]"),
            ("sep_token_id", "[SEP]"), ("eos_token_id", "[SEP]")]}
    shape.update(ids)
    torch.manual_seed(SEED)
    model = ModernBertModel(ModernBertConfig(**shape))
    if size != "tiny":
        model.eval()
        return model
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Every 1-D parameter is a norm weight (no biases): move them off 1 so a norm the Rust
            # side skipped shows in the embeddings.
            if p.dim() == 1:
                assert name.endswith("norm.weight"), name
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.eval()
    return model


def hub_style_config(folder: Path):
    """Rewrites config.json with the keys real ModernBERT checkpoints carry instead of transformers 5's."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    layer_types, rope = config.pop("layer_types"), config.pop("rope_parameters")
    n = GTE_MODERNBERT_CONFIG["global_attn_every_n_layers"]
    assert layer_types == ["full_attention" if i % n == 0 else "sliding_attention" for i in range(len(layer_types))]
    config["global_attn_every_n_layers"] = n
    config["global_rope_theta"] = rope["full_attention"]["rope_theta"]
    config["local_rope_theta"] = rope["sliding_attention"]["rope_theta"]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def base_model_folder(dest: Path) -> Path:
    """A random-weight sentence-transformers folder of gte-modernbert-base's size (22 layers, hidden 768,
    50,368 vocabulary rows) with the trained tokenizer, CLS pooling and Normalize, for benchmarks."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    if (dest / "modules.json").exists():
        return dest
    with tempfile.TemporaryDirectory(prefix="bench-model.") as tmp:
        hf_dir = Path(tmp) / "hf"
        tok = modernbert_tokenizer(hf_dir)
        hf_model(tok, "base").save_pretrained(str(hf_dir))
        hub_style_config(hf_dir)
        transformer = Transformer(str(hf_dir), max_seq_length=MAX_SEQ_LENGTH)
        dim = transformer.get_embedding_dimension()
        st = SentenceTransformer(modules=[transformer, Pooling(dim, pooling_mode="cls"), Normalize()], device="cpu")
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        st.save(str(partial))
        hub_style_config(partial)
        partial.rename(dest)
    return dest


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    torch.set_num_threads(1)
    texts = build_texts()
    with tempfile.TemporaryDirectory(prefix="modernbert-fixture.") as tmp:
        work = Path(tmp)
        hf_dir = work / "hf"
        tok = modernbert_tokenizer(hf_dir)
        model = hf_model(tok)
        model.save_pretrained(str(hf_dir))
        hub_style_config(hf_dir)

        transformer = Transformer(str(hf_dir), max_seq_length=MAX_SEQ_LENGTH)
        loaded = transformer.auto_model.config
        assert loaded.layer_types == model.config.layer_types and loaded.rope_parameters == model.config.rope_parameters
        dim = transformer.get_embedding_dimension()
        st = SentenceTransformer(modules=[transformer, Pooling(dim, pooling_mode="cls"), Normalize()], device="cpu")
        out = FIXTURES / "modernbert"
        shutil.rmtree(out, ignore_errors=True)
        st.save(str(out))
        (out / "README.md").unlink()
        hub_style_config(out)  # saving wrote transformers 5's keys back

        st = load_st(out)
        assert st.max_seq_length == MAX_SEQ_LENGTH, st.max_seq_length
        ids = token_ids(st, texts)
        window = TINY["local_attention"]
        longer = sum(len(i) > window for i in ids)
        say(f"{longer} of {len(texts)} texts are longer than the {window}-token local window; "
            f"{sum(len(i) == MAX_SEQ_LENGTH for i in ids)} reach max_seq_length")

        mean_dir = work / "mean"
        mean = SentenceTransformer(modules=[Transformer(str(out), max_seq_length=MAX_SEQ_LENGTH),
                                            Pooling(dim, pooling_mode="mean")], device="cpu")
        mean.save(str(mean_dir))
        fixture = {
            "family": "modernbert", **versions(), "tokenizer": "byte-level BPE trained by make_modernbert_fixture.py",
            "max_seq_length": st.max_seq_length, "local_attention": TINY["local_attention"], "texts": texts,
            "token_ids": ids, "embeddings": embed(st, texts),
            "mean_pooling": {"pooling_config": json.loads((mean_dir / "1_Pooling" / "config.json").read_text()),
                             "modules": json.loads((mean_dir / "modules.json").read_text()),
                             "embeddings": embed(load_st(mean_dir), texts)},
            "mnrl": first_step_mnrl(out, MNRL_PAIRS),
        }
        write_json(FIXTURES / "modernbert_reference.json", fixture)
    return 0


if __name__ == "__main__":
    sys.exit(main())
