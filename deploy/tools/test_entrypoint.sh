#!/usr/bin/env bash
# Tests deploy/docker/entrypoint.sh with stand-in binaries on PATH: each role runs its binary with
# the arguments, the small image's missing binaries and unknown roles fail with a message.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
entry="$root/deploy/docker/entrypoint.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mkdir -p "$tmp/full" "$tmp/small"
for bin in embedfleet embedfleet-coordinator embedfleet-generator embedfleet-trainer embedfleet-evaluator; do
  printf '#!/bin/sh\necho "%s $*"\n' "$bin" > "$tmp/full/$bin"
  chmod +x "$tmp/full/$bin"
done
cp "$tmp/full/embedfleet-coordinator" "$tmp/full/embedfleet-generator" "$tmp/small/"

fails=0
expect() { # expect DESCRIPTION WANTED-OUTPUT WANTED-STATUS -- command...
  local what=$1 want=$2 want_rc=$3
  shift 4
  local got rc=0
  got=$("$@" 2>&1) || rc=$?
  if [ "$rc" != "$want_rc" ] || [[ "$got" != *"$want"* ]]; then
    echo "entrypoint: FAIL: $what: status $rc (want $want_rc), output: $got" >&2
    fails=$((fails + 1))
  fi
}
sys=/usr/bin:/bin
for role in coordinator generator trainer evaluator; do
  expect "ROLE=$role" "embedfleet-$role --help" 0 -- env PATH="$tmp/full:$sys" ROLE=$role sh "$entry" --help
  expect "role $role as argument" "embedfleet-$role --x 1" 0 -- env -u ROLE PATH="$tmp/full:$sys" sh "$entry" $role --x 1
done
expect "ROLE=cli" "embedfleet submit --input a.json" 0 -- env PATH="$tmp/full:$sys" ROLE=cli sh "$entry" submit --input a.json
expect "a command" "embedfleet status r1" 0 -- env -u ROLE PATH="$tmp/full:$sys" sh "$entry" embedfleet status r1
expect "small image has no trainer" "holds the generator and the coordinator only" 127 -- \
  env PATH="$tmp/small:$sys" ROLE=trainer sh "$entry"
expect "small image runs the generator" "embedfleet-generator" 0 -- env PATH="$tmp/small:$sys" ROLE=generator sh "$entry"
expect "unknown role" "unknown role 'trainr'" 64 -- env PATH="$tmp/full:$sys" ROLE=trainr sh "$entry"
expect "no role, no command" "usage:" 64 -- env -u ROLE PATH="$tmp/full:$sys" sh "$entry"

if [ "$fails" -ne 0 ]; then
  exit 1
fi
echo "entrypoint: every role starts its binary"
