#!/usr/bin/env bash
# Makes deploy/.env for docker compose with a random secret for every password the fleet needs (the
# NATS password of each role, MinIO's root password, Grafana's admin password). The compose file
# has no built-in default passwords: `up` without them stops and names this script. An existing
# deploy/.env is kept (add --force to replace it); the file is readable by you alone.
#
#   scripts/compose-env.sh [--force]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
env_file="$root/deploy/.env"
if [ -e "$env_file" ] && [ "${1:-}" != --force ]; then
  echo "compose-env: $env_file exists; kept (pass --force to make new secrets)" >&2
  exit 0
fi
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
umask 077
{
  echo "# Made by scripts/compose-env.sh on $(date -u +%Y-%m-%dT%H:%MZ). Keep it private; rotate with --force"
  echo "# (then: docker compose -p embedfleet -f deploy/docker-compose.yml up -d, which restarts what changed)."
  for role in COORDINATOR GENERATOR TRAINER EVALUATOR CLI; do
    echo "EMBEDFLEET_NATS_${role}_PASSWORD=$(secret)"
  done
  echo "MINIO_ROOT_USER=embedfleet"
  echo "MINIO_ROOT_PASSWORD=$(secret)"
  echo "GRAFANA_ADMIN_PASSWORD=$(secret)"
} > "$env_file"
echo "compose-env: wrote $env_file with random secrets" >&2
