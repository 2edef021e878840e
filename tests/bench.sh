#!/usr/bin/env bash
# Full benchmark runs for docs/PERFORMANCE.md (the test suite runs only a smoke run).
# Builds release binaries, runs each scenario RUNS times (default 3) and appends one JSON line
# per run to OUT (default target/bench/<date>.jsonl). Usage: tests/bench.sh [SCENARIO...]
# (default: p a b c d d3). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p e2e --bin gw-bench --bin gateway-e2e
out=${OUT:-target/bench/$(date +%Y%m%d-%H%M%S).jsonl}
mkdir -p "$(dirname "$out")"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(p a b c d d3)
for scenario in "${scenarios[@]}"; do
  for _ in $(seq "${RUNS:-3}"); do
    ./target/release/gw-bench --scenario "$scenario" | tee -a "$out"
  done
done
echo "results: $out" >&2
