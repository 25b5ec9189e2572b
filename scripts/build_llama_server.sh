#!/usr/bin/env bash
# Prints the path of a `llama-server` binary built from the llama.cpp source that the
# llama-cpp-python sdist (PyPI) vendors, building it first when it is missing. Only the server
# target is built (CPU, static, no curl/OpenSSL): a ~15 MB binary needing libc, libstdc++ and
# libgomp. cmake and ninja come from PyPI wheels in a venv of their own.
#
# Everything lives outside the checkout, in $SWITCHYARD_CACHE_DIR (default
# ~/.cache/switchyard); delete it at any time and this script rebuilds it (~5 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${SWITCHYARD_CACHE_DIR:-$HOME/.cache/switchyard}"
out="$cache/llama-server-$version"
bin="$out/llama-server"

if [ ! -x "$bin" ]; then
  sdist=$(bash scripts/llama_cpp_sdist.sh)
  tools="$cache/build-tools-venv"
  if [ ! -x "$tools/bin/cmake" ] || [ ! -x "$tools/bin/ninja" ]; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q --disable-pip-version-check "cmake>=3.28,<5" "ninja>=1.11,<2" >&2
  fi
  build=$(mktemp -d "$cache/.llama-build.XXXXXX")
  trap 'rm -rf "$build"' EXIT
  echo "building llama-server $version (a few minutes)" >&2
  PATH="$tools/bin:$PATH" cmake -S "$sdist/vendor/llama.cpp" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF >&2
  PATH="$tools/bin:$PATH" cmake --build "$build" --target llama-server -j "${CARGO_BUILD_JOBS:-2}" >&2
  mkdir -p "$out"
  cp "$build/bin/llama-server" "$bin.tmp"
  mv "$bin.tmp" "$bin"
fi
echo "$bin"
