#!/usr/bin/env bash
# Installs what building and testing Switchyard needs on Debian 12: the mold linker, protoc,
# nats-server and etcd (for the server-mode tests), headless Chromium (the bench's pages are
# rendered in it), and a Python venv with the official `openai` client (for the
# API-compatibility tests) and Jinja2 (the chat-template corpus test renders real templates
# with it, as `transformers` does), and debootstrap (the container tests build their image
# offline with it; they also need the Docker engine and docker-compose). It also builds llama-server and makes the
# tiny model's weights (for the engine tests). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mold protobuf-compiler nats-server etcd-server python3-venv curl debootstrap chromium openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

# The venv lives in the checkout (ignored by git); tests find it at .venv/bin/python.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import openai, jinja2" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "openai>=1.50,<3" "jinja2>=3.1,<4"
fi
# Real engines for the engine tests, cached outside the checkout ($SWITCHYARD_CACHE_DIR, default
# ~/.cache/switchyard) and made again when missing: llama.cpp's llama-server built from the
# llama-cpp-python sdist (~5 min on 2 cores the first time), and the tiny model with weights
# (safetensors for vLLM, GGUF for llama.cpp).
llama_server=$(bash scripts/build_llama_server.sh)
tiny_model=$(bash scripts/tiny_model.sh)

echo "setup done: $llama_server; $tiny_model; $(mold --version | head -1); $(.venv/bin/python -c 'import openai; print("openai", openai.__version__)')"
