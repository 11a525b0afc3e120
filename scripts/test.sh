#!/usr/bin/env bash
# The whole test suite on a fresh machine: setup (cached), then every crate's tests against the
# real parts (libtorch, MiniLM weights, SeaweedFS, nats-server).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
phase() { printf 'test.sh: %s (%s s since start)\n' "$1" "$SECONDS" >&2; }
phase "setup"
scripts/setup.sh
# The fleet tests start their own nats-server; the shared one on :4222 is for local use.
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  nats=$(command -v nats-server || echo /usr/sbin/nats-server)
  mkdir -p "${EMBEDFLEET_CACHE:-$HOME/.cache/embedfleet}/nats"
  "$nats" -a 127.0.0.1 -p 4222 -js -sd "${EMBEDFLEET_CACHE:-$HOME/.cache/embedfleet}/nats" >/dev/null 2>&1 &
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${EMBEDFLEET_CACHE:-$HOME/.cache/embedfleet}/target}
# The lint gate: formatting, clippy with warnings as errors, the MSRV, file names, Markdown links.
phase "lint"
scripts/lint.sh
# Static checks of the Dockerfiles, compose, Prometheus, Grafana and the Helm chart.
phase "deploy checks"
deploy/check.sh
# The CLI's fleet and deploy tests start the worker binaries as child processes. `cargo test` builds
# only the binaries of crates that have integration tests, so build every binary first: a fresh
# target directory must pass too.
phase "build"
cargo build --workspace --bins --locked
# The images compose and the chart use, made here with no registry (debootstrap base, binaries built
# above); the compose tests (crates/embedfleet-cli/tests/compose.rs) start them. Starts the Docker
# engine if it does not answer.
phase "images"
scripts/images.sh
phase "tests"
# Every test binary runs even after one fails, so a red run shows all that failed, not the first.
cargo test --workspace --locked --no-fail-fast "$@"
phase "done"
