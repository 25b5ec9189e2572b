#!/usr/bin/env bash
# Fuzzes the OpenAI surface of a `switchyard up` (two mocker workers, or a split with
# SPLIT=1) through its own /openapi.json with schemathesis (PyPI): every operation, bodies
# generated from the schema and broken on purpose, three in four naming the served model so
# that templating, tokenizing, dispatch and the response paths run too
# (scripts/schemathesis_hooks.py). Any 5xx fails the run.
#
#   bash scripts/schemathesis.sh [MAX_EXAMPLES]     # default 200 per operation
#
# Needs a release binary (cargo build --release). schemathesis goes in a venv of its own in
# $SWITCHYARD_CACHE_DIR (default ~/.cache/switchyard).
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${1:-200}"
bin="${SWITCHYARD_BIN:-target/release/switchyard}"
cache="${SWITCHYARD_CACHE_DIR:-$HOME/.cache/switchyard}"
venv="$cache/schemathesis-venv"
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis>=4,<5" >&2
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp -t switchyard-schemathesis-XXXXXX.log)
topology=(--workers 2)
[ "${SPLIT:-}" = "1" ] && topology=(--prefill-workers 1 --decode-workers 1)
"$bin" up --http-host 127.0.0.1 --http-port "$port" "${topology[@]}" --speedup-ratio 100 \
  >"$log" 2>&1 &
up=$!
trap 'kill "$up" 2>/dev/null || true; wait "$up" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$port/v1/models" | grep -q switchyard-tiny && break
  sleep 0.1
done

SCHEMATHESIS_HOOKS=scripts.schemathesis_hooks PYTHONPATH=. "$venv/bin/schemathesis" run \
  "http://127.0.0.1:$port/openapi.json" --checks not_a_server_error \
  --max-examples "$examples" --workers 2 --continue-on-failure
echo "server log: $log"
