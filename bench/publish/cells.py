"""Leaderboard cells: one winning row per (teacher, method, steps, guidance, metric) of the results,
and reading a published leaderboard JSON back; see ``bench.publish.leaderboard``."""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from bench.core.errors import UsageError
from bench.scoring.results import (
    is_skipped_note,
    normalize_frame,
    order_by_recency,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAIN_METRICS = ("fid", "clip", "coverage", "latency_ms")
PRDC_METRICS = ("precision", "recall", "density", "coverage")
SPEED_METRICS = ("latency_ms", "latency_p90_ms", "denoiser_ms", "throughput_ips", "peak_mem_mb")
PROTOCOL_KEY_ORDER = ("N", "resolution", "crop", "filter", "feature_space")
SKIPPED_MARK = "—"


# --------------------------------------------------------------------------------------------
# Reading a leaderboard JSON


Key = tuple[str, str, int, float]  # teacher, method, steps, guidance


def _row_key(row: Mapping[str, Any], where: str) -> Key:
    try:
        return (str(row["teacher"]), str(row["method"]), int(row["steps"]), round(float(row["guidance"]), 6))
    except KeyError as exc:
        raise UsageError(f"{where}: row has no {exc.args[0]!r} field") from None
    except (TypeError, ValueError):
        raise UsageError(f"{where}: row has a non-numeric steps or guidance") from None


def index_rows(document: Mapping[str, Any], where: str = "leaderboard") -> dict[Key, Mapping[str, Any]]:
    """``{(teacher, method, steps, guidance): row}``, validating the leaderboard JSON shape."""
    if not isinstance(document, Mapping) or not isinstance(document.get("rows"), list):
        raise UsageError(f"{where}: not a leaderboard JSON (expected an object with a 'rows' list)")
    rows: dict[Key, Mapping[str, Any]] = {}
    for number, row in enumerate(document["rows"]):
        label = f"{where}: rows[{number}]"
        if not isinstance(row, Mapping):
            raise UsageError(f"{label}: expected an object")
        key = _row_key(row, label)
        if key in rows:
            raise UsageError(f"{label}: duplicate row for teacher={key[0]} method={key[1]} steps={key[2]} guidance={key[3]:g}")
        metrics = row.get("metrics", {})
        if not isinstance(metrics, Mapping):
            raise UsageError(f"{label}: 'metrics' must be an object")
        for name, value in metrics.items():
            if value is not None and not isinstance(value, (int, float)):
                raise UsageError(f"{label}: metric {name!r} is not a number")
        rows[key] = row
    return rows


def load_leaderboard_json(path: str | Path, what: str = "baseline") -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} file {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    index_rows(document, f"{what} {path}")
    return document


# --------------------------------------------------------------------------------------------
# Selecting one row per cell


@dataclass(frozen=True)
class Cell:
    """The winning row of one (configuration, metric)."""

    metric: str
    value: float | None          # None when skipped or not a number
    note: str
    fingerprint: str
    run_id: str
    time: str
    device: str
    nfe: int | None
    seed: int | None
    protocol: str                # JSON text
    superseded: tuple[tuple[str, str], ...] = ()  # (fingerprint, latest run_id), newest first
    student: str = ""            # "released" / "trained" (on the machine that ran it) / "" (no student)

    @property
    def skipped(self) -> bool:
        return is_skipped_note(self.note)


@dataclass
class Entry:
    """One leaderboard row: a (teacher, method, steps, guidance) configuration and its cells."""

    suite: str
    teacher: str
    method: str
    steps: int
    guidance: float
    cells: dict[str, Cell] = field(default_factory=dict)

    def latest_cell(self) -> Cell | None:
        return max(self.cells.values(), key=lambda c: (c.time, c.run_id, c.metric), default=None)

    @property
    def nfe(self) -> int | None:
        latest = self.latest_cell()
        return None if latest is None else latest.nfe

    @property
    def seed(self) -> int | None:
        latest = self.latest_cell()
        return None if latest is None else latest.seed

    @property
    def student(self) -> str:
        """Where the newest cell's student came from ("released", "trained" or "")."""
        latest = self.latest_cell()
        return "" if latest is None else latest.student

    def value(self, metric: str) -> float | None:
        """The cell's number, or None when absent or skipped."""
        cell = self.cells.get(metric)
        return None if cell is None or cell.skipped else cell.value

    @property
    def sort_key(self) -> tuple:
        return (self.steps, self.method, self.guidance)

    def combined_fingerprint(self) -> str:
        """A short hash of the per-metric fingerprints (changes when any cell's fingerprint changes)."""
        text = json.dumps({m: c.fingerprint for m, c in self.cells.items()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def select_cells(results: pd.DataFrame) -> dict[tuple[str, str], list[Entry]]:
    """Group result rows into leaderboard entries, one winning fingerprint per cell.

    Returns ``{(suite, teacher): [Entry, ...]}`` with entries sorted by steps, method, guidance.
    """
    frame = normalize_frame(results)
    frame = frame[frame["metric"].astype(str) != ""]
    incomplete = frame["steps"].isna() | frame["guidance"].isna() | (frame["suite"] == "") | (frame["method"] == "")
    if incomplete.any():
        log.warning("ignoring %d result row(s) without suite, method, steps or guidance", int(incomplete.sum()))
        frame = frame[~incomplete]
    if frame.empty:
        return {}
    frame = order_by_recency(frame)
    entries: dict[tuple, Entry] = {}
    keys = ["suite", "teacher", "method", "steps", "guidance", "metric"]
    for key, group in frame.groupby(keys, sort=True, dropna=False):
        suite, teacher, method, steps, guidance, metric = key
        winner = group.iloc[-1]
        older: dict[str, str] = {}
        for _, row in group.iloc[:-1][::-1].iterrows():  # newest first
            if row["fingerprint"] != winner["fingerprint"] and row["fingerprint"] not in older:
                older[row["fingerprint"]] = row["run_id"]
        value = winner["value"]
        cell = Cell(
            metric=str(metric),
            value=None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value),
            note=str(winner["note"] or ""),
            fingerprint=str(winner["fingerprint"]),
            run_id=str(winner["run_id"]),
            time=str(winner["time"]),
            device=str(winner["device"] or ""),
            nfe=None if pd.isna(winner["nfe"]) else int(winner["nfe"]),
            seed=None if pd.isna(winner["seed"]) else int(winner["seed"]),
            protocol=str(winner["protocol"] or "{}"),
            superseded=tuple(older.items()),
            student=str(winner["student"] or ""),
        )
        entry_key = (suite, teacher, method, int(steps), float(guidance))
        entry = entries.get(entry_key)
        if entry is None:
            entry = entries[entry_key] = Entry(str(suite), str(teacher), str(method), int(steps), float(guidance))
        entry.cells[cell.metric] = cell
    grouped: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries.values():
        grouped.setdefault((entry.suite, entry.teacher), []).append(entry)
    for section in grouped.values():
        section.sort(key=lambda e: e.sort_key)
    return dict(sorted(grouped.items()))


# --------------------------------------------------------------------------------------------
# Formatting helpers


def format_guidance(guidance: float | None) -> str:
    if guidance is None or (isinstance(guidance, float) and math.isnan(guidance)):
        return "?"
    return f"{guidance:g}"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _protocol_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), sort_keys=True)
    return str(value)


def merge_protocols(protocol_texts: Iterable[str]) -> dict[str, Any]:
    """Union of flattened protocol dicts: ``key -> value`` or a sorted list when rows disagree."""
    values: dict[str, set[str]] = {}
    raw: dict[tuple[str, str], Any] = {}
    for text in protocol_texts:
        try:
            protocol = json.loads(text) if text else {}
        except json.JSONDecodeError:
            protocol = {"protocol": text}
        if not isinstance(protocol, Mapping):
            protocol = {"protocol": protocol}
        for key, value in _flatten(protocol).items():
            shown = _protocol_text(value)
            values.setdefault(key, set()).add(shown)
            raw[(key, shown)] = value
    merged: dict[str, Any] = {}
    for key in sorted(values):
        shown = sorted(values[key])
        merged[key] = raw[(key, shown[0])] if len(shown) == 1 else shown
    return merged


