#!/usr/bin/env python3
"""Evaluation benchmark: embedfleet against sentence-transformers' InformationRetrievalEvaluator,
run one after the other on this machine in one invocation.

Part 1, scoring + top-k + metrics (the part where the reference keeps per-query Python work): the
same fixed, seeded embeddings (default 2,000 queries x 20,000 chunks, 384 dimensions) go to the
reference evaluator through a model that only looks vectors up, and to embedfleet's
`score_bench` bench (built here in the dev profile, as the tests are). Prints both times, the ratio (goal: embedfleet at least 5x faster) and the
largest metric difference.

Part 2, a whole evaluation with the real MiniLM on the 400 x 1,200 fixture of the evaluator tests:
`embedfleet evaluate` (fp32 and bf16) against the reference evaluator, wall time of each process
and peak RSS, and how far bf16 moves the metrics (goal: within 0.002).

  ~/.cache/embedfleet/reference-venv/bin/python tools/bench/eval_bench.py [--queries 2000 --corpus 20000] [--threads 2]
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def target_dir() -> Path:
    candidates = [Path(os.environ["CARGO_TARGET_DIR"])] if os.environ.get("CARGO_TARGET_DIR") else []
    candidates += [Path.home() / ".cache/embedfleet/target", ROOT / "target"]
    return next((d for d in candidates if (d / "debug").exists()), ROOT / "target")


def score_bench_binary() -> str:
    """Builds the evaluator's `score_bench` bench and returns the path of its executable."""
    cmd = ["cargo", "test", "-q", "-p", "embedfleet-evaluator", "--bench", "score_bench", "--no-run", "--message-format=json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"building score_bench failed:\n{out.stderr[-3000:]}")
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "score_bench" and msg.get("executable"):
            return msg["executable"]
    sys.exit("cargo built score_bench but named no executable")


def run(cmd, env=None):
    """Runs a child; returns (seconds, stdout, stderr)."""
    started = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, env=env, text=True)
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{p.stderr[-3000:]}")
    return time.perf_counter() - started, p.stdout, p.stderr


REFERENCE_SCORING = r'''
import json, sys, time, numpy as np, torch
from sentence_transformers.evaluation import InformationRetrievalEvaluator
from sentence_transformers.util import cos_sim
d = sys.argv[1]; torch.set_num_threads(int(sys.argv[2]))
meta = json.load(open(f"{d}/meta.json")); dim = meta["dim"]
q = torch.from_numpy(np.fromfile(f"{d}/queries.f32", dtype="<f4").reshape(-1, dim))
c = torch.from_numpy(np.fromfile(f"{d}/corpus.f32", dtype="<f4").reshape(-1, dim))
class Card:
    def set_evaluation_metrics(self, *a, **k): pass
class Lookup:
    similarity_fn_name = "cosine"
    def __init__(self): self.model_card_data = Card()
    def encode_query(self, s, **k): return q
    def encode_document(self, s, **k): return c
    def similarity(self, a, b): return cos_sim(a, b)
queries = {qid: qid for qid in meta["query_ids"]}
corpus = {cid: cid for cid in meta["corpus_ids"]}
ev = InformationRetrievalEvaluator(queries, corpus, {k: set(v) for k, v in meta["relevant_docs"].items()}, name="bench", show_progress_bar=False)
t = time.perf_counter(); m = ev(Lookup()); s = time.perf_counter() - t
print(json.dumps({"seconds": s, "metrics": {k.replace("bench_", ""): v for k, v in m.items()}}))
'''

REFERENCE_FULL = r'''
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.evaluation import InformationRetrievalEvaluator
torch.set_num_threads(int(sys.argv[3]))
d = json.load(open(sys.argv[2]))
model = SentenceTransformer(sys.argv[1], device="cpu")
ev = InformationRetrievalEvaluator(d["queries"], d["corpus"], {k: set(v) for k, v in d["relevant_docs"].items()}, name="ref", show_progress_bar=False)
t = time.perf_counter(); m = ev(model); s = time.perf_counter() - t
print(json.dumps({"seconds": s, "ndcg": m["ref_cosine_ndcg@10"]}))
'''


def peak_rss_mib(cmd, env=None):
    started = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out, err = p.communicate()
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{err[-3000:]}")
    return seconds, rss, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--corpus", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-full", action="store_true")
    args = ap.parse_args()
    import numpy as np
    tgt = target_dir() / "debug"
    work = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    rng = np.random.default_rng(42)
    dim = 384
    def unit(n):
        x = rng.standard_normal((n, dim)).astype("<f4")
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    corpus = unit(args.corpus)
    rel = rng.integers(0, args.corpus, args.queries)
    # Each query is a noisy copy of its relevant chunk, so rankings are realistic (not random).
    queries = corpus[rel] + 0.9 * unit(args.queries) / np.sqrt(1.0)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype("<f4")
    queries.tofile(work / "queries.f32"); corpus.tofile(work / "corpus.f32")
    meta = {"dim": dim, "query_ids": [f"q{i}" for i in range(args.queries)], "corpus_ids": [f"c{i}" for i in range(args.corpus)],
            "relevant_docs": {f"q{i}": [f"c{int(r)}"] for i, r in enumerate(rel)}}
    (work / "meta.json").write_text(json.dumps(meta))
    (work / "ref.py").write_text(REFERENCE_SCORING)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    ref_s, ref_out, _ = run([sys.executable, str(work / "ref.py"), str(work), str(args.threads)], env)
    ours_s, ours_out, _ = run([score_bench_binary(), str(work)], env)
    ref, ours = json.loads(ref_out), json.loads(ours_out)
    diff = max(abs(ours["metrics"][k] - ref["metrics"][k.replace("cosine-", "cosine_").lower()]) for k in ours["metrics"])
    print(f"scoring + top-k + metrics, {args.queries} queries x {args.corpus} chunks, {args.threads} threads:")
    print(f"  reference evaluator   {ref['seconds']:8.3f} s")
    print(f"  embedfleet            {ours['seconds']:8.3f} s  (top-k {ours['rank_s']:.3f} s, metrics {ours['metrics_s']:.3f} s)")
    print(f"  ratio                 {ref['seconds'] / ours['seconds']:8.1f}x  (goal >= 5)")
    print(f"  largest metric difference {diff:.2e}")
    if args.skip_full:
        return
    fixture = ROOT / "crates/embedfleet-evaluator/tests/fixtures/minilm_val.json"
    model = ROOT / ".deps/all-MiniLM-L6-v2"
    (work / "full.py").write_text(REFERENCE_FULL)
    r_s, r_rss, r_out = peak_rss_mib([sys.executable, str(work / "full.py"), str(model), str(fixture), str(args.threads)], env)
    results = {}
    for precision in ["fp32", "bf16"]:
        out = work / f"results-{precision}"
        cmd = [str(tgt / "embedfleet"), "evaluate", "--model", f"m={model}", "--val-dataset", str(fixture), "--results-dir", str(out),
               "--threads", str(args.threads), "--device", "cpu", "--precision", precision,
               # The reference's evaluator scores whole passages.
               "--inverse-cloze", "false"]
        s, rss, _ = peak_rss_mib(cmd, env)
        report = json.loads((out / "report.json").read_text())
        results[precision] = (s, rss, report["models"][0]["metrics"])
    ref_ndcg = json.loads(r_out)["ndcg"]
    print(f"\nwhole evaluation, real MiniLM, 400 queries x 1,200 chunks (process wall time incl. model load):")
    print(f"  reference evaluator   {r_s:7.1f} s   NDCG@10 {ref_ndcg:.4f}  (evaluator alone {json.loads(r_out)['seconds']:.1f} s)")
    for p, (s, rss, m) in results.items():
        print(f"  embedfleet {p:<5}      {s:7.1f} s   NDCG@10 {m['cosine-NDCG@10']:.4f}   ratio {r_s / s:.2f}x")
    moved = max(abs(results['bf16'][2][k] - results['fp32'][2][k]) for k in results['fp32'][2])
    print(f"  bf16 moves the metrics by at most {moved:.4f} (goal <= 0.002)")
    print("  (peak RSS of child processes is cumulative here; see encode_bench.py for per-process memory)")


if __name__ == "__main__":
    main()
