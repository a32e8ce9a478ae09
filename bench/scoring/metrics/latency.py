"""Latency: batch-1 end-to-end time of a sampler, its denoiser-only share, throughput, peak memory.

Protocol: the caller builds the closures. ``end_to_end`` runs one image at
batch 1: text encoding + every denoiser evaluation + VAE decode, no safety checker, no PIL/PNG
encoding, no disk I/O. ``denoiser_only`` runs just the denoiser evaluations of the same sample.
Each closure is called ``warmup`` times untimed, then ``runs`` (>= 20) times timed; we report the
median (the headline number), the p90 and the mean.

Timing: on CUDA, a ``torch.cuda.Event(enable_timing=True)`` pair is recorded around each run, after a
``torch.cuda.synchronize`` and followed by one, and ``start.elapsed_time(end)`` gives the
milliseconds. On CPU, ``time.perf_counter`` around each run.

Peak memory (``peak_memory_mb`` in MiB = 2**20 bytes; ``peak_memory_kind`` says which):

* ``cuda_max_allocated``: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, over
  the timed end-to-end runs: the absolute peak of tensors held by torch's caching allocator (weights
  included), not the reserved pool and not other processes.
* ``cpu_peak_rss``: on Linux, the peak resident set size (``VmHWM``) is reset to the current RSS by
  writing ``5`` to ``/proc/self/clear_refs`` before the timed end-to-end runs; afterwards we report
  ``VmHWM``, the process's peak resident memory during those runs (weights included, like the CUDA
  figure). A delta against the RSS before the runs is not reported: the C allocator keeps freed
  pages, so warm-up allocations are reused and the delta reads 0. This resets the process's
  high-water mark as a side effect. ``None`` where this is not available.

Timings are only comparable on the same device type; ``device_name`` is recorded for that reason.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.core.errors import UsageError
from bench.core.machine import cpu_name

logger = logging.getLogger(__name__)

MIN_RUNS = 20
MIN_WARMUP = 1
PERCENTILE_METHOD = "linear"  # numpy's default (type 7 of Hyndman & Fan): interpolate between order statistics


def summarize_timings(timings_ms: Sequence[float]) -> tuple[float, float, float]:
    """(median, p90, mean) of timings in ms; p90 is ``np.percentile(..., 90, method="linear")``."""
    values = np.asarray(timings_ms, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise UsageError("latency statistics need a non-empty list of timings")
    median = float(np.median(values))
    p90 = float(np.percentile(values, 90, method=PERCENTILE_METHOD))
    mean = float(values.mean())
    return median, p90, mean


@dataclass
class LatencyResult:
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    warmup: int
    device_name: str
    device_type: str
    denoiser_median_ms: float | None = None
    denoiser_p90_ms: float | None = None
    denoiser_share: float | None = None          # denoiser median / end-to-end median
    throughput_images_per_s: float | None = None  # throughput_batch / median batch time
    throughput_batch: int | None = None
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None          # "cuda_max_allocated" | "cpu_peak_rss" | None
    dtype: str | None = None
    torch_version: str = ""
    diffusers_version: str | None = None
    cudnn_benchmark: bool | None = None
    tf32_matmul: bool | None = None
    percentile_method: str = PERCENTILE_METHOD
    timings_ms: list[float] = dataclasses.field(default_factory=list)
    denoiser_timings_ms: list[float] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable (raw timings included)."""
        return dataclasses.asdict(self)

    def as_rows(self) -> list[dict[str, Any]]:
        """One row per measured quantity, each carrying the context needed to compare it."""
        context = {
            "device_name": self.device_name,
            "device_type": self.device_type,
            "dtype": self.dtype,
            "runs": self.runs,
            "warmup": self.warmup,
            "torch_version": self.torch_version,
            "diffusers_version": self.diffusers_version,
        }
        quantities = [
            ("latency_median", self.median_ms, "ms"),
            ("latency_p90", self.p90_ms, "ms"),
            ("latency_mean", self.mean_ms, "ms"),
            ("denoiser_latency_median", self.denoiser_median_ms, "ms"),
            ("denoiser_latency_p90", self.denoiser_p90_ms, "ms"),
            ("denoiser_share", self.denoiser_share, "fraction"),
            ("throughput", self.throughput_images_per_s, "images/s"),
            ("peak_memory", self.peak_memory_mb, "MiB"),
        ]
        rows = []
        for metric, value, unit in quantities:
            if value is None:
                continue
            row = {"metric": metric, "value": value, "unit": unit, **context}
            if metric == "throughput":
                row["batch"] = self.throughput_batch
            if metric == "peak_memory":
                row["kind"] = self.peak_memory_kind
            rows.append(row)
        return rows


def _is_cuda(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


def _time_runs(fn: Callable[[], Any], warmup: int, runs: int, device: torch.device) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed; milliseconds per run."""
    cuda = _is_cuda(device)
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    timings = []
    for _ in range(runs):
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            timings.append(float(start.elapsed_time(end)))
        else:
            t0 = time.perf_counter()
            fn()
            timings.append((time.perf_counter() - t0) * 1000.0)
    return timings


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])  # reported in kB (KiB)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_cpu_peak() -> int | None:
    """Reset VmHWM to the current RSS; return the RSS in KiB, or None if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return None
    return _proc_status_kib("VmRSS")


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if _is_cuda(device):
        return torch.cuda.get_device_name(device)
    return cpu_name()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def measure_latency(
    end_to_end: Callable[[], Any],
    denoiser_only: Callable[[], Any] | None,
    warmup: int = 3,
    runs: int = 20,
    device: torch.device | str = "cpu",
    throughput_fn: Callable[[], Any] | None = None,
    throughput_batch: int | None = None,
    dtype: str | None = None,
) -> LatencyResult:
    """Time the caller's closures (see the module docstring for what they must contain).

    ``throughput_fn`` generates ``throughput_batch`` images in one call; it is timed with the same
    warmup and runs, and throughput is ``throughput_batch / median`` in images per second.
    ``dtype`` is the caller's precision label (e.g. ``"float16"``), recorded as given.
    """
    if runs < MIN_RUNS:
        raise UsageError(f"latency needs at least {MIN_RUNS} timed runs for a stable median, got runs={runs}")
    if warmup < MIN_WARMUP:
        raise UsageError(f"latency needs at least {MIN_WARMUP} warm-up run, got warmup={warmup}")
    if (throughput_fn is None) != (throughput_batch is None):
        raise UsageError("throughput needs both throughput_fn and throughput_batch, or neither")
    if throughput_batch is not None and throughput_batch < 1:
        raise UsageError(f"throughput_batch must be >= 1, got {throughput_batch}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"latency device {device} requested but CUDA is not available")
    cuda = _is_cuda(device)

    # Warm up before resetting the peak so one-off allocations (cuDNN autotuning, lazy init) are excluded.
    for _ in range(warmup):
        end_to_end()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        rss_before = None
    else:
        rss_before = _reset_cpu_peak()
    timings = _time_runs(end_to_end, 0, runs, device)
    if cuda:
        peak_mb: float | None = torch.cuda.max_memory_allocated(device) / 2**20
        peak_kind: str | None = "cuda_max_allocated"
    else:
        hwm = _proc_status_kib("VmHWM") if rss_before is not None else None
        if rss_before is not None and hwm is not None:
            peak_mb, peak_kind = hwm / 1024.0, "cpu_peak_rss"
        else:
            peak_mb, peak_kind = None, None
    median, p90, mean = summarize_timings(timings)
    logger.info("end-to-end latency on %s: median %.2f ms, p90 %.2f ms over %d runs", device, median, p90, runs)

    result = LatencyResult(
        median_ms=median,
        p90_ms=p90,
        mean_ms=mean,
        runs=runs,
        warmup=warmup,
        device_name=device_name(device),
        device_type=device.type,
        peak_memory_mb=peak_mb,
        peak_memory_kind=peak_kind,
        dtype=dtype,
        torch_version=torch.__version__,
        diffusers_version=_version("diffusers"),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
        timings_ms=timings,
    )
    if denoiser_only is not None:
        denoiser_timings = _time_runs(denoiser_only, warmup, runs, device)
        d_median, d_p90, _ = summarize_timings(denoiser_timings)
        result.denoiser_timings_ms = denoiser_timings
        result.denoiser_median_ms = d_median
        result.denoiser_p90_ms = d_p90
        result.denoiser_share = d_median / median if median > 0 else None
    if throughput_fn is not None and throughput_batch is not None:
        t_median, _, _ = summarize_timings(_time_runs(throughput_fn, warmup, runs, device))
        result.throughput_batch = throughput_batch
        result.throughput_images_per_s = throughput_batch / (t_median / 1000.0) if t_median > 0 else None
    return result
