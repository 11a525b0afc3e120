#!/usr/bin/env python3
"""Fixture for embedfleet's paired bootstrap (crates/embedfleet-report/src/stats.rs), computed with numpy.

Two cases of per-question NDCG@10 for a base and a candidate model, made like real evaluations
(most questions unchanged, some ranked better, some worse, ties at 0 and 1):

- `resamples`: numpy draws the resample indices (`Generator.integers`), computes each resample's
  mean difference and the 2.5th/97.5th percentiles (`numpy.percentile`, linear). The indices are
  written too, so Rust recomputes the interval from the same draws and must agree to 1e-12.
- `seeded`: numpy's own 10,000-resample interval of the same differences. Rust draws its own
  resamples (another generator), so the two agree only up to Monte Carlo error; the test allows
  a tolerance of a tenth of the interval's width.

Runs in the reference venv (tools/reference/setup-venv.sh) or any Python with numpy:
    python3 tools/reference/make_bootstrap_fixture.py [--out crates/embedfleet-report/tests/fixtures/paired_bootstrap.json]
"""

import argparse
import json
import math

import numpy as np


def ndcg_of_rank(rank):
    return 0.0 if rank is None or rank > 10 else 1.0 / math.log2(rank + 1)


def case(rng, questions, gain):
    """Ranks of one relevant passage under a base model, then a candidate that moves some of them."""
    base_ranks = [int(r) if r <= 12 else None for r in rng.geometric(0.45, questions)]
    cand_ranks = []
    for r in base_ranks:
        u = rng.random()
        if u < 0.6:
            cand_ranks.append(r)
        elif u < 0.6 + 0.2 + gain:
            cand_ranks.append(max(1, (r or 14) - int(rng.integers(1, 4))))
        else:
            cand_ranks.append((r or 11) + int(rng.integers(1, 4)))
    base = [ndcg_of_rank(r) for r in base_ranks]
    cand = [ndcg_of_rank(r) if r is None or r <= 12 else 0.0 for r in cand_ranks]
    return base, cand


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="crates/embedfleet-report/tests/fixtures/paired_bootstrap.json")
    args = ap.parse_args()
    rng = np.random.default_rng(20261207)
    cases = []
    for name, questions, gain in [("small_no_difference", 60, 0.0), ("clear_gain", 150, 0.15)]:
        base, cand = case(rng, questions, gain)
        diffs = np.array(cand) - np.array(base)
        draws = rng.integers(0, questions, size=(400, questions))
        means = diffs[draws].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        full = diffs[rng.integers(0, questions, size=(10_000, questions))].mean(axis=1)
        full_low, full_high = np.percentile(full, [2.5, 97.5])
        cases.append({
            "name": name,
            "base": base,
            "candidate": cand,
            "mean": float(diffs.mean()),
            "resamples": {"indices": draws.tolist(), "low": float(low), "high": float(high)},
            "seeded": {"resamples": 10_000, "low": float(full_low), "high": float(full_high)},
        })
        print(f"{name}: {questions} questions, mean {diffs.mean():+.4f}, 400 draws [{low:+.4f}, {high:+.4f}], "
              f"10,000 draws [{full_low:+.4f}, {full_high:+.4f}]")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"numpy": np.__version__, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
