#!/usr/bin/env bash
# The GPU benchmark in one go (issue 25): on a machine with an NVIDIA GPU, builds vitrs for
# Vulkan (and CUDA where its build can fetch LLVM), then runs, alternating with the PyTorch
# yardsticks of ../shared/bench in the same session:
#   - `vitrs bench` against pytorch_vit_bench.py with --amp bf16 for vit-tiny-c10 (32 px),
#     ViT-S/16 and ViT-B/16 at 224;
#   - the LoRA step against pytorch_lora_bench.py (ViT-S/16, 224);
#   - the MPI all-reduce of ViT-S/16 and ViT-B/16 gradients (2 ranks), where mpirun exists;
# and writes every result as one JSON object to $OUT (default bench-gpu.json).
#
# Usage: bench/gpu.sh [ROUNDS]        ROUNDS alternating rounds per case (default 3)
# Env:   DEVICES  vitrs devices to time (default "vulkan" plus "cuda" when that build works)
#        TORCH_DEVICE (default cuda), AMP (default bf16)
#        SMALL=1  a dry run anywhere: tiny sizes, 2 steps; with lavapipe (mesa-vulkan-drivers)
#                 as the Vulkan device and PyTorch on the CPU it exercises every path. Its
#                 numbers are not GPU speed and must not be reported as such.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
OUT=${OUT:-bench-gpu.json}
AMP=${AMP:-bf16}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
SHARED=${SHARED:-../shared/bench}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== building (one target dir per feature set)" >&2
CARGO_TARGET_DIR=target/vulkan cargo build --release -q --features vulkan
bins=(vulkan=target/vulkan/release/vitrs)
if [ -z "${DEVICES:-}" ]; then
  DEVICES=vulkan
  if command -v nvidia-smi >/dev/null && CARGO_TARGET_DIR=target/cuda cargo build --release -q --features cuda 2>"$work/cuda-build.log"; then
    DEVICES="vulkan cuda"
  else
    echo "note: no CUDA build (no NVIDIA driver, or its build could not fetch LLVM: $work/cuda-build.log); timing Vulkan only" >&2
  fi
fi
bin_for() { case "$1" in cuda) echo target/cuda/release/vitrs ;; *) echo target/vulkan/release/vitrs ;; esac; }
"$(bin_for vulkan)" devices >"$work/devices.txt"
cat "$work/devices.txt" >&2

if [ "${SMALL:-0}" = 1 ]; then
  STEPS=(--steps 2 --warmup 1)
  CASES=("vit-tiny-c10|--img 32 --patch 4 --dim 48 --depth 2 --heads 3 --mlp 96 --batch 8 --infer-batch 8")
  LORA=(--img-size 32 --batch-size 4 --steps 2 --warmup 1)
  LORA_VITRS=(--img 32 --patch 16 --dim 384 --depth 2 --heads 6 --mlp 1536 --classes 100 --batch 4)
else
  STEPS=(--steps 20 --warmup 3)
  CASES=("vit-tiny-c10|--img 32 --patch 4 --dim 192 --depth 6 --heads 3 --mlp 768 --batch 512 --infer-batch 1024"
         "vit-s16-224|--img 224 --patch 16 --dim 384 --depth 12 --heads 6 --mlp 1536 --classes 1000 --batch 128 --infer-batch 256"
         "vit-b16-224|--img 224 --patch 16 --dim 768 --depth 12 --heads 12 --mlp 3072 --classes 1000 --batch 64 --infer-batch 128")
  LORA=(--img-size 224 --batch-size 64 --steps 8 --warmup 2)
  LORA_VITRS=(--img 224 --patch 16 --dim 384 --depth 12 --heads 6 --mlp 1536 --classes 100 --batch 64)
fi

for case in "${CASES[@]}"; do
  name=${case%%|*}; read -r -a flags <<<"${case#*|}"
  for r in $(seq "$ROUNDS"); do
    for dev in $DEVICES; do
      echo "== $name round $r: vitrs on $dev" >&2
      "$(bin_for "$dev")" bench --what train,infer --device "$dev" --precision "$AMP" "${flags[@]}" "${STEPS[@]}" \
        | python3 -c "import json,sys; r=json.load(sys.stdin); r.update(case='$name', round=$r, who='vitrs-$dev'); print(json.dumps(r))" >>"$work/rows.jsonl"
    done
    echo "== $name round $r: pytorch on $TORCH_DEVICE" >&2
    python3 "$SHARED/pytorch_vit_bench.py" --device "$TORCH_DEVICE" --amp "$AMP" "${flags[@]}" "${STEPS[@]}" \
      | python3 -c "import json,sys; r=json.load(sys.stdin); r.update(case='$name', round=$r, who='pytorch'); print(json.dumps(r))" >>"$work/rows.jsonl"
  done
done

for r in $(seq "$ROUNDS"); do
  for dev in $DEVICES; do
    echo "== lora round $r: vitrs on $dev" >&2
    "$(bin_for "$dev")" bench --what train --adapter lora --device "$dev" --precision "$AMP" "${LORA_VITRS[@]}" "${STEPS[@]}" \
      | python3 -c "import json,sys; r=json.load(sys.stdin); r.update(case='lora', round=$r, who='vitrs-$dev'); print(json.dumps(r))" >>"$work/rows.jsonl"
  done
  echo "== lora round $r: pytorch+peft on $TORCH_DEVICE" >&2
  python3 "$SHARED/pytorch_lora_bench.py" --device "$TORCH_DEVICE" --amp "$AMP" --methods lora "${LORA[@]}" \
    | python3 -c "
import json,sys
for line in sys.stdin:
    line=line.strip()
    if line.startswith('{'):
        r=json.loads(line); r.update(case='lora', round=$r, who='pytorch-peft'); print(json.dumps(r))" >>"$work/rows.jsonl"
done

if command -v mpirun >/dev/null && [ "${SMALL:-0}" != 1 ]; then
  echo "== MPI all-reduce (2 ranks)" >&2
  CARGO_TARGET_DIR=target/mpi cargo build --release -q --features mpi --example allreduce_bench
  mpirun --allow-run-as-root --oversubscribe -np 2 target/mpi/release/examples/allreduce_bench \
    >"$work/allreduce.txt" 2>&1 || echo "note: the all-reduce run failed: $work/allreduce.txt" >&2
fi

python3 - "$work" "$OUT" "$AMP" <<'PY'
import json, os, statistics, sys
work, out, amp = sys.argv[1:4]
rows = [json.loads(l) for l in open(f"{work}/rows.jsonl")]
summary = {}
for case in dict.fromkeys(r["case"] for r in rows):
    by = {}
    for r in rows:
        if r["case"] == case:
            by.setdefault(r["who"], []).append(r)
    summary[case] = {who: {k: statistics.median(x[k] for x in rs) for k in rs[0]
                           if isinstance(rs[0][k], (int, float)) and not isinstance(rs[0][k], bool)}
                     for who, rs in by.items()}
allreduce = open(f"{work}/allreduce.txt").read() if os.path.exists(f"{work}/allreduce.txt") else None
doc = {"amp": amp, "devices": open(f"{work}/devices.txt").read().splitlines(),
       "small_dry_run": os.environ.get("SMALL") == "1", "medians": summary, "rows": rows,
       "allreduce": allreduce}
json.dump(doc, open(out, "w"), indent=1)
print(f"wrote {out}: {len(rows)} runs")
for case, whos in summary.items():
    print(case, {w: {k: round(v, 1) for k, v in m.items() if k.endswith(("img_s", "step_ms", "rss_mb"))} for w, m in whos.items()})
PY
