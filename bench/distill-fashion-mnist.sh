#!/bin/bash
# Fashion-MNIST distillation miniature (RESULTS.md). Run from the repository root.
set -e
V=${V:-/tmp/vitrs-distill}
COMMON="--dataset fashion-mnist --limit-train 20000 --batch-size 64 --label-smoothing 0 --crop-padding 0 --hflip 0 --weight-decay 0 --patience 0 --save-every 0 --quiet"
T=runs/fm-distill
mkdir -p $T
time1=$(date +%s)
$V train $COMMON --model cnn-fast --cnn-widths 32,64,128 --epochs 2 --lr 2e-3 --warmup-epochs 0.1 --eval-every 2 --out-dir $T/teacher > $T/teacher.log 2>&1
echo "teacher $(( $(date +%s) - time1 )) s"
VIT="--model vit-cifar-small --patch-size 7 --embed-dim 64 --depth 4 --num-heads 4 --mlp-dim 128 --dropout 0 --attn-dropout 0 --epochs 2 --lr 1e-3 --warmup-epochs 0.1 --eval-every 2"
for run in alone soft hard hard-token; do
  case $run in
    alone) X="--teacher $T/teacher/checkpoints/best_model --distillation none";;
    soft) X="--teacher $T/teacher/checkpoints/best_model --distillation soft --distill-alpha 0.5 --distill-tau 3";;
    hard) X="--teacher $T/teacher/checkpoints/best_model --distillation hard";;
    hard-token) X="--teacher $T/teacher/checkpoints/best_model --distillation hard --dist-token";;
  esac
  s=$(date +%s)
  $V train $COMMON $VIT $X --out-dir $T/$run > $T/$run.log 2>&1
  echo "$run $(( $(date +%s) - s )) s"
done
