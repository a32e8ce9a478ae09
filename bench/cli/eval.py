"""`bench eval`: score a folder of images (FID, CLIP score, Coverage) against a suite's reference.

Images are named by prompt index (``00000.png ...``), also when another tool made them. The same
functions score every cell of `bench run` (``bench.scoring.evaluate``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.assets.suites import load_suite
from bench.core.errors import UsageError
from bench.core.spec import finite_float
from bench.engine.sampling import png_fingerprint
from bench.scoring.evaluate import (
    IMAGE_METRICS,
    add_metric_arguments,
    build_evaluator,
    make_rows,
    parse_metrics,
    samples_fingerprint_of,
    samples_metadata,
)
from bench.scoring.metrics.features import list_images
from bench.scoring.results import ResultsStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, metavar="DIR",
                        help="folder of images named by prompt index (00000.png ...), from any tool")
    parser.add_argument("--suite", required=True, help="the suite whose prompts made the images")
    parser.add_argument("--prompts-file", default=None, metavar="FILE", help="prompts, for --suite prompts-file")
    parser.add_argument("--data-root", default=None, metavar="DIR", help="suite data (env BENCH_DATA_ROOT)")
    parser.add_argument("--num-images", type=int, default=None, metavar="N", help="the first N prompts made the images")
    parser.add_argument("--results", default=None, metavar="DIR",
                        help="also append result rows to DIR/<run_id>.jsonl (e.g. runs/results)")
    parser.add_argument("--method", default="external", help="label for the rows (default: external)")
    parser.add_argument("--steps", type=int, default=0, help="label for the rows")
    parser.add_argument("--teacher", default="external", help="label for the rows")
    parser.add_argument("--guidance", type=finite_float, default=0.0, help="label for the rows (0: unknown)")
    parser.add_argument("--seed", type=int, default=0, help="label for the rows")
    parser.add_argument("--foreign", action="store_true",
                        help="score the images whatever wrote them: without it, a folder whose PNGs carry the "
                             "fingerprints of several `bench sample` runs (or of another run than its "
                             "metadata.json) is refused")
    add_metric_arguments(parser)


def check_one_run(folder: Path, files: list[Path]) -> None:
    """The PNGs `bench sample` wrote carry their run's image fingerprint: a folder mixing runs (another
    seed or N written into it) or disagreeing with its metadata.json is one UsageError. A folder whose
    images carry no fingerprint (another tool's) passes."""
    runs: dict[str | None, list[str]] = {}
    for path in files:
        runs.setdefault(png_fingerprint(path), []).append(path.name)
    recorded = samples_metadata(folder).get("image_fingerprint")
    if set(runs) == {None} or (len(runs) == 1 and (recorded is None or recorded in runs)):
        return
    parts = [f"{fp or 'none'} ({len(names)} image(s), e.g. {names[0]})" for fp, names in runs.items()]
    also = f"; metadata.json names {recorded}" if recorded is not None else ""
    raise UsageError(f"{folder} mixes images of {len(runs)} run(s) by their PNG fingerprints: {', '.join(parts)}"
                     f"{also}; sample again into a fresh folder, or pass --foreign to score them as they are")


def command(args: argparse.Namespace) -> int:
    metrics = tuple(m for m in parse_metrics(args.metrics) if m in IMAGE_METRICS)
    if not metrics:
        raise UsageError("bench eval scores images: choose --metrics from fid,clip,coverage "
                         "(latency is measured by bench run)")
    suite = load_suite(args.suite, data_root=args.data_root, prompts_file=args.prompts_file)
    if args.num_images is not None:
        suite = suite.subset(args.num_images)
    # bad folders fail before any model loads
    files = list_images(args.samples, len(suite.prompts), check_indices=True, take_first=True)
    if not args.foreign:
        check_one_run(Path(args.samples), files)
    evaluator = build_evaluator(suite, metrics, args, progress=not args.quiet)
    values = evaluator.score_folder(Path(args.samples), progress=not args.quiet)
    for name, value in values.items():
        print(f"{name:<10} {value:.6g}")
    if evaluator.models.note:
        print(f"note: {evaluator.models.note}")
    if args.results:
        store = ResultsStore(Path(args.results))
        # the NFE `bench sample` recorded (CFG doubles a teacher solver's); a foreign folder: one per step
        metadata = samples_metadata(Path(args.samples))
        cell = {"teacher": args.teacher, "method": args.method, "steps": args.steps,
                "nfe": metadata.get("nfe", args.steps), "guidance": args.guidance, "seed": args.seed,
                "student": metadata.get("student", "")}
        rows = make_rows(values, evaluator=evaluator, cell=cell,
                         samples_fingerprint=samples_fingerprint_of(Path(args.samples)), run_id=store.run_id,
                         device=str(evaluator.models.extractor.device if evaluator.models.extractor else "cpu"))
        # one row per cell: a rerun (after a kill, or on purpose) does not record the same numbers twice
        fresh = [row for row in rows if not _recorded(store, row, cell)]
        store.append(fresh)
        if len(fresh) < len(rows):
            print(f"{len(rows) - len(fresh)} row(s) already recorded in {args.results} (same fingerprint and labels)")
    return 0


def _recorded(store: ResultsStore, row, cell: dict) -> bool:
    found = store.find(row.fingerprint, row.metric)
    return found is not None and all(getattr(found, key) == value for key, value in cell.items())
