#!/usr/bin/env bash
# The fabric's overhead over a real engine: TTFT and E2E p50 of the same workload sent straight
# to one llama-server and through Switchyard (a frontend and one `--engine llamacpp` worker
# wrapping that same server), at concurrency 1 and 16, alternating direct and through in one
# run so both see the same machine.
#
#   bash scripts/engine_overhead.sh [ROUNDS]      # default 4 rounds of each pair
#
# Needs a release binary (cargo build --release) and what scripts/setup.sh builds (llama-server
# and the tiny model, in $SWITCHYARD_CACHE_DIR). Prints one table; the JSONL lines and logs stay
# in the printed work directory.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-4}"
bin="${SWITCHYARD_BIN:-target/release/switchyard}"
llama_server=$(bash scripts/build_llama_server.sh)
model=$(bash scripts/tiny_model.sh)
work=$(mktemp -d -t switchyard-overhead-XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
engine_port=$(free_port)
http_port=$(free_port)

pids=()
stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT

# 16 slots of 512 tokens: room for the concurrency-16 runs.
"$llama_server" -m "$model/tiny.gguf" --alias tiny --host 127.0.0.1 --port "$engine_port" \
  -t 1 -c 8192 -np 16 --jinja --metrics >"$work/llama-server.log" 2>&1 &
pids+=($!)
"$bin" frontend --store file --store-dir "$work/store" --http-host 127.0.0.1 \
  --http-port "$http_port" --router-mode round-robin >"$work/frontend.log" 2>&1 &
pids+=($!)
"$bin" worker --store file --store-dir "$work/store" --engine llamacpp \
  --engine-url "http://127.0.0.1:$engine_port" --model-path "$model" --model-name tiny \
  >"$work/worker.log" 2>&1 &
pids+=($!)

# Both URLs must list the model before the runs start (bench's ready check waits too).
for _ in $(seq 1 600); do
  if curl -sf "http://127.0.0.1:$http_port/v1/models" | grep -q '"tiny"'; then break; fi
  sleep 0.1
done

run() { # label url concurrency prompts
  "$bin" bench --backend openai --base-url "$2" --model tiny --tokenizer "$model" \
    --dataset-name random --random-input-len 256 --random-output-len 32 --random-range-ratio 1 \
    --num-prompts "$4" --max-concurrency "$3" --request-rate inf --warmup-requests 4 \
    --sample-interval-ms 0 --disable-tqdm --tag "$1" --output-file "$work/runs.jsonl" \
    >>"$work/bench.log" 2>&1
}

direct="http://127.0.0.1:$engine_port"
through="http://127.0.0.1:$http_port"
# The engine's first few hundred requests run slower (allocations, caches): a warm-up of
# each path, left out of the table.
run warmup "$direct" 16 200
run warmup "$through" 16 200
# Each round sends both paths, the one first in odd rounds last in even ones.
for round in $(seq 1 "$rounds"); do
  for c in 1 16; do
    n=$((c == 1 ? 100 : 400))
    if ((round % 2)); then
      run "direct c$c" "$direct" "$c" "$n"
      run "switchyard c$c" "$through" "$c" "$n"
    else
      run "switchyard c$c" "$through" "$c" "$n"
      run "direct c$c" "$direct" "$c" "$n"
    fi
  done
done

echo "work directory: $work"
python3 - "$work/runs.jsonl" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["tag"], []).append(r)
med = lambda runs, key: statistics.median(r[key] for r in runs)
print(f"{'run':<16}{'n':>3}{'TTFT p50 ms':>13}{'E2E p50 ms':>12}{'failed':>8}")
for tag in ["direct c1", "switchyard c1", "direct c16", "switchyard c16"]:
    runs = rows.get(tag, [])
    if not runs:
        continue
    failed = sum(r.get("failed", 0) or 0 for r in runs)
    print(f"{tag:<16}{len(runs):>3}{med(runs, 'median_ttft_ms'):>13.2f}"
          f"{med(runs, 'median_e2e_latency_ms'):>12.2f}{failed:>8}")
for c in (1, 16):
    d, s = rows.get(f"direct c{c}"), rows.get(f"switchyard c{c}")
    if d and s:
        print(f"c{c}: through Switchyard adds TTFT "
              f"{med(s, 'median_ttft_ms') - med(d, 'median_ttft_ms'):+.2f} ms, E2E "
              f"{med(s, 'median_e2e_latency_ms') - med(d, 'median_e2e_latency_ms'):+.2f} ms "
              "(medians over rounds of per-run p50s)")
EOF
