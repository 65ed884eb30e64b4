#!/usr/bin/env bash
# Run every benchmark in benchmarks/; each prints its figures as ratios against a raw baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
for bench in benchmarks/*_bench.py; do
  echo "== $bench"
  .venv/bin/python "$bench"
done
