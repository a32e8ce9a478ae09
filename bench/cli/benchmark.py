"""`bench benchmark NAME`: benchmarks that print figures (not timed tests).

overhead     harness overhead: `bench sample` (tiny teacher, DDIM) vs a bare diffusers loop doing the
             same U-Net / VAE work and writing the same PNGs; prints the time ratio (target <= 1.05)
prdc         our chunked PRDC vs prdc.compute_prdc on 5,000 x 2,048 features (target >= 5x faster)
prdc-large   our PRDC on 30,000 x 2,048 features: time and peak memory (target < 2 GB)
features     feature-extraction throughput (images/s) on CPU with the stand-in extractor
"""
from __future__ import annotations

import argparse

import torch

from bench.perf import metric_speed
from bench.perf.overhead import BENCHMARKS, format_overhead, measure_overhead


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=BENCHMARKS, help="which benchmark to run")
    parser.add_argument("--num-images", type=int, default=64, help="overhead/features: images per timed run")
    parser.add_argument("--steps", type=int, default=4, help="overhead: sampling steps")
    parser.add_argument("--batch-size", type=int, default=8, help="overhead: batch size")
    parser.add_argument("--repeats", type=int, default=5, help="overhead: timed repetitions (median reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="overhead: torch CPU threads (default 1: on a shared machine, multi-threaded small "
                             "kernels measure the neighbours' load more than the harness)")
    parser.add_argument("--batching", default="both", choices=["exact", "fast", "both"],
                        help="overhead: which harness batching mode to compare with its bare loop")


def command(args: argparse.Namespace) -> int:
    if args.name == "overhead":
        torch.set_num_threads(args.threads)
        modes = ("exact", "fast") if args.batching == "both" else (args.batching,)
        for mode in modes:
            print(format_overhead(measure_overhead(args.num_images, args.steps, args.batch_size, args.repeats, mode)))
        return 0
    return int(metric_speed.main([args.name, "--num-images", str(args.num_images)]) or 0)
