#!/usr/bin/env bash
# Prints the directory of the unpacked llama-cpp-python source distribution (PyPI), fetching
# and unpacking it first when it is not there yet. It vendors llama.cpp (vendor/llama.cpp: the
# source `llama-server` is built from) and llama.cpp's collection of real models' chat
# templates (vendor/llama.cpp/models/templates/*.jinja). Nothing from it is committed.
#
# The cache lives outside the checkout, in $SWITCHYARD_CACHE_DIR (default
# ~/.cache/switchyard), and can be deleted at any time: this script rebuilds it.
set -euo pipefail

version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${SWITCHYARD_CACHE_DIR:-$HOME/.cache/switchyard}"
dir="$cache/llama-cpp-python-$version"

if [ ! -f "$dir/.complete" ]; then
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/.sdist.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # --no-binary for this one package only: with :all: pip would build cmake from source just
  # to read the package's metadata.
  python3 -m pip download -q --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$work" >&2
  tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
  rm -rf "$dir"
  mv "$work/llama_cpp_python-$version" "$dir"
  touch "$dir/.complete"
fi
echo "$dir"
