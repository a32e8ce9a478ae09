"""`bench benchmark NAME`: benchmarks that print figures (not timed tests).

overhead     harness overhead: `bench sample` (tiny teacher, DDIM) vs a bare diffusers loop doing the
             same U-Net / VAE work and writing the same PNGs; prints the time ratio (target <= 1.05)
prdc         our PRDC on 5,000 x 2,048 features vs its three-GEMM floor and prdc.compute_prdc, one process
             (target <= 1.5x the floor)
prdc-large   our PRDC on 30,000 x 2,048 features: time and peak memory (target < 2 GB)
features     feature-extraction throughput (images/s) on CPU with the stand-in extractor
lcm-step     `lcm` training step vs diffusers' train_lcm_distill_sd_wds.py step, side by side (target <= 1.1x)
"""
from __future__ import annotations

import argparse

import torch

from bench.perf import metric_speed
from bench.perf.lcm_step_compare import LCM_STEP_BENCHMARK, LcmStepSpec, run_lcm_step
from bench.perf.overhead import BENCHMARKS, format_overhead, measure_overhead


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=(*BENCHMARKS, LCM_STEP_BENCHMARK), help="which benchmark to run")
    parser.add_argument("--num-images", type=int, default=64, help="overhead/features: images per timed run")
    parser.add_argument("--steps", type=int, default=4, help="overhead: sampling steps")
    parser.add_argument("--batch-size", type=int, default=8, help="overhead: batch size")
    parser.add_argument("--repeats", type=int, default=5, help="overhead/prdc: timed repetitions (median reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="overhead: torch CPU threads (default 1: on a shared machine, multi-threaded small "
                             "kernels measure the neighbours' load more than the harness)")
    parser.add_argument("--batching", default="both", choices=["exact", "fast", "both"],
                        help="overhead: which harness batching mode to compare with its bare loop")
    # lcm-step (bench.perf.lcm_step_compare); it also takes --steps (timed steps per side) and --threads (CPU only)
    parser.add_argument("--teacher", default="sd15-arch", help="lcm-step: teacher (default sd15-arch; tiny on a CPU)")
    parser.add_argument("--batch", type=int, default=8, help="lcm-step: training batch size (default 8)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="lcm-step: untimed steps per side before the --steps N timed ones (default 2)")


def command(args: argparse.Namespace) -> int:
    if args.name == LCM_STEP_BENCHMARK:
        run_lcm_step(LcmStepSpec(teacher=args.teacher, batch=args.batch, steps=args.steps, warmup=args.warmup,
                                 threads=args.threads))
        return 0
    if args.name == "overhead":
        torch.set_num_threads(args.threads)
        modes = ("exact", "fast") if args.batching == "both" else (args.batching,)
        for mode in modes:
            print(format_overhead(measure_overhead(args.num_images, args.steps, args.batch_size, args.repeats, mode)))
        return 0
    return int(metric_speed.main([args.name, "--num-images", str(args.num_images), "--repeats", str(args.repeats)])
               or 0)
