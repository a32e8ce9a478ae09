"""What `bench profile` measures and records: the validated request (:class:`ProfileSpec`), its
defaults, and the result rows of sampling speed (:class:`SpeedRow`) and training speed
(:class:`TrainRow`); see ``bench.perf.profile``."""
from __future__ import annotations

import gc
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.scoring.metrics.latency import _proc_status_kib, _reset_cpu_peak

log = logging.getLogger(__name__)

DEFAULT_GPU_TEACHER = "sd15-arch"
DEFAULT_CPU_TEACHER = "tiny"
DEFAULT_GPU_DTYPES = "fp16,bf16"
DEFAULT_CPU_DTYPES = "fp32,fp16,bf16"
DEFAULT_PROMPT = "a photograph of an astronaut riding a horse"
DEFAULT_OUT = "reports/perf"
THROUGHPUT_WARMUP = 1
#: largest batch tried by the doubling search for the largest training batch that fits (GPU)
MAX_SEARCH_BATCH = 4096
#: the printed latencies shown beside ours: (paper id, table) in bench/data/reported.json
REPORTED_TABLES = (("2403.01505", "2"), ("2311.18828", "3"))
#: teachers with SD-1.5's architecture at 512 px: only their numbers go beside the papers'
SD15_ARCHITECTURE_TEACHERS = ("sd15-arch", "sd15", "rv51")
HALF_ON_CPU_NOTE = ("{dtype} on the CPU: not measured (the harness runs fp32 on the CPU; half-precision CPU "
                    "kernels say nothing about GPU speed); run on a GPU for {dtype} numbers")




# ------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------


@dataclass
class SpeedRow:
    """One (method, steps, dtype) cell as run by one pipeline: ``ours`` (the harness) or
    ``diffusers`` (a stock StableDiffusionPipeline)."""

    method: str
    steps: int
    dtype: str
    pipeline: str                           # "ours" | "diffusers"
    status: str = "measured"                # "measured" | "skipped"
    note: str = ""
    nfe: int | None = None
    guidance: float | None = None
    scheduler: str | None = None            # diffusers rows: the scheduler class
    median_ms: float | None = None          # end to end, batch 1
    p90_ms: float | None = None
    mean_ms: float | None = None
    denoiser_median_ms: float | None = None
    denoiser_share: float | None = None
    peak_memory_mb: float | None = None     # over the timed batch-1 end-to-end runs
    peak_memory_kind: str | None = None
    throughput: dict[str, float] = field(default_factory=dict)            # batch -> images/s
    batch_median_ms: dict[str, float] = field(default_factory=dict)       # batch -> ms per batch
    batch_peak_memory_mb: dict[str, float] = field(default_factory=dict)  # batch -> MiB
    ratio_vs_diffusers: float | None = None  # ours rows: our median / the pipeline's median
    latency: dict | None = None             # the full LatencyResult (raw timings included)


@dataclass
class TrainRow:
    """Optimizer-step time and peak memory of one method's training at one batch size."""

    method: str
    dtype: str
    batch: int
    gradient_checkpointing: bool
    status: str = "measured"
    note: str = ""
    mixed_precision: str | None = None
    step_median_ms: float | None = None
    step_p90_ms: float | None = None
    step_mean_ms: float | None = None
    warmup_steps: int = 0
    timed_steps: int = 0
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None
    largest_batch: int | None = None        # GPU: largest of batch * 2^k that fits
    largest_batch_note: str = ""
    timings_ms: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)   # of every step (same with and without checkpointing)
    skipped_steps: int = 0      # fp16 loss scaling: steps GradScaler skipped on overflow (timed like the others)




@dataclass(frozen=True)
class ProfileSpec:
    """The validated request (everything checked before any model loads)."""

    methods: tuple[Any, ...]
    steps: tuple[int, ...]
    teacher: str
    device: torch.device
    dtypes: tuple[str, ...]
    batches: tuple[int, ...]
    runs: int
    throughput_runs: int
    warmup: int
    guidance: float | None
    seed: int
    prompt: str
    out: Path
    train: bool
    sampling: bool
    config: str | None
    speedup_at: tuple[Any, int] | None       # (method, steps) of the make-it-fast study, or None
    speedup_variants: tuple[str, ...]
    train_batch: int
    train_steps: int
    train_warmup: int
    batch_search: bool
    # --student: a published student (bench.engine.published.PublishedStudent) timed in place of
    # an untrained one; its text (``student_text``) goes into the command
    student: Any = None
    student_text: str | None = None

    def command(self) -> str:
        """The exact command, every option spelled out (defaults resolved)."""
        parts = ["python", "-m", "bench", "profile",
                 "--methods", ",".join(m.name for m in self.methods), "--steps", ",".join(map(str, self.steps)),
                 "--teacher", self.teacher, "--device", str(self.device), "--dtypes", ",".join(self.dtypes),
                 "--batches", ",".join(map(str, self.batches)), "--runs", str(self.runs),
                 "--throughput-runs", str(self.throughput_runs),
                 "--warmup", str(self.warmup), "--seed", str(self.seed), "--prompt", self.prompt,
                 "--out", str(self.out), "--train-batch", str(self.train_batch),
                 "--train-steps", str(self.train_steps), "--train-warmup", str(self.train_warmup)]
        if self.guidance is not None:
            parts += ["--guidance", repr(self.guidance)]
        if not self.train:
            parts.append("--no-train")
        if not self.sampling:
            parts.append("--no-sampling")
        if self.config:
            parts += ["--config", self.config]
        if self.speedup_at:
            parts += ["--speedup", "--speedup-at", f"{self.speedup_at[0].name}:{self.speedup_at[1]}",
                      "--speedup-variants", ",".join(self.speedup_variants)]
        if not self.batch_search:
            parts.append("--no-batch-search")
        if self.student_text:
            parts += ["--student", self.student_text]
        return " ".join(shlex.quote(p) for p in parts)




def vae_dtype(teacher) -> str | None:
    vae = getattr(teacher.codec, "vae", None)
    return None if vae is None else str(next(vae.parameters()).dtype).replace("torch.", "")


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> bool:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return _reset_cpu_peak() is not None


def read_peak(device: torch.device, reset_ok: bool) -> tuple[float | None, str | None]:
    """Peak memory in MiB since ``reset_peak`` (same kinds as bench.scoring.metrics.latency)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    hwm = _proc_status_kib("VmHWM") if reset_ok else None
    return (hwm / 1024.0, "cpu_peak_rss") if hwm is not None else (None, None)
