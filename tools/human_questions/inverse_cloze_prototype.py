#!/usr/bin/env python3
"""The Python prototype of `--inverse-cloze` that produced the README's plain and hard-negative rows
"spans cut out of their passages": it cuts each question out of its relevant passage in
SRC/{train,val}_dataset.json and writes DST/{train,val}_dataset.json. It matches a question's words
separated by any whitespace, also inside longer words, which the Rust rule
(crates/embedfleet-core/src/inverse_cloze.rs) does not. Train the result with whole passages, as
the README's rows were (the binary then had no cut of its own).

Usage: inverse_cloze_prototype.py SRC DST
  then: copy DST to WORK/data-offline and run EMBEDFLEET_INVERSE_CLOZE=false measure.sh WORK
"""
import json
import os
import re
import sys


def main(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for split in ["train", "val"]:
        with open(f"{src}/{split}_dataset.json") as f:
            d = json.load(f)
        cut = missed = 0
        for qid, question in d["queries"].items():
            pattern = re.compile(r"\s+".join(re.escape(w) for w in question.split()))
            for cid in d["relevant_docs"][qid]:
                text, n = pattern.subn(" ", d["corpus"][cid], count=1)
                if n:
                    cut += 1
                    d["corpus"][cid] = text
                else:
                    missed += 1
        with open(f"{dst}/{split}_dataset.json", "w") as f:
            json.dump(d, f)
        print(split, "cut", cut, "missed", missed)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
