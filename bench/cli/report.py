"""`bench report`: plots, a sample grid and an index page for a run (``bench.publish.report``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from bench.core.errors import UsageError
from bench.publish.report import GridLayout, latest_run_id, latest_suite, write_report
from bench.scoring.results import load_all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=Path("runs/results"),
                        help="folder of <run_id>.jsonl result files (default: runs/results)")
    parser.add_argument("--samples-root", type=Path, default=Path("runs/samples"),
                        help="root of the sample folders <suite>/<teacher>/<method>/steps<K>-g<G>-seed<S>/ "
                             "(default: runs/samples)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: reports/<latest run id of the suite>)")
    parser.add_argument("--suite", default=None, help="suite to report on (default: the most recent one)")
    parser.add_argument("--teacher", default=None, help="only this teacher (default: all teachers of the suite)")
    parser.add_argument("--prompts", type=int, default=GridLayout.max_prompts,
                        help="number of prompt columns in the sample grid (default: 4)")


def command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    results_dir = Path(args.results)
    if not results_dir.is_dir():
        raise UsageError(f"results folder not found: {results_dir} (pass --results DIR)")
    if args.prompts < 1:
        raise UsageError("--prompts must be at least 1")
    frame = load_all(results_dir)
    if frame.empty:
        raise UsageError(f"no result rows in {results_dir}; run `python -m bench run` first")
    if args.suite and args.suite not in set(frame["suite"]):
        raise UsageError(f"no rows for suite {args.suite!r} in {results_dir}; suites: {', '.join(sorted(set(frame['suite'])))}")
    suite = args.suite or latest_suite(frame)
    out_dir = args.out or Path("reports") / latest_run_id(frame, suite)
    samples_root = args.samples_root if args.samples_root and Path(args.samples_root).is_dir() else None
    index = write_report(frame, samples_root, out_dir, suite=suite, teacher=args.teacher,
                         layout=GridLayout(max_prompts=args.prompts))
    out.write(f"{index}\n")
    return 0
