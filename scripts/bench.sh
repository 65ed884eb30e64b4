#!/usr/bin/env bash
# Run every benchmark in benchmarks/; each prints its figures as ratios against a raw baseline
# and against its goal, and writes its part of benchmarks/RESULTS.md (and its scale curves to
# benchmarks/curves/). Then plot_results.py draws every provider's scale curves into
# benchmarks/scale_curves.png, linked from RESULTS.md. One failing benchmark does not stop
# the others; the exit status says whether all of them ran.
set -uo pipefail
cd "$(dirname "$0")/.."
# sgd_bench.py replays the SGD dev sample (skipped when the folder is absent)
export CCVAULT_SGD_DATA="${CCVAULT_SGD_DATA:-$(pwd)/../shared/data/sgd/dev}"
echo "== machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
failed=()
for bench in benchmarks/*_bench.py; do
  echo "== $bench"
  .venv/bin/python "$bench" || failed+=("$bench")
done
echo "== benchmarks/plot_results.py"
.venv/bin/python benchmarks/plot_results.py || failed+=("benchmarks/plot_results.py")
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
