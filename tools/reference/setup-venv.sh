#!/usr/bin/env bash
# Idempotently creates the Python reference venv (real torch + sentence-transformers) used by the
# scripts in tools/reference/ to produce and check test fixtures. Not part of the test setup: the
# full dependency set (CUDA wheels included) is about 5 GB. The torch wheel that scripts/setup.sh
# downloaded into the wheel cache is reused.
set -euo pipefail

cache=${EMBEDFLEET_CACHE:-$HOME/.cache/embedfleet}
venv="$cache/reference-venv"
wheels="$cache/wheels"
# train: datasets + accelerate (compare_training.py); sentencepiece, protobuf and pycountry: the XLM-R
# fixture's tokenizer (make_family_fixtures.py).
reqs=(torch==2.13.0 "sentence-transformers[train]==6.2.0" sentencepiece==0.2.1 protobuf==7.36.2 pycountry==26.2.16)
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf 'setup-venv: %s\n' "$*" >&2; }

mkdir -p "$wheels"
marker="$venv/.done-$(printf '%s_' "${reqs[@]}")"
if [ -f "$marker" ] && "$venv/bin/python" -c 'import torch, sentence_transformers' 2>/dev/null; then
  say "up to date: $venv"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  python3 -m venv "$venv"
fi

say "installing ${reqs[*]} (several GB on first run)"
find_links=(--find-links "$wheels")
[ -d /opt/wheels ] && find_links+=(--find-links /opt/wheels)
"$venv/bin/python" -m pip install --quiet "${find_links[@]}" "${reqs[@]}"

"$venv/bin/python" -c 'import torch, sentence_transformers; print("torch", torch.__version__, "sentence-transformers", sentence_transformers.__version__)'
rm -f "$venv"/.done-*
touch "$marker"
say "ready: $venv/bin/python"
