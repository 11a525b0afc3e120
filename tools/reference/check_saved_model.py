#!/usr/bin/env python3
"""Checks that a sentence-transformers folder saved by the Rust side reproduces the reference fixture.

Loads the folder with the real sentence-transformers library (CPU, fp32), encodes the fixture's
texts and compares against the fixture's embeddings. Exits 1 when the minimum cosine similarity is
below 0.99999, the maximum absolute difference is above 1e-4, or loading the folder logged any
warning (Python warnings, or transformers / sentence-transformers log records at WARNING or above,
such as "weights newly initialized" or a deprecated config key).

The fixture can be MiniLM's (the default) or a family fixture from make_family_fixtures.py
(mpnet_reference.json, xlm_roberta_reference.json, bert_st6_reference.json).

    ~/.cache/embedfleet/reference-venv/bin/python tools/reference/check_saved_model.py \
        --saved PATH/TO/SAVED --fixture crates/embedfleet-model/tests/fixtures/minilm_reference.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FIXTURE = (
    REPO_ROOT / "crates" / "embedfleet-model" / "tests" / "fixtures" / "minilm_reference.json"
)
MIN_COSINE = 0.99999
MAX_ABS_DIFF = 1e-4


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--saved", type=Path, required=True, help="sentence-transformers folder to check")
    ap.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE, help="reference fixture JSON")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    fixture = json.loads(args.fixture.read_text(encoding="utf-8"))
    texts = fixture["texts"]
    if "embeddings_from" in fixture:
        fixture["embeddings"] = json.loads((args.fixture.parent / fixture["embeddings_from"]).read_text(encoding="utf-8"))["embeddings"]
    expected = np.asarray(fixture["embeddings"], dtype=np.float32)

    import logging
    import warnings

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.records = []

        def emit(self, record):
            self.records.append(f"{record.name}: {record.getMessage()}")

    collect = Collect()
    for name in ("transformers", "sentence_transformers"):
        logging.getLogger(name).addHandler(collect)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = SentenceTransformer(str(args.saved), device="cpu")
    problems = collect.records + [f"{w.category.__name__}: {w.message}" for w in caught]
    for p in problems:
        print(f"WARNING while loading: {p}")
    model.eval()
    model.float()
    if model.max_seq_length != fixture["max_seq_length"]:
        print(f"FAIL: max_seq_length {model.max_seq_length} != fixture {fixture['max_seq_length']}")
        return 1
    with torch.inference_mode():
        got = model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
    if got.shape != expected.shape:
        print(f"FAIL: embeddings shape {got.shape} != fixture {expected.shape}")
        return 1

    got64, exp64 = got.astype(np.float64), expected.astype(np.float64)
    cos = (got64 * exp64).sum(1) / (np.linalg.norm(got64, axis=1) * np.linalg.norm(exp64, axis=1))
    abs_diff = np.abs(got64 - exp64).max(axis=1)
    worst_cos, worst_diff = int(cos.argmin()), int(abs_diff.argmax())
    print(f"texts: {len(texts)}")
    print(f"min cosine similarity: {cos.min():.9f} (text #{worst_cos}: {texts[worst_cos][:40]!r})")
    print(f"max abs difference:    {abs_diff.max():.3e} (text #{worst_diff}: {texts[worst_diff][:40]!r})")
    print(f"warnings while loading: {len(problems)}")
    ok = bool(cos.min() >= MIN_COSINE and abs_diff.max() <= MAX_ABS_DIFF and not problems)
    print(("OK" if ok else "FAIL") + f" (thresholds: min cosine >= {MIN_COSINE}, max abs diff <= {MAX_ABS_DIFF}, no warnings)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
