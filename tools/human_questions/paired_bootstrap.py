#!/usr/bin/env python3
"""How much of a difference between two models on the human questions is noise.

Reads the `per_query.jsonl` that `embedfleet evaluate` writes (the rank of the first right passage
under each model, per question) and prints, for every model against the base, the paired
difference in DCG@10 of the first right passage (1/log2(1 + rank) when rank <= 10, else 0: NDCG@10
for a question with one answer passage), in accuracy@1 and in hit rate@5, with a 95 % interval from a paired
bootstrap over the questions (10,000 resamples, seeded). An interval that contains 0 means that
these questions cannot tell the two models apart.

Usage: tools/human_questions/paired_bootstrap.py RESULTS_DIR/per_query.jsonl [--base base]
"""

import argparse
import json
import math
import random
import sys


def dcg10(rank):
    return 1.0 / math.log2(1 + rank) if rank is not None and 1 <= rank <= 10 else 0.0


def hit(k):
    return lambda rank: 1.0 if rank is not None and 1 <= rank <= k else 0.0


def interval(diffs, resamples, rng):
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("per_query")
    ap.add_argument("--base", default="base")
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        with open(args.per_query, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"paired_bootstrap: cannot read {args.per_query}: {e}")
    if not rows:
        sys.exit(f"paired_bootstrap: {args.per_query} holds no questions")
    models = list(rows[0]["rank"])
    if args.base not in models:
        sys.exit(f"paired_bootstrap: no model named {args.base!r} in {args.per_query} (models: {', '.join(models)})")
    measures = [("ΔDCG@10 (1st answer)", dcg10), ("Δaccuracy@1", hit(1)), ("Δhit@5", hit(5))]
    print(f"{len(rows)} questions; paired bootstrap, {args.resamples} resamples, 95 % intervals")
    print(f"{'model':<16}" + "".join(f"{name:<28}" for name, _ in measures) + "better/worse")
    for model in models:
        if model == args.base:
            continue
        rng = random.Random(args.seed)
        line = f"{model:<16}"
        for _, measure in measures:
            diffs = [measure(r["rank"].get(model)) - measure(r["rank"].get(args.base)) for r in rows]
            lo, hi = interval(diffs, args.resamples, rng)
            line += f"{sum(diffs) / len(rows):+.4f} [{lo:+.4f}, {hi:+.4f}]   "
        unranked = 10**9
        better = sum(1 for r in rows if (r["rank"].get(model) or unranked) < (r["rank"].get(args.base) or unranked))
        worse = sum(1 for r in rows if (r["rank"].get(model) or unranked) > (r["rank"].get(args.base) or unranked))
        print(f"{line}{better} / {worse}")

if __name__ == "__main__":
    main()
