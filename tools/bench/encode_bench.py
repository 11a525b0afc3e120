#!/usr/bin/env python3
"""Throughput benchmark: embedfleet's encoder against sentence-transformers, same machine, one run.

Run with the reference venv (tools/reference/README.md):

    ~/.cache/embedfleet/reference-venv/bin/python tools/bench/encode_bench.py [--texts N] [--threads T]
        [--quick] [--bin PATH] [--family minilm|mpnet|xlm-roberta|modernbert|qwen3] [--model PATH]
        [--tokens N] [--corpus PATH] [--keep DIR]

--family mpnet / xlm-roberta runs on a random-weight model of the real size (mpnet-base and
xlm-roberta-base: 12 layers, hidden 768, the real vocabulary of 30,527 / 250,002 rows) with the
family's tokenizer, built once by tools/reference/make_family_fixtures.py's builders and cached in
~/.cache/embedfleet/bench-models/. --family modernbert (gte-modernbert-base's size: 22 layers, hidden
768, 50,368 rows) and --family qwen3 (Qwen3-Embedding-0.6B's size: 28 layers, hidden 1,024, 151,669 rows,
last-token pooling) come from make_modernbert_fixture.py's and make_qwen3_fixture.py's builders, with
their trained tokenizers, the same way. --family minilm (the default) runs .deps/all-MiniLM-L6-v2.

What it does:

1. Builds N texts (default 2000, mpnet / xlm-roberta 300, modernbert 96, qwen3 64; --quick: 300 / 96 /
   64 / 32) of --tokens tokens each, special tokens included (default 200; modernbert and qwen3 128), by
   sliding a window over the concatenated `content` of
   examples/sample-corpus.json, cut at word boundaries with the model's own tokenizer; writes them
   one per line to a temp file (whitespace collapsed, so no newlines inside a text).
2. Reference: a child process loads SentenceTransformer(model, device='cpu'), sets
   torch.set_num_threads(T), warms up on 32 texts, and times model.encode(texts, batch_size=32)
   alone (load excluded).
3. embedfleet: `embedfleet encode ... --batch-size 32 --device cpu --threads T [--precision bf16]`,
   timed from outside, once on a 32-text file (load + 32 texts + write) and once on all N texts.
   raw texts/s = N / t_full; adjusted texts/s = (N - 32) / (t_full - t_32), which removes model load,
   process start and the first 32 texts (and their JSON writing) from the measurement.
4. Compares bf16 to fp32 embedfleet embeddings (min cosine over all texts) and, as a sanity check,
   embedfleet fp32 to the reference.

Peak RSS is per child (os.wait4's rusage, ru_maxrss), so each process is measured separately.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOKENS = {"minilm": 200, "mpnet": 200, "xlm-roberta": 200, "modernbert": 128, "qwen3": 128}
TEXTS = {"minilm": (2000, 300), "mpnet": (300, 96), "xlm-roberta": (300, 96), "modernbert": (96, 64), "qwen3": (64, 32)}
WARMUP_TEXTS = 32
BATCH = 32

# --------------------------------------------------------------------------------------------
# Child: the sentence-transformers reference (run as `encode_bench.py --_reference-child ...`).
# --------------------------------------------------------------------------------------------


def reference_child(args):
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model, device="cpu")
    t_load = time.perf_counter() - t0
    texts = Path(args.input).read_text(encoding="utf-8").split("\n")
    if texts and texts[-1] == "":
        texts.pop()
    model.encode(texts[:WARMUP_TEXTS], batch_size=BATCH, show_progress_bar=False)
    t1 = time.perf_counter()
    emb = model.encode(texts, batch_size=BATCH, show_progress_bar=False)
    t_encode = time.perf_counter() - t1
    np.save(args.output, np.asarray(emb, dtype=np.float32))
    json.dump(
        {
            "n": len(texts),
            "load_s": t_load,
            "encode_s": t_encode,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        sys.stdout,
    )


# --------------------------------------------------------------------------------------------
# Parent helpers.
# --------------------------------------------------------------------------------------------


def run_measured(cmd, stdout_path, stderr_path, env=None):
    """Runs cmd; returns (returncode, wall seconds, rusage of that child alone)."""
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)  # already reaped by wait4
    return p.returncode, wall, ru


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


def build_texts(model_dir, corpus_path, n, tokens):
    """Deterministic texts of `tokens` tokens (special tokens included) from sliding windows over the corpus."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.no_truncation()  # tokenizer.json truncates/pads to 128 by itself
    tok.no_padding()
    # [CLS] and [SEP] for the encoders, the appended <|endoftext|> for Qwen3.
    specials = len(tok.encode("a").ids) - len(tok.encode("a", add_special_tokens=False).ids)
    docs = json.loads(Path(corpus_path).read_text(encoding="utf-8"))
    stream = " ".join(" ".join(d["content"].split()) for d in docs)
    enc = tok.encode(stream, add_special_tokens=False)
    words, offsets = enc.word_ids, enc.offsets
    ntok = len(words)
    w = tokens - specials
    # Window starts must be at the first token of a (pre-tokenized) word, so that re-tokenizing
    # the cut text gives the same pieces.
    starts_ok = [i for i in range(ntok - w) if i == 0 or words[i] != words[i - 1]]
    if not starts_ok:
        sys.exit("corpus too small")
    stride = max(1, len(starts_ok) / n)
    texts, seen = [], set()
    k = 0
    while len(texts) < n:
        i = starts_ok[int(k * stride) % len(starts_ok)]
        k += 1
        # end: the last whole word that fits within w tokens
        j = min(i + w, ntok)
        while j < ntok and j > i + 1 and words[j] == words[j - 1]:
            j -= 1
        text = stream[offsets[i][0]: offsets[j - 1][1]]
        if text in seen and k < 10 * n:
            continue
        seen.add(text)
        texts.append(text)
    lens = [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=True)]
    for t in texts:
        assert "\n" not in t and "\r" not in t
    return texts, lens, ntok


def read_jsonl(path):
    import numpy as np

    with open(path, encoding="utf-8") as f:
        return np.asarray([json.loads(line) for line in f if line.strip()], dtype=np.float32)


def min_cos(a, b):
    import numpy as np

    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = (an * bn).sum(axis=1)
    return float(c.min()), float(c.mean()), float(np.abs(a - b).max())


def cpu_peak(threads, fpc_override):
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info[k.strip()] = v.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    name = info.get("Model name", "?")
    mhz = None
    for key in ("CPU max MHz", "CPU MHz"):
        if key in info:
            mhz, src = float(info[key]), f"lscpu '{key}'"
            break
    if mhz is None:
        try:
            m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.M)
            if m:
                mhz, src = float(m.group(1)), "/proc/cpuinfo 'cpu MHz' (lscpu shows no MHz)"
        except OSError:
            pass
    if mhz is None:
        mhz, src = 2000.0, "guess (no MHz found)"
    flags = info.get("Flags", "").split()
    if fpc_override:
        fpc, isa = fpc_override, f"--flops-per-cycle {fpc_override}"
    elif "avx512f" in flags:
        fpc, isa = 32, "avx512f"
    elif "avx2" in flags:
        fpc, isa = 16, "avx2"
    else:
        fpc, isa = 8, "no avx2"
    peak = mhz * 1e6 * fpc * threads
    desc = (f"CPU '{name}', family {info.get('CPU family', '?')}, {mhz:.0f} MHz from {src}; {isa} -> "
            f"{fpc} fp32 FLOP/cycle/core (2 FMA units assumed); x {threads} cores (= --threads) "
            f"=> peak {peak / 1e9:.1f} GFLOP/s")
    return peak, desc


def model_flops(lens, model_dir):
    """Useful forward FLOPs (no padding), per token per layer: 2 x the weights of the layer's matrix
    products, plus attention's 2*2*seq*(heads*head_dim) (causal or windowed attention counted in full)."""
    c = json.loads((Path(model_dir) / "config.json").read_text())
    layers, h, inter = c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"]
    if c.get("model_type") == "qwen3":
        heads, kv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        weights = 2 * h * heads * hd + 2 * h * kv * hd + 3 * h * inter  # q, o; k, v; gate, up, down
        width = heads * hd
    elif c.get("model_type") == "modernbert":
        weights, width = 4 * h * h + 3 * h * inter, h  # Wqkv, Wo; Wi (gate and up), Wo
    else:
        weights, width = 4 * h * h + 2 * h * inter, h
    return sum(layers * s * (2 * weights + 2 * 2 * s * width) for s in lens)


def fmt_mib(kib):
    return f"{kib / 1024:.0f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=None,
                    help="number of texts (default 2000; mpnet/xlm-roberta 300, modernbert 96, qwen3 64; halved or so by --quick)")
    ap.add_argument("--family", choices=list(TOKENS), default="minilm",
                    help="model: the real MiniLM, or a random-weight mpnet-base / xlm-roberta-base / "
                         "gte-modernbert-base / Qwen3-Embedding-0.6B")
    ap.add_argument("--tokens", type=int, default=None,
                    help="tokens per text, special tokens included (default 200; modernbert and qwen3 128)")
    ap.add_argument("--quick", action="store_true", help="fewer texts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", default=None, help="embedfleet binary")
    ap.add_argument("--model", default=None, help="sentence-transformers folder (overrides --family's model)")
    ap.add_argument("--corpus", default=str(REPO / "examples" / "sample-corpus.json"))
    ap.add_argument("--flops-per-cycle", type=int, default=None,
                    help="override the fp32 FLOP/cycle/core peak assumption")
    ap.add_argument("--keep", default=None, help="keep texts/outputs/logs in this directory")
    ap.add_argument("--_reference-child", dest="ref_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.ref_child:
        return reference_child(args)

    if args.model is None:
        if args.family != "minilm":
            sys.path.insert(0, str(REPO / "tools" / "reference"))
            from make_family_fixtures import CACHE

            bench_models = CACHE / "bench-models"
            print(f"model: random-weight {args.family} of the real size (building it once into the cache if needed)",
                  flush=True)
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
        else:
            args.model = str(REPO / ".deps" / "all-MiniLM-L6-v2")
    n = args.texts if args.texts is not None else TEXTS[args.family][1 if args.quick else 0]
    tokens = args.tokens if args.tokens is not None else TOKENS[args.family]
    if n <= WARMUP_TEXTS:
        sys.exit(f"--texts must be > {WARMUP_TEXTS}")
    T = args.threads
    binp = find_bin(args.bin)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="encode_bench."))
    work.mkdir(parents=True, exist_ok=True)
    cmdline = " ".join([sys.executable] + sys.argv)
    print(f"command: {cmdline}")
    print(f"work dir: {work}")
    print(f"embedfleet binary: {binp}")
    print(f"family: {args.family}, model: {args.model}")

    texts, lens, ntok = build_texts(args.model, args.corpus, n, tokens)
    full = work / "texts.txt"
    small = work / "texts32.txt"
    full.write_text("\n".join(texts) + "\n", encoding="utf-8")
    small.write_text("\n".join(texts[:WARMUP_TEXTS]) + "\n", encoding="utf-8")
    print(f"texts: {n} (corpus stream {ntok} word pieces), tokens/text incl. special tokens: "
          f"min {min(lens)} mean {sum(lens) / n:.1f} max {max(lens)}")

    results = {}
    log = []

    # ---- reference ----
    la0 = loadavg()
    rc, wall, ru = run_measured(
        [sys.executable, str(Path(__file__).resolve()), "--_reference-child", "--threads", str(T),
         "--model", args.model, "--input", str(full), "--output", str(work / "reference.npy")],
        work / "reference.out", work / "reference.err")
    la1 = loadavg()
    if rc != 0:
        print("reference FAILED:\n" + (work / "reference.err").read_text()[-4000:])
        sys.exit(1)
    ref = json.loads((work / "reference.out").read_text())
    results["reference fp32"] = dict(
        tps=n / ref["encode_s"], raw=None, rss=ru.ru_maxrss, cpu=ru.ru_utime + ru.ru_stime,
        wall=wall, t=ref["encode_s"], load=ref["load_s"], la=(la0, la1))
    log.append(f"reference: torch {ref['torch']} threads={ref['torch_threads']} "
               f"cpu_capability={ref['cpu_capability']}; load {ref['load_s']:.2f} s, "
               f"encode {ref['encode_s']:.2f} s; process wall {wall:.1f} s, CPU {ru.ru_utime + ru.ru_stime:.1f} s "
               f"(= {(ru.ru_utime + ru.ru_stime) / wall:.2f} cores busy of {T}, load included); "
               f"loadavg(1m) {la0:.2f} -> {la1:.2f}")

    # ---- embedfleet ----
    def ef(precision, inp, out, tag):
        cmd = [str(binp), "encode", "--model", args.model, "--input", str(inp), "--output", str(out),
               "--batch-size", str(BATCH), "--device", "cpu", "--threads", str(T)]
        if precision != "fp32":
            cmd += ["--precision", precision]
        rc, wall, ru = run_measured(cmd, work / f"{tag}.out", work / f"{tag}.err")
        if rc != 0:
            print(f"embedfleet FAILED (exit {rc}): {' '.join(cmd)}")
            print("stdout:\n" + (work / f"{tag}.out").read_text()[-4000:])
            print("stderr:\n" + (work / f"{tag}.err").read_text()[-4000:])
            return None
        return wall, ru, cmd

    # cache warm-up (binary + libtorch + weights from disk), untimed
    ef("fp32", small, work / "warm.jsonl", "warm")
    ok = {}
    for prec in ("fp32", "bf16"):
        la0 = loadavg()
        # load overhead: median of 3 runs on the 32-text file
        smalls = [ef(prec, small, work / f"ef_{prec}_32.jsonl", f"ef_{prec}_32") for _ in range(3)]
        s = None
        if all(smalls):
            smalls.sort(key=lambda x: x[0])
            s = smalls[1]
        f = ef(prec, full, work / f"ef_{prec}.jsonl", f"ef_{prec}") if s else None
        la1 = loadavg()
        if not (s and f):
            ok[prec] = False
            continue
        ok[prec] = True
        (t32, ru32, _), (tf, ruf, cmd) = s, f
        adj_t = tf - t32
        results[f"embedfleet {prec}"] = dict(
            tps=(n - WARMUP_TEXTS) / adj_t, raw=n / tf, rss=ruf.ru_maxrss, cpu=ruf.ru_utime + ruf.ru_stime,
            wall=tf, t=adj_t, load=t32, la=(la0, la1))
        log.append(f"embedfleet {prec}: 32-text runs {', '.join(f'{x[0]:.2f}' for x in smalls)} s "
                   f"(median {t32:.2f} s, RSS {fmt_mib(ru32.ru_maxrss)}), "
                   f"{n}-text run {tf:.2f} s, CPU {ruf.ru_utime + ruf.ru_stime:.1f} s "
                   f"(= {(ruf.ru_utime + ruf.ru_stime) / tf:.2f} cores busy of {T}); "
                   f"loadavg(1m) {la0:.2f} -> {la1:.2f}; cmd: {' '.join(cmd)}")

    # ---- accuracy ----
    import numpy as np

    ref_emb = np.load(work / "reference.npy")
    acc = []
    if ok.get("fp32"):
        e32 = read_jsonl(work / "ef_fp32.jsonl")
        if e32.shape != ref_emb.shape:
            acc.append(f"embedfleet fp32 output shape {e32.shape} != reference {ref_emb.shape}")
        else:
            mc, mean, mad = min_cos(e32, ref_emb)
            acc.append(f"embedfleet fp32 vs reference: min cosine {mc:.7f}, mean {mean:.7f}, max |diff| {mad:.2e}")
        if ok.get("bf16"):
            e16 = read_jsonl(work / "ef_bf16.jsonl")
            if e16.shape != e32.shape:
                acc.append(f"embedfleet bf16 output shape {e16.shape} != fp32 {e32.shape}")
            else:
                mc, mean, mad = min_cos(e16, e32)
                acc.append(f"embedfleet bf16 vs embedfleet fp32: min cosine {mc:.6f} (goal >= 0.999) "
                           f"{'PASS' if mc >= 0.999 else 'FAIL'}, mean {mean:.6f}, max |diff| {mad:.2e}")

    # ---- table ----
    flops = model_flops(lens, args.model)
    peak, peak_desc = cpu_peak(T, args.flops_per_cycle)
    ref_tps = results["reference fp32"]["tps"]
    goals = {"embedfleet fp32": 0.95, "embedfleet bf16": 1.5}
    print()
    print(f"threads={T}, batch={BATCH}, texts={n}, model FLOPs/text (mean, no padding) = "
          f"{flops / n / 1e9:.3f} GFLOP")
    print(f"peak: {peak_desc}")
    print("  note: counting an FMA as 2 FLOPs (as the model FLOPs do), 2 FMA units x 16 fp32 lanes = 64 "
          "FLOP/cycle/core for full-width AVX-512 (e.g. Zen 5), which would halve %peak; "
          "see --flops-per-cycle")
    print()
    hdr = f"{'run':<17} {'texts/s':>9} {'raw t/s':>9} {'ratio':>7} {'goal':>10} {'peak RSS':>9} {'GFLOP/s':>8} {'%peak':>6}"
    print(hdr)
    print("-" * len(hdr))
    for name in ("reference fp32", "embedfleet fp32", "embedfleet bf16"):
        if name not in results:
            print(f"{name:<17} {'FAILED':>9}")
            continue
        r = results[name]
        ratio = r["tps"] / ref_tps
        gflops = r["tps"] * flops / n / 1e9
        goal = goals.get(name)
        gs = (f">={goal:g} {'ok' if ratio >= goal else 'MISS'}" if goal else "")
        raw = f"{r['raw']:.2f}" if r["raw"] is not None else "-"
        print(f"{name:<17} {r['tps']:>9.2f} {raw:>9} {ratio:>7.3f} {gs:>10} {fmt_mib(r['rss']):>9} "
              f"{gflops:>8.1f} {100 * gflops * 1e9 / peak:>5.1f}%")
    print()
    print("texts/s: reference = N / encode() time (load and warm-up excluded); embedfleet = "
          f"(N-{WARMUP_TEXTS}) / (t_N - t_{WARMUP_TEXTS}) (load, start-up, first {WARMUP_TEXTS} texts removed); "
          "raw t/s = N / whole CLI wall time. ratio = texts/s / reference texts/s. GFLOP/s from texts/s.")
    for line in log + acc:
        print(line)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if not all(ok.get(p) for p in ("fp32", "bf16")):
        sys.exit(1)


if __name__ == "__main__":
    main()
