"""`bench report`: plots, a sample grid and an index page for a run (``bench.publish.report``);
with ``--html`` also a self-contained ``index.html`` + ``assets/`` (``bench.publish.site``)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from bench.core.errors import BenchError, UsageError
from bench.publish.report import GridLayout, latest_run_id, latest_suite, write_report
from bench.publish.site import write_html_report
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
    parser.add_argument("--html", action="store_true",
                        help="also write OUT/index.html + OUT/assets/: a self-contained page (no server, no network) "
                             "with the sortable, filterable leaderboard of every suite (only --suite when given), "
                             "the plots, the sample grids and each cell's protocol and fingerprint")


def command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    results_dir = Path(args.results)
    if not results_dir.is_dir():
        raise UsageError(f"results folder not found: {results_dir} (pass --results DIR)")
    if args.prompts < 1:
        raise UsageError("--prompts must be at least 1")
    try:
        frame = load_all(results_dir)
    except BenchError as exc:  # a corrupt row of the folder the user pointed at
        raise UsageError(f"--results {results_dir}: {exc}") from None
    if frame.empty:
        raise UsageError(f"no result rows in {results_dir}; run `python -m bench run` first")
    if args.suite and args.suite not in set(frame["suite"]):
        suites = ", ".join(sorted(set(frame["suite"])))
        raise UsageError(f"no rows for suite {args.suite!r} in {results_dir}; suites: {suites}")
    suite = args.suite or latest_suite(frame)
    out_dir = args.out or Path("reports") / latest_run_id(frame, suite)
    samples_root = args.samples_root if args.samples_root and Path(args.samples_root).is_dir() else None
    started = time.time()
    index = write_report(frame, samples_root, out_dir, suite=suite, teacher=args.teacher,
                         layout=GridLayout(max_prompts=args.prompts))
    out.write(f"{index}\n")
    if args.html:
        suites = [suite] if args.suite else sorted(set(frame.loc[frame["metric"] != "", "suite"]))
        site = write_html_report(frame, samples_root, out_dir, suite=suite, suites=suites, teacher=args.teacher,
                                 layout=GridLayout(max_prompts=args.prompts), since=started)
        out.write(f"{site}\n")
    return 0
