#!/usr/bin/env bash
# Runs every fuzz target for $1 seconds (default 180), one after another, growing the corpora
# in fuzz/work/<target>/ (git-ignored) from the committed seeds in fuzz/corpus/<target>/.
# Crashes land in fuzz/artifacts/<target>/; libFuzzer's log in fuzz/work/<target>.log.
# Needs cargo-fuzz and a nightly toolchain; `--sanitizer none` because vitrs is safe Rust
# (what matters is panics, OOM and hangs), `-a` so integer overflows panic too.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-180}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(cifar_binary cifar_pickle idx safetensors)
declare -A max_len=([cifar_binary]=8192 [cifar_pickle]=16384 [idx]=4096 [safetensors]=16384)
for t in "${targets[@]}"; do
    mkdir -p "work/$t"
    cargo +nightly fuzz run --sanitizer none -a "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len="${max_len[$t]}" -rss_limit_mb=2048 -timeout=10 \
        2>&1 | tee "work/$t.log" | grep -E "^(#[0-9]+ +DONE|Done|==|thread|SUMMARY|artifact_prefix|Test unit written)" || true
done
