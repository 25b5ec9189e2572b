#!/usr/bin/env bash
# Frontend CPU per request of two switchyard binaries, side by side, in alternating rounds.
# Each binary runs `switchyard up` (the frontend runs in the up process, the mocker workers in
# child processes) and is loaded by the same `switchyard bench` client (the second binary's):
# chat requests with ~300-token random prompts; the up process's user+system CPU over the
# measured run, divided by the requests.
#
# Usage: scripts/frontend_cpu_compare.sh BEFORE_BIN AFTER_BIN
# Env: N (requests per run, 8000), OUT (output tokens, 16), ROUNDS (3), PORT (18801).
set -euo pipefail
before=$1 after=$2
N=${N:-8000} OUT=${OUT:-16} ROUNDS=${ROUNDS:-3} PORT=${PORT:-18801}
tick=$(getconf CLK_TCK)
logs=$(mktemp -d)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

one() {
  local bin=$1 label=$2
  "$bin" up --workers 2 --http-host 127.0.0.1 --http-port "$PORT" --speedup-ratio 1000 \
    > "$logs/up-$label.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q "switchyard is up" "$logs/up-$label.log" && break; sleep 0.2; done
  local load=(--backend sglang-oai-chat --base-url "http://127.0.0.1:$PORT" --dataset-name random
    --random-input-len 300 --random-output-len "$OUT" --random-range-ratio 1
    --max-concurrency 64 --disable-tqdm)
  "$after" bench "${load[@]}" --num-prompts 500 --seed 2 > /dev/null
  local t0 t1
  t0=$(cpu_ticks "$pid")
  "$after" bench "${load[@]}" --num-prompts "$N" --seed 1 > "$logs/bench-$label.txt"
  t1=$(cpu_ticks "$pid")
  kill -INT "$pid"
  wait "$pid" || true
  python3 -c "print('$label: %.4f ms of frontend CPU per request' % (($t1 - $t0) * 1000 / $tick / $N))"
}

for round in $(seq "$ROUNDS"); do
  one "$before" "before-$round"
  one "$after" "after-$round"
done
