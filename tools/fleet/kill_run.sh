#!/usr/bin/env bash
# A fleet run by hand, as a user would make one, with faults: two coordinators and two offline
# generators (fast, so events race), a trainer and an evaluator on the real MiniLM, over N real
# PostgreSQL documentation pages; a generator and then the trainer are killed with `kill -9` mid-run
# and replaced. At the end the run must be done and its dataset identical to what a local
# `embedfleet generate` makes of the same corpus.
#
#   tools/fleet/kill_run.sh [PAGES]      (default 12; needs scripts/setup.sh and a built workspace)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
pages=${1:-12}
bin=${CARGO_TARGET_DIR:-${EMBEDFLEET_CACHE:-$HOME/.cache/embedfleet}/target}/debug
docs=$("$root/../shared/tools/real-docs.sh" | sed -n 's/^postgresql docs[^:]*: *\([^ ]*\).*/\1/p')
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
say() { printf '[%5ss] %s\n' "$SECONDS" "$*"; }

# The corpus: the first N pages (sorted by name) as JSON Lines of raw HTML, as a scraper saves them.
python3 - "$docs" "$pages" "$work/corpus.jsonl" <<'PY'
import json, pathlib, sys
docs, n, out = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
pages = sorted(p for p in docs.glob("*.html") if p.stat().st_size > 4000)[:n]
with open(out, "w") as f:
    for p in pages:
        f.write(json.dumps({"url": f"https://www.postgresql.org/docs/15/{p.name}", "content": p.read_text(errors="replace")}) + "\n")
PY

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
nats-server -a 127.0.0.1 -p "$port" -js -sd "$work/nats" >/dev/null 2>&1 &
export EMBEDFLEET_NATS_URL=nats://127.0.0.1:$port EMBEDFLEET_STORE=$work/store EMBEDFLEET_DEVICE=cpu EMBEDFLEET_ACK_WAIT=5
mkdir -p "$work/store"
n=0
spawn() { # role, log name
  n=$((n + 1))
  EMBEDFLEET_METRICS_ADDR=127.0.0.1:0 EMBEDFLEET_WORK_DIR="$work/w$n" "$bin/embedfleet-$1" >"$work/$2.log" 2>&1 &
  echo $!
}
spawn coordinator coordinator-a >/dev/null
spawn coordinator coordinator-b >/dev/null
trainer=$(spawn trainer trainer-1)
spawn evaluator evaluator >/dev/null
sleep 2

run=run-by-hand
"$bin/embedfleet" submit --input "$work/corpus.jsonl" --run-id $run --generator offline --chunks-per-task 2 \
  --model-id "$root/.deps/all-MiniLM-L6-v2" --epochs 1 --evaluation-steps 10 --checkpoint-every 3 >/dev/null
say "submitted $pages pages"
state() { "$bin/embedfleet" status $run 2>/dev/null | head -1; }
# The offline generator answers a task in milliseconds, so one generator starts alone on a queue
# that is already full and is killed as soon as its first answer is stored: it dies mid-generation,
# with tasks in hand that JetStream must redeliver to the others.
until state | grep -q generating; do sleep 0.2; done
gen_a=$(spawn generator generator-a)
until compgen -G "$work/store/runs/$run/questions/*" >/dev/null; do sleep 0.01; done
kill -9 "$gen_a"
answered=$(find "$work/store/runs/$run/questions" -type f | wc -l)
say "kill -9 generator-a after $answered answers stored: $(state | cut -c1-90)"
spawn generator generator-a2 >/dev/null
spawn generator generator-b >/dev/null
until [ -n "$(find "$work/store/runs/$run/train/resume" -name state.json 2>/dev/null)" ]; do sleep 0.5; done
kill -9 "$trainer"; say "kill -9 the trainer: $(state | cut -c1-110)"
spawn trainer trainer-2 >/dev/null
timeout 3600 "$bin/embedfleet" watch $run >/dev/null 2>&1 || true
say "$(state)"

"$bin/embedfleet" generate --input "$work/corpus.jsonl" --generator offline --output-dir "$work/local" >/dev/null 2>&1
same=yes
for f in train_corpus train_queries train_relevant_docs val_corpus val_queries val_relevant_docs; do
  if ! python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))' \
      "$work/local/$f.json" "$work/store/runs/$run/data/$f.json"; then
    same=no; echo "differs: $f.json"
  fi
done
questions=$(python3 -c 'import json,sys; print(sum(len(json.load(open(f"{sys.argv[1]}/{s}_queries.json"))) for s in ("train","val")))' "$work/local")
say "dataset identical to a local embedfleet generate: $same ($questions questions)"
grep -h "resuming training" "$work"/trainer-2.log | head -1 | cut -c1-160
"$bin/embedfleet" results $run 2>/dev/null | head -8
[ "$same" = yes ] && state | grep -q ' done '
