#!/usr/bin/env bash
# Runs the benchmark on this machine: builds secretd and the bench in release
# mode, measures the ceiling and every workload, writes bench/results/.
# Extra arguments go to the bench, e.g.: bench/run.sh --secrets 1000000 --sizes 10000,100000
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin secretd --bin secretd-bench
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib || true
exec target/release/secretd-bench "$@"
