#!/usr/bin/env bash
# BENCHMARKS.md "Data parallelism": the same global batch (64) and images on Fashion-MNIST,
# 1 process × 2 threads against 2 processes × 1 thread (needs `--features mpi` and Open MPI).
# Usage: bench/mpi_bench.sh [rounds]   (alternates the two, to spread a shared machine's noise)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/vitrs
OUT=$(mktemp -d)
ARGS=(train --config configs/fashion-mnist.toml --epochs 1 --limit-train 6400 --limit-val 1000
      --eval-every 1 --quiet)
export OMPI_MCA_btl_vader_single_copy_mechanism=none
for r in $(seq "${1:-1}"); do
  echo "== round $r: 1 process x 2 threads, batch 64"
  "$BIN" "${ARGS[@]}" --threads 2 --batch-size 64 --out-dir "$OUT/one-$r" 2>&1 | grep -E "^epoch|^done"
  echo "== round $r: 2 processes x 1 thread, batch 32 each"
  mpirun --allow-run-as-root --oversubscribe -np 2 "$BIN" "${ARGS[@]}" --threads 1 --batch-size 32 \
    --out-dir "$OUT/two-$r" 2>&1 | grep -E "^epoch|^done|^rank [01]: epoch"
done
rm -rf "$OUT"
