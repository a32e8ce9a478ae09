"""Metric benchmarks (printed figures, not timed tests): ``python -m bench benchmark prdc|prdc-large|features``.

prdc        our chunked PRDC vs ``prdc.compute_prdc`` on N x dim float32 Gaussians: both times and
            the largest absolute difference of the four numbers (target: >= 5x faster at 5,000 x 2,048)
prdc-large  our PRDC at 30,000 x 2,048 in a fresh subprocess: time and peak resident memory
            (``ru_maxrss``, inputs included) and its growth over the RSS once the inputs exist
            (target: peak < 2 GB)
features    feature-extraction throughput (images/s) on CPU with the stand-in extractor, through the
            folder path (list_images -> clean-fid get_files_features -> extractor), 512x512 PNGs
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from bench.scoring.metrics.features import (
    extract_features,
    list_images,
    protocol_for_suite,
)
from bench.scoring.metrics.prdc import prdc
from bench.scoring.metrics.standins import standin_extractor

Printer = Callable[[str], None]


def _gaussians(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((n, dim), dtype=np.float32)
    fake = rng.standard_normal((n, dim), dtype=np.float32)
    fake += np.float32(0.05)
    return real, fake


def benchmark_prdc(n: int = 5000, dim: int = 2048, nearest_k: int = 5, seed: int = 0, repeats: int = 3,
                   out: Printer = print) -> dict:
    """Time our ``prdc`` and ``prdc.compute_prdc`` on the same features, alternating, ``repeats``
    times each; print the median times, their ratio and the max |diff| of the four numbers."""
    from prdc import compute_prdc


    real, fake = _gaussians(n, dim, seed)
    ours_times, theirs_times, diffs = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours = prdc(real, fake, nearest_k, device="cpu")
        ours_times.append(time.perf_counter() - start)
        with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the sample counts
            start = time.perf_counter()
            theirs = compute_prdc(real, fake, nearest_k)
            theirs_times.append(time.perf_counter() - start)
        diffs.append(max(abs(ours[key] - float(theirs[key])) for key in theirs))
    ours_s, theirs_s, diff = statistics.median(ours_times), statistics.median(theirs_times), max(diffs)
    result = dict(n=n, dim=dim, nearest_k=nearest_k, ours_s=ours_s, prdc_s=theirs_s,
                  ours_times=ours_times, prdc_times=theirs_times,
                  speedup=theirs_s / ours_s, max_abs_diff=diff, ours=ours,
                  prdc={key: float(value) for key, value in theirs.items()},
                  torch_threads=torch.get_num_threads(), load_avg=_load_average())
    out(f"prdc {n:,} x {dim:,} (k={nearest_k}, CPU, {result['torch_threads']} torch threads, median of "
        f"{repeats}, load average {result['load_avg']}): ours {ours_s:.2f} s, prdc.compute_prdc {theirs_s:.2f} s, "
        f"speed-up {result['speedup']:.1f}x, max |diff| of the four numbers {diff:.3g}")
    out("  runs (s): ours " + ", ".join(f"{t:.2f}" for t in ours_times)
        + "; prdc " + ", ".join(f"{t:.2f}" for t in theirs_times))
    out("  ours: " + ", ".join(f"{key} {value:.6f}" for key, value in ours.items()))
    return result


_LARGE_CHILD = r"""
import json, os, resource, sys, time
import numpy as np
n, dim, k, seed = (int(v) for v in sys.argv[1:5])
from bench.scoring.metrics.prdc import prdc
import torch
rng = np.random.default_rng(seed)
real = rng.standard_normal((n, dim), dtype=np.float32)
fake = rng.standard_normal((n, dim), dtype=np.float32)
fake += np.float32(0.05)
def rss_kib():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
before = rss_kib()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
result = prdc(real, fake, k, device="cpu")
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(seconds=seconds, rss_before_kib=before, peak_before_kib=peak_before,
                      peak_kib=peak, result=result)))
"""


def benchmark_prdc_large(n: int = 30000, dim: int = 2048, nearest_k: int = 5, seed: int = 0,
                         out: Printer = print) -> dict:
    """Our PRDC at n x dim in a fresh subprocess: seconds, peak RSS and its growth over the inputs."""
    repo_root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo_root), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", _LARGE_CHILD, str(n), str(dim), str(nearest_k), str(seed)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"prdc-large subprocess failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    gib = 1024.0 ** 2  # KiB per GiB
    result = dict(n=n, dim=dim, nearest_k=nearest_k, seconds=data["seconds"],
                  peak_rss_gib=data["peak_kib"] / gib, rss_before_gib=data["rss_before_kib"] / gib,
                  growth_gib=(data["peak_kib"] - data["rss_before_kib"]) / gib, result=data["result"],
                  load_avg=_load_average())
    out(f"prdc-large {n:,} x {dim:,} (k={nearest_k}, CPU, load average {result['load_avg']}): "
        f"{result['seconds']:.1f} s, peak RSS {result['peak_rss_gib']:.2f} GiB (process total, inputs "
        f"{2 * n * dim * 4 / 1024 ** 3:.2f} GiB included; RSS before the call {result['rss_before_gib']:.2f} GiB, "
        f"growth during the call {result['growth_gib']:.2f} GiB)")
    out("  result: " + ", ".join(f"{key} {value:.6f}" for key, value in data["result"].items()))
    return result


def benchmark_feature_throughput(num_images: int = 256, batch_size: int = 32, size: int = 512,
                                 suite: str = "coco2014-30k", out: Printer = print) -> dict:
    """Images/s of the folder feature path on CPU with the stand-in extractor (``size``-px PNGs)."""
    extractor = standin_extractor(seed=0, device="cpu")
    protocol = protocol_for_suite(suite)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        folder = Path(tmp)
        for i in range(num_images):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
        warm = list_images(folder)[:2]  # imports and first-call set-up stay out of the timing
        extract_features(warm, extractor, protocol, batch_size=2, num_workers=0, progress=False)
        start = time.perf_counter()
        files = list_images(folder, num_images, check_indices=True)
        features = extract_features(files, extractor, protocol, batch_size=batch_size, num_workers=0,
                                    progress=False)
        seconds = time.perf_counter() - start
    rate = num_images / seconds
    result = dict(num_images=num_images, size=size, protocol=protocol.as_dict(), seconds=seconds,
                  images_per_s=rate, shape=list(features.shape), torch_threads=torch.get_num_threads(),
                  load_avg=_load_average())
    out(f"features: {num_images} PNGs of {size}x{size}, {protocol.describe()}, stand-in extractor, "
        f"batch {batch_size}, num_workers 0, CPU: {seconds:.2f} s, {rate:.1f} images/s "
        f"(load average {result['load_avg']})")
    return result


def _load_average() -> str:
    try:
        return "{:.2f}".format(os.getloadavg()[0])
    except OSError:
        return "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["prdc", "prdc-large", "features"])
    parser.add_argument("--n", type=int, default=None, help="prdc: points per set (default 5,000 / 30,000)")
    parser.add_argument("--dim", type=int, default=2048, help="prdc: feature dimension")
    parser.add_argument("--k", type=int, default=5, help="prdc: nearest_k")
    parser.add_argument("--num-images", type=int, default=256, help="features: images to extract")
    parser.add_argument("--batch-size", type=int, default=32, help="features: batch size")
    parser.add_argument("--repeats", type=int, default=3, help="prdc: timed runs of each (median reported)")
    args = parser.parse_args(argv)
    if args.name == "prdc":
        benchmark_prdc(args.n or 5000, args.dim, args.k, repeats=args.repeats)
    elif args.name == "prdc-large":
        benchmark_prdc_large(args.n or 30000, args.dim, args.k)
    else:
        benchmark_feature_throughput(args.num_images, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
