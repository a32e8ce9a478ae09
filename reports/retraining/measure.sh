#!/usr/bin/env bash
# How far the toy FID of a distilled method moves when its student is trained again: the same
# recipe on one and on two CPU threads, and with training seed 1, against the released student.
# Writes one results folder per variant under OUT (default runs/retraining); spread.py prints the
# table. Students missing from the caches (one per thread count) are trained first: about 9.3
# CPU-hours per variant on the project's 2-core machine.
#
#   bash reports/retraining/measure.sh [OUT]
#   python reports/retraining/spread.py [OUT]
set -euo pipefail
out=${1:-runs/retraining}
methods=lcm,lcm-lora,scott,splam,dmd,dmd2,mcm
cache_1t=${CACHE_1T:-$HOME/.cache/distill-bench-1-thread}
cache_2t=${CACHE_2T:-$HOME/.cache/distill-bench-2-threads}
common=(--steps 1,2,4,8 --metrics fid,clip,coverage --quiet)

# the released students (float16) and the float32 students of the same training (seed 0, one thread)
python -m bench run --methods "$methods" "${common[@]}" --student-source released --out "$out/released"
OMP_NUM_THREADS=1 BENCH_CACHE_DIR=$cache_1t \
    python -m bench run --methods "$methods" "${common[@]}" --student-source trained --out "$out/seed-0-1-thread"
# the same recipe trained on two threads
OMP_NUM_THREADS=2 BENCH_CACHE_DIR=$cache_2t \
    python -m bench run --methods "$methods" "${common[@]}" --student-source trained --out "$out/seed-0-2-threads"
# training seed 1, one thread (methods/configs/<method>/ablations/train-seed-1.toml)
experiments=$(echo "$methods" | tr ',' '\n' | sed 's#$#/train-seed-1#' | paste -sd,)
OMP_NUM_THREADS=1 BENCH_CACHE_DIR=$cache_1t \
    python -m bench run --experiment "$experiments" "${common[@]}" --out "$out/seed-1-1-thread"
