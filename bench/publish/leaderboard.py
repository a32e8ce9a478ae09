"""Leaderboards: the result rows of every run, turned into one markdown page and one JSON file per suite.

    python -m bench leaderboard [--results runs/results] [--base leaderboards/toy.json] [--out leaderboards] [--suite S]

writes ``leaderboards/<suite>.md`` (for people) and ``leaderboards/<suite>.json`` (for ``bench check``).
With ``--base leaderboards/<suite>.json`` the rows of a published leaderboard come first and the
results folder's rows are added to them, so a new method's row joins the committed table without
the results folder the table was built from (``rows_from_leaderboard``).

How a cell is chosen
    A cell is one (suite, teacher, method, steps, guidance, metric). Rows with different fingerprints
    never share a cell: the most recent row wins (ordered by row time, then run id) and the other
    fingerprints measured for the same cell are listed in a note under the table, with their runs.
    Seeds are not averaged: a different seed is a different fingerprint, so the latest one is shown.

What the page shows, per (suite, teacher)
    - the protocol line (N, resolution, crop, resize filter, metric model identities: whatever the rows
      recorded in ``protocol``), the runs the numbers come from and the device latency was measured on;
    - the main table (FID, CLIP x100, Coverage, latency), then precision/recall/density/coverage, then
      the remaining speed metrics when any were measured;
    - rows sorted by step count, then method; bold marks the best displayed value among rows with
      the same step count (all tied values are bold; nothing is bold when fewer than two rows of that
      step count have a value);
    - a skipped measurement (note starting with "skipped") is shown as "—" with its note below.

Below the measured tables, a separate "Reported in the papers" table lists the numbers the seed
papers printed for the same suite (``bench/data/reported.json``), labelled with paper and table.
They are never merged with measured rows: each paper used its own evaluation code.

The JSON file is deterministic (sorted keys, no timestamp unless ``generated_at`` is given) so it
can be committed as a baseline and compared with ``python -m bench check``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from bench.assets.reported import load_reported
from bench.core.atomic import atomic_write_json, atomic_write_text
from bench.core.errors import BenchError, UsageError
from bench.scoring.results import (
    is_skipped_note,
    metric_spec,
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


def _ordered_keys(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    first = [k for k in PROTOCOL_KEY_ORDER if k in keys]
    return first + sorted(k for k in keys if k not in PROTOCOL_KEY_ORDER)


def protocol_line(merged: Mapping[str, Any]) -> str:
    if not merged:
        return "Protocol: not recorded by these runs."
    parts = []
    for key in _ordered_keys(merged):
        value = merged[key]
        if isinstance(value, list) and all(isinstance(v, str) for v in value) and len(value) > 1:
            parts.append(f"{key}: {' | '.join(value)} (varies by row)")
        else:
            parts.append(f"{key}: {_protocol_text(value)}")
    return "Protocol: " + " · ".join(parts)


class _Notes:
    """Numbered notes of one section; identical texts share a number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def render(self) -> list[str]:
        if not self.texts:
            return []
        lines = ["Notes:", ""]
        lines += [f"{i}. {text}" for i, text in enumerate(self.texts, start=1)]
        return lines + [""]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def best_in_groups(entries: Sequence[Entry], metric: str) -> set[int]:
    """Indices of entries holding the best displayed value of ``metric`` within their step count.

    Values are compared as displayed (rounded), so values that print the same are tied and all bold.
    A step group needs at least two values for anything to be bold.
    """
    spec = metric_spec(metric)
    groups: dict[int, list[tuple[int, float]]] = {}
    for index, entry in enumerate(entries):
        cell = entry.cells.get(metric)
        if cell is None or cell.value is None or cell.skipped:
            continue
        groups.setdefault(entry.steps, []).append((index, float(spec.display(cell.value))))
    best: set[int] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        shown = [v for _, v in members]
        target = max(shown) if spec.higher_is_better else min(shown)
        best.update(i for i, v in members if v == target)
    return best


#: how the Student column prints a row's student source
STUDENT_LABELS = {"released": "released", "trained": "trained here"}


def _render_table(entries: Sequence[Entry], metrics: Sequence[str], notes: _Notes, student: bool = False) -> list[str]:
    """One markdown table; ``student`` adds the column saying where each row's student came from."""
    header = ["Method", "Steps", "NFE", "CFG"] + (["Student"] if student else [])
    header += [f"{metric_spec(m).label} {metric_spec(m).arrow}" for m in metrics]
    align = [":---" if name in ("Method", "Student") else "---:" for name in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    bold = {m: best_in_groups(entries, m) for m in metrics}
    for index, entry in enumerate(entries):
        method = _md_escape(entry.method)
        superseded = [
            f"{metric_spec(m).label} `{fp}` (run {run})"
            for m, cell in sorted(entry.cells.items())
            for fp, run in cell.superseded
        ]
        if superseded:
            shown = ", ".join(
                f"{metric_spec(m).label} `{c.fingerprint}`" for m, c in sorted(entry.cells.items()) if c.superseded
            )
            method += " " + notes.mark(
                f"{entry.method}, {entry.steps} step(s), CFG {format_guidance(entry.guidance)}: shown "
                f"{shown} (most recent run); older fingerprints not shown: {', '.join(superseded)}."
            )
        row = [method, str(entry.steps), "" if entry.nfe is None else str(entry.nfe), format_guidance(entry.guidance)]
        if student:
            row.append(STUDENT_LABELS.get(entry.student, entry.student))
        for metric in metrics:
            cell = entry.cells.get(metric)
            if cell is None:
                row.append("")
                continue
            if cell.skipped:
                row.append(f"{SKIPPED_MARK} {notes.mark(cell.note)}")
                continue
            if cell.value is None:
                text = ""
            else:
                text = metric_spec(metric).display(cell.value)
                if index in bold[metric]:
                    text = f"**{text}**"
            if cell.note and not _is_common(cell.note, entries):
                text = f"{text} {notes.mark(cell.note)}".strip()
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def _section_notes(entries: Sequence[Entry]) -> list[str]:
    """Notes carried by every measured (not skipped) cell of a section (e.g. the smoke-suite disclaimer)."""
    cells = [c for e in entries for c in e.cells.values() if not c.skipped]
    if not cells:
        return []
    counts = Counter(c.note for c in cells if c.note)
    return sorted(note for note, n in counts.items() if n == len(cells))


def _is_common(note: str, entries: Sequence[Entry]) -> bool:
    return note in _section_notes(entries)


def _present(entries: Sequence[Entry], metrics: Iterable[str]) -> bool:
    return any(m in e.cells for e in entries for m in metrics)


def render_section_markdown(suite: str, teacher: str, entries: Sequence[Entry], level: int = 2) -> list[str]:
    """Markdown for one (suite, teacher): protocol line, tables and their notes."""
    hashes = "#" * level
    notes = _Notes()
    cells = [c for e in entries for c in e.cells.values()]
    lines = [f"{hashes} Teacher: {teacher}", ""]
    lines += [protocol_line(merge_protocols(c.protocol for c in cells)), ""]
    runs = sorted({c.run_id for c in cells})
    lines += [f"Runs: {', '.join(f'`{r}`' for r in runs)}"]
    devices = sorted({c.device for c in cells if c.metric in SPEED_METRICS and c.device and not c.skipped})
    if devices:
        lines += [f"Speed measured on: {', '.join(devices)}"]
    lines.append("")
    for note in _section_notes(entries):
        lines += [f"> {note}", ""]
    lines += [f"{hashes}# Quality and speed", ""]
    lines += _render_table(entries, MAIN_METRICS, notes, student=any(e.student for e in entries))
    if _present(entries, ("precision", "recall", "density")):
        lines += [f"{hashes}# Fidelity and diversity (Naeem et al. 2020)", ""]
        lines += _render_table(entries, PRDC_METRICS, notes)
    if _present(entries, SPEED_METRICS[1:]):
        lines += [f"{hashes}# Speed", ""]
        lines += _render_table(entries, SPEED_METRICS, notes)
    known = set(MAIN_METRICS) | set(PRDC_METRICS) | set(SPEED_METRICS)
    others = sorted({m for e in entries for m in e.cells if m not in known})
    if others:
        lines += [f"{hashes}# Other metrics", ""]
        lines += _render_table(entries, others, notes)
    return lines + notes.render()


# --------------------------------------------------------------------------------------------
# Reported numbers (bench/data/reported.json)


def _printed(entry: Mapping[str, Any], scale: float = 1.0) -> str:
    """A paper's number as printed (trailing zeros kept); x100 moves the point (0.310 -> 31.0)."""
    text = str(entry.get("value_as_printed") or repr(float(entry["value"])))
    if scale == 1.0:
        return text
    decimals = len(text.split(".")[1]) if "." in text else 0
    shift = round(math.log10(scale))
    return f"{float(text) * scale:.{max(decimals - shift, 0)}f}"


def _source_label(reported: Mapping[str, Any], paper: str, table: str) -> str:
    short = reported.get("papers", {}).get(paper, {}).get("short") or paper
    return f"{short} T{table}"


def render_reported_markdown(reported: Mapping[str, Any], suite: str, level: int = 2) -> list[str]:
    """The papers' numbers for ``suite``: one row per (paper, table, method, steps, guidance)."""
    entries = [e for e in reported.get("entries", []) if e.get("suite") == suite]
    hashes = "#" * level
    lines = [f"{hashes} Reported in the papers (not measured here)", ""]
    if not entries:
        return lines + ["No numbers from the seed papers for this suite.", ""]
    lines += [
        "Numbers as printed in the papers, each under its own evaluation protocol (FID code, reference "
        "images, resize filter, CLIP model, guidance convention, GPU). They are not comparable cell by cell "
        "with the measured tables above, nor always with each other. CLIP is shown ×100; latency is seconds "
        "per image as printed; ? = not stated in the paper.",
        "",
    ]
    rows: dict[tuple, dict[str, Any]] = {}
    for e in entries:
        key = (e["paper"], str(e["table"]), e.get("teacher_as_written") or e.get("teacher"), e["method"],
               e.get("steps"), e.get("guidance"))
        row = rows.setdefault(key, {"metrics": {}, "latency": "", "notes": []})
        row["metrics"][e["metric"]] = e
        if e.get("latency_s") is not None:
            row["latency"] = str(e.get("latency_as_printed") or e["latency_s"])
        if e.get("note") and e["note"] not in row["notes"]:
            row["notes"].append(e["note"])
    metrics = [m for m in ("fid", "clip", "coverage") if any(m in r["metrics"] for r in rows.values())]
    header = ["Source", "Teacher", "Method", "Steps", "CFG"]
    header += [f"{metric_spec(m).label} {metric_spec(m).arrow}" for m in metrics] + ["Latency s", "Notes"]
    align = [":---"] * 3 + ["---:"] * (len(header) - 4) + [":---"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    notes = _Notes()
    for (paper, table, teacher, method, steps, guidance), row in rows.items():
        cells = [_source_label(reported, paper, table), _md_escape(str(teacher)), _md_escape(str(method)),
                 "?" if steps is None else str(steps), format_guidance(guidance)]
        for m in metrics:
            entry = row["metrics"].get(m)
            cells.append("" if entry is None else _printed(entry, metric_spec(m).scale))
        cells.append(row["latency"])
        cells.append(" ".join(notes.mark(n) for n in row["notes"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Sources:", ""]
    tables = {(t["paper"], str(t["table"])): t for t in reported.get("tables", [])}
    for paper, table in dict.fromkeys((k[0], k[1]) for k in rows):
        info = tables.get((paper, table), {})
        title = reported.get("papers", {}).get(paper, {}).get("title", "")
        text = f"- {_source_label(reported, paper, table)}: arXiv:{paper}"
        text += f" ({title})" if title else ""
        text += f", Table {table}"
        if info.get("caption"):
            text += f': "{info["caption"]}"'
        if info.get("latency_gpu"):
            text += f" Latency GPU: {info['latency_gpu']}."
        if info.get("note"):
            text += f" {info['note']}"
        lines.append(text)
    lines.append("")
    return lines + notes.render()


# --------------------------------------------------------------------------------------------
# Whole pages


def _legend() -> list[str]:
    return [
        "↓ lower is better, ↑ higher is better. **Bold**: best measured value among rows with the same "
        "step count (ties all bold; needs at least two rows with a value). CLIP×100: mean CLIP cosine "
        "similarity ×100, as papers print it (0.312 → 31.20). NFE: denoiser evaluations per image. "
        "CFG: guidance scale recorded by the run. Latency: median ms per image, batch 1, end to end. "
        f"{SKIPPED_MARK}: skipped (reason in the notes); empty: not measured.",
        "",
        "Each cell comes from exactly one fingerprint (teacher, method config, suite protocol, seed, metric "
        "models, library versions); when a configuration was measured under several fingerprints the most "
        "recent run is shown and the others are listed in the notes.",
        "",
    ]


def render_markdown(suite: str, sections: Mapping[str, Sequence[Entry]], reported: Mapping[str, Any] | None,
                    generated_at: str | None = None) -> str:
    lines = [f"# Leaderboard: {suite}", ""]
    if generated_at:
        lines += [f"Generated at {generated_at}.", ""]
    lines += _legend()
    for teacher, entries in sections.items():
        lines += render_section_markdown(suite, teacher, entries)
    if reported is not None:
        lines += render_reported_markdown(reported, suite)
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def suite_json(suite: str, sections: Mapping[str, Sequence[Entry]], generated_at: str | None = None) -> dict:
    """The machine-readable leaderboard of one suite (what ``bench check`` compares)."""
    rows = []
    all_cells = [c for entries in sections.values() for e in entries for c in e.cells.values()]
    suite_protocol = merge_protocols(c.protocol for c in all_cells)
    for teacher, entries in sections.items():
        for entry in entries:
            cells = entry.cells
            row = {
                "teacher": teacher,
                "method": entry.method,
                "steps": entry.steps,
                "nfe": entry.nfe,
                "guidance": entry.guidance,
                "fingerprint": entry.combined_fingerprint(),
                "fingerprints": {m: c.fingerprint for m, c in cells.items()},
                "metrics": {m: c.value for m, c in cells.items() if c.value is not None and not c.skipped},
                "skipped": {m: c.note for m, c in cells.items() if c.skipped},
                "notes": {m: c.note for m, c in cells.items() if c.note and not c.skipped},
                "runs": {m: c.run_id for m, c in cells.items()},
                "superseded": {m: [fp for fp, _ in c.superseded] for m, c in cells.items() if c.superseded},
                "device": {m: c.device for m, c in cells.items() if m in SPEED_METRICS and c.device},
                # What `--base` needs to rebuild the rows (see rows_from_leaderboard):
                "seed": entry.seed,
                "times": {m: c.time for m, c in cells.items()},
                "superseded_runs": {m: [run for _, run in c.superseded] for m, c in cells.items() if c.superseded},
                "protocols": {m: p for m, c in cells.items()
                              if (p := merge_protocols([c.protocol])) != suite_protocol},
            }
            students = {m: c.student for m, c in cells.items() if c.student}
            if students:     # where each cell's student came from (rows of teacher solvers have none)
                row["students"] = students
            rows.append(row)
    metrics_present = sorted({c.metric for c in all_cells})
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "suite": suite,
        "protocol": suite_protocol,
        "metrics": {m: {"label": metric_spec(m).label, "higher_is_better": metric_spec(m).higher_is_better}
                    for m in metrics_present},
        "rows": rows,
    }
    if generated_at:
        document["generated_at"] = generated_at
    return document


def _time_of_run(run_id: str) -> str:
    """The ISO time encoded in a run id (``20250101T120000123456Z-a1b2c3`` -> ``2025-01-01T12:00:00.123456Z``)."""
    stamp = run_id.split("-", 1)[0]
    if len(stamp) != 22 or not stamp.endswith("Z"):
        return ""
    return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}.{stamp[15:21]}Z"


def rows_from_leaderboard(document: Mapping[str, Any], where: str = "base leaderboard") -> pd.DataFrame:
    """The result rows a leaderboard JSON was built from, as far as it recorded them.

    ``bench leaderboard --base leaderboards/toy.json --results runs/results`` uses this to add new
    runs to a published leaderboard without the results folder it came from: every shown cell comes
    back as one row (value, note, fingerprint, run, time, device, protocol), every superseded
    fingerprint as a row without a value that is older than the cell it lost to. Rebuilding a
    leaderboard from its own JSON reproduces it byte for byte (tested). Library versions are not in the
    JSON and come back empty; files written before ``times`` was recorded take each cell's time
    from its run id (the time the run started).
    """
    index_rows(document, where)
    suite = document.get("suite")
    if not isinstance(suite, str) or not suite:
        raise UsageError(f"{where}: no 'suite' name; pass a leaderboard JSON written by `python -m bench leaderboard`")
    suite_protocol = document.get("protocol") or {}
    records: list[dict[str, Any]] = []
    for number, row in enumerate(document["rows"]):
        fingerprints = row.get("fingerprints") or {}
        runs = row.get("runs") or {}
        missing = sorted(set(fingerprints) ^ set(runs))
        if not fingerprints or missing:
            raise UsageError(f"{where}: rows[{number}] ({row.get('method')}, {row.get('steps')} steps) lacks "
                             "'fingerprints' or 'runs' for some metric; regenerate it from its results folder")
        common = dict(suite=suite, teacher=row["teacher"], method=row["method"], steps=row["steps"],
                      nfe=row.get("nfe"), guidance=row["guidance"], seed=row.get("seed"), num_images=None,
                      versions="{}")
        for metric, fingerprint in fingerprints.items():
            run_id = runs[metric]
            time = (row.get("times") or {}).get(metric) or _time_of_run(run_id)
            protocol = (row.get("protocols") or {}).get(metric, suite_protocol)
            skipped_note = (row.get("skipped") or {}).get(metric)
            note = skipped_note if skipped_note is not None else (row.get("notes") or {}).get(metric, "")
            value = None if skipped_note is not None else (row.get("metrics") or {}).get(metric)
            cell = dict(common, metric=metric, protocol=json.dumps(protocol, sort_keys=True),
                        device=(row.get("device") or {}).get(metric, ""),
                        student=(row.get("students") or {}).get(metric, ""))
            older = (row.get("superseded") or {}).get(metric, [])
            older_runs = (row.get("superseded_runs") or {}).get(metric, ["?"] * len(older))
            # Newest first in the JSON. Their times sort before any real time ("0000" < "2025"), in
            # the recorded order, so they stay older than the shown cell and than any new run.
            for rank, (old_fp, old_run) in enumerate(reversed(list(zip(older, older_runs)))):
                records.append(dict(cell, value=None, note="", fingerprint=old_fp, run_id=old_run,
                                    time=f"0000-superseded-{rank:04d}"))
            records.append(dict(cell, value=value, note=note, fingerprint=fingerprint, run_id=run_id, time=time))
    return normalize_frame(pd.DataFrame.from_records(records))


def build(results: pd.DataFrame, suites: Sequence[str] | None = None) -> dict[str, dict[str, list[Entry]]]:
    """``{suite: {teacher: [Entry]}}`` for the requested suites (all when None)."""
    out: dict[str, dict[str, list[Entry]]] = {}
    for (suite, teacher), entries in select_cells(results).items():
        if suites and suite not in suites:
            continue
        out.setdefault(suite, {})[teacher] = entries
    return out


def write_leaderboards(results: pd.DataFrame, out_dir: str | Path = "leaderboards", *,
                       suites: Sequence[str] | None = None, generated_at: str | None = None,
                       reported: Mapping[str, Any] | str | Path | None = None,
                       include_reported: bool = True) -> list[Path]:
    """Write ``<out_dir>/<suite>.md`` and ``<out_dir>/<suite>.json`` for each suite; return the paths.

    ``reported`` is the papers' numbers (a loaded dict or a path); by default the packaged
    ``bench/data/reported.json``. ``generated_at`` (text) is written only when given, so that the
    outputs are a pure function of the rows.
    """
    built = build(results, suites)
    if not built:
        wanted = f" for suite(s) {', '.join(suites)}" if suites else ""
        raise BenchError(f"no result rows{wanted}; run `python -m bench run` first or point --results at a results folder")
    reported_data: Mapping[str, Any] | None = None
    if include_reported:
        reported_data = reported if isinstance(reported, Mapping) else load_reported(reported)
    out_dir = Path(out_dir)
    written: list[Path] = []
    for suite, sections in built.items():
        md_path = out_dir / f"{suite}.md"
        json_path = out_dir / f"{suite}.json"
        atomic_write_text(md_path, render_markdown(suite, sections, reported_data, generated_at))
        atomic_write_json(json_path, suite_json(suite, sections, generated_at))
        written += [md_path, json_path]
        log.info("wrote %s and %s", md_path, json_path)
    return written
