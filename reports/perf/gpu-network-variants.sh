#!/usr/bin/env bash
# Which `--networks` variant `bench run` should sample with by default on this GPU: one leaderboard
# cell (lcm, 4 steps, sd15-arch, fast batching at the batch the free memory holds) timed end to end
# under each variant, in one device call of at most 10 minutes. Compare the sampling stage's
# images/s across the reports (compilation is inside the stage: N = 1,000 is enough to amortise it
# on an H100); the fastest variant whose run passed (half-vae's first-batch check against fp32
# included) becomes the CUDA default in bench/cli/commands.py.
#   pip install -q -e . && bash reports/perf/gpu-network-variants.sh [OUT]
set -u
out=${1:-reports/perf/network-variants}
mkdir -p "$out"
echo "device: $(python -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null || echo "no GPU")"
for variant in eager half-vae compile cuda-graphs; do
    timeout 140 python -m bench profile --cell --method lcm --steps 4 --num-images 1000 --networks "$variant" \
        --out "$out/$variant" 2>&1 | tee "$out/$variant.log" | tail -12
done
