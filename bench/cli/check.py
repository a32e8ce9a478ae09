"""`bench check`: compare a run with a committed leaderboard baseline (the CI regression check);
like with like only (same N, seed and metric models) unless --allow-mismatch; exit status and
tolerances as ``bench.publish.check`` documents them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from bench.core.errors import UsageError
from bench.core.spec import parse_int_list
from bench.publish.cells import load_leaderboard_json
from bench.publish.check import (
    check,
    current_from_results,
    default_tolerances,
    format_tolerances,
    method_names_of,
    parse_tolerances,
    restrict_to_methods,
    restrict_to_steps,
    rows_of,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", type=Path, required=True,
                        help="committed leaderboard JSON, e.g. leaderboards/toy.json")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--results", type=Path, default=None,
                        help="results folder of the new run(s) (default: runs/results)")
    source.add_argument("--current", type=Path, default=None,
                        help="a leaderboard-like JSON with the new numbers instead of --results")
    parser.add_argument("--tolerance", action="append", default=None, metavar="METRIC=VALUE,...",
                        help="override tolerances, merged over the defaults "
                             f"({format_tolerances(default_tolerances())}); N%% is relative, 'off' disables; "
                             "latency is not checked unless given, e.g. latency_ms=10%%")
    parser.add_argument("--methods", default=None, metavar="A,B",
                        help="compare only the rows of these methods, in the baseline and the new run (and the "
                             "real-image rows, steps 0, which every toy run scores); default: every row")
    parser.add_argument("--steps", default=None, metavar="1,2,4",
                        help="compare only the rows at these step counts (and the real-image rows), in the "
                             "baseline and the new run: for a run of some step counts only; default: every row")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="also compare numbers measured under another N, seed or metric models than the "
                             "baseline's (flagged in the report); default: list them as 'not compared', since "
                             "such a difference moves the numbers by itself (FID is biased at small N)")


def command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    tolerances = parse_tolerances(args.tolerance)
    baseline = load_leaderboard_json(args.baseline, "baseline")
    if getattr(args, "current", None) is not None:
        current = load_leaderboard_json(args.current, "current")
    else:
        suite = baseline.get("suite")
        if not suite:
            raise UsageError(f"baseline {args.baseline} has no 'suite' field; pass --current FILE instead of --results")
        current = current_from_results(Path(args.results or "runs/results"), str(suite))
    if getattr(args, "methods", None):
        baseline = restrict_to_methods(baseline, args.methods)
        current = {**current, "rows": rows_of(current, method_names_of(args.methods))}
    if getattr(args, "steps", None):
        steps = parse_int_list(args.steps, "--steps")
        baseline, current = restrict_to_steps(baseline, steps), restrict_to_steps(current, steps)
    result = check(baseline, current, tolerances, allow_mismatch=getattr(args, "allow_mismatch", False))
    out.write(result.format())
    return result.exit_code
