#!/bin/sh
# Entrypoint of the embedfleet images: picks the binary from the worker role.
#
#   ROLE=generator   -> embedfleet-generator "$@"   (likewise coordinator, trainer, evaluator)
#   ROLE=cli         -> embedfleet "$@"
#   no ROLE          -> the first argument may name the role: `docker run IMAGE trainer --help`;
#                       any other command runs as given: `docker run IMAGE embedfleet status RUN`.
# Every worker flag can also be set with its EMBEDFLEET_* variable, so a role and an environment
# are all a container needs.
set -eu

usage() {
  cat >&2 <<'EOF'
usage: set ROLE to one of coordinator, generator, trainer, evaluator, cli
       (or pass the role as the first argument, or a command to run)
EOF
}

run_role() {
  role=$1
  shift
  case "$role" in
    coordinator | generator | trainer | evaluator) bin="embedfleet-$role" ;;
    cli | embedfleet) bin=embedfleet ;;
    *)
      echo "embedfleet-entrypoint: unknown role '$role'" >&2
      usage
      exit 64
      ;;
  esac
  if ! command -v "$bin" >/dev/null 2>&1; then
    echo "embedfleet-entrypoint: this image has no '$bin' (the small image holds the generator and the coordinator only)" >&2
    exit 127
  fi
  exec "$bin" "$@"
}

if [ -n "${ROLE:-}" ]; then
  run_role "$ROLE" "$@"
fi

case "${1:-}" in
  "")
    usage
    exit 64
    ;;
  coordinator | generator | trainer | evaluator | cli)
    run_role "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
