"""`bench run`: for each method and step count, train-or-load, sample, score; write result rows and
the leaderboard. Metric models and reference features are resolved before the first image is
generated; cells whose rows already exist with the same fingerprint are not scored again."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.distributed import is_main_process
from bench.core.fingerprint import fingerprint
from bench.core.progress import progress_bar
from bench.engine.cells import guidance_for, sample_one, samples_dir
from bench.engine.published import PublishedStudent, load_published, rebatched
from bench.engine.students import (
    LoadedStudent,
    load_student,
    released_student_for,
    strict_steps_reason,
    unsupported_steps_on,
)
from bench.publish.leaderboard import write_leaderboards
from bench.scoring.evaluate import (
    IMAGE_METRICS,
    add_metric_arguments,
    build_evaluator,
    make_rows,
    parse_metrics,
    row_fingerprint,
)
from bench.scoring.metrics.latency import device_name, measure_latency
from bench.scoring.results import ResultsStore, Row, load_all, utc_now_iso
from bench.scoring.timing import latency_closures, throughput_closure
from bench.scoring.toy import real_image_cells
from methods.base import Method

log = logging.getLogger(__name__)

LATENCY_ROWS = {  # result metric name -> LatencyResult attribute
    "latency_ms": "median_ms", "latency_p90_ms": "p90_ms", "denoiser_ms": "denoiser_median_ms",
    "throughput_ips": "throughput_images_per_s", "peak_mem_mb": "peak_memory_mb",
}


@dataclass
class RunEntry:
    """One row label of a run: a method (or an experiment, or a published student) and, for a
    published student (``--student``), the student it samples with instead of one it trains."""

    label: str
    method: Method
    published: PublishedStudent | None = None


@dataclass
class CellOutcome:
    method: str
    steps: int
    status: str          # "scored" | "sampled" | "skipped"
    note: str = ""
    samples: Path | None = None
    values: dict = field(default_factory=dict)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_metric_arguments(parser)
    parser.add_argument("--latency-runs", type=int, default=20, metavar="N",
                        help="timed batch-1 runs per cell after 3 warm-up runs (>= 20)")
    parser.add_argument("--throughput-batch", type=int, default=8, metavar="B",
                        help="batch size of the throughput measurement (default 8)")
    parser.add_argument("--leaderboard-dir", default=None, metavar="DIR",
                        help="where to write <suite>.md/.json (default: <out>/leaderboards)")


def run_benchmark(args: argparse.Namespace, ctx, runs: list[RunEntry], steps_list: list[int], suite) -> int:
    """Every entry of ``runs`` at every step count: rows and sample folders are named by the label
    (the method's name, an experiment's label, or a published student's)."""
    metrics = parse_metrics(args.metrics)
    progress = not args.quiet
    for entry in runs:      # --student-source released: a missing student stops the run before any work
        for steps in steps_list:
            if entry.published is None and unsupported_steps_on(entry.method, ctx.teacher, steps) is None:
                released_student_for(entry.method, ctx.teacher, steps, ctx.students)
    evaluator = build_evaluator(suite, metrics, args, progress=progress)  # fails fast, before sampling
    out = Path(args.out)
    store = ResultsStore(out / "results")
    outcomes: list[CellOutcome] = []
    if suite.name == "toy":
        outcomes += score_real_image_cells(ctx, evaluator, store, suite, progress)
    for entry in runs:
        label, method = entry.label, entry.method
        guidance = guidance_for(args.guidance, method, ctx.teacher, entry.published)
        student = load_published(entry.published, ctx.teacher, args.batching) if entry.published else None
        for steps in steps_list:
            cell = {"teacher": ctx.teacher_name, "method": label, "steps": steps,
                    "nfe": method.nfe(steps, guidance), "guidance": guidance, "seed": args.seed}
            reason = (strict_steps_reason(method, steps) if entry.published
                      else unsupported_steps_on(method, ctx.teacher, steps))
            if reason:
                log.warning("skipped: %s", reason)
                outcomes.append(CellOutcome(label, steps, "skipped", reason))
                store.append([Row(suite=suite.name, metric="fid", value=float("nan"), fingerprint="skipped",
                                  run_id=store.run_id, time=utc_now_iso(), device=str(ctx.device),
                                  num_images=len(suite.prompts), note=f"skipped: {reason}", **cell)])
                continue
            out_dir = samples_dir(out, suite.name, ctx.teacher_name, label, steps, guidance, args.seed)
            summary = sample_one(ctx, method, suite, steps, guidance, args.seed, out_dir, args.batch_size,
                                 args.batching, progress=progress, student=student,
                                 overwrite=getattr(args, "overwrite", False))
            cell["student"] = summary.student
            values = score_cell(args, ctx, evaluator, store, method, steps, guidance, cell, out_dir,
                                summary.fingerprint, progress, student)
            outcomes.append(CellOutcome(label, steps, "scored" if values else "sampled",
                                        samples=out_dir, values=values))
    print(format_outcomes(outcomes, evaluator.models.note))
    board_dir = Path(args.leaderboard_dir) if args.leaderboard_dir else out / "leaderboards"
    if metrics and is_main_process():
        frame = load_all(out / "results")
        frame = frame[frame["run_id"] == store.run_id] if "run_id" in frame else frame
        paths = write_leaderboards(frame, board_dir, suites=[suite.name])
        print("leaderboard: " + ", ".join(str(p) for p in paths))
    return 0


def score_real_image_cells(ctx, evaluator, store, suite, progress: bool) -> list[CellOutcome]:
    """Rows of real images scored like samples (steps 0): the metric floor and the CLIP score of
    shuffled captions (bench.scoring.toy), reused by fingerprint like every other cell."""
    outcomes = []
    for real in real_image_cells(suite.prompts, evaluator.metrics):
        names = _expected_image_metrics(evaluator, real.metrics)
        if not names:
            continue
        samples_fp = fingerprint({"real_images": real.method, "folder": real.folder.name,
                                  "prompts": list(real.prompts)})
        cell = {"teacher": ctx.teacher_name, "method": real.method, "steps": 0, "nfe": 0, "guidance": 0.0,
                "seed": 0}
        values = _reuse(store, evaluator, samples_fp, names, cell)
        if values is None:
            values = evaluator.score_folder(real.folder, progress=progress, prompts=real.prompts,
                                            metrics=real.metrics)
            store.append(make_rows(values, evaluator=evaluator, cell=cell, samples_fingerprint=samples_fp,
                                   run_id=store.run_id, device=str(ctx.device)))
        outcomes.append(CellOutcome(real.method, 0, "scored", real.description, real.folder, values))
    return outcomes


def score_cell(args, ctx, evaluator, store, method, steps: int, guidance: float, cell: dict, out_dir: Path,
               samples_fp: str, progress: bool, student: LoadedStudent | None = None) -> dict:
    """Rows of one cell: reused when every expected row exists with its fingerprint, else measured
    (latency with ``student``, a published one, else the one ``load_student`` gives)."""
    values: dict[str, float] = {}
    image_metrics = [m for m in evaluator.metrics if m in IMAGE_METRICS]
    if image_metrics:
        found = _reuse(store, evaluator, samples_fp, _expected_image_metrics(evaluator), cell)
        if found is None:
            found = evaluator.score_folder(out_dir, progress=progress)
            store.append(make_rows(found, evaluator=evaluator, cell=cell, samples_fingerprint=samples_fp,
                                   run_id=store.run_id, device=str(ctx.device)))
        values.update(found)
    if "latency" in evaluator.metrics:
        latency_fp = fingerprint({"samples": samples_fp, "device": _device_name(ctx.device),
                                  "runs": args.latency_runs, "throughput_batch": args.throughput_batch})
        found = _reuse(store, evaluator, latency_fp, tuple(LATENCY_ROWS), cell)
        if found is None:
            found = measure_cell_latency(args, ctx, method, steps, guidance, evaluator.suite.prompts[0], student)
            store.append(make_rows(found, evaluator=evaluator, cell=cell, samples_fingerprint=latency_fp,
                                   run_id=store.run_id, device=_device_name(ctx.device)))
        values.update(found)
    return values


def _expected_image_metrics(evaluator, metrics: tuple[str, ...] | None = None) -> tuple[str, ...]:
    metrics = evaluator.metrics if metrics is None else tuple(m for m in metrics if m in evaluator.metrics)
    names = []
    if "fid" in metrics and evaluator.reference.features is not None:
        names.append("fid")
    if "coverage" in metrics and evaluator.reference.features is not None:
        names += ["precision", "recall", "density", "coverage"]
    if "clip" in metrics and evaluator.models.clip is not None:
        names.append("clip")
    return tuple(names)


def _reuse(store, evaluator, samples_fp: str, names: tuple[str, ...], cell: dict) -> dict | None:
    """Values of rows already measured with the same fingerprints (copied into this run under this
    cell's labels: ``bench eval`` may have scored the same samples as another method name), or None."""
    rows = [store.find(row_fingerprint(samples_fp, name, evaluator.protocol()), name) for name in names]
    if not names or any(r is None for r in rows):
        return None
    for row in rows:
        store.reuse(row, suite=evaluator.suite.name, **cell)
    log.info("reusing %d result rows for %s", len(rows), samples_fp)
    return {row.metric: row.value for row in rows}


def measure_cell_latency(args, ctx, method, steps: int, guidance: float, prompt: str,
                         student: LoadedStudent | None = None) -> dict[str, float]:
    if student is not None:
        student = rebatched(student, "fast")
    else:
        student = load_student(method, ctx.teacher, steps, batching="fast", progress=False, policy=ctx.students)
    end_to_end, denoiser_only = latency_closures(ctx, method, student, prompt, steps, guidance, args.seed, "fast")
    throughput = throughput_closure(ctx, method, student, prompt, steps, guidance, args.seed, args.throughput_batch)
    with progress_bar(desc=f"latency {method.name} {steps} step(s)", unit="call", disable=args.quiet) as bar:
        def counted(fn):
            def call():
                result = fn()
                bar.update(1)
                return result
            return call

        result = measure_latency(counted(end_to_end), counted(denoiser_only), warmup=3, runs=args.latency_runs,
                                 device=ctx.device, throughput_fn=counted(throughput),
                                 throughput_batch=args.throughput_batch, dtype=ctx.precision)
    values = {name: getattr(result, attr) for name, attr in LATENCY_ROWS.items()}
    return {k: float(v) for k, v in values.items() if v is not None}


def _device_name(device) -> str:
    return device_name(device)


def format_outcomes(outcomes: list[CellOutcome], note: str = "") -> str:
    columns = ("fid", "clip", "coverage", "latency_ms")
    lines = [f"{'method':<22} {'steps':>5}  " + "  ".join(f"{c:>10}" for c in columns) + "  samples / note"]
    for o in outcomes:
        cells = "  ".join(f"{o.values[c]:>10.4g}" if c in o.values else f"{'-':>10}" for c in columns)
        lines.append(f"{o.method:<22} {o.steps:>5}  {cells}  {o.samples or o.note}")
    if note:
        lines.append(f"note: {note}")
    return "\n".join(lines)
