#!/bin/bash
# Fashion-MNIST distillation miniature, second protocol (RESULTS.md): a longer-trained,
# augmented cnn-fast teacher; students 6 epochs with random crop + flip; several seeds.
# The student "alone" trains without --teacher; every student is then measured the same
# way, `vitrs eval --checkpoint S --teacher T --json` (test accuracy + agreement).
# Resumable: a run whose eval JSON exists is skipped. Run from the repository root.
# The defaults are the second protocol; the third (small data, RESULTS.md) is
#   R=runs/fm-distill-small LIMIT=5000 TEACHER_EPOCHS=16 EPOCHS=24 bench/distill-fashion-mnist-aug.sh
# (the same number of teacher and student steps on a quarter of the images); the fourth, the
# same with the 1.2 M-parameter student of configs/fashion-mnist.toml and the third's teacher,
#   R=runs/fm-distill-wide LIMIT=5000 EPOCHS=24 TEACHER=runs/fm-distill-small/teacher \
#     STUDENT="--embed-dim 128 --depth 6 --num-heads 4 --mlp-dim 512" bench/distill-fashion-mnist-aug.sh
set -e
V=${V:-target/release/vitrs}
R=${R:-runs/fm-distill-aug}
LIMIT=${LIMIT:-20000}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-4}
EPOCHS=${EPOCHS:-6}
COMMON="--dataset fashion-mnist --limit-train $LIMIT --batch-size 64 --label-smoothing 0 --crop-padding 2 --hflip 0.5 --weight-decay 0 --patience 0 --save-every 0 --quiet"
mkdir -p $R
# TEACHER: the run directory of an already trained teacher (else one is trained into $R/teacher).
T=${TEACHER:-$R/teacher}/checkpoints/best_model
if [ -z "${TEACHER:-}" ] && [ ! -e $R/teacher.done ]; then
  s=$(date +%s)
  $V train $COMMON --model cnn-fast --cnn-widths 32,64,128 --epochs $TEACHER_EPOCHS --lr 2e-3 --warmup-epochs 0.1 --eval-every $TEACHER_EPOCHS --seed 0 --out-dir $R/teacher > $R/teacher.log 2>&1
  echo "teacher $(( $(date +%s) - s )) s" | tee -a $R/times.txt
  touch $R/teacher.done
fi
STUDENT=${STUDENT:-"--embed-dim 64 --depth 4 --num-heads 4 --mlp-dim 128"}
VIT="--model vit-cifar-small --patch-size 7 $STUDENT --dropout 0 --attn-dropout 0 --epochs $EPOCHS --lr 1e-3 --warmup-epochs 0.3 --eval-every $EPOCHS"
# The two runs the goal compares first (3 seeds), then soft and hard, seed by seed.
ORDER=${ORDER:-"alone:1 hard-token:1 alone:2 hard-token:2 alone:3 hard-token:3 soft:1 hard:1 soft:2 hard:2 soft:3 hard:3"}
for job in $ORDER; do
  run=${job%%:*}; seed=${job##*:}; name=$run-s$seed
  [ -e $R/$name.eval.json ] && continue
  case $run in
    alone) X="";;
    soft) X="--teacher $T --distillation soft --distill-alpha 0.5 --distill-tau 3";;
    hard) X="--teacher $T --distillation hard";;
    hard-token) X="--teacher $T --distillation hard --dist-token";;
  esac
  rm -rf $R/$name
  s=$(date +%s)
  $V train $COMMON $VIT $X --seed $seed --out-dir $R/$name > $R/$name.log 2>&1
  t=$(( $(date +%s) - s ))
  $V eval --checkpoint $R/$name/checkpoints/best_model --teacher $T --json > $R/$name.eval.tmp
  mv $R/$name.eval.tmp $R/$name.eval.json
  echo "$name $t s" | tee -a $R/times.txt
done
