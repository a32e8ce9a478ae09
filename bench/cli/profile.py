"""`bench profile`: speed and memory of methods vs a stock diffusers pipeline, and of training;
what it measures is documented in ``bench.perf.profile``. ``--cell`` times one whole leaderboard
cell end to end instead (``bench.perf.cell_profile``)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.assets.teachers.model import TEACHER_SPECS, teacher_names
from bench.cli.commands import default_sampling
from bench.core.errors import UsageError
from bench.core.spec import guidance_scale, load_method, parse_int_list, parse_name_list
from bench.engine.cells import resolve_device
from bench.engine.network_variants import RUN_VARIANTS, parse_run_variant
from bench.engine.published import OWN_TEACHER, resolve_published
from bench.engine.sampling import BATCHING_MODES, PRECISIONS
from bench.perf.cell_profile import (
    DEFAULT_CELL_METHOD,
    DEFAULT_CELL_STEPS,
    DEFAULT_CPU_CELL_IMAGES,
    DEFAULT_CPU_CELL_TEACHER,
    DEFAULT_GPU_CELL_IMAGES,
    DEFAULT_GPU_CELL_TEACHER,
    NEAREST_K,
    CellSpec,
    render_cell_summary,
    run_cell_profile,
    write_cell_report,
)
from bench.perf.profile import merge_reports, run_profile
from bench.perf.profile_report import (
    render_speed_table,
    render_train_table,
    write_report,
)
from bench.perf.profile_spec import (
    DEFAULT_CPU_DTYPES,
    DEFAULT_CPU_TEACHER,
    DEFAULT_GPU_DTYPES,
    DEFAULT_GPU_TEACHER,
    DEFAULT_OUT,
    DEFAULT_PROMPT,
    THROUGHPUT_WARMUP,
    ProfileSpec,
)
from bench.perf.speedup import parse_speedup_at, parse_variants
from bench.scoring.metrics.latency import MIN_RUNS, MIN_WARMUP

# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", default=None, metavar="A,B",
                        help="comma-separated method names (required unless --student is a zoo name)")
    parser.add_argument("--student", default=None, metavar="NAME",
                        help="time a published student (zoo name, hub reference or local path, as `bench sample "
                             "--student`) instead of an untrained student of the method's architecture; the "
                             "teacher defaults to the one it fits")
    parser.add_argument("--steps", default=None, metavar="1,2,4",
                        help=f"comma-separated step counts (default 1,2,4); with --cell one count (default "
                             f"{DEFAULT_CELL_STEPS})")
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
    parser.add_argument("--guidance", type=guidance_scale, default=None, metavar="G",
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
                        help="also run the make-it-fast study (bench/perf/speedup.py): the torch profiler's top "
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
    cell = parser.add_argument_group(
        "one leaderboard cell end to end (--cell; bench/perf/cell_profile.py)",
        "Sample N images with the method at --steps (PNGs written to a temporary folder), then FID features, "
        "CLIP image + text features, FID statistics + Frechet distance and PRDC/Coverage, each stage timed; "
        "reports images/s and share of each stage, peak memory and the projected time of the full grid "
        "(distilled methods x 1, 2, 4, 8 steps x coco2014-30k, coco2017-5k, mjhq-5k). Defaults: on CUDA teacher "
        f"{DEFAULT_GPU_CELL_TEACHER} (the SD-1.5 architecture, random weights; clean-fid's Inception graph and "
        f"open_clip ViT-g-14, random weights where the checkpoints are missing) at N = {DEFAULT_GPU_CELL_IMAGES:,}; "
        f"on the CPU teacher {DEFAULT_CPU_CELL_TEACHER} (the toy world's metric models) at N = "
        f"{DEFAULT_CPU_CELL_IMAGES:,}. Writes <out>/cell-<device>.md and .json.")
    cell.add_argument("--cell", action="store_true", help="time one whole cell (the options of this group)")
    cell.add_argument("--method", default=None, metavar="M", help=f"--cell: the method (default {DEFAULT_CELL_METHOD})")
    cell.add_argument("--num-images", type=int, default=None, metavar="N",
                      help=f"--cell: images of the cell (default {DEFAULT_GPU_CELL_IMAGES:,} on CUDA, "
                           f"{DEFAULT_CPU_CELL_IMAGES:,} on the CPU); a smaller N is projected to the suites' sizes")
    cell.add_argument("--batch-size", type=int, default=None, metavar="B",
                      help="--cell: images per sampling batch (default: what `bench run` uses: 250 on toy, else 8)")
    cell.add_argument("--batching", default=None, choices=list(BATCHING_MODES),
                      help="--cell: sampling batching (default: what `bench run` uses: fast on toy, else exact)")
    cell.add_argument("--networks", default=None, choices=list(RUN_VARIANTS),
                      help="--cell: how the networks run, as `bench run --networks` (default eager; a variant "
                           "other than eager samples fast, and the U-Net share is then not timed)")


def parse_spec(args: argparse.Namespace) -> ProfileSpec:
    published = None
    if args.student:
        names = parse_name_list(args.methods, "--methods") if args.methods else []
        if len(names) > 1:
            raise UsageError("--student is sampled by one method; give at most one in --methods")
        published = resolve_published(args.student, names[0] if names else None, args.config)
        methods = (published.method,)
        if args.teacher is None and (published.teacher_name or published.own_teacher):
            args.teacher = published.teacher_name or OWN_TEACHER
    else:
        methods = tuple(load_method(name, args.config) for name in parse_name_list(args.methods, "--methods"))
    steps = tuple(parse_int_list(args.steps or "1,2,4", "--steps"))
    batches = tuple(parse_int_list(args.batches, "--batches"))
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    teacher = args.teacher or (DEFAULT_GPU_TEACHER if cuda else DEFAULT_CPU_TEACHER)
    if teacher == OWN_TEACHER and not (published is not None and published.own_teacher):
        raise UsageError(f"--teacher {OWN_TEACHER} is the networks a pipeline student brings; this one has none")
    if teacher not in teacher_names() and teacher != OWN_TEACHER:
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
                       batch_search=not args.no_batch_search, student=published, student_text=args.student)


CELL_ONLY = ("method", "num_images", "batch_size", "batching", "networks")
NOT_WITH_CELL = ("methods", "student", "merge", "speedup", "speedup_at", "speedup_variants", "dtypes")


def parse_cell_spec(args: argparse.Namespace) -> CellSpec:
    """The request of --cell, checked before any model loads."""
    given = [name for name in NOT_WITH_CELL if getattr(args, name)]
    if given:
        raise UsageError(f"--cell times one method: drop --{given[0].replace('_', '-')} (use --method M)")
    method = load_method(args.method or DEFAULT_CELL_METHOD, args.config)
    steps = parse_int_list(args.steps or str(DEFAULT_CELL_STEPS), "--steps")
    if len(steps) != 1:
        raise UsageError(f"--cell times one step count; got --steps {args.steps}")
    reason = method.unsupported_steps_reason(steps[0])
    if reason:
        raise UsageError(reason)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    teacher = args.teacher or (DEFAULT_GPU_CELL_TEACHER if cuda else DEFAULT_CPU_CELL_TEACHER)
    if teacher not in teacher_names():
        raise UsageError(f"unknown teacher {teacher!r}; known teachers: {', '.join(teacher_names())}")
    n = args.num_images if args.num_images is not None else (DEFAULT_GPU_CELL_IMAGES if cuda else
                                                              DEFAULT_CPU_CELL_IMAGES)
    if n < 1:
        raise UsageError(f"--num-images must be >= 1, got {n}")
    if n <= NEAREST_K:
        raise UsageError(f"--num-images must be > {NEAREST_K}: Coverage's k = {NEAREST_K} nearest neighbours need "
                         f"more images (got {n})")
    # what `bench run` samples the cell's suite with (the toy suite for the toy teacher)
    networks = args.networks or "eager"
    batching, batch_size = default_sampling("toy" if teacher == "toy" else "", networks, args.batching, device,
                                            TEACHER_SPECS[teacher].resolution)
    parse_run_variant(networks, args.batching or batching)
    batch_size = args.batch_size if args.batch_size is not None else batch_size
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    return CellSpec(method=method, steps=steps[0], teacher=teacher, device=device, num_images=n,
                    batch_size=batch_size, batching=args.batching or batching,
                    out=Path(args.out), seed=args.seed, config=args.config, networks=networks)


def cell_command(args: argparse.Namespace) -> int:
    spec = parse_cell_spec(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run_cell_profile(spec, progress=not args.quiet)
    md_path, json_path = write_cell_report(report, spec.out)
    print(render_cell_summary(report))
    print(f"report: {md_path} (and {json_path.name})")
    return 0


def command(args: argparse.Namespace) -> int:
    if args.cell:
        return cell_command(args)
    given = [name for name in CELL_ONLY if getattr(args, name) is not None]
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} belongs to --cell; add --cell (or drop it)")
    if args.merge:
        if args.methods:
            raise UsageError("--merge measures nothing; drop --methods (or --merge)")
        md_path, json_path = write_report(merge_reports(args.merge.split(","), args.out), args.out)
        print(f"report: {md_path} (and {json_path.name})")
        return 0
    if not args.methods and not args.student:
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


