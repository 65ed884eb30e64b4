#!/usr/bin/env bash
# Run every benchmark in benchmarks/; each prints its figures as ratios against a raw baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
# sgd_bench.py replays the SGD dev sample (skipped when the folder is absent)
export CCVAULT_SGD_DATA="${CCVAULT_SGD_DATA:-$(pwd)/../shared/data/sgd/dev}"
for bench in benchmarks/*_bench.py; do
  echo "== $bench"
  .venv/bin/python "$bench"
done
