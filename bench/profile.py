"""`bench profile`: speed and memory of methods beside a stock diffusers pipeline, and of training.

For each method, step count and precision (``--dtypes``):

* **our harness**: batch-1 end-to-end latency (text encoder + every denoiser evaluation + VAE
  decode; median and p90 over ``--runs`` >= 20 timed runs after ``--warmup``, CUDA events on a
  GPU), the denoiser-only time and its share, throughput in images/s at each of ``--batches``, peak
  memory. The closures are the ones `bench run` times (``bench.evaluate.latency_closures``,
  ``bench.run._throughput_closure``), measured by ``bench.metrics.latency.measure_latency``.
* **stock diffusers**: a ``StableDiffusionPipeline`` assembled from the same teacher components
  (unet or the student's U-Net, vae, text_encoder, tokenizer) with the scheduler matching the
  method (``Method.diffusers_scheduler``), the same step count, guidance and per-image seeds, measured the
  same way in the same process; and the ratio ours/diffusers of the end-to-end medians (target
  <= 1.02: the harness adds nothing). Both sides do the same work: the prompt is encoded on every
  call, the empty-prompt embedding is computed once (ours caches it; the pipeline gets it as
  ``negative_prompt_embeds``), noise is drawn on the CPU from the same generators, and the
  pipeline returns latents (``output_type="latent"``) that are decoded with the same
  ``vae.decode`` call the pipeline makes, in the VAE's own dtype (fp32 for the SD-1.5 VAE, as the
  harness's ``VaeCodec`` upcasts it). Pixel-space teachers have no VAE and no pipeline row.
* **training** (``--no-train`` skips it): optimizer-step time and peak memory of every training
  method at ``--train-batch``, with and without gradient checkpointing
  (``enable_gradient_checkpointing()`` on every diffusers model inside the trained networks: the
  student U-Net, a fake-score or discriminator U-Net), through the method's real
  ``init_training_state`` / ``training_step`` and the harness's ``Trainer.fit``. A step is timed
  from the start of one batch's preparation (data, VAE encode, text encode) to the next's, so it
  holds everything ``fit`` does per optimizer step. On a GPU, the largest batch that fits is found
  by doubling the batch until CUDA runs out of memory.

Students: latency does not depend on weight values, so distilled methods are profiled with an
untrained student of the exact architecture, built by the method's own ``init_training_state``
(LoRA students fused into the U-Net, as ``bench.students.load_student_unet`` does); no student is
trained. While a student is measured on a GPU, the teacher's U-Net waits on the CPU, so peak memory
holds the networks that sample (student U-Net, text encoder, VAE) and not an idle teacher.

Precision: fp16/bf16 are measured on a GPU only; on the CPU those cells are written as skipped
with a note (the harness runs fp32 there; half-precision CPU kernels say nothing about GPU speed).

Parts: ``--no-sampling`` / ``--no-train`` measure one part only; ``--speedup`` adds the make-it-fast
study of ``bench.speedup`` (profiler, per-component times, eager / channels-last / half-vae /
compile / cuda-graphs / cuda-graphs-all). The report is rewritten after every method and every
variant of the study (``"complete": false`` until the end), so a run cut short keeps what it
finished; ``--merge`` joins the reports of several runs on one device, teacher and library versions.

Output: ``<out>/<device-name-slug>.md`` (tables, the exact command, library versions, the device)
and ``.json`` beside it (every number, raw timings included), both written atomically, with the
latencies printed in SCott Table 2 (a single A100) and DMD Table 3 (batch 1; GPU not stated)
labelled as measured on another GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.metadata
import logging
import platform
import re
import shlex
import statistics
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from bench.errors import MissingResourceError, UsageError
from methods import get_method_class, method_names
from methods.base import DiffusersScheduler, TrainingContext

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


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", default=None, metavar="A,B", help="comma-separated method names (required)")
    parser.add_argument("--steps", default="1,2,4", metavar="1,2,4", help="comma-separated step counts (default 1,2,4)")
    parser.add_argument("--teacher", default=None,
                        help=f"teacher name (default: {DEFAULT_GPU_TEACHER} on CUDA, the SD-1.5 architecture at "
                             f"512 px with random weights; {DEFAULT_CPU_TEACHER} on the CPU)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtypes", default=None, metavar="fp16,bf16",
                        help=f"precisions of the U-Net and text encoder (the SD-1.5 VAE decodes in fp32); default "
                             f"{DEFAULT_GPU_DTYPES} on CUDA, {DEFAULT_CPU_DTYPES} on the CPU, where fp16/bf16 "
                             "cells are skipped with a note")
    parser.add_argument("--batches", default="16,32", metavar="16,32",
                        help="batch sizes of the throughput measurement (default 16,32)")
    parser.add_argument("--runs", type=int, default=20, metavar="N",
                        help="timed batch-1 runs per latency measurement (>= 20)")
    parser.add_argument("--throughput-runs", type=int, default=5, metavar="N",
                        help=f"timed runs per throughput batch size, after {THROUGHPUT_WARMUP} warm-up (default 5: "
                             "a rate over whole batches needs fewer runs than a batch-1 median)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed warm-up runs (default 3)")
    parser.add_argument("--guidance", type=float, default=None, metavar="G",
                        help="classifier-free guidance scale, diffusers convention (default: the method's, "
                             "else the teacher's)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (image 0 of this seed)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt every measurement generates")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"where <device>.md and <device>.json go (default {DEFAULT_OUT})")
    parser.add_argument("--train-batch", type=int, default=8, metavar="B", help="training batch size (default 8)")
    parser.add_argument("--train-steps", type=int, default=5, metavar="N",
                        help="timed training steps per measurement, after --train-warmup (default 5)")
    parser.add_argument("--train-warmup", type=int, default=2, metavar="N",
                        help="untimed training steps first (default 2: the first allocates optimizer state)")
    parser.add_argument("--no-train", action="store_true", help="skip the training measurements")
    parser.add_argument("--no-sampling", action="store_true",
                        help="skip the sampling measurements (latency, throughput, the diffusers pipeline)")
    parser.add_argument("--speedup", action="store_true",
                        help="also run the make-it-fast study (bench/speedup.py): the torch profiler's top "
                             "operators, then end-to-end and per-component batch-1 latency under each variant "
                             "(eager, channels-last, half-vae, compile, cuda-graphs, cuda-graphs-all)")
    parser.add_argument("--speedup-at", default=None, metavar="METHOD:STEPS",
                        help="the method and step count of the study (default: the first method of --methods "
                             "at its first supported step count of --steps)")
    parser.add_argument("--speedup-variants", default=None, metavar="A,B",
                        help="variants of the study (default: all on CUDA; eager,channels-last on the CPU)")
    parser.add_argument("--merge", default=None, metavar="A.json,B.json",
                        help="measure nothing: merge reports of earlier runs on one device and teacher (e.g. "
                             "runs cut to fit a GPU lease) into <out>/<device>.md and .json")
    parser.add_argument("--config", default=None, metavar="K=V,...",
                        help="method config overrides, applied to every method of --methods (e.g. for dmd on "
                             "sd15-arch offline: regression_distance=l2,num_regression_pairs=64)")
    parser.add_argument("--no-batch-search", action="store_true",
                        help="GPU: skip the search for the largest training batch that fits")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's own choice); recorded in the report")


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
        return " ".join(shlex.quote(p) for p in parts)


def parse_spec(args: argparse.Namespace) -> ProfileSpec:
    from bench.commands import load_method, resolve_device
    from bench.metrics.latency import MIN_RUNS, MIN_WARMUP
    from bench.sampling import PRECISIONS
    from bench.spec import parse_int_list, parse_name_list
    from bench.teachers import teacher_names

    methods = tuple(load_method(name, args.config) for name in parse_name_list(args.methods, "--methods"))
    steps = tuple(parse_int_list(args.steps, "--steps"))
    batches = tuple(parse_int_list(args.batches, "--batches"))
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    teacher = args.teacher or (DEFAULT_GPU_TEACHER if cuda else DEFAULT_CPU_TEACHER)
    if teacher not in teacher_names():
        raise UsageError(f"unknown teacher {teacher!r}; known teachers: {', '.join(teacher_names())}")
    dtypes = tuple(parse_name_list(args.dtypes or (DEFAULT_GPU_DTYPES if cuda else DEFAULT_CPU_DTYPES), "--dtypes"))
    unknown = [d for d in dtypes if d not in PRECISIONS]
    if unknown:
        raise UsageError(f"--dtypes takes a comma-separated subset of {','.join(PRECISIONS)}; got {args.dtypes!r}")
    if args.runs < MIN_RUNS:
        raise UsageError(f"--runs must be >= {MIN_RUNS} for a stable median, got {args.runs}")
    if args.throughput_runs < 1:
        raise UsageError(f"--throughput-runs must be >= 1, got {args.throughput_runs}")
    if args.warmup < MIN_WARMUP:
        raise UsageError(f"--warmup must be >= {MIN_WARMUP}, got {args.warmup}")
    for flag, value in (("--train-batch", args.train_batch), ("--train-steps", args.train_steps)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.train_warmup < 0:
        raise UsageError(f"--train-warmup must be >= 0, got {args.train_warmup}")
    if args.no_train and args.no_sampling and not args.speedup:
        raise UsageError("--no-train with --no-sampling leaves nothing to measure; drop one of them")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    from bench.speedup import parse_speedup_at, parse_variants

    speedup_at, variants = None, ()
    if args.speedup:
        speedup_at = parse_speedup_at(args.speedup_at, methods, steps)
        variants = parse_variants(args.speedup_variants, device)
    elif args.speedup_at or args.speedup_variants:
        raise UsageError("--speedup-at and --speedup-variants configure the study of --speedup; add --speedup")
    return ProfileSpec(methods=methods, steps=steps, teacher=teacher, device=device,
                       dtypes=tuple(dict.fromkeys(dtypes)), batches=tuple(dict.fromkeys(batches)), runs=args.runs,
                       throughput_runs=args.throughput_runs,
                       warmup=args.warmup, guidance=args.guidance, seed=args.seed, prompt=args.prompt,
                       out=Path(args.out), train=not args.no_train,
                       sampling=not args.no_sampling, config=args.config, speedup_at=speedup_at,
                       speedup_variants=variants, train_batch=args.train_batch,
                       train_steps=args.train_steps, train_warmup=args.train_warmup,
                       batch_search=not args.no_batch_search)


def command(args: argparse.Namespace) -> int:
    if args.merge:
        if args.methods:
            raise UsageError("--merge measures nothing; drop --methods (or --merge)")
        md_path, json_path = write_report(merge_reports(args.merge.split(","), args.out), args.out)
        print(f"report: {md_path} (and {json_path.name})")
        return 0
    if not args.methods:
        raise UsageError("--methods is required (comma-separated method names; `python -m bench list` shows them)")
    spec = parse_spec(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run_profile(spec, progress=not args.quiet, partial=lambda so_far: write_report(so_far, spec.out))
    md_path, json_path = write_report(report, spec.out)
    if report["latency"]:
        print(render_speed_table(report["latency"]) + "\n")
    if report["training"]:
        print(render_train_table(report["training"]) + "\n")
    print(f"report: {md_path} (and {json_path.name})")
    return 0


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def run_profile(spec: ProfileSpec, progress: bool = True, partial: Callable[[dict], None] | None = None) -> dict:
    """Every measurement of ``spec``; returns the report (JSON-serialisable). ``partial`` is given
    the report so far (``"complete": False``) after each method and after the study, so a run
    stopped midway keeps what it measured."""
    from bench.sampling import PRECISIONS
    from bench.teachers import load_teacher

    speed: list[SpeedRow] = []
    training: list[TrainRow] = []
    speedup: list[dict] = []
    teacher_info: dict[str, Any] = {"name": spec.teacher}
    started = time.perf_counter()

    def report(complete: bool) -> dict:
        return _report(spec, started, teacher_info, speed, training, speedup, complete)

    for dtype in spec.dtypes:
        if spec.device.type == "cpu" and dtype != "fp32":
            note = HALF_ON_CPU_NOTE.format(dtype=dtype)
            if spec.sampling:
                speed += [SpeedRow(m.name, s, dtype, p, status="skipped", note=note)
                          for m in spec.methods for s in spec.steps for p in ("ours", "diffusers")]
            if spec.train:
                training += [TrainRow(m.name, dtype, spec.train_batch, ckpt, status="skipped", note=note)
                             for m in spec.methods for ckpt in (False, True)]
            continue
        teacher = load_teacher(spec.teacher, device=spec.device, dtype=PRECISIONS[dtype])
        teacher_info.update(identity=teacher.identity, resolution=teacher.resolution,
                            latent_shape=list(teacher.latent_shape), codec=type(teacher.codec).__name__,
                            vae_dtype=_vae_dtype(teacher))
        if spec.sampling:
            for method in spec.methods:
                speed += profile_method_latency(spec, teacher, method, dtype, progress)
                if partial:
                    partial(report(False))
        if spec.speedup_at:
            def study_so_far(study):
                if partial:
                    partial(_report(spec, started, teacher_info, speed, training,
                                    speedup + [dataclasses.asdict(study)], False))

            speedup.append(dataclasses.asdict(speedup_study(spec, teacher, dtype, progress, study_so_far)))
            if partial:
                partial(report(False))
        if spec.train:
            for method in spec.methods:
                training += profile_method_training(spec, teacher, method, dtype, progress)
                if partial:
                    partial(report(False))
        del teacher
        _free(spec.device)
    return report(True)


def _report(spec: ProfileSpec, started: float, teacher_info: dict, speed: list[SpeedRow], training: list[TrainRow],
            speedup: list[dict], complete: bool) -> dict:
    return {
        "format": 1,
        "complete": complete,
        "command": spec.command(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": time.perf_counter() - started,
        "device": device_info(spec.device),
        "versions": versions(),
        "teacher": teacher_info,
        "settings": {"runs": spec.runs, "throughput_runs": spec.throughput_runs, "warmup": spec.warmup,
                     "batches": list(spec.batches), "seed": spec.seed,
                     "prompt": spec.prompt, "guidance": spec.guidance, "train_batch": spec.train_batch,
                     "train_steps": spec.train_steps, "train_warmup": spec.train_warmup,
                     "threads": torch.get_num_threads()},
        "latency": [dataclasses.asdict(r) for r in speed],
        "training": [dataclasses.asdict(r) for r in training],
        "speedup": speedup,
        "reported": reported_latencies(),
        "notes": report_notes(spec),
    }


def speedup_study(spec: ProfileSpec, teacher, dtype: str, progress: bool = True,
                  on_variant: Callable | None = None):
    """The make-it-fast study (bench/speedup.py) of ``spec.speedup_at`` in ``dtype``; ``on_variant``
    as in ``run_study``."""
    from bench.run import guidance_for
    from bench.speedup import run_study

    method, steps = spec.speedup_at
    guidance = guidance_for(types.SimpleNamespace(guidance=spec.guidance), method, teacher)
    student = profile_student(method, teacher)
    with sampling_teacher(teacher, student.denoiser.unet) as sampler_teacher:
        study = run_study(spec, sampler_teacher, method, student, steps, guidance, dtype, spec.speedup_variants,
                          progress, on_variant)
    del student
    _free(spec.device)
    return study


def merge_reports(paths: list[str], out: str | Path = DEFAULT_OUT) -> dict:
    """One report from several of one device, teacher and library versions: their rows in order,
    each run's command listed (``runs``)."""
    import json

    reports = []
    for path in paths:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as err:
            raise UsageError(f"--merge: cannot read report {path}: {err}") from None
    for key, what in (("device", "device names"), ("teacher", "teachers")):
        names = sorted({r[key]["name"] for r in reports})
        if len(names) > 1:
            raise UsageError(f"--merge: the reports have different {what} ({', '.join(names)}); merge the reports "
                             "of one device and teacher at a time")
    if any(r["versions"] != reports[0]["versions"] for r in reports):
        raise UsageError("--merge: the reports were made with different library versions; their timings do not "
                         "belong in one table")
    notes = list(dict.fromkeys(note for r in reports for note in r["notes"]))
    return dict(reports[0], complete=all(r.get("complete", True) for r in reports),
                command=f"python -m bench profile --merge {','.join(paths)} --out {out}",
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=sum(r["seconds"] for r in reports),
                runs=[{k: r.get(k, True) for k in ("command", "created", "seconds", "complete")} for r in reports],
                latency=[row for r in reports for row in r["latency"]],
                training=[row for r in reports for row in r["training"]],
                speedup=[study for r in reports for study in r.get("speedup", [])],
                reported=reported_latencies(), notes=notes)


def _vae_dtype(teacher) -> str | None:
    vae = getattr(teacher.codec, "vae", None)
    return None if vae is None else str(next(vae.parameters()).dtype).replace("torch.", "")


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# Latency: ours and diffusers'
# ------------------------------------------------------------------------------------------------


def profile_method_latency(spec: ProfileSpec, teacher, method, dtype: str, progress: bool = True) -> list[SpeedRow]:
    """The ours + diffusers rows of ``method`` at every step count of ``spec``."""
    from bench.run import guidance_for

    guidance = guidance_for(types.SimpleNamespace(guidance=spec.guidance), method, teacher)
    rows: list[SpeedRow] = []
    supported = []
    for steps in spec.steps:
        reason = method.unsupported_steps_reason(steps)
        if reason:
            log.warning("skipped: %s", reason)
            rows += [SpeedRow(method.name, steps, dtype, p, status="skipped", note=reason, guidance=guidance)
                     for p in ("ours", "diffusers")]
        else:
            supported.append(steps)
    if not supported:
        return rows
    student = profile_student(method, teacher)
    with sampling_teacher(teacher, student.denoiser.unet) as sampler_teacher:
        for steps in supported:
            ours = measure_ours(spec, sampler_teacher, method, student, steps, guidance, dtype)
            theirs = measure_diffusers(spec, sampler_teacher, method, student.denoiser.unet, steps, guidance, dtype)
            if ours.median_ms and theirs.median_ms:
                ours.ratio_vs_diffusers = ours.median_ms / theirs.median_ms
            rows += [ours, theirs]
            if progress:
                print(f"profile {method.name} {steps} step(s) {dtype}: ours {ours.median_ms:.2f} ms, diffusers "
                      + (f"{theirs.median_ms:.2f} ms" if theirs.median_ms else f"skipped ({theirs.note})"), flush=True)
    del student
    _free(spec.device)
    return rows


def profile_student(method, teacher):
    """What ``method`` samples with, for timing: the teacher for teacher solvers
    (``load_student``), else an untrained student of the exact architecture."""
    from bench.students import LoadedStudent, load_student, training_plan
    from methods.base import Denoiser

    if not method.trains:
        return load_student(method, teacher, 1, batching="fast", progress=False)
    unet = untrained_student_unet(method, teacher)
    denoiser = Denoiser(unet, teacher.schedule, images_per_call=None, scheduler_config=teacher.scheduler_config)
    return LoadedStudent(denoiser, f"untrained:{method.name}", sampler=training_plan(method, teacher)[0])


def untrained_student_unet(method, teacher) -> nn.Module:
    """The student U-Net ``method.train`` would start from (``init_training_state`` then
    ``student_from_state``, no optimizer step), on the teacher's device and dtype, LoRA fused."""
    from bench.students import _place, training_plan

    train_method, schedule = training_plan(method, teacher)
    schedule = dataclasses.replace(schedule, max_train_steps=0, checkpointing_steps=0)
    trainer = new_trainer(schedule, next(teacher.unet.parameters()).device, f"profile {method.name}")
    ctx = training_context(train_method, teacher, trainer, training_source(teacher, schedule.seed)[0])
    state = train_method.init_training_state(ctx)
    student = train_method.student_from_state(state, ctx)
    unet = student.unet
    if student.kind == "lora":          # sample with a plain U-Net, as load_student_unet(fuse=True) does
        unet.fuse_lora(lora_scale=1.0)
        unet.unload_lora()
    trainer.accelerator.free_memory()
    del state, trainer, student
    unet = _place(unet, teacher.unet)
    _free(next(unet.parameters()).device)
    return unet


@contextlib.contextmanager
def sampling_teacher(teacher, unet: nn.Module) -> Iterator[Any]:
    """The teacher with ``unet`` in place of its own (text encoder and VAE shared). On a GPU the
    teacher's own U-Net waits on the CPU meanwhile, so peak memory holds what samples."""
    if unet is teacher.unet:
        yield teacher
        return
    device = next(teacher.unet.parameters()).device
    offload = device.type == "cuda"
    if offload:
        nn.Module.to(teacher.unet, "cpu")
        _free(device)
    try:
        yield dataclasses.replace(teacher, unet=unet)
    finally:
        if offload:
            nn.Module.to(teacher.unet, device)


def measure_ours(spec: ProfileSpec, teacher, method, student, steps: int, guidance: float, dtype: str) -> SpeedRow:
    """Our harness: the closures `bench run` times."""
    from bench.evaluate import latency_closures
    from bench.run import _throughput_closure

    ctx = types.SimpleNamespace(teacher=teacher)
    end_to_end, denoiser_only = latency_closures(ctx, method, student, spec.prompt, steps, guidance, spec.seed, "fast")
    batch_fns = {b: _throughput_closure(ctx, method, student, spec.prompt, steps, guidance, spec.seed, b)
                 for b in spec.batches}
    row = SpeedRow(method.name, steps, dtype, "ours", nfe=method.nfe(steps, guidance), guidance=guidance)
    return _measure_into(row, spec, end_to_end, denoiser_only, batch_fns)


def _measure_into(row: SpeedRow, spec: ProfileSpec, end_to_end: Callable, denoiser_only: Callable,
                  batch_fns: dict[int, Callable]) -> SpeedRow:
    """Batch 1 (end to end + denoiser only), then each batch size on its own, all by measure_latency."""
    from bench.metrics.latency import _time_runs, measure_latency

    result = measure_latency(end_to_end, denoiser_only, warmup=spec.warmup, runs=spec.runs, device=spec.device,
                             dtype=row.dtype)
    row.median_ms, row.p90_ms, row.mean_ms = result.median_ms, result.p90_ms, result.mean_ms
    row.denoiser_median_ms, row.denoiser_share = result.denoiser_median_ms, result.denoiser_share
    row.peak_memory_mb, row.peak_memory_kind = result.peak_memory_mb, result.peak_memory_kind
    row.latency = result.as_dict()
    for batch, fn in batch_fns.items():       # a rate over whole batches: fewer, longer runs than batch 1
        _time_runs(fn, THROUGHPUT_WARMUP, 0, spec.device)
        reset_ok = _reset_peak(spec.device)   # after the warm-up, as in measure_latency
        timings = _time_runs(fn, 0, spec.throughput_runs, spec.device)
        median_ms = statistics.median(timings)
        row.batch_median_ms[str(batch)] = median_ms
        row.throughput[str(batch)] = batch / (median_ms / 1000.0)
        peak, _ = _read_peak(spec.device, reset_ok)
        if peak is not None:
            row.batch_peak_memory_mb[str(batch)] = peak
    return row


# -- the stock diffusers pipeline ----------------------------------------------------------------


def diffusers_plan(method, teacher, steps: int) -> tuple[DiffusersScheduler | None, str]:
    """(the method's stock diffusers scheduler, "") or (None, why there is no pipeline comparison)."""
    from bench.teachers import VaeCodec

    if not isinstance(teacher.codec, VaeCodec):
        return None, (f"teacher {teacher.name} is pixel-space (no VAE): StableDiffusionPipeline needs one, so "
                      "there is no pipeline comparison")
    plan = method.diffusers_scheduler(teacher, steps)
    if plan is None:
        return None, f"no stock diffusers scheduler runs {method.name}'s sampler"
    return plan, ""


def diffusers_pipeline(teacher, unet: nn.Module, scheduler):
    """A stock StableDiffusionPipeline from the teacher's own components (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=teacher.codec.vae, text_encoder=teacher.text_encoder,
                                   tokenizer=teacher.tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_closures(pipe, plan: DiffusersScheduler, teacher, prompt: str, steps: int, guidance: float, seed: int,
                       batches=()) -> tuple[Callable, Callable, dict[int, Callable]]:
    """End-to-end, denoiser-only and batch-B closures of the pipeline, doing what ours do (module
    docstring): decoded images (B, 3, H, W) from the end-to-end and batch closures."""
    from bench.sampling import make_generators

    uncond = teacher.encode_prompts([""])
    cond = teacher.encode_prompts([prompt])
    vae = pipe.vae
    vae_param = next(vae.parameters())
    common = dict(height=teacher.resolution, width=teacher.resolution, num_inference_steps=steps,
                  guidance_scale=guidance, output_type="latent", **plan.call_kwargs)

    def decode(latents):      # the pipeline's own decode call, in the VAE's dtype (fp32 when upcast)
        z = latents.to(vae_param.dtype) / vae.config.scaling_factor
        return vae.decode(z, return_dict=False)[0]

    def batch_fn(batch: int) -> Callable:
        def run():
            with torch.inference_mode():
                latents = pipe(prompt=[prompt] * batch, negative_prompt_embeds=uncond.expand(batch, -1, -1),
                               generator=make_generators(seed, list(range(batch))), **common).images
                return decode(latents)
        return run

    def denoiser_only():
        with torch.inference_mode():
            return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, generator=make_generators(seed, [0]),
                        **common).images

    return batch_fn(1), denoiser_only, {b: batch_fn(b) for b in batches}


def measure_diffusers(spec: ProfileSpec, teacher, method, unet: nn.Module, steps: int, guidance: float,
                      dtype: str) -> SpeedRow:
    plan, reason = diffusers_plan(method, teacher, steps)
    row = SpeedRow(method.name, steps, dtype, "diffusers", nfe=method.nfe(steps, guidance), guidance=guidance)
    if plan is None:
        row.status, row.note = "skipped", reason
        return row
    row.scheduler = type(plan.scheduler).__name__
    pipe = diffusers_pipeline(teacher, unet, plan.scheduler)
    end_to_end, denoiser_only, batch_fns = diffusers_closures(pipe, plan, teacher, spec.prompt, steps, guidance,
                                                              spec.seed, spec.batches)
    return _measure_into(row, spec, end_to_end, denoiser_only, batch_fns)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def training_context(method, teacher, trainer, data) -> TrainingContext:
    """The context ``method.init_training_state`` gets (S = 1 for a method with one student per
    step count: the student's architecture and cost do not depend on S)."""
    return TrainingContext(teacher, trainer, data, 1 if method.student_per_step_count else None)


def new_trainer(schedule, device: torch.device, description: str):
    """A checkpoint-free ``Trainer``. accelerate keeps one process-wide ``AcceleratorState`` and
    refuses an ``Accelerator`` with another mixed precision than the first one's; profiling fp16
    then bf16 in one (single-process) run needs a fresh state, so a stale one is reset here."""
    from accelerate.state import AcceleratorState

    from bench.training import Trainer

    mixed = "no" if device.type == "cpu" else schedule.mixed_precision      # as Trainer decides
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != mixed:
        AcceleratorState._reset_state()
    return Trainer(schedule, None, device=device, progress=False, description=description)


class _Clock:
    """Marks on the device's timeline: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def tick(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [float(a.elapsed_time(b)) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1000.0 for a, b in zip(self.marks, self.marks[1:])]


class _TickingData:
    """A training source that marks the clock when the Trainer asks for a batch: the start of
    each optimizer step (with gradient accumulation 1)."""

    def __init__(self, data, clock: _Clock):
        self.data, self.clock = data, clock

    @property
    def identity(self) -> dict:
        return self.data.identity

    def batch(self, index: int, batch_size: int):
        self.clock.tick()
        return self.data.batch(index, batch_size)


def _reset_peak(device: torch.device) -> bool:
    from bench.metrics.latency import _reset_cpu_peak

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return _reset_cpu_peak() is not None


def _read_peak(device: torch.device, reset_ok: bool) -> tuple[float | None, str | None]:
    """Peak memory in MiB since ``_reset_peak`` (same kinds as bench.metrics.latency)."""
    from bench.metrics.latency import _proc_status_kib

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    hwm = _proc_status_kib("VmHWM") if reset_ok else None
    return (hwm / 1024.0, "cpu_peak_rss") if hwm is not None else (None, None)


def training_source(teacher, seed: int = 0):
    """The teacher's training data; synthetic pairs where it has none here (step time does not
    depend on the pictures). Returns (data, note)."""
    from bench.train_data import SyntheticPairs, training_data_for

    try:
        return training_data_for(teacher, seed=seed), ""
    except MissingResourceError:
        return SyntheticPairs(resolution=teacher.resolution, seed=seed), \
            "synthetic image-caption pairs (no training data folder set; step time does not depend on the images)"


def checkpointable_networks(models) -> list[nn.Module]:
    """The diffusers models inside the trained models (the U-Net of a fake-score or discriminator
    wrapper included) that support ``enable_gradient_checkpointing``."""
    return [module for model in models for module in model.modules()
            if getattr(module, "_supports_gradient_checkpointing", False)
            and callable(getattr(module, "enable_gradient_checkpointing", None))]


def measure_training_step(method, teacher, data, batch: int, gradient_checkpointing: bool, warmup_steps: int,
                          timed_steps: int) -> TrainRow:
    """``warmup_steps + timed_steps`` optimizer steps of ``method`` through ``Trainer.fit``; the
    timed ones' step times and the peak memory over all of them (optimizer state included)."""
    from bench.students import training_plan

    device = next(teacher.unet.parameters()).device
    train_method, schedule = training_plan(method, teacher)
    train_method, timing_note = train_method.for_step_timing()
    schedule = dataclasses.replace(schedule, max_train_steps=warmup_steps + timed_steps, train_batch_size=batch,
                                   gradient_accumulation_steps=1, checkpointing_steps=0)
    trainer = new_trainer(schedule, device, f"profile {method.name}")
    row = TrainRow(method.name, "", batch, gradient_checkpointing, mixed_precision=trainer.schedule.mixed_precision,
                   warmup_steps=warmup_steps, timed_steps=timed_steps, note=timing_note)
    state = train_method.init_training_state(training_context(train_method, teacher, trainer, data))
    try:
        if gradient_checkpointing:
            networks = checkpointable_networks(trainer.unwrap(model) for model in state.models)
            if not networks:
                row.status, row.note = "skipped", "no trained network supports gradient checkpointing"
                return row
            for network in networks:
                network.enable_gradient_checkpointing()
        clock = _Clock(device)
        reset_ok = _reset_peak(device)
        report = trainer.fit(state, train_method.training_step, _TickingData(data, clock), teacher)
        clock.tick()
        row.losses = list(report.losses)
        row.skipped_steps = report.skipped_steps
        row.peak_memory_mb, row.peak_memory_kind = _read_peak(device, reset_ok)
    finally:
        trainer.accelerator.free_memory()
        del state
    from bench.metrics.latency import summarize_timings

    row.timings_ms = clock.intervals_ms()[warmup_steps:]
    row.step_median_ms, row.step_p90_ms, row.step_mean_ms = summarize_timings(row.timings_ms)
    return row


def largest_training_batch(method, teacher, data, start: int, gradient_checkpointing: bool) -> int | None:
    """GPU: the largest of ``start * 2^k`` (<= MAX_SEARCH_BATCH) for which two training steps
    run without CUDA running out of memory; None when even ``start`` does not fit."""
    device = next(teacher.unet.parameters()).device
    fits, batch = None, start
    while batch <= MAX_SEARCH_BATCH:
        out_of_memory = False
        try:
            measure_training_step(method, teacher, data, batch, gradient_checkpointing, 1, 1)
        except torch.OutOfMemoryError:
            out_of_memory = True
        _free(device)              # outside the except block: the traceback no longer holds the tensors
        if out_of_memory:
            break
        fits, batch = batch, batch * 2
    return fits


def profile_method_training(spec: ProfileSpec, teacher, method, dtype: str, progress: bool = True) -> list[TrainRow]:
    """Rows without and with gradient checkpointing at ``spec.train_batch`` (+ the largest batch)."""
    if not method.trains:
        return [TrainRow(method.name, dtype, spec.train_batch, ckpt, status="skipped",
                         note=f"{method.name} is a teacher solver: nothing to train") for ckpt in (False, True)]
    data, data_note = training_source(teacher)
    rows = []
    for ckpt in (False, True):
        row = measure_training_step(method, teacher, data, spec.train_batch, ckpt, spec.train_warmup,
                                    spec.train_steps)
        row.dtype = dtype
        row.note = "; ".join(n for n in (row.note, data_note) if n)
        _free(spec.device)
        if row.status == "measured":
            if spec.device.type != "cuda":
                row.largest_batch_note = "largest batch: GPU only (the CPU has no memory limit to find)"
            elif not spec.batch_search:
                row.largest_batch_note = "largest batch: not searched (--no-batch-search)"
            else:
                row.largest_batch = largest_training_batch(method, teacher, data, spec.train_batch, ckpt)
                row.largest_batch_note = (f"largest of {spec.train_batch}*2^k that fits (<= {MAX_SEARCH_BATCH})"
                                          if row.largest_batch else f"batch {spec.train_batch} does not fit")
        rows.append(row)
        if progress:
            print(f"profile training {method.name} {dtype} batch {spec.train_batch} checkpointing={ckpt}: "
                  + (f"{row.step_median_ms:.1f} ms/step" if row.step_median_ms else row.note), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# Context: device, versions, the papers' numbers
# ------------------------------------------------------------------------------------------------


def device_info(device: torch.device) -> dict:
    from bench.metrics.latency import device_name

    info = {"name": device_name(device), "type": device.type, "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(total_memory_mib=props.total_memory / 2**20, capability=f"{props.major}.{props.minor}",
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
                    tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32))
    return info


def versions() -> dict[str, str]:
    found = {"torch": torch.__version__}            # with its build tag (+cu130, +cpu)
    for name in ("diffusers", "transformers", "accelerate", "peft", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def device_slug(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown-device"


def reported_latencies() -> list[dict]:
    """The batch-1 latencies printed in SCott Table 2 and DMD Table 3 (bench/data/reported.json),
    one per (paper, table, method, steps)."""
    from bench.leaderboard import load_reported

    data = load_reported()
    tables = {(t["paper"], t["table"]): t for t in data.get("tables", [])}
    rows, seen = [], set()
    for entry in data["entries"]:
        key = (entry["paper"], entry["table"], entry["method"], entry.get("steps"))
        if (entry["paper"], entry["table"]) not in REPORTED_TABLES or entry.get("latency_s") is None or key in seen:
            continue
        seen.add(key)
        table = tables.get((entry["paper"], entry["table"]), {})
        rows.append({"paper": entry["paper"], "short": data.get("papers", {}).get(entry["paper"], {}).get("short"),
                     "table": entry["table"], "method": entry["method"], "steps": entry.get("steps"),
                     "latency_s": entry["latency_s"], "latency_as_printed": entry.get("latency_as_printed"),
                     "gpu": entry.get("latency_gpu") or table.get("latency_gpu"),
                     "batch": entry.get("latency_batch"), "teacher": entry.get("teacher")})
    return rows


def report_notes(spec: ProfileSpec) -> list[str]:
    return [
        "Latency: batch 1, text encoder + every denoiser evaluation + VAE decode (no PIL/PNG encoding), median "
        f"and p90 of {spec.runs} timed runs after {spec.warmup} warm-up runs; "
        + ("CUDA events." if spec.device.type == "cuda" else "time.perf_counter (CPU)."),
        f"Throughput: images/s at each batch size, whole batch per network call, decoded; batch size over the "
        f"median of {spec.throughput_runs} timed batches after {THROUGHPUT_WARMUP} warm-up.",
        "Peak memory: cuda_max_allocated = torch.cuda.max_memory_allocated over the timed runs (weights "
        "included); cpu_peak_rss = the process's peak resident set (everything the process holds).",
        "Distilled methods are timed with an untrained student of the exact architecture (speed does not depend "
        "on weight values); LoRA students fused into the U-Net.",
        "diffusers: StableDiffusionPipeline from the same components, matching scheduler and step count, same "
        "guidance and seeds; output_type='latent' then the pipeline's own vae.decode call, in the VAE's dtype. "
        "ours/diffusers = ratio of the batch-1 end-to-end medians (target <= 1.02).",
        "ours and diffusers are timed one after the other in the same process; on a shared CPU, background "
        "load between the two moves their ratio by tens of percent, so judge the 1.02 target on a GPU.",
        "Training: optimizer-step time (batch preparation + forward + backward + optimizer step + EMA) through "
        "the method's training step and Trainer.fit; peak memory over all steps, optimizer state included.",
    ]


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _collapse_unmeasured_dtypes(rows: list[dict], **labels: str) -> list[dict]:
    """Rows of a precision not measured on this device (every cell carries the same note) shown
    as one row per precision; the JSON keeps every row."""
    shown, seen = [], set()
    for r in rows:
        if r["status"] == "skipped" and r["note"] == HALF_ON_CPU_NOTE.format(dtype=r["dtype"]):
            if r["dtype"] in seen:
                continue
            seen.add(r["dtype"])
            r = {**r, **labels}
        shown.append(r)
    return shown


def render_speed_table(rows: list[dict]) -> str:
    rows = _collapse_unmeasured_dtypes(rows, method="all", steps="all", pipeline="all")
    batches = sorted({int(b) for r in rows for b in r["throughput"]})
    header = (["method", "steps", "NFE", "dtype", "pipeline", "median ms", "p90 ms", "denoiser ms", "denoiser share",
               "peak MiB"] + [f"img/s @{b}" for b in batches] + ["ours/diffusers", "note"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        pipeline = r["pipeline"] if not r.get("scheduler") else f"{r['pipeline']} ({r['scheduler']})"
        cells = [r["method"], str(r["steps"]), _fmt(r["nfe"], "d"), r["dtype"], pipeline, _fmt(r["median_ms"]),
                 _fmt(r["p90_ms"]), _fmt(r["denoiser_median_ms"]), _fmt(r["denoiser_share"], ".3f"),
                 _fmt(r["peak_memory_mb"], ".0f")]
        cells += [_fmt(r["throughput"].get(str(b)), ".1f") for b in batches]
        cells += [_fmt(r["ratio_vs_diffusers"], ".3f"), r["note"] or ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _yes_no(value: Any) -> str:
    return value if isinstance(value, str) else ("yes" if value else "no")


def render_train_table(rows: list[dict]) -> str:
    header = ["method", "dtype", "mixed precision", "batch", "grad. checkpointing", "step median ms", "step p90 ms",
              "peak MiB", "largest batch that fits", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in _collapse_unmeasured_dtypes(rows, method="all", batch="-", gradient_checkpointing="-"):
        largest = str(r["largest_batch"]) if r["largest_batch"] else "-"
        skipped = (f"{r['skipped_steps']} of {r['warmup_steps'] + r['timed_steps']} steps skipped by fp16 loss "
                   "scaling" if r.get("skipped_steps") else "")
        note = "; ".join(n for n in (r["note"], skipped, r["largest_batch_note"]) if n)
        lines.append("| " + " | ".join([r["method"], r["dtype"], r["mixed_precision"] or "-", str(r["batch"]),
                                        _yes_no(r["gradient_checkpointing"]), _fmt(r["step_median_ms"], ".1f"),
                                        _fmt(r["step_p90_ms"], ".1f"), _fmt(r["peak_memory_mb"], ".0f"), largest,
                                        note]) + " |")
    return "\n".join(lines)


def render_reported_table(reported: list[dict], latency: list[dict], beside: bool = True) -> str:
    """The papers' latencies; with ``beside``, this run's median for the same method and steps."""
    ours = {}
    for r in latency:
        if r["pipeline"] == "ours" and r["median_ms"] is not None:
            ours.setdefault((r["method"], r["steps"]), f"{r['median_ms'] / 1000:.3f} ({r['dtype']})")
    ours_by_reported = {reported: name for name in method_names() for reported in get_method_class(name).reported_names}
    header = ["paper", "table", "method", "steps", "latency s (as printed)", "GPU", "batch"]
    header += ["this run, same method and steps: s (dtype)"] if beside else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in reported:
        cells = [e["short"] or e["paper"], e["table"], e["method"], "-" if e["steps"] is None else str(e["steps"]),
                 e["latency_as_printed"] or str(e["latency_s"]), e["gpu"] or "not stated",
                 "-" if e["batch"] is None else str(e["batch"])]
        if beside:
            cells.append(ours.get((ours_by_reported.get(e["method"]), e["steps"]), "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _render_commands(report: dict) -> list[str]:
    partial = "**Partial report**: the run stopped before its end; what follows is what it measured."
    if "runs" not in report:
        return ["Command:", "", "```", report["command"], "```", "",
                *([] if report.get("complete", True) else [partial, ""])]
    lines = [f"Merged by `{report['command']}` from these {len(report['runs'])} runs on this device (a run "
             "marked partial stopped before its end; its rows are those it finished):", ""]
    for run in report["runs"]:
        lines += ["```", run["command"] + ("" if run["complete"] else "   # partial"), "```", ""]
    return lines


def render_markdown(report: dict) -> str:
    device, teacher = report["device"], report["teacher"]
    sd15 = teacher["name"] in SD15_ARCHITECTURE_TEACHERS
    lines = [f"# Speed and memory on {device['name']}", "",
             f"Teacher `{teacher['name']}` ({teacher.get('resolution', '?')} px, latents "
             f"{'x'.join(map(str, teacher.get('latent_shape', []))) or '?'}, VAE dtype "
             f"{teacher.get('vae_dtype') or 'none'}), generated by `python -m bench profile` on {report['created']} "
             f"in {report['seconds']:.0f} s.", "",
             *_render_commands(report),
             "Device: " + ", ".join(f"{k} {v}" for k, v in device.items()) + ".", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".", "",
             ]
    if report["latency"]:
        lines += ["## Sampling: batch-1 latency, throughput, peak memory", "",
                  render_speed_table(report["latency"]), ""]
    if report.get("speedup"):
        from bench.speedup import render_study

        lines += ["## Making it fast: where batch-1 time goes, and what each switch buys", "",
                  "Each variant runs on its own copies of the networks; `bench run` samples as "
                  "`eager`. Components are measured in isolation; `/ best components` is the end-to-end median "
                  "over the sum of each component's fastest isolated time (target <= 1.2).", ""]
        for study in report["speedup"]:
            lines += [render_study(study), ""]
    if report["training"]:
        lines += ["## Training: step time and peak memory", "", render_train_table(report["training"]), ""]
    lines += ["## Reported in the papers: another GPU", "",
              "Printed latencies (seconds per image, SD-1.5 at 512 px): SCott Table 2 on a single A100; DMD "
              "Table 3 at batch 1, its GPU not stated in the available text (DMD trained on A100s). Measured on "
              "other hardware with other code: a scale, not a comparison with the numbers above."
              + ("" if sd15 else f" This run's teacher ({teacher['name']}) is not the SD-1.5 architecture, so none "
                 "of its numbers is shown beside them."), "",
              render_reported_table(report["reported"], report["latency"], beside=sd15), "", "## Notes", ""]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """``<out>/<device-slug>.md`` and ``.json``, each written atomically."""
    from bench.atomic import atomic_write_json, atomic_write_text

    out = Path(out)
    stem = device_slug(report["device"]["name"])
    md_path, json_path = out / f"{stem}.md", out / f"{stem}.json"
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_markdown(report))
    return md_path, json_path


__all__ = ["add_arguments", "command", "parse_spec", "run_profile", "write_report", "render_markdown",
           "diffusers_plan", "diffusers_pipeline", "diffusers_closures", "measure_training_step", "SpeedRow",
           "TrainRow", "device_slug", "reported_latencies"]
