#!/usr/bin/env bash
# Run the vitrs benchmark and the PyTorch yardstick alternately in one session and print the
# ratios (median of REPEATS runs each). Usage: bench/compare.sh [REPEATS] [extra vitrs/pytorch model flags]
# Model flags are shared: --img --patch --dim --depth --heads --mlp --classes --batch --infer-batch,
# and --amp none|bf16|fp16 (vitrs reads it as --precision). Per-framework extras go in VITRS_ARGS
# and TORCH_ARGS, e.g. on a GPU: VITRS_ARGS="--device vulkan" TORCH_ARGS="--device cuda"
# bench/compare.sh 3 --amp bf16 --batch 512
# BASELINE=path/to/another/vitrs adds a third contender to every round (an older build, say, to
# measure a change against the same PyTorch runs).
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
shift || true
THREADS=${THREADS:-$(nproc)}
YARDSTICK=${YARDSTICK:-../shared/bench/pytorch_vit_bench.py}
cargo build --release -q
out=$(mktemp -d)
for i in $(seq "$REPEATS"); do
  if [ -n "${BASELINE:-}" ]; then
    # shellcheck disable=SC2086
    "$BASELINE" bench --what train,infer --threads "$THREADS" "$@" ${VITRS_ARGS:-} >>"$out/baseline.jsonl"
  fi
  # shellcheck disable=SC2086
  ./target/release/vitrs bench --what train,infer --threads "$THREADS" "$@" ${VITRS_ARGS:-} >>"$out/vitrs.jsonl"
  # shellcheck disable=SC2086
  python3 "$YARDSTICK" --threads "$THREADS" "$@" ${TORCH_ARGS:-} >>"$out/pytorch.jsonl"
done
python3 - "$out" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
v = [json.loads(l) for l in open(f"{d}/vitrs.jsonl")]
p = [json.loads(l) for l in open(f"{d}/pytorch.jsonl")]
def med(rows, k): return statistics.median(r[k] for r in rows)
print(f"runs: {len(v)} each, params vitrs {v[0]['params']} / pytorch {p[0]['params']}, threads {v[0]['threads']}")
for k in ["train_img_s", "infer_img_s", "peak_rss_mb"]:
    a, b = med(v, k), med(p, k)
    print(f"{k:12s} vitrs {a:9.1f}  pytorch {b:9.1f}  ratio {a / b:5.2f}")
for k in ["train_img_s", "infer_img_s"]:
    ratios = [x[k] / y[k] for x, y in zip(v, p)]
    print(f"per-pair {k} ratios:", ", ".join(f"{r:.2f}" for r in ratios), "median", f"{statistics.median(ratios):.2f}")
if os.path.exists(f"{d}/baseline.jsonl"):
    b = [json.loads(l) for l in open(f"{d}/baseline.jsonl")]
    for k in ["train_img_s", "infer_img_s", "peak_rss_mb"]:
        print(f"{k:12s} baseline {med(b, k):9.1f}  vitrs / baseline {med(v, k) / med(b, k):5.2f}  baseline / pytorch {med(b, k) / med(p, k):5.2f}")
PY
