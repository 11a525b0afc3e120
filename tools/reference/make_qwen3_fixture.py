#!/usr/bin/env python3
"""Writes the Qwen3 reference fixture for crates/embedfleet-model (tests/fixtures/qwen3/ and
qwen3_reference.json), as make_modernbert_fixture.py does for ModernBERT.

The model is transformers' own Qwen3Model with random weights in Qwen/Qwen3-Embedding-0.6B's configuration
(no biases, silu SwiGLU, RMSNorm eps 1e-6, per-head q_norm / k_norm, rotary theta 1,000,000, grouped-query
attention with half as many key/value heads as query heads) but 3 layers, hidden 64, 4 query heads and 2
key/value heads of 16 dimensions, intermediate 96. Every norm weight is moved off 1 so a norm the Rust side
skipped shows in the embeddings. It is saved by sentence-transformers 6.2 as Qwen3-Embedding-0.6B's folder
is: last-token pooling, Normalize, the `query` prompt "Instruct: Given a web search query, retrieve relevant
passages that answer the query\\nQuery:" and an empty `document` prompt; max_seq_length 512 (the real one is
longer) so the long texts are truncated. config.json is written in the hub's keys (rope_theta, rope_scaling:
null, use_sliding_window: false), which real checkpoints carry; transformers 5 reads it into rope_parameters,
and the script checks it built the same rotary base.

Tokenizer: no PyPI package ships Qwen's tokenizer, so a byte-level BPE is trained with the `tokenizers`
library in Qwen2's configuration: NFC, Qwen2's regex split (isolated) then ByteLevel without a prefix space
and without its own regex, the BPE vocabulary first and Qwen's special tokens <|endoftext|>, <|im_start|>,
<|im_end|> after it, and the post-processor Qwen3-Embedding's tokenizer.json has, which appends
<|endoftext|> to every text. It is saved as a Qwen2Tokenizer with padding_side left and <|endoftext|> as the
pad token, as Qwen3-Embedding's is; transformers 5 rebuilds such a tokenizer from its class and keeps the
file's post-processor, and the script checks the two agree. Training text: the sample corpus and
pycountry's names in 160-odd languages, as for the other trained tokenizers.

Besides the embeddings it stores the embeddings with the `query` prompt (as `encode(prompt_name="query")`
and the evaluator's `query_prompt_name="query"` give them) and the first-step MNRL loss on the fixed batch
of 8 pairs, without a prompt and with the query prompt on the anchors (the trainer's `prompts` argument).

    ~/.cache/embedfleet/reference-venv/bin/python tools/reference/make_qwen3_fixture.py

The same builders make the 0.6B-sized random model of tools/bench/encode_bench.py --family qwen3 and of the
fine-tuning memory measurement (`base_model_folder`).
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

# Qwen/Qwen3-Embedding-0.6B's config.json (the fields Qwen3Model reads).
QWEN3_EMBEDDING_CONFIG = dict(
    vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
    attention_bias=False, attention_dropout=0.0, rope_theta=1000000.0, use_sliding_window=False, sliding_window=None,
    max_window_layers=28, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643,
)
TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96,
            num_hidden_layers=3, initializer_range=0.08)
QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
PROMPTS = {"query": QUERY_PROMPT, "document": ""}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2Tokenizer's pre-tokenizer regex (transformers' tokenization_qwen2.PRETOKENIZE_REGEX).
QWEN2_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
MAX_SEQ_LENGTH = 512
SEED = 18
BPE_VOCAB = 1000  # byte alphabet + merges; small, so the fixture stays a few hundred KB
PROMPTED_TEXTS = 243


def qwen_tokenizer(dest: Path):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, Qwen2Tokenizer

    tok = Tokenizer(models.BPE(dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, min_frequency=2, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(multilingual_lines(), trainer=trainer)
    vocab = tok.get_vocab()
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]

    # Qwen2Tokenizer as the hub's Qwen3-Embedding tokenizer_config.json configures it.
    # <|endoftext|> first, so the special tokens get Qwen's order right after the BPE vocabulary;
    # the end-of-sequence token is <|im_end|>, as in the hub's tokenizer_config.json.
    fast = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|endoftext|>",
                          pad_token="<|endoftext|>", padding_side="left", model_max_length=32768,
                          clean_up_tokenization_spaces=False, errors="replace", split_special_tokens=False)
    fast.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[1:]])
    fast.eos_token = "<|im_end|>"
    eot = fast.convert_tokens_to_ids("<|endoftext|>")
    assert [fast.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [len(vocab), len(vocab) + 1, len(vocab) + 2]
    # Qwen3-Embedding's tokenizer.json appends <|endoftext|>, whose last hidden state is the embedding.
    fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A:0 <|endoftext|>:0", pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", eot)])
    fast.save_pretrained(str(dest))
    config = json.loads((dest / "tokenizer_config.json").read_text())
    assert config.get("tokenizer_class") == "Qwen2Tokenizer" and config.get("padding_side") == "left", config

    # The tokenizer transformers loads from the folder (rebuilt from its class) must be the file's.
    loaded = AutoTokenizer.from_pretrained(str(dest))
    raw = Tokenizer.from_file(str(dest / "tokenizer.json"))
    texts = build_texts()
    for text in texts:
        assert loaded(text)["input_ids"] == raw.encode(text).ids, text
    assert loaded("a b")["input_ids"][-1] == eot
    return loaded


def hf_model(tok, size: str = "tiny"):
    import torch
    from transformers import Qwen3Config, Qwen3Model

    shape = dict(QWEN3_EMBEDDING_CONFIG)
    if size == "tiny":
        shape.update(TINY)
        shape["vocab_size"] = len(tok)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    shape.update(bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(SEED)
    model = Qwen3Model(Qwen3Config(**shape))
    assert model.config.layer_types == ["full_attention"] * shape["num_hidden_layers"]
    assert model.config.rope_parameters == {"rope_type": "default", "rope_theta": 1000000.0}, model.config.rope_parameters
    if size == "tiny":
        with torch.no_grad():
            for name, p in model.named_parameters():
                # Every 1-D parameter is a norm weight (no biases): move them off 1.
                if p.dim() == 1:
                    assert name.endswith("norm.weight"), name
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.eval()
    return model


def hub_style_config(folder: Path):
    """Rewrites config.json with the rotary keys real Qwen3 checkpoints carry instead of transformers 5's."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    rope = config.pop("rope_parameters")
    assert rope == {"rope_type": "default", "rope_theta": 1000000.0}, rope
    config["rope_theta"] = rope["rope_theta"]
    config["rope_scaling"] = None
    config.pop("layer_types", None)
    config["use_sliding_window"] = False
    config["sliding_window"] = None
    config["max_window_layers"] = QWEN3_EMBEDDING_CONFIG["max_window_layers"]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def sentence_transformer(hf_dir: Path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(hf_dir), max_seq_length=MAX_SEQ_LENGTH)
    loaded = transformer.auto_model.config
    assert loaded.rope_parameters == {"rope_type": "default", "rope_theta": 1000000.0}, loaded.rope_parameters
    assert loaded.layer_types == ["full_attention"] * loaded.num_hidden_layers
    dim = transformer.get_embedding_dimension()
    return SentenceTransformer(modules=[transformer, Pooling(dim, pooling_mode="lasttoken"), Normalize()],
                               device="cpu", prompts=PROMPTS)


def save_folder(hf_dir: Path, out: Path):
    shutil.rmtree(out, ignore_errors=True)
    sentence_transformer(hf_dir).save(str(out))
    (out / "README.md").unlink(missing_ok=True)
    hub_style_config(out)  # saving wrote transformers 5's keys back


def base_model_folder(dest: Path) -> Path:
    """A random-weight sentence-transformers folder of Qwen3-Embedding-0.6B's size (28 layers, hidden 1,024,
    16 query and 8 key/value heads of 128, intermediate 3,072, 151,669 vocabulary rows, tied embeddings)
    with the trained tokenizer, for benchmarks. About 2.4 GB in fp32."""
    if (dest / "modules.json").exists():
        return dest
    with tempfile.TemporaryDirectory(prefix="bench-model.") as tmp:
        work = Path(tmp)
        hf_dir = work / "hf"
        tok = qwen_tokenizer(hf_dir)
        hf_model(tok, "base").save_pretrained(str(hf_dir))
        partial = dest.with_name(dest.name + ".partial")
        save_folder(hf_dir, partial)
        partial.rename(dest)
    return dest


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    torch.set_num_threads(1)
    texts = build_texts()
    with tempfile.TemporaryDirectory(prefix="qwen3-fixture.") as tmp:
        work = Path(tmp)
        hf_dir = work / "hf"
        tok = qwen_tokenizer(hf_dir)
        model = hf_model(tok)
        model.save_pretrained(str(hf_dir))
        hub_style_config(hf_dir)

        out = FIXTURES / "qwen3"
        save_folder(hf_dir, out)
        st = load_st(out)
        assert st.max_seq_length == MAX_SEQ_LENGTH, st.max_seq_length
        assert st.prompts["query"] == QUERY_PROMPT, st.prompts
        assert st[0].tokenizer.padding_side == "left"
        ids = token_ids(st, texts)
        say(f"{sum(len(i) == MAX_SEQ_LENGTH for i in ids)} of {len(texts)} texts reach max_seq_length; "
            f"tokenizer has {len(st[0].tokenizer)} tokens")
        # Left padding: in a padded batch the shorter rows start with <|endoftext|> pads.
        batch = st.preprocess(["a", "a much longer text than the first"])
        assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1, batch

        prompted = texts[:PROMPTED_TEXTS]
        mnrl = first_step_mnrl(out, MNRL_PAIRS)
        prompted_pairs = [(QUERY_PROMPT + a, p) for a, p in MNRL_PAIRS]
        with_prompt = first_step_mnrl(out, prompted_pairs)
        mnrl["query_prompt"] = QUERY_PROMPT
        mnrl["loss_with_query_prompt"] = with_prompt["loss"]
        fixture = {
            "family": "qwen3", **versions(), "tokenizer": "byte-level BPE trained by make_qwen3_fixture.py",
            "max_seq_length": st.max_seq_length, "texts": texts, "token_ids": ids, "embeddings": embed(st, texts),
            "prompted": {"prompt_name": "query", "embeddings": embed(st, prompted, prompt=QUERY_PROMPT)},
            "mnrl": mnrl,
        }
        # encode(prompt_name="query") is the same as the prompt given as text.
        by_name = st.encode(prompted, prompt_name="query", batch_size=32, convert_to_numpy=True)
        assert float(abs(by_name - np.asarray(fixture["prompted"]["embeddings"], dtype=np.float32)).max()) == 0.0
        write_json(FIXTURES / "qwen3_reference.json", fixture)
    return 0


if __name__ == "__main__":
    sys.exit(main())
