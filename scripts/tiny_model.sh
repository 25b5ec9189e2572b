#!/usr/bin/env bash
# Prints the directory of the tiny model with weights (tokenizer, configs, model.safetensors
# for vLLM, tiny.gguf for llama.cpp), making it first when it is missing. The model is random
# from a fixed seed (scripts/make_tiny_model.py); its Python packages (numpy, tokenizers,
# safetensors, gguf; no torch) go in a venv of their own.
#
# Everything lives outside the checkout, in $SWITCHYARD_CACHE_DIR (default
# ~/.cache/switchyard); delete it at any time and this script makes it again (~30 s).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${SWITCHYARD_CACHE_DIR:-$HOME/.cache/switchyard}"
out="$cache/tiny-model"

if [ ! -f "$out/.complete" ]; then
  venv="$cache/model-venv"
  if ! "$venv/bin/python" -c "import numpy, tokenizers, safetensors, gguf" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
      "numpy>=1.26,<3" "tokenizers==0.22.*" "safetensors>=0.4,<1" "gguf>=0.17,<1" >&2
  fi
  rm -rf "$out"
  "$venv/bin/python" scripts/make_tiny_model.py --out "$out" --weights >&2
  touch "$out/.complete"
fi
echo "$out"
