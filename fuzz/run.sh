#!/usr/bin/env bash
# Runs one fuzz target (or all, one after another) for a while, at low priority, and prints
# libFuzzer's final statistics. Usage: fuzz/run.sh TARGET|all [SECONDS]   (default 600 s each)
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET|all [SECONDS]}
seconds=${2:-600}
# cargo-fuzz passes -Z flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/embedfleet/fuzz-target}
# No sanitizer: the code is safe Rust, so the bugs to find are panics, overflows (debug
# assertions stay on) and hangs, and an uninstrumented build runs about twice as fast as ASan.
flags=(--sanitizer none --debug-assertions)
targets=$target
[ "$target" = all ] && targets=$(cargo fuzz list)
for t in $targets; do
  mkdir -p "corpus/$t" "seeds/$t"
  extra=()
  [ -f "dicts/$t.dict" ] && extra+=("-dict=dicts/$t.dict")
  echo "== $t for ${seconds}s"
  nice -n 15 cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}"
done
