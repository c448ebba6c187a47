#!/bin/bash
# The Fashion-MNIST transfer (classes 0-4 -> 5-9, RESULTS.md, issue 9) with each method at its
# own learning rate: a sweep on seed 42, then seeds 1-3 at the picked rates. Every job is
# METHOD:LR:SEED; one `vitrs compare-finetune` run each, into runs/lrsweep/METHOD-LR-sSEED
# (skipped when its compare.json exists). METHOD is a compare-finetune method, or
# sparselora-mlp (attention dense, --sparsity-attn 0) or sparselora-attn50 (MLP and attention
# at 50%, the default since 2026-12-07). Run from the repository root; JOBS overrides the list.
set -e
V=${V:-target/release/vitrs}
PRE=runs/fmnist-pre04
[ -e $PRE/checkpoints/best_model ] || $V train --config configs/fashion-mnist.toml --classes 0-4 \
  --epochs 1 --warmup-epochs 0.1 --eval-every 1 --quiet --out-dir $PRE
SWEEP="full:1e-3:42 lora:1e-3:42 lora:2e-3:42 lora:4e-3:42 full:5e-4:42 full:2e-3:42 lora:8e-3:42
  head-only:4e-3:42 head-only:1e-2:42 head-only:3e-2:42 head-only:1e-1:42 head-only:3e-1:42"
SEEDS="lora:4e-3:1 full:1e-3:1 lora:4e-3:2 full:1e-3:2 lora:4e-3:3 full:1e-3:3
  sparselora-mlp:4e-3:42 sparselora-mlp:4e-3:1 sparselora-mlp:4e-3:2 sparselora-mlp:4e-3:3
  sparselora-attn50:4e-3:42 sparselora-attn50:4e-3:1 sparselora-attn50:4e-3:2
  sparselora-attn50:4e-3:3"
mkdir -p runs/lrsweep
for job in ${JOBS:-$SWEEP $SEEDS}; do
  IFS=: read -r m lr seed <<< "$job"
  out=runs/lrsweep/$m-$lr-s$seed
  [ -e "$out/compare.json" ] && continue
  case $m in
    sparselora-mlp) method=sparselora; extra="--sparsity-attn 0" ;;
    sparselora-attn50) method=sparselora; extra="--sparsity-attn 0.5" ;;
    *) method=$m; extra="" ;;
  esac
  $V compare-finetune --methods "$method" $extra --config configs/fashion-mnist.toml \
    --pretrained $PRE/checkpoints/best_model --classes 5-9 --reset-head \
    --epochs 1 --warmup-epochs 0.1 --eval-every 1 --lora-targets qkv,attn.proj,fc1,fc2 \
    --lr "$lr" --seed "$seed" --quiet --out-dir "$out" > "$out.log" 2>&1
  python3 -c "import json; m = json.load(open('$out/compare.json'))['methods'][0]; print('$job', m['final_acc'])"
done
