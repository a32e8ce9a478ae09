#!/usr/bin/env bash
# The GPU figures that no session has measured yet, in one device call of at most 10 minutes:
#   1. one whole leaderboard cell on sd15-arch (lcm, 4 steps) at a scaled N, with its projection to
#      N = 30,000 and to the full 7-method x 4-step x 3-suite grid   (target: a COCO-30K 4-step cell <= 12 min
#      on one H100; sampling >= 90 % of the GPU-busy time)
#   2. the lcm training step beside diffusers' train_lcm_distill_sd_wds.py step at batch 8      (target <= 1.1)
#   3. PRDC at 5,000 x 2,048: ours, the three-GEMM floor and prdc.compute_prdc in one process
# Each part runs under its own timeout so that one slow part cannot take the others' time; each
# writes its report as it goes. Run from the repository root on the GPU machine:
#   pip install -q -e . && bash reports/perf/gpu-cell-and-train-step.sh [OUT]
set -u
out=${1:-reports/perf}
mkdir -p "$out"
gpu=$(python -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null || echo "no GPU")
echo "device: $gpu"
timeout 300 python -m bench profile --cell --method lcm --steps 4 --num-images 2000 --out "$out" \
    2>&1 | tee "$out/cell.log"
timeout 180 python -m bench benchmark lcm-step --teacher sd15-arch --batch 8 --steps 20 2>&1 | tee "$out/lcm-step.log"
timeout 90 python -m bench benchmark prdc 2>&1 | tee "$out/prdc.log"
