"""`bench leaderboard`: write leaderboards/<suite>.md and .json from result rows (and published
leaderboard JSONs given with --base); see ``bench.publish.leaderboard``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import UsageError
from bench.publish.cells import load_leaderboard_json
from bench.publish.leaderboard import ABLATIONS_SUFFIX, ablations_path, rows_from_leaderboard, write_leaderboards
from bench.scoring.results import load_all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=None,
                        help="folder of <run_id>.jsonl result files (default: runs/results; with --base it "
                             "may be left out or not exist yet)")
    parser.add_argument("--base", type=Path, action="append", default=None, metavar="LEADERBOARD_JSON",
                        help="start from a published leaderboard JSON (e.g. leaderboards/toy.json) and add the "
                             "rows of --results to it: a newer run of the same cell replaces it, the old "
                             "fingerprint is kept in the JSON (repeatable; <suite>-ablations.json beside it is "
                             "read too)")
    parser.add_argument("--out", type=Path, default=Path("leaderboards"),
                        help="output folder for <suite>.md and <suite>.json (canonical rows) and "
                             "<suite>-ablations.md / .json (the other rows) (default: leaderboards)")
    parser.add_argument("--suite", action="append", default=None,
                        help="only this suite (repeatable; default: every suite in the results)")
    parser.add_argument("--generated-at", default=None,
                        help="text stamped into the outputs (default: none, so outputs only change with the numbers)")
    parser.add_argument("--no-reported", action="store_true",
                        help="leave out the 'Reported in the papers' table")


def command(args: argparse.Namespace, out: Any = None) -> int:
    out = sys.stdout if out is None else out
    frames = []
    for path in _with_ablations(args.base or [], out):
        document = load_leaderboard_json(path, "base leaderboard")
        frames.append(rows_from_leaderboard(document, f"base leaderboard {path}"))
    results_dir = Path(args.results) if args.results is not None else Path("runs/results")
    if results_dir.is_dir():
        frames.append(load_all(results_dir))
    elif args.results is not None or not frames:
        raise UsageError(f"results folder not found: {results_dir} (pass --results DIR, or --base LEADERBOARD_JSON)")
    frame = pd.concat(frames, ignore_index=True)
    if frame.empty:
        raise UsageError(f"no result rows in {results_dir}; run `python -m bench run` first")
    paths = write_leaderboards(frame, args.out, suites=args.suite, generated_at=args.generated_at,
                               include_reported=not args.no_reported)
    for path in paths:
        out.write(f"{path}\n")
    return 0


def _with_ablations(bases: list[Path], out: Any) -> list[Path]:
    """Each --base JSON and, when it exists beside it, its ``<suite>-ablations.json`` (the probes' rows
    are published apart from the canonical ones but belong to the same leaderboard)."""
    paths: list[Path] = []
    for base in bases:
        paths.append(base)
        sibling = ablations_path(base)
        if not base.stem.endswith(ABLATIONS_SUFFIX) and sibling.is_file() and sibling not in bases:
            out.write(f"base: {base} and its ablations {sibling}\n")
            paths.append(sibling)
    return paths
