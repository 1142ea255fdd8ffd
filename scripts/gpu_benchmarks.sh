#!/usr/bin/env bash
# Every method on CIFAR-10 and CIFAR-100 (cpu profile unless PROFILE is set), both benchmarks in
# parallel on one GPU. Usage: scripts/gpu_benchmarks.sh DATA_ROOT OUTPUT_DIR [DEVICE]
# LPIPS/DISTS are dropped (no pretrained trunks offline); the leaderboard header says so.
set -u
data_root=$1 out=$2 device=${3:-cuda} profile=${PROFILE:-cpu} budget=${BUDGET_S:-480}
methods="msp odin ebo moodcat moodcat_ext oe mcd udg"
cb_only=(--set postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[cb]
         --set postprocessors.moodcat_ext.postprocessor.postprocessor_args.scorers=[cb])
for benchmark in ${BENCHMARKS:-cifar10 cifar100}; do
  timeout "$budget" python3 scripts/run_benchmark.py -b "$benchmark" --profile "$profile" --device "$device" \
    --data-root "$data_root" --output-dir "$out" --no-progress --set num_workers=${WORKERS:-0} \
    -p $methods "${cb_only[@]}" \
    > "$out-$benchmark.log" 2>&1 &
done
wait
