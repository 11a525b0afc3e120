#!/usr/bin/env bash
# The lint gate scripts/test.sh runs before the tests: formatting, clippy with warnings as errors
# (the workspace's [workspace.lints] included), the MSRV, file names every system can check out, and
# the relative links of the Markdown files (scripts/check-links.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf 'lint: %s\n' "$*" >&2; }

say "tracked file names"
# Letters, digits and . _ - + / only: a name with a space, a quote, '|' or '*' breaks checkouts and
# scripts on some systems (one such file was committed by a mistyped command once).
bad=$(git ls-files | LC_ALL=C grep -v '^[A-Za-z0-9._/+-]*$' || true)
if [ -n "$bad" ]; then
  printf 'lint: these tracked files have names outside [A-Za-z0-9._/+-]; rename or remove them:\n%s\n' "$bad" >&2
  exit 1
fi

say "links"
python3 scripts/check-links.py

say "cargo fmt --check"
cargo fmt --all --check
(cd fuzz && cargo fmt --all --check)

say "MSRV"
scripts/check-msrv.sh

say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
