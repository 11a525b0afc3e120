#!/usr/bin/env bash
# The human-question table: fine-tune a base model on the FAQ corpus's documents (questions from the
# offline generator, or an LLM with GENERATOR=llm and the usual EMBEDFLEET_LLM_* settings) once per
# variant (plain MNRL, one mined hard negative, Matryoshka, a merge with the base, a round-trip
# filter), then score the base model and every
# variant on the FAQs' human-written questions against all 2,401 passages, at full size and cut to
# 384 and 64 dimensions, and print a paired bootstrap of each difference from the base
# (tools/human_questions/paired_bootstrap.py).
#
# Usage: tools/human_questions/measure.sh [WORK_DIR]   (default ~/.cache/embedfleet/human-questions/measure)
# Settings: MODEL (default .deps/all-MiniLM-L6-v2), EPOCHS (1), GENERATOR (offline), THREADS (2),
#           VARIANTS ("plain hard-negatives matryoshka"; also merge: --merge-with-base auto, and
#           round-trip: --round-trip-top-k ROUND_TRIP_TOP_K, default 1), DOCS (the documents to train on; default
#           all of build.py's docs/, a folder of some of them makes a quicker run, e.g. for a slow
#           local LLM), EMBEDFLEET_BIN.
# A variant whose model folder exists is not trained again; delete the folder to retrain it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${EMBEDFLEET_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/embedfleet/target}/debug/embedfleet}
work=${1:-$HOME/.cache/embedfleet/human-questions/measure}
model=${MODEL:-$root/.deps/all-MiniLM-L6-v2}
epochs=${EPOCHS:-1}
generator=${GENERATOR:-offline}
threads=${THREADS:-2}
variants=${VARIANTS:-plain hard-negatives matryoshka}
hq=$HOME/.cache/embedfleet/human-questions/out
docs=${DOCS:-$hq/docs}

[ -x "$bin" ] || { echo "measure.sh: no embedfleet binary at $bin; run cargo build --bins first" >&2; exit 2; }
[ -f "$model/config.json" ] || { echo "measure.sh: no model at $model; run scripts/setup.sh first" >&2; exit 2; }
python3 "$root/tools/human_questions/build.py" --show 0
mkdir -p "$work"
data="$work/data-$generator"
if [ ! -f "$data/train_dataset.json" ]; then
  "$bin" generate --input "$docs" --output-dir "$data" --generator "$generator"
fi

models=(--model "base=$model")
for variant in $variants; do
  case $variant in
    plain) flags=() ;;
    hard-negatives) flags=(--hard-negatives 1) ;;
    matryoshka) flags=(--matryoshka-dims 384,256,128,64) ;;
    merge) flags=(--merge-with-base auto) ;;
    round-trip) flags=(--round-trip-top-k "${ROUND_TRIP_TOP_K:-1}") ;;
    *) echo "measure.sh: unknown variant $variant" >&2; exit 2 ;;
  esac
  out="$work/$generator-$variant"
  if [ ! -f "$out/model.safetensors" ]; then
    start=$SECONDS
    "$bin" finetune --model-id "$model" --train-dataset "$data/train_dataset.json" \
      --val-dataset "$data/val_dataset.json" --output-path "$out" --epochs "$epochs" \
      --threads "$threads" --overwrite ${flags[@]+"${flags[@]}"}
    echo "measure.sh: $variant trained in $((SECONDS - start)) s" >&2
  fi
  models+=(--model "$variant=$out")
done

# People's questions are scored against whole passages: nothing of them is to be cut out.
"$bin" evaluate "${models[@]}" --val-dataset "$hq/eval/human_dataset.json" --inverse-cloze false \
  --results-dir "$work/human-$generator" --matryoshka-dims 384,64 --threads "$threads"
# 137 questions cannot tell small differences apart: the summary above gives each difference from
# the base with its 95 % paired-bootstrap interval (comparison.csv beside it); the script below adds
# accuracy@1 and the questions that moved up and down.
python3 "$root/tools/human_questions/paired_bootstrap.py" "$work/human-$generator/per_query.jsonl"
