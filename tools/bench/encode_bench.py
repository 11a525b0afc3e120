#!/usr/bin/env python3
"""Encoding throughput: embedfleet against sentence-transformers in both of its modes, same machine,
same texts, one invocation.

Run with the reference venv (tools/reference/README.md):

    ~/.cache/embedfleet/reference-venv/bin/python tools/bench/encode_bench.py
        [--corpora sample,python-docs] [--texts N] [--threads T] [--device cpu|cuda] [--quick]
        [--family minilm|mpnet|xlm-roberta|modernbert|qwen3] [--model PATH] [--bin PATH] [--keep DIR]
        [--json PATH]

The texts are the passages a user encodes: the chunks `embedfleet generate` cuts (1000 characters,
200 overlap, the defaults) from a corpus, white space collapsed so that each fits on one line.
Corpora (--corpora, default both):

  sample       examples/sample-corpus.json (60 pages of a fictional product's documentation)
  python-docs  the HTML pages of Debian's python3.11-doc (../shared/tools/real-docs.sh fetches them)
  PATH         any corpus file or folder `embedfleet generate --input` reads

N texts are taken from each corpus's chunks in sha256(chunk id) order (default 1000; mpnet and
xlm-roberta 300, modernbert 96, qwen3 64; --quick 300 / 96 / 64 / 48).

Runs, each in its own process:

  ST fp32        SentenceTransformer(model).encode(texts, batch_size=32)
  ST bf16        the same inside torch.autocast(device, dtype=torch.bfloat16): what a user who wants
                 speed turns on (matmuls, attention and GELU in bf16)
  embedfleet     `embedfleet encode --batch-size 32 --precision fp32|bf16`

Both sort texts by length before batching, so each batch pads to its own longest text; "padding" is
the share of the batches' token grid that is padding under that rule. texts/s: the reference's
encode() call alone (load and a 32-text warm-up excluded); embedfleet's from outside the process,
(N - 32) / (t_N - t_32), which removes process start, model load and the first 32 texts. Each time
is the median of 3 runs. CPU user and system seconds and peak RSS are the whole process's (os.wait4
of that child, the median run's for embedfleet), load included; the reference's CPU covers its 3
encodes and Python's start-up.
The last lines check accuracy: embedfleet fp32 against ST fp32, and embedfleet bf16 against both.

--family mpnet / xlm-roberta runs a random-weight model of the real size (mpnet-base and
xlm-roberta-base: 12 layers, hidden 768, the real vocabularies), built once by
tools/reference/make_family_fixtures.py's builders into ~/.cache/embedfleet/bench-models/;
--family modernbert (gte-modernbert-base's size: 22 layers, hidden 768, 50,368 rows) and --family
qwen3 (Qwen3-Embedding-0.6B's size: 28 layers, hidden 1,024, 151,669 rows, last-token pooling) come
from make_modernbert_fixture.py's and make_qwen3_fixture.py's builders, with their trained
tokenizers, the same way. The default is the real all-MiniLM-L6-v2 from .deps/.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WARMUP_TEXTS = 32
BATCH = 32
# Every timed run is repeated and the median kept: a few seconds of work on a shared machine vary.
REPEATS = 3
# Texts per corpus by family (default, --quick): the larger models take minutes per run on a CPU.
TEXTS = {"minilm": (1000, 300), "mpnet": (300, 96), "xlm-roberta": (300, 96), "modernbert": (96, 64), "qwen3": (64, 48)}
PYTHON_DOCS = Path.home() / ".cache" / "embedfleet" / "real-docs" / "root" / "usr" / "share" / "doc" / "python3.11" / "html"

# --------------------------------------------------------------------------------------------
# Child: the sentence-transformers reference (run as `encode_bench.py --_reference-child ...`).
# --------------------------------------------------------------------------------------------


def reference_child(args):
    t0 = time.perf_counter()
    import contextlib

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model, device=args.device)
    t_load = time.perf_counter() - t0
    texts = Path(args.input).read_text(encoding="utf-8").split("\n")
    if texts and texts[-1] == "":
        texts.pop()
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"

    def region():
        if args.bf16:
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync():
        if device_type == "cuda":
            torch.cuda.synchronize()

    with region():
        model.encode(texts[:WARMUP_TEXTS], batch_size=BATCH, show_progress_bar=False)
    sync()
    times = []
    for _ in range(REPEATS):
        t1 = time.perf_counter()
        with region():
            emb = model.encode(texts, batch_size=BATCH, show_progress_bar=False, convert_to_numpy=True)
        sync()
        times.append(time.perf_counter() - t1)
    t_encode = sorted(times)[len(times) // 2]
    np.save(args.output, np.asarray(emb, dtype=np.float32))
    json.dump(
        {
            "n": len(texts),
            "load_s": t_load,
            "encode_s": t_encode,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "max_seq_length": model.max_seq_length,
        },
        sys.stdout,
    )


# --------------------------------------------------------------------------------------------
# Parent helpers.
# --------------------------------------------------------------------------------------------


def cpu_description():
    """The CPU's model and the flags that decide the fast paths, and any cap on them."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16"]
    have = [f for f in wanted if f in flags]
    caps = [f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "EMBEDFLEET_CPU_ATTENTION") if k in os.environ]
    return f"{model}, {os.cpu_count()} cores; flags: {' '.join(have) or 'none of ' + ' '.join(wanted)}" + (
        f"; capped with {' '.join(caps)}" if caps else "")


def run_measured(cmd, stdout_path, stderr_path, env=None):
    """Runs cmd; returns (returncode, wall seconds, rusage of that child alone)."""
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    return os.waitstatus_to_exitcode(status), wall, ru


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def find_bin(explicit):
    if explicit:
        return Path(explicit)
    cands = []
    if os.environ.get("CARGO_TARGET_DIR"):
        cands.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "embedfleet")
    cands.append(Path.home() / ".cache" / "embedfleet" / "target" / "debug" / "embedfleet")
    cands.append(REPO / "target" / "debug" / "embedfleet")
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    sys.exit("embedfleet binary not found; tried: " + ", ".join(map(str, cands)) + " (use --bin)")


def corpus_input(name):
    if name == "sample":
        return REPO / "examples" / "sample-corpus.json"
    if name == "python-docs":
        if not PYTHON_DOCS.is_dir():
            sys.exit(f"{PYTHON_DOCS} is missing: run ../shared/tools/real-docs.sh first")
        return PYTHON_DOCS
    path = Path(name)
    if not path.exists():
        sys.exit(f"corpus {name}: no such file or folder (use sample, python-docs or a path)")
    return path


def chunk_texts(binp, corpus, work, n):
    """The first n chunks in sha256(chunk id) order of `embedfleet generate` on the corpus."""
    data = work / "data"
    if not (data / "train_corpus.json").exists():
        cmd = [str(binp), "generate", "--input", str(corpus), "--output-dir", str(data), "--generator", "offline", "--overwrite"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"embedfleet generate failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    chunks = {}
    for split in ("train", "val"):
        chunks.update(json.loads((data / f"{split}_corpus.json").read_text(encoding="utf-8")))
    ids = sorted(chunks, key=lambda c: hashlib.sha256(c.encode()).hexdigest())
    texts = [" ".join(chunks[c].split()) for c in ids]
    texts = [t for t in texts if t][:n]
    return texts, len(chunks)


def token_lengths(model_dir, texts, max_len):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return [min(max_len, len(e.ids)) for e in tok.encode_batch(texts, add_special_tokens=True)]


def padding_share(lens, batch):
    """Padding share of the token grid when texts are sorted by length and cut into batches."""
    ordered = sorted(lens, reverse=True)
    grid = real = 0
    for i in range(0, len(ordered), batch):
        b = ordered[i:i + batch]
        grid += b[0] * len(b)
        real += sum(b)
    return 1 - real / grid


def read_jsonl(path):
    import numpy as np

    with open(path, encoding="utf-8") as f:
        return np.asarray([json.loads(line) for line in f if line.strip()], dtype=np.float32)


def cosines(a, b):
    import numpy as np

    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = (an * bn).sum(axis=1)
    return float(c.min()), float(np.abs(a - b).max())


def mib(kib):
    return kib / 1024


# --------------------------------------------------------------------------------------------
# One corpus.
# --------------------------------------------------------------------------------------------


def bench_corpus(args, binp, name, n, work):
    work.mkdir(parents=True, exist_ok=True)
    texts, total = chunk_texts(binp, corpus_input(name), work, n)
    n = len(texts)
    if n <= WARMUP_TEXTS:
        sys.exit(f"corpus {name} has only {n} chunks; need more than {WARMUP_TEXTS}")
    full, small = work / "texts.txt", work / "texts32.txt"
    full.write_text("\n".join(texts) + "\n", encoding="utf-8")
    small.write_text("\n".join(texts[:WARMUP_TEXTS]) + "\n", encoding="utf-8")
    runs, log = {}, []

    for mode in ("fp32", "bf16"):
        tag = f"ST {mode}"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_reference-child", "--threads", str(args.threads),
               "--model", args.model, "--input", str(full), "--output", str(work / f"st_{mode}.npy"), "--device", args.device]
        if mode == "bf16":
            cmd.append("--bf16")
        la0 = loadavg()
        rc, wall, ru = run_measured(cmd, work / f"st_{mode}.out", work / f"st_{mode}.err")
        if rc != 0:
            sys.exit(f"{tag} failed:\n" + (work / f"st_{mode}.err").read_text()[-4000:])
        ref = json.loads((work / f"st_{mode}.out").read_text())
        runs[tag] = dict(tps=n / ref["encode_s"], user=ru.ru_utime, sys=ru.ru_stime, rss=ru.ru_maxrss)
        max_len = ref["max_seq_length"]
        log.append(f"{tag}: torch {ref['torch']}, {ref['torch_threads']} threads, {ref['cpu_capability']}; load {ref['load_s']:.1f} s, "
                   f"encode {ref['encode_s']:.2f} s; loadavg {la0:.2f} -> {loadavg():.2f}")

    def ef(precision, inp, tag):
        out = work / f"{tag}.jsonl"
        cmd = [str(binp), "encode", "--model", args.model, "--input", str(inp), "--output", str(out),
               "--batch-size", str(BATCH), "--device", args.device, "--threads", str(args.threads), "--precision", precision]
        rc, wall, ru = run_measured(cmd, work / f"{tag}.out", work / f"{tag}.err")
        if rc != 0:
            sys.exit(f"embedfleet failed (exit {rc}): {' '.join(cmd)}\n" + (work / f"{tag}.err").read_text()[-3000:])
        return wall, ru, cmd

    ef("fp32", small, "warm")  # binary, libtorch and weights into the page cache, untimed
    for precision in ("fp32", "bf16"):
        la0 = loadavg()
        starts = sorted(ef(precision, small, f"ef_{precision}_32")[0] for _ in range(REPEATS))
        t32 = starts[REPEATS // 2]
        fulls = sorted((ef(precision, full, f"ef_{precision}") for _ in range(REPEATS)), key=lambda r: r[0])
        wall, ru, cmd = fulls[REPEATS // 2]
        runs[f"embedfleet {precision}"] = dict(tps=(n - WARMUP_TEXTS) / (wall - t32), user=ru.ru_utime, sys=ru.ru_stime, rss=ru.ru_maxrss)
        log.append(f"embedfleet {precision}: start + 32 texts {t32:.2f} s, {n} texts {wall:.2f} s (medians of {REPEATS}); "
                   f"loadavg {la0:.2f} -> {loadavg():.2f}; {' '.join(cmd)}")

    import numpy as np

    st32, st16 = np.load(work / "st_fp32.npy"), np.load(work / "st_bf16.npy")
    e32, e16 = read_jsonl(work / "ef_fp32.jsonl"), read_jsonl(work / "ef_bf16.jsonl")
    accuracy = {
        "embedfleet fp32 vs ST fp32": cosines(e32, st32),
        "embedfleet bf16 vs embedfleet fp32": cosines(e16, e32),
        "embedfleet bf16 vs ST fp32": cosines(e16, st32),
        "ST bf16 vs ST fp32": cosines(st16, st32),
    }
    lens = token_lengths(args.model, texts, max_len)
    return dict(corpus=name, texts=n, chunks=total, tokens_mean=sum(lens) / n, tokens_min=min(lens), tokens_max=max(lens),
                padding=padding_share(lens, BATCH), runs=runs, accuracy=accuracy, log=log)


def print_corpus(r, threads, device):
    print()
    print(f"## {r['corpus']}: {r['texts']} of its {r['chunks']} chunks, {r['tokens_mean']:.0f} tokens on average "
          f"({r['tokens_min']}-{r['tokens_max']}), batch {BATCH} sorted by length: padding {100 * r['padding']:.1f} % of the grid; "
          f"{threads} threads, {device}")
    print()
    print("| run | texts/s | vs ST fp32 | vs ST bf16 | CPU user s | CPU sys s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    base32, base16 = r["runs"]["ST fp32"]["tps"], r["runs"]["ST bf16"]["tps"]
    for name in ("ST fp32", "ST bf16", "embedfleet fp32", "embedfleet bf16"):
        x = r["runs"][name]
        print(f"| {name} | {x['tps']:.1f} | {x['tps'] / base32:.2f}x | {x['tps'] / base16:.2f}x | {x['user']:.1f} | {x['sys']:.1f} | {mib(x['rss']):.0f} |")
    print()
    for name, (mc, mad) in r["accuracy"].items():
        print(f"{name}: min cosine {mc:.6f}, max |diff| {mad:.1e}")
    for line in r["log"]:
        print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default="sample,python-docs", help="comma-separated: sample, python-docs or paths")
    ap.add_argument("--texts", type=int, default=None, help="texts per corpus (default by family: see above)")
    ap.add_argument("--family", choices=list(TEXTS), default="minilm",
                    help="model: the real MiniLM, or a random-weight model of a family's real size")
    ap.add_argument("--quick", action="store_true", help="fewer texts (see above)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides on the same device)")
    ap.add_argument("--bin", default=None, help="embedfleet binary")
    ap.add_argument("--model", default=None, help="sentence-transformers folder (overrides --family's model)")
    ap.add_argument("--keep", default=None, help="keep texts, outputs and logs in this directory")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--_reference-child", dest="ref_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.ref_child:
        return reference_child(args)

    if args.model is None:
        if args.family == "minilm":
            args.model = str(REPO / ".deps" / "all-MiniLM-L6-v2")
        else:
            sys.path.insert(0, str(REPO / "tools" / "reference"))
            from make_family_fixtures import CACHE

            bench_models = CACHE / "bench-models"
            print(f"model: random-weight {args.family} of the real size (building it once into the cache if needed)", flush=True)
            if args.family == "modernbert":
                from make_modernbert_fixture import base_model_folder

                args.model = str(base_model_folder(bench_models / "modernbert-base"))
            elif args.family == "qwen3":
                from make_qwen3_fixture import base_model_folder

                args.model = str(base_model_folder(bench_models / "qwen3-0.6b"))
            else:
                from make_family_fixtures import base_model_folder

                family = args.family.replace("-", "_")
                args.model = str(base_model_folder(family, bench_models / f"{family}-base"))
    n = args.texts if args.texts is not None else TEXTS[args.family][1 if args.quick else 0]
    binp = find_bin(args.bin)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="encode_bench."))
    print(f"command: {' '.join([sys.executable] + sys.argv)}")
    print(f"embedfleet binary: {binp}; model: {args.model}; work dir: {work}")
    print(f"machine: {cpu_description()}")
    results = []
    for i, name in enumerate(c for c in args.corpora.split(",") if c):
        r = bench_corpus(args, binp, name, n, work / f"corpus-{i}")
        print_corpus(r, args.threads, args.device)
        results.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
