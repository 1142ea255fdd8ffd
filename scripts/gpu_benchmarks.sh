#!/usr/bin/env bash
# Every method on CIFAR-10 and CIFAR-100 (cpu profile unless PROFILE is set), both benchmarks in
# parallel on one GPU. Usage: scripts/gpu_benchmarks.sh DATA_ROOT OUTPUT_DIR [DEVICE]
# Environment: METHODS, BENCHMARKS, PROFILE, BUDGET_S (time limit
# per benchmark; finished methods keep their scores, an unfinished training resumes next time).
# LPIPS/DISTS are dropped (no pretrained trunks offline); the leaderboard says which scorers ran.
set -u
data_root=$1 out=$2 device=${3:-cuda}
methods=${METHODS:-"msp odin ebo moodcat moodcat_ext oe mcd udg"}
overrides=()
for method in $methods; do
  case $method in moodcat*) overrides+=(--set "postprocessors.$method.postprocessor.postprocessor_args.scorers=[cb]");; esac
done
for benchmark in ${BENCHMARKS:-cifar10 cifar100}; do
  timeout "${BUDGET_S:-480}" python3 scripts/run_benchmark.py -b "$benchmark" --profile "${PROFILE:-cpu}" \
    --device "$device" --data-root "$data_root" --output-dir "$out" --no-progress "${overrides[@]}" -p $methods \
    > "$out-$benchmark.log" 2>&1 &
done
wait
