#!/usr/bin/env python3
"""Whole-process client CPU per request of `switchyard bench` and of sglang.bench_serving,
side by side against one server, in one run.

Starts `switchyard up` (mocker workers, the tiny model's directory so both clients load the
same tokenizer), then for each output length runs each client twice — with N requests and with
a few — and reports, per client:

- total: the CPU (user + system, every thread, start-up included) of the whole invocation
  over N, as the kernel counted it for the child process;
- marginal: (CPU with N − CPU with a few) / (N − few): the CPU each further request costs,
  start-up (interpreter, imports, tokenizer loading) taken out.

sglang.bench_serving is not part of this project: give the Python that has it installed
(`pip install sglang` and what `python -m sglang.bench_serving` imports) with --sglang-python.

    python3 scripts/compare_client_cpu.py --switchyard target/release/switchyard \
        --sglang-python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "model" / "builtin" / "tiny"
SHAREGPT = REPO / "bench" / "data" / "sharegpt_sample.json"


def run(cmd: list[str], log: Path) -> float:
    """Runs cmd to its end; the CPU seconds (user + system) the kernel counted for it."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"{cmd[0]} failed ({status}); see {log}")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--switchyard", default=str(REPO / "target" / "release" / "switchyard"))
    ap.add_argument("--sglang-python", required=True)
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--few", type=int, default=50)
    ap.add_argument("--output-lens", default="1,500")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--max-concurrency", type=int, default=64)
    ap.add_argument("--speedup-ratio", type=float, default=1000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="client-cpu-"))
    up = subprocess.Popen(
        [args.switchyard, "up", "--workers", "2", "--http-host", "127.0.0.1", "--http-port", "0",
         "--model-path", str(MODEL), "--speedup-ratio", str(args.speedup_ratio),
         "--num-gpu-blocks", "65536"],
        stdout=subprocess.PIPE, stderr=open(work / "up.log", "w"), text=True,
        env={**os.environ, "SWITCHYARD_LOG": "warn"},
    )
    try:
        url = None
        deadline = time.time() + 120
        while url is None and time.time() < deadline:
            line = up.stdout.readline()
            m = re.search(r"(http://[0-9.:]+)/v1", line)
            if m:
                url = m.group(1)
        if url is None:
            sys.exit("switchyard up did not start")
        print(f"server: {url} (switchyard up, 2 mocker workers, --speedup-ratio {args.speedup_ratio})")
        # bench_serving's `random` draws one ShareGPT conversation per request: the shipped
        # sample, repeated until there are enough.
        sample = json.loads(SHAREGPT.read_text())
        sharegpt = work / "sharegpt.json"
        # Conversations with fewer than two turns are skipped by bench_serving: spare some.
        copies = -(-args.num_prompts * 2 // len(sample))
        sharegpt.write_text(json.dumps(sample * copies))
        common = ["--base-url", url, "--backend", "sglang-oai", "--dataset-name", "random",
                  "--random-input-len", str(args.input_len), "--random-range-ratio", "1",
                  "--max-concurrency", str(args.max_concurrency), "--request-rate", "inf",
                  "--disable-tqdm", "--warmup-requests", "1"]
        rows = []
        for out_len in [int(x) for x in args.output_lens.split(",")]:
            for n in (args.num_prompts, args.few):
                ours = work / f"switchyard-{out_len}-{n}.jsonl"
                cpu_ours = run([args.switchyard, "bench", *common, "--random-output-len", str(out_len),
                                "--num-prompts", str(n), "--output-file", str(ours)],
                               work / f"switchyard-{out_len}-{n}.log")
                theirs = work / f"sglang-{out_len}-{n}.jsonl"
                cpu_theirs = run([args.sglang_python, "-m", "sglang.bench_serving", *common,
                                  "--random-output-len", str(out_len), "--num-prompts", str(n),
                                  "--tokenizer", str(MODEL), "--dataset-path", str(sharegpt),
                                  "--output-file", str(theirs)],
                                 work / f"sglang-{out_len}-{n}.log")
                line = json.loads(ours.read_text().splitlines()[-1])
                sent = [json.loads(f.read_text().splitlines()[-1])["completed"] for f in (ours, theirs)]
                if sent != [n, n]:
                    sys.exit(f"completed requests {sent}, expected {n} each; see {work}")
                rows.append((out_len, n, cpu_ours, cpu_theirs, line["client_process_cpu_ms_per_request"]))
        print(f"{'output':>6} {'client':>12} {'total ms/req':>13} {'marginal ms/req':>16}")
        for out_len in sorted({r[0] for r in rows}):
            big = next(r for r in rows if r[0] == out_len and r[1] == args.num_prompts)
            few = next(r for r in rows if r[0] == out_len and r[1] == args.few)
            span = args.num_prompts - args.few
            for name, i in (("switchyard", 2), ("sglang", 3)):
                total = big[i] / args.num_prompts * 1000
                marginal = (big[i] - few[i]) / span * 1000
                print(f"{out_len:>6} {name:>12} {total:>13.3f} {marginal:>16.3f}")
            ratio_total = big[3] / big[2]
            ratio_marginal = (big[3] - few[3]) / max(big[2] - few[2], 1e-9)
            print(f"{out_len:>6} {'ratio':>12} {ratio_total:>12.1f}x {ratio_marginal:>15.1f}x"
                  f"   (switchyard's own figure: {big[4]:.3f} ms/req)")
        print(f"logs and lines in {work}")
    finally:
        up.terminate()
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()


if __name__ == "__main__":
    main()
