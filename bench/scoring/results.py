"""Results: every number the harness measures is one row in an append-only JSON-lines file per run.

    runs/results/<run_id>.jsonl      one JSON object per line, the fields of :class:`Row`

:func:`load_all` reads every run of a folder into one pandas DataFrame (one column per
:class:`Row` field; ``versions`` and ``protocol`` stay JSON text), which is what the leaderboard,
the report and ``bench check`` consume. Lines are written with :mod:`json` rather than
``DataFrame.to_json`` because the latter rounds floats to 15 significant digits.
One process writes a given run's file (metrics are scored in one process).

A run's file is only ever extended, and every extension rewrites the whole file to a temporary
file beside it and renames it into place (:mod:`bench.core.atomic`), so a reader, or a run killed at
any moment, sees either the previous file or the new one, never half a row.

Reuse: a row's ``fingerprint`` hashes everything that changes its value (samples fingerprint,
metric protocol, metric model identity). Before computing a metric the caller asks
``store.find(fingerprint, metric)``; on a hit it skips the computation and may record the reused row
in the current run with ``store.reuse(row)`` so that the run's file is self-contained.

The metric vocabulary (names, display labels, which direction is better) lives here too, so that
the leaderboard, the report and ``bench check`` agree on it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from bench.core.atomic import atomic_write_text, is_temp_file
from bench.core.distributed import is_main_process
from bench.core.errors import BenchError

log = logging.getLogger(__name__)

RESULTS_SUFFIX = ".jsonl"


# --------------------------------------------------------------------------------------------
# Metric vocabulary


@dataclass(frozen=True)
class MetricSpec:
    """How a metric is named, displayed and compared."""

    name: str
    label: str               # column header in leaderboards and plots
    higher_is_better: bool
    scale: float = 1.0       # display multiplier (CLIP is shown x100, as papers print it)
    decimals: int = 2        # display precision, after scaling

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    def display(self, value: float) -> str:
        return f"{value * self.scale:.{self.decimals}f}"

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b


METRICS: Mapping[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("fid", "FID", higher_is_better=False, decimals=2),
        MetricSpec("clip", "CLIP×100", higher_is_better=True, scale=100.0, decimals=2),
        MetricSpec("precision", "Precision", higher_is_better=True, decimals=3),
        MetricSpec("recall", "Recall", higher_is_better=True, decimals=3),
        MetricSpec("density", "Density", higher_is_better=True, decimals=3),
        MetricSpec("coverage", "Coverage", higher_is_better=True, decimals=3),
        MetricSpec("latency_ms", "Latency ms", higher_is_better=False, decimals=1),
        MetricSpec("latency_p90_ms", "Latency p90 ms", higher_is_better=False, decimals=1),
        MetricSpec("denoiser_ms", "Denoiser ms", higher_is_better=False, decimals=1),
        MetricSpec("throughput_ips", "Throughput img/s", higher_is_better=True, decimals=2),
        MetricSpec("peak_mem_mb", "Peak mem MB", higher_is_better=False, decimals=0),
    )
}


def metric_spec(name: str) -> MetricSpec:
    """The spec of a known metric; an unknown name gets a neutral spec (higher is better, 4 decimals)."""
    spec = METRICS.get(name)
    if spec is None:
        return MetricSpec(name, name, higher_is_better=True, decimals=4)
    return spec


def is_skipped_note(note: Any) -> bool:
    return isinstance(note, str) and note.strip().lower().startswith("skipped")


# --------------------------------------------------------------------------------------------
# Rows


def utc_now_iso() -> str:
    """Current UTC time, ISO-8601 with microseconds and a ``Z`` suffix (sorts as text)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_id() -> str:
    """``20250101T120000123456Z-a1b2c3``: UTC time to the microsecond plus a random suffix.

    Lexicographic order is time order; the suffix keeps two runs started in the same microsecond
    (e.g. on two machines writing to a shared folder) apart.
    """
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def _as_json_text(value: Any, field_name: str) -> str:
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"Row.{field_name} must be a dict or a JSON object string, got {value!r}") from exc
        return json.dumps(parsed, sort_keys=True)
    if value is None:
        return "{}"
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True, default=str)
    raise ValueError(f"Row.{field_name} must be a dict or a JSON object string, got {type(value).__name__}")


@dataclass(frozen=True)
class Row:
    """One measured number. ``versions`` and ``protocol`` may be given as dicts; they are kept as
    canonical JSON text (sorted keys) so that rows are hashable and compare by value; use
    :meth:`versions_dict` / :meth:`protocol_dict` to read them back."""

    suite: str
    teacher: str
    method: str
    steps: int
    nfe: int
    guidance: float
    seed: int
    num_images: int
    metric: str
    value: float
    fingerprint: str
    run_id: str
    time: str
    device: str
    versions: Any = "{}"
    protocol: Any = "{}"
    note: str = ""
    student: str = ""        # "released" or "trained" (on this machine); "" for teacher solvers and images

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("suite", "teacher", "method", "metric", "fingerprint", "run_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"Row.{name} must be a non-empty string, got {value!r}")
        for name in ("steps", "nfe", "seed", "num_images"):
            set_(self, name, int(getattr(self, name)))
        set_(self, "guidance", float(self.guidance))
        value = self.value
        set_(self, "value", float("nan") if value is None else float(value))
        set_(self, "versions", _as_json_text(self.versions, "versions"))
        set_(self, "protocol", _as_json_text(self.protocol, "protocol"))
        set_(self, "note", "" if self.note is None or (isinstance(self.note, float) and math.isnan(self.note)) else str(self.note))
        set_(self, "time", str(self.time))
        set_(self, "device", str(self.device))
        set_(self, "student", "" if self.student is None or (isinstance(self.student, float) and math.isnan(self.student))
             else str(self.student))

    @property
    def skipped(self) -> bool:
        return is_skipped_note(self.note)

    def versions_dict(self) -> dict:
        return json.loads(self.versions)

    def protocol_dict(self) -> dict:
        return json.loads(self.protocol)

    def to_record(self) -> dict:
        record = dataclasses.asdict(self)
        if math.isnan(record["value"]):
            record["value"] = None
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Row":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in record.items() if k in names}
        for key in ("versions", "protocol"):
            if isinstance(kwargs.get(key), float):  # NaN from a DataFrame column
                kwargs[key] = "{}"
        return cls(**kwargs)


ROW_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Row))
_INT_COLUMNS = ("steps", "nfe", "seed", "num_images")


def rows_to_frame(rows: Iterable[Row]) -> pd.DataFrame:
    """A DataFrame with one column per :class:`Row` field (value NaN for rows without a number)."""
    records = [r.to_record() for r in rows]
    return normalize_frame(pd.DataFrame.from_records(records, columns=list(ROW_COLUMNS)))


def normalize_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce a results DataFrame to the canonical columns and dtypes (missing columns are added)."""
    frame = frame.copy()
    for column in ROW_COLUMNS:
        if column not in frame.columns:
            frame[column] = "" if column not in ("value", "guidance") + _INT_COLUMNS else pd.NA
    for column in _INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in ("value", "guidance"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    for column in ROW_COLUMNS:
        if column in _INT_COLUMNS or column in ("value", "guidance"):
            continue
        frame[column] = frame[column].map(_text_cell).astype(object)
    return frame[list(ROW_COLUMNS) + [c for c in frame.columns if c not in ROW_COLUMNS]]


def _text_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True)
    if value is pd.NA:
        return ""
    return str(value)


# --------------------------------------------------------------------------------------------
# Store


def _read_results_file(path: Path) -> pd.DataFrame:
    text = path.read_text(encoding="utf-8")
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchError(f"{path}:{number}: not a JSON row ({exc.msg}); move the file aside to continue") from exc
        if not isinstance(record, dict):
            raise BenchError(f"{path}:{number}: expected a JSON object per line")
        records.append(record)
    if not records:
        return normalize_frame(pd.DataFrame(columns=list(ROW_COLUMNS)))
    return normalize_frame(pd.DataFrame.from_records(records))


def results_files(results_dir: str | Path) -> list[Path]:
    """The run files in ``results_dir`` (temporary files of in-flight writes excluded), sorted."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return []
    return sorted(p for p in results_dir.glob(f"*{RESULTS_SUFFIX}") if p.is_file() and not is_temp_file(p))


def load_all(results_dir: str | Path) -> pd.DataFrame:
    """Every row of every run in ``results_dir`` as one DataFrame (empty, with the columns, if none)."""
    frames = [_read_results_file(p) for p in results_files(results_dir)]
    frames = [f for f in frames if len(f)]
    if not frames:
        return normalize_frame(pd.DataFrame(columns=list(ROW_COLUMNS)))
    return pd.concat(frames, ignore_index=True)


def order_by_recency(frame: pd.DataFrame) -> pd.DataFrame:
    """Oldest first: by ``time``, then ``run_id`` (both sort as text), file order breaking ties."""
    frame = frame.reset_index(drop=True)
    frame["_order"] = range(len(frame))
    frame = frame.sort_values(["time", "run_id", "_order"], kind="mergesort")
    return frame.drop(columns="_order").reset_index(drop=True)


class ResultsStore:
    """Append-only results of one run, plus look-ups across every run in the same folder."""

    def __init__(self, results_dir: str | Path, run_id: str | None = None) -> None:
        self.results_dir = Path(results_dir)
        self.run_id = run_id or new_run_id()
        if "/" in self.run_id or self.run_id.startswith("."):
            raise ValueError(f"run_id must be a plain file name, got {self.run_id!r}")
        self.path = self.results_dir / f"{self.run_id}{RESULTS_SUFFIX}"
        self._cache_key: tuple | None = None
        self._cache: dict[tuple[str, str], Row] = {}

    # writing ------------------------------------------------------------------------------

    def append(self, rows: Iterable[Row]) -> list[Row]:
        """Add rows to this run's file (one atomic rewrite for the whole batch). Under `accelerate
        launch` every process computes the same numbers and only the main process writes them."""
        rows = list(rows)
        if not rows or not is_main_process():
            return rows
        for row in rows:
            if not isinstance(row, Row):
                raise TypeError(f"ResultsStore.append expects Row objects, got {type(row).__name__}")
        existing = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        if existing and not existing.endswith("\n"):
            existing += "\n"
        new_lines = "".join(_row_line(row) for row in rows)
        atomic_write_text(self.path, existing + new_lines)
        log.debug("appended %d row(s) to %s", len(rows), self.path)
        return rows

    def reuse(self, row: Row, **labels: Any) -> Row:
        """Record a row found by :meth:`find` (computed in an earlier run) in this run, stamped now.

        ``labels`` (``method``, ``steps``, ``teacher``, ...) are this run's names for the cell: the
        same fingerprint may have been scored under another label (``bench eval --method X``)."""
        copy = dataclasses.replace(row, run_id=self.run_id, time=utc_now_iso(), **labels)
        self.append([copy])
        return copy

    # reading ------------------------------------------------------------------------------

    def load(self) -> pd.DataFrame:
        """This run's rows."""
        if not self.path.exists():
            return normalize_frame(pd.DataFrame(columns=list(ROW_COLUMNS)))
        return _read_results_file(self.path)

    def load_all(self) -> pd.DataFrame:
        return load_all(self.results_dir)

    def find(self, fingerprint: str, metric: str) -> Row | None:
        """The most recent row (any run in the folder) with this fingerprint and metric, or None."""
        self._refresh()
        return self._cache.get((fingerprint, metric))

    def _refresh(self) -> None:
        files = results_files(self.results_dir)
        key = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        if key == self._cache_key:
            return
        frame = load_all(self.results_dir)
        cache: dict[tuple[str, str], Row] = {}
        if len(frame):
            for record in order_by_recency(frame).to_dict(orient="records"):
                row = Row.from_record(_clean_record(record))
                cache[(row.fingerprint, row.metric)] = row  # later rows overwrite earlier ones
        self._cache, self._cache_key = cache, key


def _clean_record(record: dict) -> dict:
    out = {}
    for key, value in record.items():
        if value is pd.NA:
            value = None
        out[key] = value
    return out


def _row_line(row: Row) -> str:
    # json (not DataFrame.to_json, which caps floats at 15 significant digits) so that every value
    # round-trips exactly; NaN is written as null.
    return json.dumps(row.to_record(), sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def row_from_series(series: Mapping[str, Any]) -> Row:
    """Build a :class:`Row` from a DataFrame row (``frame.iloc[i]`` or a record dict)."""
    return Row.from_record(_clean_record(dict(series)))
