#!/usr/bin/env bash
# Serving benchmark (not a test): runs ../shared/bench/servebench.py against `wick serve` and,
# when LLAMA_SERVER points at a llama-server binary, against llama-server on the same model,
# back to back, for each workload. Prints one summary line per run and keeps the JSON.
#
#   scripts/bench-serve.sh [OUT_DIR]
#   env: WICK_BIN (default target/release/wick), MODEL (default SmolLM2 Q4_1), LLAMA_SERVER,
#        RUNS (default "shared-prefix:1:16 shared-prefix:16:32 distinct:16:32 distinct:1:8"
#        as workload:concurrency:requests), WICK_ARGS (extra `wick serve` flags),
#        SERVERS (default "wick llama" when LLAMA_SERVER is set, else "wick").
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/bench-serve}"
mkdir -p "$out"
wick="${WICK_BIN:-target/release/wick}"
model="${MODEL:-$HOME/.cache/wick/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
runs="${RUNS:-shared-prefix:1:16 shared-prefix:16:32 distinct:16:32 distinct:1:8}"
servers="${SERVERS:-wick${LLAMA_SERVER:+ llama}}"
bench=../shared/bench/servebench.py
port=18431

start() {
  case "$1" in
    wick) "$wick" serve --model "$model" --served-model-name smollm2 --port $port --offline ${WICK_ARGS:-} >"$out/wick.log" 2>&1 & ;;
    llama) "$LLAMA_SERVER" -m "$model" -t 2 -np 16 -c 16384 -fa off --port $port >"$out/llama.log" 2>&1 & ;;
  esac
  pid=$!
  for _ in $(seq 240); do
    # wick answers /ready, llama-server /health, once the model is loaded.
    curl -sf "http://127.0.0.1:$port/$([ "$1" = wick ] && echo ready || echo health)" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "server $1 did not come up" >&2
  return 1
}

stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
pid=
trap stop EXIT

for run in $runs; do
  IFS=: read -r workload conc reqs <<<"$run"
  for server in $servers; do
    start "$server"
    name="$server-$workload-c$conc"
    python3 "$bench" --base-url "http://127.0.0.1:$port/v1" --model smollm2 --workload "$workload" \
      --concurrency "$conc" --requests "$reqs" --max-tokens 128 --server-pid "$pid" \
      --label "$name" --out "$out/$name.json" >/dev/null
    python3 - "$out/$name.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['label']:28} ok {r['completed']}/{r['requests']}  TTFT p50 {r['ttft_ms']['p50']:8.1f} ms  p95 {r['ttft_ms']['p95']:8.1f} ms"
      f"  out {r['output_tokens_per_s']:6.1f} tok/s  ITL p50 {r['itl_ms']['p50']:6.1f} ms  peak RSS {r['server_rss_mib']['vm_hwm']:6.1f} MiB")
EOF
    stop
  done
done
