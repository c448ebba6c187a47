#!/usr/bin/env bash
# vitrs compare-finetune beside the PyTorch+PEFT yardstick, in one session, same model, batch,
# LoRA settings and threads. Usage:
#   bench/compare_finetune.sh vit-s16-224   # ViT-S/16 at 224, batch 16, 100 classes
#   bench/compare_finetune.sh vit-s8-32     # ViT-S/8 at 32 (CIFAR-sized, 17 tokens), batch 64
#   bench/compare_finetune.sh vit-s4-32     # ViT-S/4 at 32 (the seeds' CIFAR patch, 65 tokens),
#                                           # batch 64; timm gets patch_size=4 from bench/timm-patch
# Env: THREADS (default nproc), STEPS (default 8, 2 of them warm-up), METHODS (vitrs, default
# full,lora,sparselora), TARGETS (LoRA targets, default qkv), OUT (default /tmp/cf-<case>),
# VITRS_ARGS (more vitrs flags, e.g. "--sparsity-attn 0").
set -euo pipefail
cd "$(dirname "$0")/.."
CASE=${1:-vit-s16-224}
THREADS=${THREADS:-$(nproc)}
STEPS=${STEPS:-8}
METHODS=${METHODS:-full,lora,sparselora}
TARGETS=${TARGETS:-qkv}
OUT=${OUT:-/tmp/cf-$CASE}
YARDSTICK=${YARDSTICK:-../shared/bench/pytorch_lora_bench.py}
case "$CASE" in
  vit-s16-224) IMG=224; PATCH=16; BATCH=16; TIMM=vit_small_patch16_224 ;;
  vit-s8-32) IMG=32; PATCH=8; BATCH=64; TIMM=vit_small_patch8_224 ;;
  vit-s4-32) IMG=32; PATCH=4; BATCH=64; TIMM=vit_small_patch16_224
    export TIMM_PATCH_SIZE=4 PYTHONPATH=$PWD/bench/timm-patch${PYTHONPATH:+:$PYTHONPATH} ;;
  *) echo "unknown case $CASE" >&2; exit 2 ;;
esac
cargo build --release -q
rm -rf "$OUT"
./target/release/vitrs compare-finetune --methods "$METHODS" --dataset synthetic \
  --synthetic-size $((BATCH * (STEPS + 2))) --num-classes 100 --model vit-small \
  --img-size $IMG --patch-size $PATCH --batch-size $BATCH --steps "$STEPS" --warmup-epochs 0 \
  --epochs 100 --label-smoothing 0.1 --grad-clip 1.0 --weight-decay 0.05 --lr 1e-4 \
  --lora-rank 8 --lora-alpha 16 --lora-targets "$TARGETS" --threads "$THREADS" \
  --save-every 0 --quiet --out-dir "$OUT" ${VITRS_ARGS:-} >/dev/null
python3 "$YARDSTICK" --model $TIMM --img-size $IMG --classes 100 --batch-size $BATCH \
  --steps "$STEPS" --warmup 2 --threads "$THREADS" --lora-targets "$TARGETS" >"$OUT/pytorch.jsonl"
python3 - "$OUT" <<'PY'
import json, sys
d = sys.argv[1]
v = {m["method"]: m for m in json.load(open(f"{d}/compare.json"))["methods"]}
p = {r["method"]: r for r in map(json.loads, open(f"{d}/pytorch.jsonl"))}
print(f"torch {next(iter(p.values()))['torch']}, peft {next(iter(p.values()))['peft']}")
print("| method | vitrs step ms | PyTorch+PEFT step ms | vitrs / PyTorch speed | vitrs peak MiB | PyTorch peak MiB | vitrs optim MiB | PyTorch optim MiB | trainable (vitrs / PyTorch) |")
print("|---|---|---|---|---|---|---|---|---|")
for m, r in v.items():
    q = p.get(m)
    pt = q["step_s"] * 1e3 if q else float("nan")
    print(f"| {m} | {r['step_ms']:.0f} | {pt:.0f} | {pt / r['step_ms']:.2f}× | {r['peak_memory_mb']:.0f} | "
          f"{q['peak_rss_mb'] if q else float('nan'):.0f} | {r['optimizer_state_mb']:.2f} | "
          f"{q['optimizer_state_mb'] if q else float('nan'):.2f} | {r['trainable_params']:.0f} / {q['trainable_params'] if q else '—'} |")
PY
cat "$OUT/compare.md"
