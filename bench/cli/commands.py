"""The built-in subcommands: list, sample, train, run."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from bench.assets.experiments import experiment_names, load_experiment
from bench.assets.suites import describe_suites, load_suite
from bench.assets.teachers import load_teacher
from bench.assets.teachers.model import TEACHER_SPECS
from bench.assets.zoo import describe_zoo
from bench.cli.run import RunEntry, run_benchmark
from bench.core.defaults import DEFAULT_SUITE, DEFAULT_TEACHER
from bench.core.errors import UsageError
from bench.core.spec import (
    apply_config_overrides,
    describe_config_fields,
    load_method,
    parse_int_list,
    parse_name_list,
)
from bench.engine.cells import (
    SamplingContext,
    guidance_for,
    resolve_device,
    resolve_precision,
    sample_one,
)
from bench.engine.network_variants import parse_run_variant
from bench.engine.published import PublishedStudent, load_own_teacher, load_published, resolve_published
from bench.engine.sampling import PRECISIONS
from bench.engine.students import (
    StudentPolicy,
    export_student,
    load_student,
    strict_steps_reason,
    unsupported_steps_on,
)
from methods import get_method_class, method_names

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Shared resolution of flags into objects
# ------------------------------------------------------------------------------------------------


def load_teacher_from_args(args: argparse.Namespace, device: torch.device, precision: str,
                           published: Sequence[PublishedStudent] = ()):
    """``--teacher`` / ``--teacher-path``; without them the teacher the published students fit (a
    pipeline student's own networks), else the default teacher."""
    dtype = PRECISIONS[precision]
    if published and not (args.teacher or args.teacher_path):
        wanted = {(p.own_teacher, p.located.root if p.own_teacher else p.teacher_name) for p in published}
        if len(wanted) > 1:
            raise UsageError("--student: these students sample with different teachers ("
                             + ", ".join(f"{p.label}: {_teacher_of(p)}" for p in published)
                             + "); run them in separate commands")
        student = published[0]
        if student.own_teacher:
            return load_own_teacher(student, device, dtype)
        if student.teacher_name is None:
            raise UsageError(f"--student {student.label}: name the teacher it was distilled from with --teacher NAME "
                             "or --teacher-path DIR (its text encoder, VAE and noise schedule sample the student)")
        return load_teacher(student.teacher_name, device=device, dtype=dtype)
    name = args.teacher if (args.teacher or args.teacher_path) else DEFAULT_TEACHER
    return load_teacher(name, path=args.teacher_path, device=device, dtype=dtype)


def _teacher_of(student: PublishedStudent) -> str:
    return "its own pipeline" if student.own_teacher else (student.teacher_name or "not known")


def load_suite_from_args(args: argparse.Namespace):
    name = args.suite or (None if args.prompts_file else DEFAULT_SUITE)
    suite = load_suite(name or "prompts-file", data_root=args.data_root, prompts_file=args.prompts_file)
    if args.num_images is not None:
        suite = suite.subset(args.num_images)
    return suite


#: Suites whose default sampling is batched: (batching, batch size). The toy U-Net is so small that
#: one network call per image costs ~4x a batched call on a CPU (measured: 11.1 ms per image vs
#: 1.5 ms per image at batch 500); fast batching is recorded in every fingerprint.
SUITE_SAMPLING_DEFAULTS = {"toy": ("fast", 250)}


@dataclass(frozen=True)
class GpuBatchModel:
    """Memory of whole-batch sampling on a GPU, from ``bench profile`` on the SD-1.5 architecture at
    512 px, fp16 U-Net and text encoder, fp32 VAE (reports/perf/nvidia-h100-80gb-hbm3.json,
    ``batch_peak_memory_mb``): 18,657 MB at batch 16 and 35,044 MB at batch 32, i.e. 1,024 MB per
    image (the fp32 VAE decode dominates) over about 2,270 MB of weights. Throughput was the same at
    16 and 32 (38.2 images/s), so batches beyond 16 buy nothing there and only risk running out."""

    mb_per_image_at_512: float = 1024.0
    base_mb: float = 2270.0
    saturating_batch: int = 16
    headroom: float = 0.8               # of the free memory; the rest for the allocator's fragmentation

    def batch_size(self, free_mb: float, resolution: int) -> int:
        per_image = self.mb_per_image_at_512 * (resolution / 512) ** 2
        fits = int((free_mb * self.headroom - self.base_mb) // per_image)
        return max(1, min(self.saturating_batch, fits))


def default_sampling(suite_name: str, networks: str, batching: str | None, device: torch.device | None,
                     resolution: int, model: GpuBatchModel = GpuBatchModel()) -> tuple[str, int]:
    """The batching and batch size a suite is sampled with when --batching / --batch-size are left
    unset (``batching``: the one given, or None). The suite's defaults first (toy: fast, 250); a
    ``--networks`` variant other than eager samples fast (compiled or half-precision networks run
    whole batches); on a CUDA device, fast batching with the batch that the free memory holds
    (:class:`GpuBatchModel`) unless ``--batching exact`` was given; else exact, 8."""
    default_batching, batch_size = SUITE_SAMPLING_DEFAULTS.get(suite_name, ("exact", 8))
    if networks != "eager":
        default_batching = "fast"
    on_gpu = device is not None and device.type == "cuda" and suite_name not in SUITE_SAMPLING_DEFAULTS
    if on_gpu and batching in (None, "fast"):
        free_mib = torch.cuda.mem_get_info(device)[0] / 2**20
        default_batching, batch_size = "fast", model.batch_size(free_mib, resolution)
        log.info("CUDA: fast batching at batch %d (%.0f MiB free; --batching exact --batch-size B to choose)",
                 batch_size, free_mib)
    return default_batching, batch_size


def apply_sampling_defaults(args: argparse.Namespace, suite, ctx: SamplingContext | None = None,
                            model: GpuBatchModel = GpuBatchModel()) -> None:
    """Fill --batching / --batch-size left unset with :func:`default_sampling`'s; ``--batching exact``
    keeps the bit-exact path on any device."""
    batching, batch_size = default_sampling(
        suite.name, getattr(args, "networks", "eager"), getattr(args, "batching", None),
        ctx.device if ctx is not None else None, ctx.teacher.resolution if ctx is not None else 0, model)
    if getattr(args, "batching", None) is None:
        args.batching = batching
    if getattr(args, "batch_size", None) is None:
        args.batch_size = batch_size


def teacher_label(args: argparse.Namespace, teacher) -> str:
    return args.teacher or (Path(args.teacher_path).name if args.teacher_path else teacher.name)


# ------------------------------------------------------------------------------------------------
# list
# ------------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    if args.names:
        print(",".join(method_names()))
        return 0
    if args.experiments:
        for name in experiment_names():
            experiment = load_experiment(name)
            print(f"{name:<28} label {experiment.label}; --config {experiment.config_text}\n"
                  f"{'':<28} {experiment.description}")
        return 0
    lines = ["methods:"]
    for name in method_names():
        cls = get_method_class(name)
        steps = "any" if cls.supported_steps is None else ",".join(map(str, cls.supported_steps))
        kind = "trains a student" if cls.trains else "teacher solver"
        lines.append(f"  {name:<12} {cls.summary} [{kind}; steps: {steps}] ({cls.paper})")
        if args.verbose:
            lines.extend(f"      {line}" for line in describe_config_fields(cls().config))
    if args.verbose:
        lines.append("  (fields: set with --config K=V,... on any teacher; \"toy: v\" is the value the toy "
                     "and random-weight teachers use instead, set with --config toy_K=V)")
    lines.append("published students (--student NAME; also a hub id owner/name[/path] or a local path):")
    lines.extend(describe_zoo())
    lines.append("teachers:")
    for name, spec in TEACHER_SPECS.items():
        lines.append(f"  {name:<12} {spec.summary}")
    lines.append("suites:")
    for name, summary in describe_suites():
        lines.append(f"  {name:<12} {summary}")
    lines.append("metrics:")
    for name, summary in METRIC_SUMMARIES.items():
        lines.append(f"  {name:<12} {summary}")
    print("\n".join(lines))
    return 0


METRIC_SUMMARIES = {
    "fid": "Frechet Inception distance, clean-fid 'clean' mode, suite protocol crop/resize (lower is better)",
    "clip": "CLIP score: mean cosine of OpenCLIP ViT-g-14 image/text embeddings (higher is better)",
    "coverage": "Coverage with precision, recall, density (Naeem et al. 2020, k=5) on the FID features",
    "latency": "batch-1 end-to-end latency (median, p90 ms), denoiser share, throughput, peak memory",
}


# ------------------------------------------------------------------------------------------------
# sample / train / run
# ------------------------------------------------------------------------------------------------


def _context(args: argparse.Namespace, published: Sequence[PublishedStudent] = ()) -> SamplingContext:
    students = StudentPolicy(source=getattr(args, "student_source", "auto"), retrain=getattr(args, "retrain", False),
                             max_train_steps=getattr(args, "max_train_steps", None))
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    networks = getattr(args, "networks", "eager")
    parse_run_variant(networks, getattr(args, "batching", None) or "fast")   # before the teacher loads
    teacher = load_teacher_from_args(args, device, precision, published)
    return SamplingContext(teacher, teacher_label(args, teacher), device, precision, students, networks)


def cmd_sample(args: argparse.Namespace) -> int:
    published = resolve_published(args.student, args.method, args.config) if args.student else None
    if published is None and not args.method:
        raise UsageError("bench sample needs --method NAME (or --student with a zoo name; `bench list` shows both)")
    method = published.method if published else load_method(args.method, args.config)
    reason = method.unsupported_steps_reason(args.steps)
    if reason:
        raise UsageError(reason)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder for the images")
    suite = load_suite_from_args(args)
    ctx = _context(args, [published] if published else [])
    apply_sampling_defaults(args, suite, ctx)
    reason = strict_steps_reason(method, args.steps) if published else \
        unsupported_steps_on(method, ctx.teacher, args.steps)
    if reason:
        raise UsageError(reason)
    student = load_published(published, ctx.teacher, args.batching) if published else None
    guidance = guidance_for(args.guidance, method, ctx.teacher, published)
    summary = sample_one(ctx, method, suite, args.steps, guidance, args.seed, Path(args.out), args.batch_size,
                         args.batching, progress=not args.quiet, student=student, overwrite=args.overwrite)
    rate = summary.written / summary.seconds if summary.seconds > 0 else float("nan")
    print(f"{summary.out_dir}: {summary.written} written, {summary.skipped} already done "
          f"({rate:.2f} img/s), fingerprint {summary.fingerprint}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    method = load_method(args.method, args.config)
    if not method.trains:
        print(f"{method.name} is a teacher solver: it has no student to train")
        return 0
    reason = method.unsupported_steps_reason(args.steps)
    if reason:
        raise UsageError(reason)
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise UsageError(f"--max-train-steps must be >= 1, got {args.max_train_steps} (an untrained student would be "
                         "cached as if it were trained)")
    ctx = _context(args)
    student = load_student(method, ctx.teacher, steps=args.steps, progress=not args.quiet,
                           max_train_steps=args.max_train_steps, policy=ctx.students)
    where = {"released": "released (not retrained; --retrain trains one here)", "trained": "trained on this machine"}
    print(f"student {method.name}: {student.path} (fingerprint {student.fingerprint}, {where[student.source]})")
    if args.out:
        print(f"exported to {export_student(student, Path(args.out))}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if not args.methods and not args.experiment and not args.student:
        raise UsageError("bench run needs --methods A,B, --experiment M/NAME,... and/or --student NAMES "
                         "(`bench list` shows them)")
    published: list[PublishedStudent] = []
    if args.student:
        names = parse_name_list(args.methods, "--methods") if args.methods else []
        if len(names) > 1:
            raise UsageError("--student with --methods: name the one method that samples the students (or use zoo "
                             "names alone and drop --methods)")
        for text in parse_name_list(args.student, "--student"):
            student = resolve_published(text, names[0] if names else None)
            extra = method_config(args.config, student.label, student.method.name)
            student.method = type(student.method)(apply_config_overrides(student.method.config, extra))
            published.append(student)
        runs = [RunEntry(p.label, p.method, p) for p in published]
    else:
        runs = [RunEntry(name, load_method(name, method_config(args.config, name)))
                for name in parse_name_list(args.methods, "--methods")] if args.methods else []
    for name in parse_name_list(args.experiment, "--experiment") if args.experiment else []:
        experiment = load_experiment(name)
        method = experiment.build()
        extra = method_config(args.config, experiment.label, method.name)
        runs.append(RunEntry(experiment.label, type(method)(apply_config_overrides(method.config, extra))))
    check_config_targets(args.config, runs)
    labels = [entry.label for entry in runs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"bench run: a label is asked for twice ({', '.join(labels)}); name each method or "
                         "experiment once")
    steps = parse_int_list(args.steps, "--steps")
    suite = load_suite_from_args(args)
    ctx = _context(args, published)
    apply_sampling_defaults(args, suite, ctx)
    return run_benchmark(args, ctx, runs, steps, suite)


def method_config(text: str | None, label: str, method: str | None = None) -> str | None:
    """The part of ``bench run --config`` for one method: plain ``k=v`` items apply to every method,
    ``M:k=v`` to the method (or experiment label) M only. A colon after the ``=`` belongs to the
    value (tuples are written a:b:c)."""
    items = []
    for item in (text or "").split(","):
        key = item.split("=", 1)[0]
        if ":" in key:
            target, _, rest = item.partition(":")
            if target.strip() in (label, method):
                items.append(rest)
        elif item.strip():
            items.append(item)
    return ",".join(items) or None


def check_config_targets(text: str | None, runs: Sequence[RunEntry]) -> None:
    """An ``M:k=v`` item of ``bench run --config`` whose M is in no run is a mistake, not a no-op."""
    known = {entry.label for entry in runs} | {entry.method.name for entry in runs}
    for item in (text or "").split(","):
        key = item.split("=", 1)[0]
        if ":" in key and key.partition(":")[0].strip() not in known:
            raise UsageError(f"--config {item.strip()}: {key.partition(':')[0].strip()!r} is not a method or "
                             f"experiment of this run ({', '.join(sorted(known))})")
