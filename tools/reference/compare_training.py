#!/usr/bin/env python3
"""Compares fine-tuning with sentence-transformers (the reference) and `embedfleet finetune`.

Same data, same starting point (all-MiniLM-L6-v2), same hyper-parameters, CPU, 2 threads:

  data       `embedfleet generate --generator offline --seed 42` on the *.html pages of Debian's
             python3.11-doc (only the .html files are copied: the package also holds _sources/*.txt
             duplicates of every page and dangling symlinks), then a deterministic subsample:
             train: training chunks in sha256(chunk_id) order, all their queries, until >= N pairs
             (--train-pairs, default 2000); val: queries of val chunks in sha256(chunk_id) order until
             >= 400, their chunks, plus further val chunks in that order as distractors up to 1,500.
  reference  SentenceTransformerTrainer, MultipleNegativesRankingLoss, BatchSamplers.NO_DUPLICATES,
             lr 2e-5, warm-up 10 % (transformers 5: warmup_steps=0.1), weight decay 0.01, batch 16,
             max_seq_length 256, seed 42, no evaluation or saving during training, fp32,
             dataloader without workers, torch.set_num_threads(2). Runs in a child process; the
             time is trainer.train() only.
  embedfleet `embedfleet finetune ... --evaluation-steps 0 --threads 2 --device cpu` in fp32 and with
             --precision bf16. Its own "trained N steps in X s (Y pairs/s ...)" line is parsed.
  quality    One evaluator for every model: sentence-transformers' InformationRetrievalEvaluator on the
             val subsample (cosine NDCG@10), for the base model, the reference model and both
             embedfleet models (the folders embedfleet saved).
  memory     Peak RSS of each training child, from os.wait4's rusage of that child (ru_maxrss).
             (getrusage(RUSAGE_CHILDREN) is the maximum over *all* children waited for so far, so it
             cannot separate runs made by one parent; wait4 gives the same field per child.)

variants   --variant plain (default), hard-negatives or matryoshka. hard-negatives: the reference mines
             with `mine_hard_negatives` (range_max 50, relative_margin 0.05, sampling "top",
             --hard-negatives N per question, output_format "n-tuple", corpus: the training chunks;
             mining time is outside trainer.train()), embedfleet with `finetune --hard-negatives N`
             (the same range and margin, plus its same-document rule). matryoshka: MatryoshkaLoss over
             MNRL with --matryoshka-dims (default 384,256,128,64) in both; NDCG@10 is also reported
             at the smallest dimension (the evaluator's truncate_dim).
  modes      The reference trains twice, in fp32 and with bf16=True (torch.autocast on CPU: matmuls,
             attention and GELU in bf16); --skip-reference-bf16 leaves the second out. Each
             embedfleet row has its speed and memory as ratios against both.

Usage (reference venv with the `train` extra: datasets + accelerate; see tools/reference/README.md):

    ~/.cache/embedfleet/reference-venv/bin/python tools/reference/compare_training.py --quick
    ~/.cache/embedfleet/reference-venv/bin/python tools/reference/compare_training.py
    ~/.cache/embedfleet/reference-venv/bin/python tools/reference/compare_training.py --quick --variant matryoshka
    # options: --variant V, --hard-negatives N, --matryoshka-dims D,..., --skip-reference-bf16,
    #          --train-pairs N, --epochs N, --threads N, --bin PATH, --work-dir DIR (kept, and the
    #          generated dataset is reused from it), --python-docs DIR, --model PATH, --skip-bf16,
    #          --json PATH (results as JSON), --max-wait S, --quiet-threshold CORES

Timings on a shared machine are noisy (libtorch's OpenMP threads slow down 3-5x per step when another
process takes a core). So before each timed run the script waits (--max-wait, default 300 s) for the
machine to go quiet, samples machine and child CPU time every 0.5 s while it runs, and reports per run
the cores other processes used ("other"), and the median time of the "quiet" steps (other processes
below --quiet-threshold cores during that step). Step times come from a TrainerCallback (reference) and
from embedfleet's per-step debug log lines (EMBEDFLEET_LOG=...,embedfleet_cli::progress=debug).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import bisect
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / ".deps" / "all-MiniLM-L6-v2"
DEFAULT_PYTHON_DOCS = Path.home() / ".cache" / "embedfleet" / "real-docs" / "root" / "usr" / "share" / "doc" / "python3.11" / "html"
BIN_CANDIDATES = [Path.home() / ".cache" / "embedfleet" / "target" / "debug" / "embedfleet",
                  REPO_ROOT / "target" / "debug" / "embedfleet"]
EXPECTED_ST_VERSION = "6.2.0"
SEED = 42
BATCH = 16
LR = 2e-5
WARMUP = 0.1
WEIGHT_DECAY = 0.01
MAX_SEQ = 256
MINING_RANGE_MAX = 50
MINING_MARGIN = 0.05
TRAINED_RE = re.compile(r"trained (\d+) steps in ([0-9.]+) s \(([0-9.]+) pairs/s, (\d+) pairs per epoch\)")
BEST_RE = re.compile(r"best (\S+) ([0-9.]+) at step (\d+) \(base model ([0-9.]+)")
NOBEST_RE = re.compile(r"no checkpoint beat the base model \((\S+) ([0-9.]+)\)")


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def _load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def _loadavg() -> float:
    return os.getloadavg()[0]


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float, threshold: float = 0.3, window: float = 5.0) -> float:
    """Waits (up to max_wait s) until other processes use < threshold cores over a window; returns the
    seconds waited. The machine is shared (the lead compiles now and then), and timings need it idle."""
    t0 = time.perf_counter()
    while True:
        b0 = _busy_cpu_s()
        time.sleep(window)
        used = (_busy_cpu_s() - b0) / window
        waited = time.perf_counter() - t0
        if used < threshold or waited >= max_wait:
            if used >= threshold:
                print(f"[quiet] still {used:.2f} cores busy after {waited:.0f} s; going on", flush=True)
            return waited


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def generate(embedfleet: Path, corpus: str, python_docs: Path, work: Path) -> Path:
    """Runs `embedfleet generate` once per work dir and corpus; a later run with the same work dir reuses it.
    corpus: python-docs (the HTML pages of Debian's python3.11-doc), sample (examples/sample-corpus.json)
    or a path `embedfleet generate --input` reads."""
    data = work / f"data-{hashlib.sha256(corpus.encode()).hexdigest()[:8]}" if corpus != "python-docs" else work / "data"
    stamp = data / ".compare_training.done"
    if stamp.exists():
        print(f"[data] reusing {data}", flush=True)
        return data
    if corpus == "python-docs":
        source = work / "html"
        if source.exists():
            shutil.rmtree(source)
        n = 0
        for p in sorted(python_docs.rglob("*.html")):
            if p.is_file():  # skips dangling symlinks
                dst = source / p.relative_to(python_docs)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dst)
                n += 1
        if n < 400:
            sys.exit(f"only {n} html pages under {python_docs}; run /work/shared/tools/real-docs.sh")
        what = f"{n} html pages"
    else:
        source = REPO_ROOT / "examples" / "sample-corpus.json" if corpus == "sample" else Path(corpus)
        if not source.exists():
            sys.exit(f"--corpus {corpus}: no such file or folder (python-docs, sample or a path)")
        what = str(source)
    cmd = [str(embedfleet), "generate", "--input", str(source), "--output-dir", str(data),
           "--generator", "offline", "--seed", str(SEED), "--overwrite"]
    print(f"[data] {what}; {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"embedfleet generate failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    print(f"[data] generated in {time.perf_counter() - t0:.1f} s: {proc.stdout.strip()[-400:]}", flush=True)
    stamp.write_text("ok\n")
    return data


def batch_padding(model: Path, pairs: list[tuple[str, str]], batch: int) -> tuple[float, float]:
    """The share of the token grid that is padding in random batches of `batch` pairs (questions,
    passages), each side padded to its longest text (max_seq_length 256): what an MNRL step computes
    on for nothing unless it unpads."""
    import random

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    order = list(range(len(pairs)))
    random.Random(SEED).shuffle(order)
    shares = []
    for side in (0, 1):
        lens = [min(MAX_SEQ, len(e.ids)) for e in tok.encode_batch([pairs[i][side] for i in order])]
        grid = real = 0
        for i in range(0, len(lens), batch):
            b = lens[i:i + batch]
            grid += max(b) * len(b)
            real += sum(b)
        shares.append(1 - real / grid)
    return shares[0], shares[1]


def _queries_of(ds: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for q in ds["queries"]:
        for c in ds["relevant_docs"].get(q, []):
            out.setdefault(c, []).append(q)
    return out


def _subset(ds: dict, keep_q: set[str], keep_c: set[str]) -> dict:
    out = {
        "queries": {q: t for q, t in ds["queries"].items() if q in keep_q},
        "corpus": {c: t for c, t in ds["corpus"].items() if c in keep_c},
        "relevant_docs": {q: v for q, v in ds["relevant_docs"].items() if q in keep_q},
    }
    for k, v in ds.items():  # keep any extra keys (e.g. "mode") as they were
        if k not in out:
            out[k] = v
    return out


def subsample_train(train: dict, min_pairs: int) -> dict:
    """Training chunks in sha256(chunk_id) order with all their queries, until >= min_pairs pairs."""
    rel = train["relevant_docs"]
    queries_of = _queries_of(train)
    keep_q: set[str] = set()
    keep_c: set[str] = set()
    pairs = 0
    for c in sorted(train["corpus"], key=_sha):
        if pairs >= min_pairs:
            break
        for q in queries_of.get(c, []):
            if q not in keep_q:
                keep_q.add(q)
                keep_c.update(rel[q])
                pairs += len(rel[q])
    return _subset(train, keep_q, keep_c)


def subsample_val(val: dict, min_queries: int, max_corpus: int) -> dict:
    """Queries of val chunks in sha256(chunk_id) order until >= min_queries, their chunks, then
    further val chunks in that order as distractors up to max_corpus (as make_eval_fixture.py)."""
    rel = val["relevant_docs"]
    queries_of = _queries_of(val)
    order = sorted(val["corpus"], key=_sha)
    keep_q: set[str] = set()
    keep_c: set[str] = set()
    for c in order:
        if len(keep_q) >= min_queries:
            break
        for q in queries_of.get(c, []):
            keep_q.add(q)
            keep_c.update(rel[q])
    for c in order:
        if len(keep_c) >= max_corpus:
            break
        keep_c.add(c)
    return _subset(val, keep_q, keep_c)


def pairs_of(ds: dict) -> list[tuple[str, str]]:
    return [(ds["queries"][q], ds["corpus"][c]) for q in ds["queries"] for c in ds["relevant_docs"].get(q, [])]


# --------------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Sampler(threading.Thread):
    """Samples (wall time, machine busy CPU s, child CPU s) every `every` seconds while the child runs,
    so each training step can be told apart by how busy the rest of the machine was meanwhile."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            c = _proc_cpu_s(self.pid)
            if c is not None:
                self.samples.append((time.time(), _busy_cpu_s(), c))
            self.done.wait(self.every)

    def other_cores(self, t0: float, t1: float) -> float | None:
        """Cores other processes kept busy between wall times t0 and t1 (interpolated)."""
        s = self.samples
        if len(s) < 2 or t0 < s[0][0] or t1 > s[-1][0] or t1 <= t0:
            return None

        def at(t):
            i = bisect.bisect_left(s, (t, -1.0, -1.0))
            i = min(max(i, 1), len(s) - 1)
            (ta, ba, ca), (tb, bb, cb) = s[i - 1], s[i]
            w = 0.0 if tb == ta else (t - ta) / (tb - ta)
            return ba + w * (bb - ba), ca + w * (cb - ca)

        b0, c0 = at(t0)
        b1, c1 = at(t1)
        return max(0.0, (b1 - b0) - (c1 - c0)) / (t1 - t0)


def run_child(cmd: list[str], log_prefix: Path, env: dict | None = None, max_wait: float = 0.0) -> dict:
    """Runs cmd to completion; returns rc, wall time, peak RSS (MiB) and CPU seconds of that child, and
    how many cores other processes kept busy meanwhile (machine busy time minus the child's)."""
    waited = wait_quiet(max_wait) if max_wait > 0 else 0.0
    load_before = _loadavg()
    with open(f"{log_prefix}.stdout", "w") as out, open(f"{log_prefix}.stderr", "w") as err:
        busy0 = _busy_cpu_s()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        sampler = Sampler(p.pid)
        sampler.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        busy = _busy_cpu_s() - busy0
        sampler.done.set()
        sampler.join()
        p.returncode = os.waitstatus_to_exitcode(status)
    return {
        "sampler": sampler,
        "waited_for_quiet_s": waited,
        "other_cores": max(0.0, busy - (ru.ru_utime + ru.ru_stime)) / wall,
        "cmd": cmd,
        "rc": p.returncode,
        "wall_s": wall,
        "peak_rss_mib": ru.ru_maxrss / 1024.0,  # Linux: KiB
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "load_before": load_before,
        "load_after": _loadavg(),
        "stdout": Path(f"{log_prefix}.stdout").read_text(errors="replace"),
        "stderr": Path(f"{log_prefix}.stderr").read_text(errors="replace"),
    }


def quiet_steps(sampler: Sampler, marks: list[float], threshold: float) -> dict:
    """Step durations (marks: wall time at the start, then at each step's end) split by how busy the
    rest of the machine was during each step; the median of the quiet ones is the fair speed."""
    steps = [(b - a, sampler.other_cores(a, b)) for a, b in zip(marks, marks[1:])]
    quiet = [d for d, o in steps if o is not None and o < threshold]
    out = {"step_s": [d for d, _ in steps], "step_other_cores": [o for _, o in steps], "quiet_steps": len(quiet)}
    if quiet:
        out["quiet_median_step_s"] = statistics.median(quiet)
    return out


def reference_child(args) -> None:
    """Child mode: trains with SentenceTransformerTrainer and prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    train = _load(Path(args.train_dataset))
    pairs = pairs_of(train)
    ds = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    model = SentenceTransformer(str(args.model), device=args.device)
    model.max_seq_length = MAX_SEQ
    mining_s = None
    if args.variant == "hard-negatives":
        from sentence_transformers.util import mine_hard_negatives

        t0 = time.perf_counter()
        ds = mine_hard_negatives(
            ds, model, anchor_column_name="anchor", positive_column_name="positive",
            range_min=0, range_max=MINING_RANGE_MAX, relative_margin=MINING_MARGIN, num_negatives=args.hard_negatives,
            sampling_strategy="top", output_format="n-tuple", batch_size=32, verbose=False,
        )
        mining_s = time.perf_counter() - t0
    loss = MultipleNegativesRankingLoss(model)
    if args.variant == "matryoshka":
        from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

        loss = MatryoshkaLoss(model, loss, matryoshka_dims=_dims(args.matryoshka_dims))
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(Path(args.output) / "_trainer"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        warmup_steps=WARMUP,  # transformers 5: a float < 1 is the warm-up ratio (warmup_ratio is gone)
        weight_decay=WEIGHT_DECAY,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        seed=SEED,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=args.device == "cpu",
        fp16=False,
        bf16=args.ref_bf16,
        logging_steps=25,
        disable_tqdm=True,
    )
    from transformers import TrainerCallback

    step_times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *a, **k):
            if args.device != "cpu":
                torch.cuda.synchronize()
            step_times.append(time.time())

    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds, loss=loss, callbacks=[StepTimes()])
    wall0 = time.time()
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    model.save(args.output)
    shutil.rmtree(Path(args.output) / "_trainer", ignore_errors=True)
    print("RESULT " + json.dumps({
        "seconds": seconds,
        "steps": out.global_step,
        "pairs": len(pairs),
        "trained_rows": len(ds),
        "columns": ds.column_names,
        "mining_s": mining_s,
        "train_loss": out.training_loss,
        "hf_metrics": out.metrics,
        "threads": torch.get_num_threads(),
        "step_marks": [wall0] + step_times,
    }), flush=True)


# --------------------------------------------------------------------------------------------------
# Evaluation (one evaluator for every model)
# --------------------------------------------------------------------------------------------------


def evaluate(model_path: Path, val: dict, threads: int, truncate_dim: int | None = None) -> tuple[float, float]:
    import torch

    torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    model = SentenceTransformer(str(model_path), device="cpu")
    model.max_seq_length = MAX_SEQ
    ev = InformationRetrievalEvaluator(
        queries=val["queries"], corpus=val["corpus"],
        relevant_docs={q: set(v) for q, v in val["relevant_docs"].items()},
        name="val", show_progress_bar=False, truncate_dim=truncate_dim,
    )
    t0 = time.perf_counter()
    metrics = ev(model)
    assert ev.primary_metric == "val_cosine_ndcg@10", ev.primary_metric
    return metrics[ev.primary_metric], time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d.strip()]


def find_bin(arg: Path | None) -> Path:
    if arg:
        return arg
    for c in BIN_CANDIDATES:
        if c.is_file():
            return c
    sys.exit("no embedfleet binary; build it (cargo build) or pass --bin")


def _ratio(a, b):
    return None if a is None or not b else a / b


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-pairs", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="smoke run: 400 train pairs, 100 val queries / 400 chunks")
    ap.add_argument("--val-queries", type=int, default=None, help="default 400 (100 with --quick)")
    ap.add_argument("--val-corpus", type=int, default=None, help="default 1500 (400 with --quick)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", type=Path, default=None)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--python-docs", type=Path, default=DEFAULT_PYTHON_DOCS)
    ap.add_argument("--corpus", default="python-docs", help="python-docs (default), sample, or a corpus path")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: both trainers on it")
    ap.add_argument("--work-dir", type=Path, default=None, help="kept afterwards; its generated dataset is reused")
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--skip-reference-bf16", action="store_true")
    ap.add_argument("--variant", choices=["plain", "hard-negatives", "matryoshka"], default="plain")
    ap.add_argument("--hard-negatives", type=int, default=1)
    ap.add_argument("--matryoshka-dims", default="384,256,128,64")
    ap.add_argument("--ref-bf16", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--max-wait", type=float, default=300.0,
                    help="before each timed run, wait up to this many seconds for other processes to go quiet (0: never)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quiet-threshold", type=float, default=0.2,
                    help="a step is 'quiet' when other processes used fewer cores than this meanwhile")
    # child mode
    ap.add_argument("--_reference-child", dest="reference_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--train-dataset", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.reference_child:
        reference_child(args)
        return

    import sentence_transformers

    if sentence_transformers.__version__ != EXPECTED_ST_VERSION:
        sys.exit(f"need sentence-transformers {EXPECTED_ST_VERSION}, found {sentence_transformers.__version__}")
    try:
        import accelerate  # noqa: F401
        import datasets  # noqa: F401
    except ImportError:
        sys.exit("training needs sentence-transformers[train] (datasets, accelerate) in this venv:\n"
                 f"  {sys.executable} -m pip install 'sentence-transformers[train]==6.2.0' torch==2.13.0 "
                 "--find-links ~/.cache/embedfleet/wheels")
    train_pairs = 400 if args.quick else args.train_pairs
    val_queries = args.val_queries or (100 if args.quick else 400)
    val_corpus = args.val_corpus or (400 if args.quick else 1500)

    src_bin = find_bin(args.bin)
    keep = args.work_dir is not None
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="compare_training."))
    work.mkdir(parents=True, exist_ok=True)
    # Run a private copy: the binary in target/ may be rebuilt while this runs (its RUNPATH is absolute).
    embedfleet = work / "embedfleet"
    shutil.copy2(src_bin, embedfleet)
    bin_info = {"path": str(src_bin), "mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(src_bin.stat().st_mtime)),
                "sha256": hashlib.sha256(embedfleet.read_bytes()).hexdigest()[:16]}
    git = subprocess.run(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True).stdout.strip()
    print(f"[setup] work dir {work}; embedfleet {bin_info}; repo HEAD {git}", flush=True)

    data = generate(embedfleet, args.corpus, args.python_docs, work)
    full_train = _load(data / "train_dataset.json")
    full_val = _load(data / "val_dataset.json")
    train = subsample_train(full_train, train_pairs)
    val = subsample_val(full_val, val_queries, val_corpus)
    sub = work / f"sub-{train_pairs}-{val_queries}-{val_corpus}"
    train_path, val_path = sub / "train_dataset.json", sub / "val_dataset.json"
    _dump(train_path, train)
    _dump(val_path, val)
    n_pairs = len(pairs_of(train))
    print(f"[data] full: {len(full_train['queries'])} train queries / {len(full_train['corpus'])} chunks, "
          f"{len(full_val['queries'])} val queries / {len(full_val['corpus'])} chunks", flush=True)
    print(f"[data] subsample: train {n_pairs} pairs ({len(train['queries'])} queries, {len(train['corpus'])} chunks); "
          f"val {len(val['queries'])} queries, {len(val['corpus'])} chunks -> {sub}", flush=True)
    pad_q, pad_p = batch_padding(args.model, pairs_of(train), BATCH)
    print(f"[data] padding in random batches of {BATCH}: questions {100 * pad_q:.0f} %, passages {100 * pad_p:.0f} % of the token grid", flush=True)

    results: dict = {"bin": bin_info, "git": git, "work": str(work), "train_pairs": n_pairs,
                     "val_queries": len(val["queries"]), "val_corpus": len(val["corpus"]),
                     "epochs": args.epochs, "threads": args.threads, "cpu_count": os.cpu_count(), "corpus": args.corpus,
                     "device": args.device, "padding": {"questions": pad_q, "passages": pad_p}}
    env = dict(os.environ)
    env.pop("EMBEDFLEET_PRECISION", None)
    # Per-step debug lines (with timestamps) from embedfleet's progress reporter, for step timings.
    env["EMBEDFLEET_LOG"] = "warn,embedfleet=info,embedfleet_cli::progress=debug"
    env.setdefault("HF_HUB_OFFLINE", "1")

    variant_args = ["--variant", args.variant, "--hard-negatives", str(args.hard_negatives), "--matryoshka-dims", args.matryoshka_dims]
    results["variant"] = args.variant
    # Reference, in fp32 and in bf16 autocast
    ref_modes = [("fp32", [])] + ([] if args.skip_reference_bf16 else [("bf16", ["--ref-bf16"])])
    for mode, mode_flag in ref_modes:
        ref_out = work / f"out_reference_{mode}"
        shutil.rmtree(ref_out, ignore_errors=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_reference-child", "--train-dataset", str(train_path),
               "--output", str(ref_out), "--model", str(args.model), "--epochs", str(args.epochs), "--threads", str(args.threads),
               "--device", args.device,
               *variant_args, *mode_flag]
        print(f"[reference {mode}] training {n_pairs} pairs x {args.epochs} epoch(s), {args.variant} ...", flush=True)
        r = run_child(cmd, work / f"reference_{mode}", env, args.max_wait)
        if r["rc"] != 0:
            sys.exit(f"reference {mode} training failed ({r['rc']}):\n{r['stdout'][-3000:]}\n{r['stderr'][-6000:]}")
        line = [l for l in r["stdout"].splitlines() if l.startswith("RESULT ")][-1]
        ref = json.loads(line[len("RESULT "):])
        pps = ref["pairs"] * args.epochs / ref["seconds"]
        qs = quiet_steps(r["sampler"], ref.pop("step_marks"), args.quiet_threshold)
        step = qs.get("quiet_median_step_s")
        results[f"reference_{mode}"] = {**{k: v for k, v in r.items() if k not in ("stdout", "stderr", "sampler")}, **ref, **qs,
                                        "pairs_per_s": pps, "quiet_pairs_per_s": None if step is None else BATCH / step,
                                        "output": str(ref_out)}
        mining = "" if ref["mining_s"] is None else f", mining {ref['mining_s']:.1f} s"
        print(f"[reference {mode}] {ref['steps']} steps, train() {ref['seconds']:.1f} s, {pps:.2f} pairs/s, median quiet step "
              f"{fmt(step, '.2f')} s ({qs['quiet_steps']} quiet steps); peak RSS {r['peak_rss_mib']:.0f} MiB, child wall {r['wall_s']:.1f} s, "
              f"cpu {r['user_s']:.1f} s user + {r['sys_s']:.1f} s system, other processes {r['other_cores']:.2f} cores; columns {ref['columns']} "
              f"({ref['trained_rows']} rows){mining}", flush=True)
    results["reference"] = results["reference_fp32"]
    ref, ref_out = results["reference"], work / "out_reference_fp32"
    ref_pps = ref["pairs_per_s"]
    ref_step = ref.get("quiet_median_step_s")
    ref_med_pps = ref["quiet_pairs_per_s"]

    # embedfleet
    variant_flags = {"plain": [], "hard-negatives": ["--hard-negatives", str(args.hard_negatives)],
                     "matryoshka": ["--matryoshka-dims", args.matryoshka_dims]}[args.variant]
    runs = [("fp32", [])] + ([] if args.skip_bf16 else [("bf16", ["--precision", "bf16"])])
    for tag, extra in runs:
        out = work / f"out_embedfleet_{tag}"
        # The reference trains on whole passages, so embedfleet does too here (its default cuts spans out).
        cmd = [str(embedfleet), "finetune", "--model-id", str(args.model), "--train-dataset", str(train_path),
               "--val-dataset", str(val_path), "--output-path", str(out), "--epochs", str(args.epochs),
               "--batch-size", str(BATCH), "--evaluation-steps", "0", "--threads", str(args.threads),
               "--device", args.device, "--overwrite", "--inverse-cloze", "false", "--learning-rate", str(LR),
               *variant_flags, *extra]
        print(f"[embedfleet {tag}] {' '.join(cmd)}", flush=True)
        r = run_child(cmd, work / f"embedfleet_{tag}", env, args.max_wait)
        entry = {k: v for k, v in r.items() if k not in ("stdout", "stderr", "sampler")}
        entry["output"] = str(out)
        results[f"embedfleet_{tag}"] = entry
        if r["rc"] != 0:
            entry["error"] = (r["stdout"][-2000:] + r["stderr"][-4000:]).strip()
            print(f"[embedfleet {tag}] FAILED rc={r['rc']} after {r['wall_s']:.1f} s\n--- stdout ---\n{r['stdout'][-2000:]}"
                  f"\n--- stderr ---\n{r['stderr'][-4000:]}", flush=True)
            continue
        m = TRAINED_RE.search(r["stdout"])
        if not m:
            entry["error"] = f"no 'trained N steps' line in stdout:\n{r['stdout'][-2000:]}"
            print(f"[embedfleet {tag}] {entry['error']}", flush=True)
            continue
        entry.update(steps=int(m[1]), printed_seconds=float(m[2]), printed_pairs_per_s=float(m[3]), pairs_per_epoch=int(m[4]))
        if b := BEST_RE.search(r["stdout"]):
            entry.update(own_metric=b[1], own_best=float(b[2]), best_step=int(b[3]), own_base=float(b[4]))
        elif b := NOBEST_RE.search(r["stdout"]):
            entry.update(own_metric=b[1], own_best=None, best_step=None, own_base=float(b[2]))
        timing = step_timing(r["stderr"], entry["steps"])
        if "marks" in timing:
            entry.update(quiet_steps(r["sampler"], timing.pop("marks"), args.quiet_threshold))
        entry.update(timing)
        if entry.get("train_only_s"):
            entry["train_only_pairs_per_s"] = n_pairs * args.epochs / entry["train_only_s"]
        if entry.get("quiet_median_step_s"):
            entry["quiet_pairs_per_s"] = BATCH / entry["quiet_median_step_s"]
        print(f"[embedfleet {tag}] {r['stdout'].strip()}", flush=True)
        print(f"[embedfleet {tag}] process wall {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
              f"cpu {r['user_s']:.1f} s user + {r['sys_s']:.1f} s system, steps only {fmt(entry.get('train_only_s'), '.1f')} s, median quiet step "
              f"{fmt(entry.get('quiet_median_step_s'), '.2f')} s ({entry.get('quiet_steps')} quiet steps), other processes {r['other_cores']:.2f} cores", flush=True)

    # Quality: one evaluator for all (and at the smallest Matryoshka dimension)
    evals = [("base", args.model)] + [(f"reference_{m}", work / f"out_reference_{m}") for m, _ in ref_modes]
    for tag, _ in runs:
        if "error" not in results[f"embedfleet_{tag}"]:
            evals.append((f"embedfleet_{tag}", work / f"out_embedfleet_{tag}"))
    small = min(_dims(args.matryoshka_dims)) if args.variant == "matryoshka" else None
    ndcg: dict[str, float] = {}
    ndcg_small: dict[str, float] = {}
    for tag, path in evals:
        v, s = evaluate(path, val, args.threads)
        ndcg[tag] = v
        extra = ""
        if small is not None:
            ndcg_small[tag], _ = evaluate(path, val, args.threads, truncate_dim=small)
            extra = f"; at {small} dimensions {ndcg_small[tag]:.4f}"
        print(f"[eval] {tag}: cosine NDCG@10 = {v:.4f} ({s:.1f} s){extra}", flush=True)
    ndcg["reference"] = ndcg["reference_fp32"]
    results["ndcg@10"] = ndcg
    if small is not None:
        results[f"ndcg@10_dim_{small}"] = ndcg_small

    # Table
    base = ndcg["base"]
    ref_ndcg = ndcg["reference"]
    ref_rss = results["reference"]["peak_rss_mib"]
    R = results["reference"]
    def qfrac(e):
        return f"{e.get('quiet_steps', 0)}/{e.get('steps', 0)}"

    refs = [(m, results[f"reference_{m}"]) for m, _ in ref_modes]
    small_cell = lambda tag: f" {fmt(ndcg_small.get(tag), '8.4f')}" if small is not None else ""
    rows = [("base model (no training)", "base", base, None, None, None, None, None)]
    for m, mode in refs:
        rows.append((f"sentence-transformers {m}", f"reference_{m}", ndcg[f"reference_{m}"], mode["pairs_per_s"], mode.get("quiet_pairs_per_s"),
                     qfrac(mode), mode["peak_rss_mib"], mode["other_cores"]))
    for tag, _ in runs:
        e = results[f"embedfleet_{tag}"]
        if "error" in e:
            rows.append((f"embedfleet {tag} (FAILED rc={e['rc']})", None, None, None, None, None, e["peak_rss_mib"], e["other_cores"]))
            continue
        rows.append((f"embedfleet {tag}", f"embedfleet_{tag}", ndcg.get(f"embedfleet_{tag}"), e["printed_pairs_per_s"], e.get("quiet_pairs_per_s"),
                     qfrac(e), e["peak_rss_mib"], e["other_cores"]))
    print()
    print(f"MiniLM-L6 fine-tuning ({args.variant}), {n_pairs} train pairs x {args.epochs} epoch, batch {BATCH}, {args.threads} threads, CPU "
          f"({os.cpu_count()} cores); val {len(val['queries'])} queries / {len(val['corpus'])} chunks; "
          f"NDCG@10 from sentence-transformers' InformationRetrievalEvaluator for every row")
    ratio_hdr = "".join(f" {'x ST ' + m:>9}" for m, _ in refs)
    small_hdr = f" {'@' + str(small) + ' dims':>8}" if small is not None else ""
    hdr = (f"{'run':<28} {'NDCG@10':>8}{small_hdr} {'d base':>7} {'pairs/s':>8} {'quiet p/s':>9}{ratio_hdr} "
           f"{'quiet n':>8} {'peak RSS':>9}{ratio_hdr} {'other':>6}")
    print(hdr)
    print("-" * len(hdr))
    for name, tag, nd, pps, med, qn, rss, other in rows:
        mine = bool(tag and tag.startswith("embedfleet"))
        speed_ratios = "".join(f" {fmt(_ratio(med, mode.get('quiet_pairs_per_s')) if mine else None, '9.2f')}" for _, mode in refs)
        rss_ratios = "".join(f" {fmt(_ratio(rss, mode['peak_rss_mib']) if mine else None, '9.2f')}" for _, mode in refs)
        print(f"{name:<28} {fmt(nd, '8.4f')}{small_cell(tag) if tag else ''} {fmt(None if nd is None else nd - base, '+7.4f')} {fmt(pps, '8.2f')} "
              f"{fmt(med, '9.2f')}{speed_ratios} {qn or '-':>8} "
              f"{(fmt(rss, '7.0f') + ' M') if rss else '-':>9}{rss_ratios} {fmt(other, '6.2f')}")
    print("x ST fp32 / x ST bf16: embedfleet's quiet-step speed, then its peak RSS, against each reference mode.")
    print("pairs/s: reference = pairs x epochs / trainer.train() time; embedfleet = the pairs/s it prints (its timer")
    print("  starts after the base-model evaluation and ends after the epoch-end evaluation and model save).")
    print(f"quiet p/s: batch / median time of the 'quiet' steps, those during which other processes used < "
          f"{args.quiet_threshold} cores")
    print("  (quiet n: how many steps qualified); the fair speed on a shared machine.")
    print("other: cores kept busy by other processes during the whole run (machine busy time minus the run's own).")
    noisy = [k for k in ("reference_fp32", "reference_bf16", "embedfleet_fp32", "embedfleet_bf16") if k in results and results[k]["other_cores"] > 0.2]
    if noisy:
        print(f"WARNING: other processes were busy during {', '.join(noisy)}: pairs/s and x ref are distorted; "
              "compare the quiet columns.")
    print()
    print("goals:")
    fp = results.get("embedfleet_fp32", {})
    checks = []
    if "error" not in fp:
        e_nd = ndcg["embedfleet_fp32"]
        checks.append((f"fp32 NDCG@10 >= reference - 0.005 ({e_nd:.4f} vs {ref_ndcg - 0.005:.4f})", e_nd >= ref_ndcg - 0.005))
        checks.append((f"fp32 pairs/s >= reference ({fp['printed_pairs_per_s']:.2f} vs {ref_pps:.2f}, x{fp['printed_pairs_per_s'] / ref_pps:.2f}; "
                       f"quiet steps x{fmt(_ratio(fp.get('quiet_pairs_per_s'), ref_med_pps), '.2f')})",
                       fp["printed_pairs_per_s"] >= ref_pps))
        q = _ratio(fp.get("quiet_pairs_per_s"), ref_med_pps)
        if q is not None:
            checks.append((f"fp32 quiet-step speed >= reference quiet-step speed (x{q:.2f})", q >= 1.0))
        checks.append((f"fp32 peak RSS <= reference ({fp['peak_rss_mib']:.0f} vs {ref_rss:.0f} MiB)", fp["peak_rss_mib"] <= ref_rss))
    else:
        checks.append(("fp32 run failed", False))
    bf = results.get("embedfleet_bf16")
    rb = results.get("reference_bf16")
    if bf is not None:
        if "error" not in bf:
            if rb is not None:
                q = _ratio(bf.get("quiet_pairs_per_s"), rb.get("quiet_pairs_per_s"))
                checks.append((f"bf16 quiet-step speed >= 1.3 x sentence-transformers bf16 autocast (x{fmt(q, '.2f')})", q is not None and q >= 1.3))
                checks.append((f"bf16 peak RSS <= sentence-transformers bf16 ({bf['peak_rss_mib']:.0f} vs {rb['peak_rss_mib']:.0f} MiB)",
                               bf["peak_rss_mib"] <= rb["peak_rss_mib"]))
            if "error" not in fp:
                d = ndcg["embedfleet_bf16"] - ndcg["embedfleet_fp32"]
                checks.append((f"bf16 NDCG@10 within 0.005 of fp32 ({d:+.4f})", abs(d) <= 0.005))
        else:
            checks.append(("bf16 run failed", False))
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    results["goals"] = [{"goal": t, "pass": ok} for t, ok in checks]

    print()
    print("notes:")
    print(f"  reference: {ref['steps']} steps, train() {ref['seconds']:.1f} s, median quiet step {fmt(ref_step, '.2f')} s, "
          f"child wall {R['wall_s']:.1f} s, cpu {R['cpu_s']:.1f} s, waited {R['waited_for_quiet_s']:.0f} s for a quiet machine, "
          f"load avg {R['load_before']:.2f}->{R['load_after']:.2f}")
    for tag, _ in runs:
        e = results[f"embedfleet_{tag}"]
        if "error" in e:
            print(f"  embedfleet {tag}: FAILED rc={e['rc']}: {e['error'][-600:]}")
            continue
        print(f"  embedfleet {tag}: {e['steps']} steps; printed {e['printed_seconds']:.1f} s / {e['printed_pairs_per_s']:.2f} pairs/s; "
              f"steps only {fmt(e.get('train_only_s'), '.1f')} s; epoch-end eval+save {fmt(e.get('tail_s'), '.1f')} s; "
              f"median quiet step {fmt(e.get('quiet_median_step_s'), '.2f')} s; process wall {e['wall_s']:.1f} s, cpu {e['cpu_s']:.1f} s; "
              f"own NDCG@10 base {e.get('own_base', float('nan')):.4f} best {fmt(e.get('own_best'), '.4f')} at step {e.get('best_step')}; "
              f"waited {e['waited_for_quiet_s']:.0f} s, load avg {e['load_before']:.2f}->{e['load_after']:.2f}")
    print(f"  embedfleet binary {bin_info['path']} (mtime {bin_info['mtime']}, sha256 {bin_info['sha256']}); repo HEAD {git}")
    print(f"  work dir: {work}{'' if keep else ' (temporary; pass --work-dir to keep and reuse)'}")
    if args.json:
        _dump(args.json, results)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)


_TS_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s+(\w+)\s+(.*)$")


def step_timing(stderr: str, steps: int) -> dict:
    """Step timings from embedfleet's log: 'started phase="train"', one debug line per step (the
    progress message 'loss … lr …'), and 'new best checkpoint' / the end. Empty if not found."""
    from datetime import datetime

    start = None
    marks: list[float] = []
    tail_end = None
    for line in stderr.splitlines():
        m = _TS_RE.match(line.strip())
        if not m:
            continue
        t = datetime.fromisoformat(m[1][:26]).timestamp()
        msg = m[3]
        if 'started' in msg and 'phase="train"' in msg:
            start, marks = t, []
        elif start is not None and m[2] == "DEBUG" and "loss" in msg and "lr" in msg:
            marks.append(t)
        elif start is not None and "new best checkpoint" in msg:
            tail_end = t
    if start is None or len(marks) != steps:
        return {"step_log_lines": len(marks)}
    out = {"train_only_s": marks[-1] - start, "marks": [start] + marks}
    if tail_end is not None:
        out["tail_s"] = tail_end - marks[-1]
    return out

if __name__ == "__main__":
    main()
