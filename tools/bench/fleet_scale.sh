#!/usr/bin/env bash
# The fleet at 10k / 100k / 1M chunks: a synthetic scraped site through a local `embedfleet
# generate` and through a fleet (one coordinator, two offline generators, real nats-server and
# SeaweedFS), with each stage's time, the run record's size, each process's peak RSS, and whether
# the fleet's dataset is byte for byte the local one. Both sides run the same binaries.
#
#   tools/bench/fleet_scale.sh                                 # 10k, 100k and 1M chunks
#   tools/bench/fleet_scale.sh --sizes 100000                  # one size
#   tools/bench/fleet_scale.sh --sizes 1000000 --train --fairness
#
# --train starts a trainer (all-MiniLM-L6-v2) on the largest run and times its first steps;
# --fairness submits a 50-page run while the largest one is generating, and once on an idle fleet.
# EMBEDFLEET_BENCH_PROFILE=release builds and runs optimised binaries (default: the test build).
# The 1M-chunk size needs about 10 GB of free disk under $TMPDIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${EMBEDFLEET_CACHE:-$HOME/.cache/embedfleet}/target}
profile=()
if [ "${EMBEDFLEET_BENCH_PROFILE:-}" = release ]; then profile=(--release); fi
cargo build "${profile[@]}" --workspace --bins --locked
exec cargo test "${profile[@]}" --locked -p embedfleet-cli --bench fleet_scale -- "$@"
