"""Metric benchmarks (printed figures, not timed tests): ``python -m bench benchmark prdc|prdc-large|features``.

prdc        our PRDC on N x dim float32 Gaussians against, in the same process, its floor (the three
            float32 GEMMs real.real^T, fake.fake^T, real.fake^T in numpy and torch, the faster being the
            floor) and ``prdc.compute_prdc``: median times, ratios, the largest absolute difference of
            the four numbers, peak RSS (target: ours <= 1.5x the floor at 5,000 x 2,048)
prdc-large  our PRDC at 30,000 x 2,048 in a fresh subprocess: time and peak resident memory
            (``ru_maxrss``, inputs included) and its growth over the RSS once the inputs exist
            (target: peak < 2 GB)
features    feature-extraction throughput (images/s) on CPU with the stand-in extractor, through the
            folder path (list_images -> clean-fid's ResizeDataset loop -> extractor), 512x512 PNGs
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import threadpoolctl
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


def _gemm_floor(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """Seconds of the three float32 products PRDC cannot avoid, real.real^T, fake.fake^T and
    real.fake^T, in numpy (OpenBLAS; ``x @ x.T`` dispatches to SYRK, which computes half the
    symmetric result) and in torch (``torch.mm``, MKL on x86 CPUs)."""
    start = time.perf_counter()
    for x, y in ((real, real), (fake, fake), (real, fake)):
        x @ y.T
    numpy_s = time.perf_counter() - start
    real_t, fake_t = torch.from_numpy(real), torch.from_numpy(fake)
    start = time.perf_counter()
    for x, y in ((real_t, real_t), (fake_t, fake_t), (real_t, fake_t)):
        torch.mm(x, y.T)
    return numpy_s, time.perf_counter() - start


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_gib() -> float:
    try:
        with open("/proc/self/status") as handle:
            kib = next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024.0 ** 2


def _blas_threads() -> str:
    """Thread counts of the BLAS / OpenMP libraries loaded in this process (threadpoolctl)."""
    seen = []
    for info in threadpoolctl.threadpool_info():
        item = f"{info.get('internal_api')} {info.get('num_threads')}"
        if item not in seen:
            seen.append(item)
    return ", ".join(seen) or "n/a"


def benchmark_prdc(n: int = 5000, dim: int = 2048, nearest_k: int = 5, seed: int = 0, repeats: int = 5,
                   prdc_repeats: int = 1, out: Printer = print) -> dict:
    """Our ``prdc`` against its floor and against ``prdc.compute_prdc``, all in this one process.

    Each of ``repeats`` rounds times, back to back, the three-GEMM floor in numpy and in torch
    (:func:`_gemm_floor`) and our ``prdc``; the medians are reported, the faster floor library
    is the floor. ``prdc.compute_prdc`` (slow) runs ``prdc_repeats`` times. Also printed: the max
    |diff| of the four numbers against ``compute_prdc`` and the peak RSS of our call."""
    from prdc import compute_prdc

    real, fake = _gaussians(n, dim, seed)
    prdc(real[:64], fake[:64], nearest_k, device="cpu")  # warm-up: first-call allocations, thread pools
    floor_np, floor_torch, ours_times, peak_gib = [], [], [], []
    ours = None
    for _ in range(repeats):
        numpy_s, torch_s = _gemm_floor(real, fake)
        floor_np.append(numpy_s)
        floor_torch.append(torch_s)
        reset = _reset_peak_rss()
        start = time.perf_counter()
        ours = prdc(real, fake, nearest_k, device="cpu")
        ours_times.append(time.perf_counter() - start)
        if reset:
            peak_gib.append(_peak_rss_gib())
    theirs_times, diffs = [], []
    for _ in range(prdc_repeats):
        with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the sample counts
            start = time.perf_counter()
            theirs = compute_prdc(real, fake, nearest_k)
            theirs_times.append(time.perf_counter() - start)
        diffs.append(max(abs(ours[key] - float(theirs[key])) for key in theirs))
    ours_s, theirs_s = statistics.median(ours_times), statistics.median(theirs_times)
    numpy_s, torch_s = statistics.median(floor_np), statistics.median(floor_torch)
    floor_s, floor_lib = (numpy_s, "numpy") if numpy_s <= torch_s else (torch_s, "torch")
    result = dict(n=n, dim=dim, nearest_k=nearest_k, ours_s=ours_s, floor_s=floor_s, floor_library=floor_lib,
                  floor_numpy_s=numpy_s, floor_torch_s=torch_s, prdc_s=theirs_s,
                  ours_over_floor=ours_s / floor_s, prdc_over_ours=theirs_s / ours_s, speedup=theirs_s / ours_s,
                  max_abs_diff=max(diffs), ours=ours, prdc={key: float(value) for key, value in theirs.items()},
                  ours_times=ours_times, floor_numpy_times=floor_np, floor_torch_times=floor_torch,
                  prdc_times=theirs_times, ours_peak_rss_gib=max(peak_gib) if peak_gib else None,
                  process_peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 ** 2,
                  torch_threads=torch.get_num_threads(), blas_threads=_blas_threads(), load_avg=_load_average())
    out(f"prdc {n:,} x {dim:,} float32 (k={nearest_k}, CPU, one process; torch threads {result['torch_threads']}, "
        f"BLAS/OpenMP threads: {result['blas_threads']}; load average {result['load_avg']}; median of {repeats})")
    out(f"  floor, the three float32 GEMMs real.real^T + fake.fake^T + real.fake^T: numpy {numpy_s:.2f} s, "
        f"torch {torch_s:.2f} s -> floor {floor_s:.2f} s ({floor_lib})")
    out(f"  ours {ours_s:.2f} s = {result['ours_over_floor']:.2f}x the floor (target <= 1.5x)")
    out(f"  prdc.compute_prdc {theirs_s:.2f} s = {result['prdc_over_ours']:.1f}x ours; "
        f"max |diff| of the four numbers {result['max_abs_diff']:.3g}")
    peak = "n/a" if result["ours_peak_rss_gib"] is None else f"{result['ours_peak_rss_gib']:.2f} GiB"
    out(f"  peak RSS during our call {peak} (process, inputs included); whole process incl. compute_prdc "
        f"{result['process_peak_rss_gib']:.2f} GiB")
    out("  runs (s): ours " + ", ".join(f"{t:.2f}" for t in ours_times)
        + "; floor numpy " + ", ".join(f"{t:.2f}" for t in floor_np)
        + "; floor torch " + ", ".join(f"{t:.2f}" for t in floor_torch)
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
    parser.add_argument("--repeats", type=int, default=5,
                        help="prdc: timed rounds of ours and the GEMM floor (median reported)")
    parser.add_argument("--prdc-repeats", type=int, default=1, help="prdc: timed runs of prdc.compute_prdc")
    args = parser.parse_args(argv)
    if args.name == "prdc":
        benchmark_prdc(args.n or 5000, args.dim, args.k, repeats=args.repeats, prdc_repeats=args.prdc_repeats)
    elif args.name == "prdc-large":
        benchmark_prdc_large(args.n or 30000, args.dim, args.k)
    else:
        benchmark_feature_throughput(args.num_images, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
