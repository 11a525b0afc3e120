#!/usr/bin/env python3
"""Checks that the JSON Lines `embedfleet mine --export-jsonl` writes train in sentence-transformers
6.2 as they are: `datasets.load_dataset("json")`, then `SentenceTransformerTrainer` with
`MultipleNegativesRankingLoss` (the (anchor, positive, negative) columns) and NO_DUPLICATES
batches, for a few steps. Exits 1 if the columns are not the ones MNRL takes or the loss is not
finite and falling.

    embedfleet mine --train-dataset data/train_dataset.json --model-id .deps/all-MiniLM-L6-v2 \
        --hard-negatives 5 --export-jsonl data/train_triplets.jsonl
    ~/.cache/embedfleet/reference-venv/bin/python tools/reference/check_negatives_jsonl.py \
        --jsonl data/train_triplets.jsonl [--steps 20] [--format triplet|n-tuple]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jsonl", required=True, type=Path)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / ".deps" / "all-MiniLM-L6-v2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--format", choices=["triplet", "n-tuple"], default="triplet")
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    torch.set_num_threads(2)
    ds = load_dataset("json", data_files=str(args.jsonl), split="train")
    columns = ds.column_names
    expected = ["query", "pos", "neg"] if args.format == "triplet" else ["query", "pos"]
    if columns[: len(expected)] != expected or (args.format == "n-tuple" and not all(c.startswith("neg_") for c in columns[2:])):
        print(f"FAIL: columns {columns}, expected {expected}{' + neg_1..neg_N' if args.format == 'n-tuple' else ''}")
        return 1
    print(f"{args.jsonl}: {ds.num_rows} rows, columns {columns}")

    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, _args, _state, _control, logs=None, **_kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    model = SentenceTransformer(str(args.model), device="cpu")
    with tempfile.TemporaryDirectory() as out:
        targs = SentenceTransformerTrainingArguments(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=2e-5,
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            seed=42,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            dataloader_num_workers=0,
            use_cpu=True,
            logging_steps=1,
            disable_tqdm=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=targs, train_dataset=ds, loss=MultipleNegativesRankingLoss(model), callbacks=[Losses()]
        )
        trainer.train()
    if len(losses) < 2 or not all(math.isfinite(x) for x in losses):
        print(f"FAIL: losses {losses}")
        return 1
    head, tail = sum(losses[:3]) / len(losses[:3]), sum(losses[-3:]) / len(losses[-3:])
    print(f"trained {len(losses)} steps of batch {args.batch_size}: loss {head:.4f} (first 3) -> {tail:.4f} (last 3)")
    if not tail < head:
        print("FAIL: the loss did not fall")
        return 1
    print("OK: sentence-transformers trains on the exported negatives")
    return 0


if __name__ == "__main__":
    sys.exit(main())
