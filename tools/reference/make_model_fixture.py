#!/usr/bin/env python3
"""Writes the reference embeddings fixture for sentence-transformers/all-MiniLM-L6-v2.

Encodes a deterministic, varied list of texts with the real sentence-transformers library
(CPU, fp32) and writes texts, embeddings and post-truncation token counts as JSON, which the
Rust tests in crates/embedfleet-model compare against.

Run with the reference venv (tools/reference/setup-venv.sh):
    ~/.cache/embedfleet/reference-venv/bin/python tools/reference/make_model_fixture.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / ".deps" / "all-MiniLM-L6-v2"
DEFAULT_OUTPUT = (
    REPO_ROOT / "crates" / "embedfleet-model" / "tests" / "fixtures" / "minilm_reference.json"
)
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
EXPECTED_MAX_SEQ_LENGTH = 256  # from the model's sentence_bert_config.json
BATCH_SIZE = 32
MIN_TEXTS = 220

# --- Hand-written texts -------------------------------------------------------------------------

EDGE_CASES = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    " \t\n \r\n ",
    "\u00a0",  # no-break space only
    "\u200b",  # zero-width space only
    "a",
    "I",
    "?",
    "!!!",
    "...",
    "-",
    "42",
    "3.14159",
    "hello",
    "Hello",
    "HELLO",
    "hElLo WoRlD",
    "embedding",
    "Embeddings",
    "tokenization",
    "unbelievably",
    "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    # A single "word" over 100 characters: BERT word-piece turns it into one [UNK].
    "x" * 120,
    "supercalifragilisticexpialidocious" * 4,
    "  leading and trailing spaces  ",
    "multiple     internal\t\tspaces\n\nand newlines",
    "Hello, world!",
    "Hello,world!How are you?I'm fine.",
    "e.g., i.e., etc., vs. -- and/or; (parenthesised) [bracketed] {braced} <angled>",
    "\"Quoted\" 'text' with `backticks` and «guillemets» and „low quotes“",
    "It's a dog's life, isn't it? They'd've known.",
    "C'est la vie!",
    "mixed123numbers456and789letters",
    "user@example.com visited https://example.org/path?query=1&other=two#frag",
    "$100.00, 50%, #hashtag, @mention, ^caret, ~tilde, |pipe|, \\backslash\\",
    "Control\u0007chars\u0001inside\u001ftext",
    "tab\tseparated\tvalues\tline",
]

NON_ASCII = [
    # Accented Latin (precomposed and combining forms).
    "Crème brûlée",
    "naïve café résumé",
    "Ærøskøbing og Ålborg",
    "São Paulo é uma cidade enorme.",
    "Zürich, München und Köln",
    "El niño comió ñandú en Peñíscola.",
    "Łódź, Kraków i Gdańsk",
    "Dvořák a Janáček",
    "cafe\u0301 (combining acute accent)",
    "ﬁnancial ﬂow (ligatures)",
    "ＦＵＬＬＷＩＤＴＨ　ｌｅｔｔｅｒｓ　１２３",
    "Straße und Fuß",
    # CJK.
    "東京",
    "東京は日本の首都です。",
    "我喜欢机器学习和自然语言处理。",
    "北京欢迎你",
    "한국어 문장입니다.",
    "日本語とEnglishのmixed文章",
    "ひらがな カタカナ 漢字",
    # Emoji.
    "🙂",
    "🚀🚀🚀",
    "I love pizza 🍕 and ice cream 🍦!",
    "👨‍👩‍👧‍👦 family emoji with zero-width joiners",
    "🇺🇸 🇯🇵 🇫🇷 flags",
    "thumbs up 👍🏽 with skin tone",
    # Cyrillic.
    "Москва",
    "Привет, мир!",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Київ — столиця України.",
    # Arabic, Hebrew and others.
    "مرحبا",
    "مرحبا بالعالم",
    "اللغة العربية جميلة جدا.",
    "שלום עולם",
    "Γειά σου Κόσμε",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Hello Привет 你好 مرحبا שלום 🙂",
    "∀x ∈ ℝ: x² ≥ 0 — ∑ ∫ ∞ ≠ ≈ π",
]

CODE = [
    "fn main() { println!(\"Hello, world!\"); }",
    "let v: Vec<f32> = xs.iter().map(|x| x * 2.0).collect();",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tprint(i ** 2)",
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name DESC LIMIT 10;",
    "{\"key\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "<div class=\"container\"><p>Hello &amp; welcome</p></div>",
    "#!/usr/bin/env bash\nset -euo pipefail\necho \"$HOME\" | tr a-z A-Z",
    "const f = async (x) => { await fetch(`/api/${x}`); };",
    "int main(void) { int *p = NULL; return p == 0 ? 0 : 1; }",
    "git commit -m 'fix: handle empty input' && git push origin main",
    "x = [[1, 2], [3, 4]]; y = np.dot(x, x.T)  # matrix product",
]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "How do I reset my password?",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Machine learning models convert text into dense vectors.",
    "Sentence embeddings capture semantic similarity between texts.",
    "The weather today is sunny with a light breeze.",
    "Stock markets fell sharply after the announcement.",
    "Please remember to water the plants on Tuesday.",
    "THE MEETING HAS BEEN MOVED TO 3 PM!!!",
    "the meeting has been moved to 3 pm",
    "The Meeting Has Been Moved To 3 PM.",
    "Why?! Why would anyone do that?!",
    "Wait... what? No -- really?",
    "Rust's ownership model prevents data races at compile time.",
    "Embeddings are served from a fleet of GPU workers behind a message queue.",
]

LONG_PARAGRAPH = (
    "Natural language processing is a subfield of linguistics, computer science, and "
    "artificial intelligence concerned with the interactions between computers and human "
    "language, in particular how to program computers to process and analyze large amounts "
    "of natural language data. The goal is a computer capable of understanding the contents "
    "of documents, including the contextual nuances of the language within them. The "
    "technology can then accurately extract information and insights contained in the "
    "documents as well as categorize and organize the documents themselves. "
)

LONG_TEXTS = [
    LONG_PARAGRAPH * 2,  # ~180 tokens: above 128 (tokenizer.json's own default) but below 256
    LONG_PARAGRAPH * 4,  # well past 256
    LONG_PARAGRAPH * 12,  # far past 256
    " ".join(SENTENCES) * 3,
    "word " * 600,
    "東京は日本の首都であり、世界最大級の都市です。" * 30,
    "Привет, как дела? Всё хорошо, спасибо. " * 60,
    "🙂 " * 400,
    "\n".join(CODE) * 5,
    "café naïve résumé Zürich São Paulo " * 80,
    # Exact boundary cases: each " a" is one word-piece, plus [CLS] and [SEP].
    " ".join(["a"] * 253),  # 255 tokens
    " ".join(["a"] * 254),  # 256 tokens, exactly max_seq_length
    " ".join(["a"] * 255),  # 257 tokens before truncation
    " ".join(["a"] * 126),  # 128 tokens
    " ".join(["a"] * 127),  # 129 tokens
]

# --- Deterministic combinations -----------------------------------------------------------------

SUBJECTS = ["The cat", "A young engineer", "My grandmother", "The server", "Every student", "Our team"]
VERBS = ["quickly reads", "carefully repairs", "never forgets", "happily shares", "slowly uploads"]
OBJECTS = ["the old book", "a broken bicycle", "the quarterly report", "a bowl of soup", "the deployment logs", "her favourite song"]
ENDINGS = [".", "!", "?", " — again.", "... maybe."]


def combinations() -> list[str]:
    out = []
    # Every other subject/verb/object triple (90 of 180), endings cycling deterministically.
    triples = list(itertools.product(SUBJECTS, VERBS, OBJECTS))[::2]
    for i, (s, v, o) in enumerate(triples):
        out.append(f"{s} {v} {o}{ENDINGS[i % len(ENDINGS)]}")
    # Case variants of a few sentences.
    for s in SENTENCES[:8]:
        out.append(s.upper())
        out.append(s.lower())
    # Mixed-script pairs.
    for a, b in zip(SENTENCES[:6], NON_ASCII[::4]):
        out.append(f"{a} {b}")
    return out


def build_texts() -> list[str]:
    texts = EDGE_CASES + NON_ASCII + CODE + SENTENCES + LONG_TEXTS + combinations()
    seen, unique = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    return unique


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="sentence-transformers folder (default: .deps/all-MiniLM-L6-v2)")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="fixture JSON to write")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args()

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    texts = build_texts()
    assert len(texts) >= MIN_TEXTS, len(texts)

    model = SentenceTransformer(str(args.model), device="cpu")
    model.eval()
    model.float()
    if model.max_seq_length != EXPECTED_MAX_SEQ_LENGTH:
        raise SystemExit(f"unexpected max_seq_length {model.max_seq_length}, expected {EXPECTED_MAX_SEQ_LENGTH}")

    # Token counts after truncation, special tokens included, exactly as encode() sees them.
    # (model.tokenize is deprecated in favour of model.preprocess in sentence-transformers 6.)
    tokenize = getattr(model, "preprocess", None) or model.tokenize
    features = tokenize(texts)
    token_counts = [int(n) for n in features["attention_mask"].sum(dim=1).tolist()]
    # Untruncated lengths, only for the summary.
    full_lengths = [len(ids) for ids in model.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]]

    with torch.inference_mode():
        emb = model.encode(texts, batch_size=BATCH_SIZE, convert_to_numpy=True, show_progress_bar=False)
    assert emb.dtype.name == "float32" and emb.shape == (len(texts), 384), (emb.dtype, emb.shape)

    fixture = {
        "model": MODEL_ID,
        "sentence_transformers_version": sentence_transformers.__version__,
        "torch_version": torch.__version__,
        "max_seq_length": model.max_seq_length,
        "texts": texts,
        "embeddings": [[float(x) for x in row] for row in emb],
        "token_counts": token_counts,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # json uses repr(float), which round-trips the float32 values exactly.
    args.output.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")

    over = sum(1 for n in full_lengths if n > model.max_seq_length)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")
    print(f"texts: {len(texts)}, longer than max_seq_length={model.max_seq_length}: {over}, "
          f"longer than 128: {sum(1 for n in full_lengths if n > 128)}")
    print(f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
