#!/usr/bin/env python3
"""Writes the reference fixtures for crates/embedfleet-evaluator.

Runs sentence-transformers 6.2.0's InformationRetrievalEvaluator (the user's reference) and records
what it returns, the CSV it writes and how it ranked the corpus, in two cases:

  fixed  A synthetic case with FIXED 8-dimensional embeddings (served by a lookup "model"), built so
         that exact score ties are everywhere: duplicated corpus vectors, a zero vector, and integer
         vectors whose norms are powers of two (their cosine and dot scores are exact in float32, so
         any correct implementation sees the same ties). Corpus ids mix formats so that ascending
         string order differs from insertion and numeric order. Two queries have no relevant docs
         (one with an empty list, one missing from relevant_docs) and are dropped by the evaluator.
         Score functions cosine and dot, corpus_chunk_size 50 (plus checks with 8 and 1000).
  minilm A real case: `embedfleet generate --generator offline` on Debian's python3.11-doc HTML, a
         deterministic subsample of its validation split, encoded by the real all-MiniLM-L6-v2 on CPU
         with the evaluator's default configuration (score function from the model: cosine).

Before writing anything the script recomputes every metric from the ranking with an independent
implementation of the rules in tools/reference/IR_EVALUATOR_NOTES.md and asserts bit-identical
results and CSV text, so the notes and the fixtures cannot drift apart.

Usage (reference venv, see tools/reference/README.md; needs target/debug/embedfleet built and
/work/shared/tools/real-docs.sh or an equivalent --python-docs folder):

    ~/.cache/embedfleet/reference-venv/bin/python tools/reference/make_eval_fixture.py
    # options: --only fixed|minilm, --python-docs DIR, --embedfleet BIN, --model PATH, --output-dir DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

import sentence_transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator  # noqa: E402
from sentence_transformers.util import cos_sim, dot_score  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = REPO_ROOT / "crates" / "embedfleet-evaluator" / "tests" / "fixtures"
DEFAULT_MODEL = REPO_ROOT / ".deps" / "all-MiniLM-L6-v2"
DEFAULT_EMBEDFLEET = REPO_ROOT / "target" / "debug" / "embedfleet"
DEFAULT_PYTHON_DOCS = Path.home() / ".cache" / "embedfleet" / "real-docs" / "root" / "usr" / "share" / "doc" / "python3.11" / "html"

EXPECTED_ST_VERSION = "6.2.0"

# The k lists of both cases: the evaluator's defaults.
K_CONFIG = {
    "accuracy_at_k": [1, 3, 5, 10],
    "precision_recall_at_k": [1, 3, 5, 10],
    "mrr_at_k": [10],
    "ndcg_at_k": [10],
    "map_at_k": [100],
}
# A second k configuration for the fixed case: max_k = 10 < corpus_chunk_size, so torch.topk really
# cuts inside a chunk and the evaluator's boundary-tie reselection (lines 386-401) is exercised.
K_CONFIG_SMALL = {
    "accuracy_at_k": [1, 2, 3],
    "precision_recall_at_k": [1, 4, 10],
    "mrr_at_k": [5, 10],
    "ndcg_at_k": [3, 10],
    "map_at_k": [10],
}

FIXED_SEED = 20240611
FIXED_DIM = 8
FIXED_N_CORPUS = 120
FIXED_N_QUERIES = 40  # evaluated queries; 2 more without relevant docs are dropped
FIXED_CHUNK = 50

MINILM_SEED = 42
MINILM_MIN_QUERIES = 400
MINILM_CORPUS = 1200


# --------------------------------------------------------------------------------------------------
# Independent re-implementation of the evaluator's metrics (see IR_EVALUATOR_NOTES.md)
# --------------------------------------------------------------------------------------------------


def np_pairwise_sum(a: list[float]) -> float:
    """numpy's float64 pairwise summation (loops_utils.h.src, PW_BLOCKSIZE 128), as np.mean uses it."""
    n = len(a)
    if n < 8:
        res = 0.0
        for x in a:
            res += x
        return res
    if n <= 128:
        r = list(a[:8])
        i = 8
        while i < n - (n % 8):
            for j in range(8):
                r[j] += a[i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += a[i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return np_pairwise_sum(a[:n2]) + np_pairwise_sum(a[n2:])


def np_mean(a: list[float]) -> float:
    return np_pairwise_sum([float(x) for x in a]) / len(a)


def rank(scores_row: list[float], corpus_ids: list[str], max_k: int) -> list[tuple[str, float]]:
    """Global ranking: descending score, ties by ascending corpus_id (code-point order), first max_k."""
    order = sorted(range(len(corpus_ids)), key=lambda j: (-scores_row[j], corpus_ids[j]))
    return [(corpus_ids[j], scores_row[j]) for j in order[:max_k]]


def recompute_metrics(
    rankings: list[list[str]], relevant: list[set[str]], cfg: dict
) -> dict[str, dict[int, float]]:
    n = len(rankings)
    acc = {k: 0 for k in cfg["accuracy_at_k"]}
    prec = {k: [] for k in cfg["precision_recall_at_k"]}
    rec = {k: [] for k in cfg["precision_recall_at_k"]}
    mrr = {k: 0.0 for k in cfg["mrr_at_k"]}
    ndcg = {k: [] for k in cfg["ndcg_at_k"]}
    ap = {k: [] for k in cfg["map_at_k"]}

    def dcg(rels: list[int], k: int) -> float:
        d = 0.0
        for i in range(min(len(rels), k)):
            d += rels[i] / math.log2(i + 2)  # math.log2 == np.log2 for the small ints used here
        return d

    for hits, rel in zip(rankings, relevant):
        for k in acc:
            if any(c in rel for c in hits[:k]):
                acc[k] += 1
        for k in prec:
            c = sum(1 for h in hits[:k] if h in rel)
            prec[k].append(c / k)
            rec[k].append(c / len(rel))
        for k in mrr:
            for r, h in enumerate(hits[:k]):
                if h in rel:
                    mrr[k] += 1.0 / (r + 1)
                    break
        for k in ndcg:
            ndcg[k].append(dcg([1 if h in rel else 0 for h in hits[:k]], k) / dcg([1] * len(rel), k))
        for k in ap:
            c, s = 0, 0.0
            for r, h in enumerate(hits[:k]):
                if h in rel:
                    c += 1
                    s += c / (r + 1)
            ap[k].append(s / min(k, len(rel)))
    return {
        "accuracy@k": {k: v / n for k, v in acc.items()},
        "precision@k": {k: np_mean(v) for k, v in prec.items()},
        "recall@k": {k: np_mean(v) for k, v in rec.items()},
        "ndcg@k": {k: np_mean(v) for k, v in ndcg.items()},
        "mrr@k": {k: v / n for k, v in mrr.items()},
        "map@k": {k: np_mean(v) for k, v in ap.items()},
    }


def expected_csv(name_to_scores: dict[str, dict], cfg: dict) -> str:
    header = ["epoch", "steps"]
    row = ["-1", "-1"]
    for sf in sorted(name_to_scores):
        s = name_to_scores[sf]
        for k in cfg["accuracy_at_k"]:
            header.append(f"{sf}-Accuracy@{k}")
            row.append(repr(s["accuracy@k"][k]))
        for k in cfg["precision_recall_at_k"]:
            header += [f"{sf}-Precision@{k}", f"{sf}-Recall@{k}"]
            row += [repr(s["precision@k"][k]), repr(s["recall@k"][k])]
        for k in cfg["mrr_at_k"]:
            header.append(f"{sf}-MRR@{k}")
            row.append(repr(s["mrr@k"][k]))
        for k in cfg["ndcg_at_k"]:
            header.append(f"{sf}-NDCG@{k}")
            row.append(repr(s["ndcg@k"][k]))
        for k in cfg["map_at_k"]:
            header.append(f"{sf}-MAP@{k}")
            row.append(repr(s["map@k"][k]))
    return ",".join(header) + "\n" + ",".join(row) + "\n"


def expected_metrics_dict(name: str, name_to_scores: dict[str, dict]) -> dict[str, float]:
    # Key order: score functions in dict order, then accuracy, precision, recall, ndcg, mrr, map.
    out = {}
    for sf, s in name_to_scores.items():
        for metric in ["accuracy@k", "precision@k", "recall@k", "ndcg@k", "mrr@k", "map@k"]:
            for k, v in s[metric].items():
                key = f"{sf}_{metric.replace('@k', '@' + str(k))}"
                out[f"{name}_{key}" if name else key] = float(v)
    return out


# --------------------------------------------------------------------------------------------------
# Running the evaluator
# --------------------------------------------------------------------------------------------------


class _NoModelCard:
    def set_evaluation_metrics(self, *args, **kwargs) -> None:
        pass


class LookupModel:
    """Stands in for a SentenceTransformer: returns stored float32 vectors for known texts."""

    similarity_fn_name = "cosine"

    def __init__(self, table: dict[str, list[float]]):
        self.table = table
        self.model_card_data = _NoModelCard()
        self.calls: list[tuple[str, int]] = []

    def _encode(self, kind: str, sentences, **kwargs):
        assert kwargs.get("convert_to_tensor") is True
        self.calls.append((kind, len(sentences)))
        return torch.tensor([self.table[s] for s in sentences], dtype=torch.float32)

    def encode_query(self, sentences, **kwargs):
        return self._encode("query", sentences, **kwargs)

    def encode_document(self, sentences, **kwargs):
        return self._encode("document", sentences, **kwargs)

    def similarity(self, a, b):
        return cos_sim(a, b)


def run_evaluator(model, queries, corpus, relevant_docs, name, **kwargs):
    """Runs the evaluator once in a fresh directory; returns (metrics, csv_text, predictions, evaluator)."""
    with tempfile.TemporaryDirectory() as out:
        ev = InformationRetrievalEvaluator(
            queries=queries,
            corpus=corpus,
            relevant_docs=relevant_docs,
            name=name,
            write_predictions=True,
            **kwargs,
        )
        metrics = ev(model, output_path=out)
        files = sorted(os.listdir(out))
        csv_name = f"Information-Retrieval_evaluation_{name}_results.csv"
        assert csv_name in files, files
        with open(os.path.join(out, csv_name), encoding="utf-8", newline="") as f:
            csv_text = f.read()
        predictions = {}
        for fn in files:
            prefix = f"Information-Retrieval_evaluation_{name}_predictions_"
            if fn.startswith(prefix):
                sf = fn[len(prefix) : -len(".jsonl")]
                with open(os.path.join(out, fn), encoding="utf-8") as f:
                    predictions[sf] = [json.loads(line) for line in f]
    return metrics, csv_text, predictions, ev


def check_against_reimplementation(ev, metrics, csv_text, predictions, relevant_docs, cfg, name):
    """Asserts that the notes' rules reproduce ST's numbers bit for bit from ST's own ranking."""
    rel = [set(relevant_docs[q]) for q in ev.queries_ids]
    per_sf = {}
    for sf in ev.score_functions:
        preds = predictions[sf]
        assert [p["query_id"] for p in preds] == ev.queries_ids
        rankings = [[h["corpus_id"] for h in p["results"]] for p in preds]
        per_sf[sf] = recompute_metrics(rankings, rel, cfg)
    mine = expected_metrics_dict(name, per_sf)
    assert list(mine) == list(metrics), (list(mine), list(metrics))
    for k in mine:
        assert mine[k] == metrics[k], (k, mine[k], metrics[k])
        assert type(metrics[k]) is float
    exp_csv = expected_csv(per_sf, cfg)
    assert exp_csv == csv_text, (exp_csv, csv_text)


def same_ranking(a: list[dict], b: list[dict], n: int | None = None, tol: float = 1e-6) -> bool:
    """Same queries, same corpus_id order (first n), scores within tol."""
    if [r["query_id"] for r in a] != [r["query_id"] for r in b]:
        return False
    for ra, rb in zip(a, b):
        ha, hb = hits_list(ra, n), hits_list(rb, n)
        if [h[0] for h in ha] != [h[0] for h in hb]:
            return False
        if any(abs(x[1] - y[1]) > tol for x, y in zip(ha, hb)):
            return False
    return True


def hits_list(pred_row: dict, n: int | None = None) -> list[list]:
    hits = pred_row["results"] if n is None else pred_row["results"][:n]
    return [[h["corpus_id"], h["score"]] for h in hits]


# --------------------------------------------------------------------------------------------------
# Case 1: fixed embeddings
# --------------------------------------------------------------------------------------------------


def _grid_vectors(rng: random.Random, count: int) -> list[list[int]]:
    """Integer vectors whose L2 norm is 1, 2 or 4: normalisation and every score are exact in float32."""
    out = []
    patterns = [
        [1],  # norm 1
        [1, 1, 1, 1],  # norm 2
        [2],  # norm 2
        [2, 2, 2, 2],  # norm 4
        [2, 2, 2, 1, 1, 1, 1],  # norm 4
        [4],  # norm 4
    ]
    weights = [1, 6, 1, 2, 2, 1]
    while len(out) < count:
        pat = rng.choices(patterns, weights)[0]
        pos = rng.sample(range(FIXED_DIM), len(pat))
        v = [0] * FIXED_DIM
        for p, m in zip(pos, pat):
            # mostly positive entries, so that many vectors overlap and scores tie a lot
            v[p] = m if rng.random() < 0.8 else -m
        out.append(v)
    return out


def _random_vectors(rng: random.Random, count: int) -> list[list[float]]:
    """Generic vectors on a fine 2^-20 grid (exact in JSON and float32): they tie only by duplication.
    (A coarse grid would give mathematical ties with grid vectors that float32 rounding splits.)"""
    return [[rng.randint(-(2**20), 2**20) / 2**20 for _ in range(FIXED_DIM)] for _ in range(count)]


def _corpus_ids(rng: random.Random, n: int) -> list[str]:
    ids = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            ids.append(f"d{i // 3 * 7 % 113}")  # d0..d112: "d10" < "d100" < "d11" < "d2"
        elif kind == 1:
            ids.append("%08x-%04x-4%03x-a%03x-%012x" % tuple(rng.getrandbits(b) for b in (32, 16, 12, 12, 48)))
        else:
            ids.append("%013x-%04d" % (rng.getrandbits(52), rng.randrange(10000)))  # embedfleet-style
    # A few ids that pin code-point order: uppercase before lowercase, digits before letters,
    # non-ASCII after ASCII.
    ids[5] = "D-upper"
    ids[17] = "0-digit-first"
    ids[29] = "doc-\u00e4"
    ids[41] = "doc-z"
    ids[53] = "doc-\u00e9"
    assert len(set(ids)) == n
    return ids


def build_fixed_case():
    rng = random.Random(FIXED_SEED)
    # Corpus vectors: 64 grid + 24 generic + 1 zero vector, plus duplicates of some of them.
    base = [list(map(float, v)) for v in _grid_vectors(rng, 64)] + _random_vectors(rng, 24) + [[0.0] * FIXED_DIM]
    dups = [list(base[j]) for j in rng.sample(range(len(base) - 1), FIXED_N_CORPUS - len(base))]
    vecs = base + dups
    rng.shuffle(vecs)  # duplicates land in other corpus chunks than their originals
    cids = _corpus_ids(rng, FIXED_N_CORPUS)
    corpus = {cid: f"document {cid}" for cid in cids}
    table = {corpus[cid]: v for cid, v in zip(cids, vecs)}

    # Queries: mostly grid vectors (lots of exact ties), some generic ones, some copies of corpus vectors.
    qvecs = []
    for i in range(FIXED_N_QUERIES + 2):
        r = i % 4
        if r in (0, 1):
            qvecs.append(list(map(float, _grid_vectors(rng, 1)[0])))
        elif r == 2:
            qvecs.append(list(vecs[rng.randrange(len(vecs))]))
        else:
            qvecs.append(_random_vectors(rng, 1)[0])
    qids = [f"q{i}" for i in range(FIXED_N_QUERIES + 2)]
    rng.shuffle(qids)
    queries = {qid: f"question {qid}" for qid in qids}
    for qid, v in zip(qids, qvecs):
        table[queries[qid]] = v

    # Relevant docs: 1-5 per query, chosen from the top of the exact cosine ranking (so that relevant
    # docs sit inside tie groups at ranks 1..10) and sometimes from anywhere in the corpus.
    C = torch.tensor(vecs, dtype=torch.float64)
    Q = torch.tensor(qvecs, dtype=torch.float64)
    exact = (torch.nn.functional.normalize(Q, dim=1) @ torch.nn.functional.normalize(C, dim=1).T).tolist()
    relevant_docs: dict[str, list[str]] = {}
    for qi, qid in enumerate(qids):
        if qi == 0:
            relevant_docs[qid] = []  # empty list: dropped
            continue
        if qi == 1:
            continue  # missing from relevant_docs: dropped
        order = sorted(range(len(cids)), key=lambda j: (-exact[qi][j], cids[j]))
        n_rel = rng.choice([1, 1, 2, 2, 3, 3, 4, 5])
        pool = order[:12]
        picks = rng.sample(pool, min(n_rel, len(pool)))
        if rng.random() < 0.3:  # one relevant doc from far down the ranking
            picks[-1] = order[rng.randrange(30, len(order))]
        rel = list(dict.fromkeys(cids[j] for j in picks))  # no sets: their order varies per process
        rng.shuffle(rel)
        relevant_docs[qid] = rel
    return queries, corpus, relevant_docs, table, qids, cids


def tie_stats(pred_rows, relevant_docs) -> dict:
    """Counts the tie situations the fixture exercises (for the README and the report)."""
    s = {"queries_with_tie_in_top10": 0, "queries_with_tie_across_rank_10_11": 0,
         "queries_with_relevant_doc_in_top10_tie_group": 0, "queries_with_tie_at_rank_1": 0}
    for p in pred_rows:
        sc = [h["score"] for h in p["results"]]
        ids = [h["corpus_id"] for h in p["results"]]
        rel = set(relevant_docs[p["query_id"]])
        if len(set(sc[:10])) < len(sc[:10]):
            s["queries_with_tie_in_top10"] += 1
        if len(sc) > 10 and sc[9] == sc[10]:
            s["queries_with_tie_across_rank_10_11"] += 1
        if len(sc) > 1 and sc[0] == sc[1]:
            s["queries_with_tie_at_rank_1"] += 1
        if any(ids[i] in rel and sc.count(sc[i]) > 1 for i in range(min(10, len(sc)))):
            s["queries_with_relevant_doc_in_top10_tie_group"] += 1
    return s


def make_fixed(out_dir: Path) -> None:
    queries, corpus, relevant_docs, table, qids, cids = build_fixed_case()
    model = LookupModel(table)
    score_functions = {"cosine": cos_sim, "dot": dot_score}
    rel_sets = {q: set(v) for q, v in relevant_docs.items()}

    metrics, csv_text, preds, ev = run_evaluator(
        model, queries, corpus, rel_sets, "fixed",
        corpus_chunk_size=FIXED_CHUNK, show_progress_bar=False, score_functions=score_functions, **K_CONFIG,
    )
    assert len(ev.queries_ids) == FIXED_N_QUERIES
    check_against_reimplementation(ev, metrics, csv_text, preds, rel_sets, K_CONFIG, "fixed")

    # The ranking is the global (-score, corpus_id) order: check it against scores computed here.
    max_k = max(max(v) for v in K_CONFIG.values())
    Q = torch.tensor([table[queries[q]] for q in ev.queries_ids], dtype=torch.float32)
    C = torch.tensor([table[corpus[c]] for c in cids], dtype=torch.float32)
    for sf, fn in score_functions.items():
        S = fn(Q, C).tolist()
        for qi, p in enumerate(preds[sf]):
            mine = rank(S[qi], cids, max_k)
            assert [h[0] for h in hits_list(p)] == [c for c, _ in mine], (sf, p["query_id"])
            assert all(abs(h[1] - s) <= 1e-6 for h, (_, s) in zip(hits_list(p), mine)), (sf, p["query_id"])
    # Every tie ST saw is a mathematical tie, and every other pair of scores is at least 1e-6 apart,
    # so any implementation that computes the scores to float32 accuracy ranks exactly like ST.
    # Exact ties are decided in integers (all vectors are on a 2^-20 grid).
    qi64 = [[round(x * 2**20) for x in table[queries[q]]] for q in ev.queries_ids]
    ci64 = [[round(x * 2**20) for x in table[corpus[c]]] for c in cids]
    n2 = [sum(x * x for x in d) for d in ci64]
    S32 = {"cosine": cos_sim(Q, C).tolist(), "dot": dot_score(Q, C).tolist()}
    S64 = {"cosine": cos_sim(Q.double(), C.double()).tolist(), "dot": dot_score(Q.double(), C.double()).tolist()}
    for qi, q in enumerate(qi64):
        dots = [sum(a * b for a, b in zip(q, d)) for d in ci64]
        for i in range(len(cids)):
            for j in range(i + 1, len(cids)):
                di, dj = dots[i], dots[j]
                ties = {
                    "dot": di == dj,
                    # cos_i = di / (|q| sqrt(n2_i)); a zero vector scores 0
                    "cosine": (di > 0) == (dj > 0) and (di < 0) == (dj < 0)
                    and (di * di * n2[j] == dj * dj * n2[i] if n2[i] and n2[j] else
                         (di == 0 if n2[j] else dj == 0) if (n2[i] or n2[j]) else True),
                }
                for sf in ("cosine", "dot"):
                    a, b = S32[sf][qi], S64[sf][qi]
                    assert (a[i] == a[j]) == ties[sf], ("float32 tie != exact tie", sf, qi, cids[i], cids[j])
                    if not ties[sf]:
                        assert abs(b[i] - b[j]) > 1e-6, ("fragile near-tie", sf, qi, cids[i], cids[j])

    # Chunking does not change the outcome: corpus_chunk_size 8 and 1000 give the same metrics and CSV.
    for chunk in (8, 1000):
        m2, c2, p2, _ = run_evaluator(
            model, queries, corpus, rel_sets, "fixed",
            corpus_chunk_size=chunk, show_progress_bar=False, score_functions=score_functions, **K_CONFIG,
        )
        assert m2 == metrics and c2 == csv_text, chunk
        for sf in score_functions:  # float32 scores may move by an ulp with the chunk shape (BLAS)
            assert same_ranking(p2[sf], preds[sf]), (chunk, sf)

    # A second k configuration where top-k cuts inside chunks (boundary-tie reselection path).
    variants = []
    small_ref = None
    for chunk in (8, 50, 1000):
        m3, c3, p3, ev3 = run_evaluator(
            model, queries, corpus, rel_sets, "fixed",
            corpus_chunk_size=chunk, show_progress_bar=False, score_functions=score_functions, **K_CONFIG_SMALL,
        )
        check_against_reimplementation(ev3, m3, c3, p3, rel_sets, K_CONFIG_SMALL, "fixed")
        for sf in score_functions:  # same order as the first 10 of the full ranking
            assert same_ranking(p3[sf], preds[sf], 10), (chunk, sf)
        if small_ref is None:
            small_ref = (m3, c3)
        assert (m3, c3) == small_ref
    variants.append({
        "description": "same data, max_k 10 (< corpus_chunk_size): torch.topk cuts inside chunks; "
                       "identical for corpus_chunk_size 8, 50 and 1000",
        "corpus_chunk_size": 50,
        **K_CONFIG_SMALL,
        "metrics": small_ref[0],
        "csv_text": small_ref[1],
    })

    stats = {sf: tie_stats(preds[sf], relevant_docs) for sf in score_functions}
    fixture = {
        "description": "sentence-transformers InformationRetrievalEvaluator on fixed embeddings; "
                       "see tools/reference/IR_EVALUATOR_NOTES.md",
        "generator": "tools/reference/make_eval_fixture.py",
        "versions": _versions(),
        "evaluator_args": {
            "name": "fixed",
            "corpus_chunk_size": FIXED_CHUNK,
            "score_functions": ["cosine", "dot"],
            "show_progress_bar": False,
            **K_CONFIG,
        },
        "csv_file_name": ev.csv_file,
        "primary_metric": ev.primary_metric,
        "dim": FIXED_DIM,
        # query and corpus order as given to the evaluator (dict insertion order)
        "query_ids": qids,
        "queries": queries,
        "corpus_ids": cids,
        "corpus": corpus,
        "query_embeddings": {q: table[queries[q]] for q in qids},
        "corpus_embeddings": {c: table[corpus[c]] for c in cids},
        "relevant_docs": {q: relevant_docs[q] for q in qids if q in relevant_docs},
        "evaluated_query_ids": ev.queries_ids,
        "metrics": metrics,
        "csv_text": csv_text,
        # per evaluated query, in evaluator order: ST's ranking, [corpus_id, score] (score = the
        # float32 value as a Python float)
        "top10": {sf: {p["query_id"]: hits_list(p, 10) for p in preds[sf]} for sf in sorted(preds)},
        "top100": {sf: {p["query_id"]: hits_list(p) for p in preds[sf]} for sf in sorted(preds)},
        "tie_stats": stats,
        "variants": variants,
    }
    _write_json(out_dir / "fixed_embeddings.json", fixture)
    print(f"fixed: {len(qids)} queries ({len(ev.queries_ids)} evaluated), {len(cids)} corpus docs; ties: {stats}")


# --------------------------------------------------------------------------------------------------
# Case 2: MiniLM on a real validation split
# --------------------------------------------------------------------------------------------------


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def generate_dataset(embedfleet: Path, python_docs: Path, work: Path) -> tuple[dict, list[str]]:
    # Only the .html pages: the package also holds reStructuredText sources (_sources/*.txt), which
    # would duplicate every page, and dangling symlinks (_static/jquery.js).
    html = work / "html"
    n = 0
    for p in sorted(python_docs.rglob("*.html")):
        if p.is_file():
            dst = html / p.relative_to(python_docs)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst)
            n += 1
    assert n > 400, f"only {n} html pages under {python_docs}"
    args = ["generate", "--input", str(html), "--output-dir", str(work / "data"),
            "--generator", "offline", "--seed", str(MINILM_SEED)]
    proc = subprocess.run([str(embedfleet), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"embedfleet generate failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    with open(work / "data" / "val_dataset.json", encoding="utf-8") as f:
        val = json.load(f)
    shown = {str(html): "<python3.11-doc *.html pages>", str(work / "data"): "<dir>"}
    return val, ["embedfleet", *[shown.get(a, a) for a in args]]


def subsample(val: dict) -> dict:
    """All queries of the val chunks first in sha256(chunk_id) order until MINILM_MIN_QUERIES, plus
    further val chunks in that order as distractors up to MINILM_CORPUS; original order kept."""
    queries, corpus, rel = val["queries"], val["corpus"], val["relevant_docs"]
    queries_of: dict[str, list[str]] = {}
    for q in queries:
        for c in rel.get(q, []):
            queries_of.setdefault(c, []).append(q)
    order = sorted(corpus, key=_sha)
    keep_q: set[str] = set()
    keep_c: set[str] = set()
    for c in order:
        if len(keep_q) >= MINILM_MIN_QUERIES:
            break
        if c in queries_of:
            for q in queries_of[c]:
                keep_q.add(q)
                keep_c.update(rel[q])
    for c in order:
        if len(keep_c) >= MINILM_CORPUS:
            break
        keep_c.add(c)
    out = {
        "queries": {q: t for q, t in queries.items() if q in keep_q},
        "corpus": {c: t for c, t in corpus.items() if c in keep_c},
        "relevant_docs": {q: v for q, v in rel.items() if q in keep_q},
    }
    if "mode" in val:
        out["mode"] = val["mode"]
    return out


def make_minilm(out_dir: Path, embedfleet: Path, python_docs: Path, model_path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        val, gen_cmd = generate_dataset(embedfleet, python_docs, Path(tmp))
    ds = subsample(val)
    model = SentenceTransformer(str(model_path), device="cpu")
    rel_sets = {q: set(v) for q, v in ds["relevant_docs"].items()}
    metrics, csv_text, preds, ev = run_evaluator(model, ds["queries"], ds["corpus"], rel_sets, "minilm")
    assert ev.score_function_names == ["cosine"], ev.score_function_names
    check_against_reimplementation(ev, metrics, csv_text, preds, rel_sets, K_CONFIG, "minilm")

    _write_json(out_dir / "minilm_val.json", ds)
    with open(out_dir / "minilm_val_results.csv", "w", encoding="utf-8", newline="") as f:
        f.write(csv_text)
    top = {
        "description": "all-MiniLM-L6-v2 (CPU, fp32, 1 thread) on minilm_val.json with "
                       "InformationRetrievalEvaluator defaults; cosine top-10 per evaluated query",
        "generator": "tools/reference/make_eval_fixture.py",
        "versions": _versions(),
        "dataset_command": " ".join(gen_cmd),
        "subsample": f"queries of val chunks in sha256(chunk_id) order until >= {MINILM_MIN_QUERIES}, "
                     f"then distractor val chunks in that order up to {MINILM_CORPUS} corpus entries",
        "evaluator_args": {"name": "minilm", "write_predictions": True, "defaults": "everything else"},
        "csv_file_name": ev.csv_file,
        "primary_metric": ev.primary_metric,
        "metrics": metrics,
        "top10": {p["query_id"]: hits_list(p, 10) for p in preds["cosine"]},
    }
    _write_json(out_dir / "minilm_val_top10.json", top)
    print(f"minilm: {len(ds['queries'])} queries, {len(ds['corpus'])} corpus docs; "
          f"{ev.primary_metric} = {metrics[ev.primary_metric]}")


# --------------------------------------------------------------------------------------------------


def _versions() -> dict:
    return {"sentence_transformers": sentence_transformers.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


def _dumps(obj, level: int = 0) -> str:
    """JSON with one line per dict entry and every list on a single line (small, diff-friendly)."""
    if isinstance(obj, dict) and obj:
        pad = " " * (level + 1)
        items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {_dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * level + "}"
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(_dumps(obj))
        f.write("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["fixed", "minilm"])
    ap.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--embedfleet", type=Path, default=DEFAULT_EMBEDFLEET)
    ap.add_argument("--python-docs", type=Path, default=DEFAULT_PYTHON_DOCS)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = ap.parse_args()
    if sentence_transformers.__version__ != EXPECTED_ST_VERSION:
        sys.exit(f"need sentence-transformers {EXPECTED_ST_VERSION}, found {sentence_transformers.__version__}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "fixed"):
        make_fixed(args.output_dir)
    if args.only in (None, "minilm"):
        make_minilm(args.output_dir, args.embedfleet, args.python_docs, args.model)


if __name__ == "__main__":
    main()
