#!/usr/bin/env bash
# The MSRV in Cargo.toml must be true: no dependency may need a newer Rust than the workspace says
# it builds with. (Our own code's use of newer standard-library items is clippy's incompatible_msrv
# lint, which reads the same field.) Only one toolchain is installed on the project's machines, so
# this reads each locked package's declared rust-version instead of building with an old compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
def version(text):
    return tuple(int(part) for part in text.split(".")) + (0,) * (3 - len(text.split(".")))
ours = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
if len(ours) != 1 or None in ours:
    sys.exit(f"check-msrv: every workspace crate must take rust-version from the workspace, found {sorted(map(str, ours))}")
msrv = ours.pop()
newer = sorted((version(p["rust_version"]), p["name"], p["version"]) for p in meta["packages"]
               if p["id"] not in members and p.get("rust_version") and version(p["rust_version"]) > version(msrv))
if newer:
    listed = ", ".join("%s %s needs %s" % (name, v, ".".join(map(str, need))) for need, name, v in newer)
    sys.exit(f"check-msrv: rust-version is {msrv}, but {listed}; raise rust-version in Cargo.toml")
print(f"check-msrv: every dependency builds with Rust {msrv}")
'
