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

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from bench.assets.reported import load_reported
from bench.core.atomic import atomic_write_json, atomic_write_text
from bench.core.errors import BenchError, UsageError
from bench.publish.cells import SCHEMA_VERSION, SPEED_METRICS, Entry, index_rows, merge_protocols, select_cells
from bench.publish.kinds import RowKinds
from bench.publish.markdown import render_ablations_markdown, render_markdown
from bench.scoring.results import (
    metric_spec,
    normalize_frame,
)

log = logging.getLogger(__name__)

ABLATIONS_SUFFIX = "-ablations"

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


def ablations_path(leaderboard_json: str | Path) -> Path:
    """``leaderboards/toy.json`` -> ``leaderboards/toy-ablations.json`` (the probes' rows, kept apart)."""
    path = Path(leaderboard_json)
    return path.with_name(f"{path.stem}{ABLATIONS_SUFFIX}{path.suffix}")


def split_canonical(sections: Mapping[str, Sequence[Entry]], kinds: RowKinds
                    ) -> tuple[dict[str, list[Entry]], dict[str, list[Entry]]]:
    """``(canonical, ablations)`` of one suite's sections, each ``{teacher: [Entry]}`` without empty teachers."""
    canonical: dict[str, list[Entry]] = {}
    ablations: dict[str, list[Entry]] = {}
    for teacher, entries in sections.items():
        for entry in entries:
            (canonical if kinds.is_canonical(entry.method) else ablations).setdefault(teacher, []).append(entry)
    return canonical, ablations


def write_leaderboards(results: pd.DataFrame, out_dir: str | Path = "leaderboards", *,
                       suites: Sequence[str] | None = None, generated_at: str | None = None,
                       reported: Mapping[str, Any] | str | Path | None = None,
                       include_reported: bool = True, kinds: RowKinds | None = None) -> list[Path]:
    """Write the leaderboard files of each suite into ``out_dir``; return the paths written.

    ``<suite>.md`` / ``<suite>.json`` hold the canonical rows (registered methods at their default
    configs, published students, real-image rows; the JSON is the CI baseline).
    ``<suite>-ablations.md`` / ``<suite>-ablations.json`` hold every other row, written only when
    there are any (``bench.publish.kinds``). ``reported`` is the papers' numbers (a loaded dict or a
    path); by default the packaged ``bench/data/reported.json``. ``generated_at`` (text) is written
    only when given, so that the outputs are a pure function of the rows.
    """
    built = build(results, suites)
    if not built:
        wanted = f" for suite(s) {', '.join(suites)}" if suites else ""
        raise BenchError(f"no result rows{wanted}; run `python -m bench run` first or point --results at a results folder")
    reported_data: Mapping[str, Any] | None = None
    if include_reported:
        reported_data = reported if isinstance(reported, Mapping) else load_reported(reported)
    kinds = RowKinds() if kinds is None else kinds
    out_dir = Path(out_dir)
    written: list[Path] = []
    for suite, sections in built.items():
        canonical, ablations = split_canonical(sections, kinds)
        pages = []
        if canonical or not ablations:
            pages.append((out_dir / f"{suite}.json", render_markdown(suite, canonical, reported_data, generated_at),
                          canonical))
        if ablations:
            page = render_ablations_markdown(suite, ablations, canonical, kinds, out_dir, generated_at)
            pages.append((ablations_path(out_dir / f"{suite}.json"), page, ablations))
        for json_path, markdown, rows in pages:
            md_path = json_path.with_suffix(".md")
            atomic_write_text(md_path, markdown)
            atomic_write_json(json_path, suite_json(suite, rows, generated_at))
            written += [md_path, json_path]
            log.info("wrote %s and %s", md_path, json_path)
    return written
