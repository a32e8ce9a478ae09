"""`bench results`: export every result row as one long table (CSV, Parquet or JSON) for pandas or a spreadsheet.

One row per measured number, with the columns of bench.scoring.results.Row (what its load_all
returns): suite, teacher, method, steps, nfe, guidance, seed, num_images, metric, value,
fingerprint, run_id, time, device, versions and protocol (JSON text), note, student. A skipped
measurement has an empty value (NaN in pandas) and its reason in note. Every row of every run is
exported, superseded ones included; the leaderboard picks the newest row of each cell.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from bench.core.atomic import atomic_write_text, atomic_write_with
from bench.core.errors import BenchError, UsageError
from bench.scoring.results import load_all

FORMATS = ("csv", "parquet", "json")

EXAMPLES = """\
examples:
  python -m bench results --format csv > results.csv
  python -m bench results --suite toy --out toy.parquet          # the format follows the suffix
  python -m bench results --format json --results runs/results

in Python, without a file:
  from bench.scoring.results import load_all
  frame = load_all("runs/results")                               # the same table as a DataFrame
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.strip()
    parser.epilog = EXAMPLES
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="csv (default), parquet (needs pyarrow and --out: it is binary) or json (an array "
                             "of objects, one per row, floats exact); default: from the --out suffix, else csv")
    parser.add_argument("--suite", default=None, help="only this suite's rows (default: every suite)")
    parser.add_argument("--results", type=Path, default=Path("runs/results"),
                        help="folder of <run_id>.jsonl result files (default: runs/results)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="write the table to FILE (atomically) instead of stdout")


def command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    fmt = args.format or _format_of(args.out)
    if fmt == "parquet" and args.out is None:
        raise UsageError("parquet is binary and is not written to stdout; pass --out FILE.parquet")
    frame = _rows(Path(args.results), args.suite)
    if fmt == "parquet":
        if importlib.util.find_spec("pyarrow") is None:
            raise BenchError("parquet needs pyarrow, which is not installed: `pip install pyarrow` "
                             "(or use --format csv or json)")
        atomic_write_with(args.out, lambda tmp: frame.to_parquet(tmp, index=False, engine="pyarrow"))
    else:
        text = frame.to_csv(index=False) if fmt == "csv" else to_json_text(frame)
        if args.out is None:
            out.write(text)
            return 0
        atomic_write_text(args.out, text)
    out.write(f"{args.out}\n")
    return 0


def _format_of(path: Path | None) -> str:
    suffix = path.suffix.lower().lstrip(".") if path is not None else ""
    return suffix if suffix in FORMATS else "csv"


def _rows(results_dir: Path, suite: str | None) -> pd.DataFrame:
    frame = load_all(results_dir)
    if frame.empty:
        where = "no results folder" if not results_dir.is_dir() else "no result rows in"
        raise UsageError(f"{where} {results_dir}; run `python -m bench run` first (or pass --results DIR)")
    if suite is None:
        return frame
    suites = sorted(set(frame["suite"]))
    if suite not in suites:
        raise UsageError(f"no rows for suite {suite!r} in {results_dir}; suites there: {', '.join(suites)}")
    return frame[frame["suite"] == suite].reset_index(drop=True)


def to_json_text(frame: pd.DataFrame) -> str:
    """A JSON array of row objects, one per line; missing numbers are null. Written with :mod:`json`
    (``DataFrame.to_json`` rounds floats to 15 significant digits)."""
    records = [{key: _plain(value) for key, value in record.items()} for record in frame.to_dict(orient="records")]
    lines = [json.dumps(record, ensure_ascii=False, allow_nan=False) for record in records]
    return "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value  # numpy scalars -> int / float
