"""`bench report --html`: the report as one self-contained folder, ``index.html`` plus ``assets/``.

    python -m bench report --results runs/results --samples-root runs/samples --out DIR --html

Besides what ``bench report`` writes (``bench.publish.report``: plots, sample grids, ``index.md``),
``--html`` writes ``DIR/index.html`` and ``DIR/assets/``. The page needs no server and no network
(it works from ``file://``) and holds:

- one leaderboard table of every suite in the results (only ``--suite`` when given), one row per
  leaderboard entry (``bench.publish.leaderboard.build``), with a "kind" column (canonical or
  ablation, ``bench.publish.kinds``); a small inline script sorts it by any column and filters it
  by suite, teacher, steps, kind (canonical rows by default) and method name;
- for each (suite, teacher), its protocol line and the images ``bench report`` wrote for that
  teacher (``<teacher>-*.png|jpg``: the plots and the sample grid, same prompts and seeds across
  methods), copied into ``assets/``;
- for each cell, on demand (click a value or a method), its fingerprint, run, time, seed, student,
  device, note, superseded fingerprints and protocol, read from a JSON block embedded in the page.

Templates are jinja2 with autoescape on (``bench/publish/templates/site/``). The site is written
into a temporary folder inside ``DIR`` and moved into place: ``assets/`` first, ``index.html``
last (an atomic rename), so a reader never sees a half-written page.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from PIL import Image

from bench.core.errors import BenchError
from bench.publish.cells import MAIN_METRICS, PRDC_METRICS, SKIPPED_MARK, SPEED_METRICS, Cell, Entry, format_guidance
from bench.publish.kinds import RowKinds
from bench.publish.leaderboard import build
from bench.publish.markdown import STUDENT_LABELS, best_in_groups, merge_protocols, protocol_line
from bench.publish.report import GridLayout, write_report
from bench.scoring.results import metric_spec, normalize_frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MTIME_SLACK_S = 1.0   # tolerance of the "written by this report" test, for coarse file timestamps
_MD_IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)")

# Metric column groups: the main ones are always shown, the others on demand (a checkbox each).
GROUPS = (
    ("main", "Quality and speed", MAIN_METRICS),
    ("prdc", "Precision, recall, density", tuple(m for m in PRDC_METRICS if m not in MAIN_METRICS)),
    ("speed", "More speed figures", tuple(m for m in SPEED_METRICS if m not in MAIN_METRICS)),
)


# --------------------------------------------------------------------------------------------
# What the template shows


@dataclass(frozen=True)
class Column:
    metric: str
    label: str
    arrow: str
    group: str


@dataclass(frozen=True)
class ShownCell:
    metric: str
    text: str                # as displayed ("" not measured, "—" skipped)
    sort: str                # raw value for sorting ("" when none)
    best: bool = False
    note: str = ""           # a note worth a marker (not the section-wide one)


@dataclass
class SiteRow:
    index: int
    suite: str
    teacher: str
    method: str
    steps: int
    nfe: str
    cfg: str
    guidance: float
    student: str
    canonical: bool
    kind_title: str          # tooltip of the kind column: the experiment file of an ablation
    cells: dict[str, ShownCell] = field(default_factory=dict)


@dataclass(frozen=True)
class Figure:
    src: str                 # relative to index.html
    caption: str
    width: int
    height: int
    wide: bool               # a sample grid: full width rather than a tile


@dataclass
class Section:
    suite: str
    teacher: str
    protocol: str
    runs: list[str]
    devices: list[str]
    notes: list[str]
    figures: list[Figure] = field(default_factory=list)


def metric_columns(entries: Sequence[Entry]) -> list[Column]:
    """The metrics present in ``entries``, main ones first, then by group, unknown ones last."""
    present = {m for e in entries for m in e.cells}
    columns = []
    known: set[str] = set()
    for group, _, metrics in GROUPS:
        known.update(metrics)
        columns += [Column(m, metric_spec(m).label, metric_spec(m).arrow, group) for m in metrics if m in present]
    columns += [Column(m, metric_spec(m).label, metric_spec(m).arrow, "other") for m in sorted(present - known)]
    return columns


def section_notes(entries: Sequence[Entry]) -> list[str]:
    """Notes every measured cell of a section carries (e.g. the toy-world disclaimer): shown once."""
    cells = [c for e in entries for c in e.cells.values() if not c.skipped]
    notes = {c.note for c in cells}
    return sorted(notes) if len(notes) == 1 and "" not in notes else []


def _shown(cell: Cell | None, metric: str, best: bool, common: Sequence[str]) -> ShownCell:
    if cell is None:
        return ShownCell(metric, "", "")
    if cell.skipped:
        return ShownCell(metric, SKIPPED_MARK, "", note=cell.note)
    if cell.value is None:
        return ShownCell(metric, "", "", note=cell.note)
    note = "" if cell.note in common else cell.note
    return ShownCell(metric, metric_spec(metric).display(cell.value), repr(cell.value), best=best, note=note)


def _cell_json(cell: Cell, protocols: dict[str, int]) -> dict[str, Any]:
    """One cell for the details panel; protocol texts are stored once and referred to by index."""
    try:
        text = json.dumps(json.loads(cell.protocol), indent=2, sort_keys=True)
    except json.JSONDecodeError:
        text = cell.protocol
    spec = metric_spec(cell.metric)
    return {
        "metric": cell.metric,
        "label": spec.label,
        "value": None if cell.value is None or cell.skipped else spec.display(cell.value),
        "raw": cell.value,
        "note": cell.note,
        "fingerprint": cell.fingerprint,
        "run_id": cell.run_id,
        "time": cell.time,
        "seed": cell.seed,
        "student": cell.student,
        "device": cell.device,
        "superseded": [list(pair) for pair in cell.superseded],
        "protocol": protocols.setdefault(text, len(protocols)),
    }


def site_rows(built: Mapping[str, Mapping[str, Sequence[Entry]]], columns: Sequence[Column],
              kinds: RowKinds) -> tuple[list[SiteRow], dict[str, Any]]:
    """Table rows and the JSON the details panel reads (``{"rows": [...], "protocols": [...]}``;
    a row's ``cells`` is a list, since jinja's ``tojson`` sorts the keys of objects).

    Bold marks the best displayed value among the canonical rows of a (suite, teacher) with the
    same step count (``best_in_groups``: ties all bold, needs two values)."""
    rows: list[SiteRow] = []
    details: list[dict[str, Any]] = []
    protocols: dict[str, int] = {}
    rank = {c.metric: i for i, c in enumerate(columns)}
    for suite, sections in built.items():
        for teacher, entries in sections.items():
            common = section_notes(entries)
            kind_of = {id(e): kinds.of(e.method) for e in entries}
            canonical = [e for e in entries if kind_of[id(e)].canonical]
            best = {c.metric: {id(canonical[i]) for i in best_in_groups(canonical, c.metric)} for c in columns}
            for entry in entries:
                kind = kind_of[id(entry)]
                path = kind.config_path()
                description = kind.experiment.description if kind.experiment else ""
                row = SiteRow(
                    index=len(rows), suite=suite, teacher=teacher, method=entry.method, steps=entry.steps,
                    nfe="" if entry.nfe is None else str(entry.nfe), cfg=format_guidance(entry.guidance),
                    guidance=entry.guidance, student=STUDENT_LABELS.get(entry.student, entry.student),
                    canonical=kind.canonical,
                    kind_title="" if kind.canonical else (path or f"ablation of {kind.method}"),
                )
                for column in columns:
                    row.cells[column.metric] = _shown(entry.cells.get(column.metric), column.metric,
                                                      id(entry) in best[column.metric], common)
                rows.append(row)
                details.append({
                    "suite": suite, "teacher": teacher, "method": entry.method, "steps": entry.steps,
                    "cfg": row.cfg, "nfe": entry.nfe,
                    "kind": "canonical" if kind.canonical else "ablation",
                    "varies": kind.method, "config_path": path, "description": description,
                    "fingerprint": entry.combined_fingerprint(),
                    "cells": [_cell_json(c, protocols)       # in the table's column order
                              for c in sorted(entry.cells.values(), key=lambda c: (rank.get(c.metric, 0), c.metric))],
                })
    return rows, {"rows": details, "protocols": list(protocols)}


# --------------------------------------------------------------------------------------------
# Images written by `bench report`


def _captions(report_dir: Path) -> dict[str, str]:
    """``file name -> alt text`` of the images ``index.md`` links (empty when there is none)."""
    try:
        text = (report_dir / "index.md").read_text(encoding="utf-8")
    except OSError:
        return {}
    return {m["src"]: m["alt"] for m in _MD_IMAGE.finditer(text)}


def report_images(report_dir: Path, teachers: Sequence[str],
                  since: float | None = None) -> dict[str, list[tuple[Path, str]]]:
    """``{teacher: [(image, caption)]}``: the ``<teacher>-*.png|jpg`` files of a report folder, in
    the order ``index.md`` links them (the others after, by name). A file goes to the longest
    teacher name it starts with, so teacher ``a`` does not take ``a-b``'s images. With ``since``
    (a ``time.time()``), files older than that are left out: a plot an earlier report wrote into
    the same folder and this one skipped."""
    captions = _captions(report_dir)
    order = {name: i for i, name in enumerate(captions)}
    out: dict[str, list[tuple[Path, str]]] = {t: [] for t in teachers}
    if not report_dir.is_dir():
        return out
    files = sorted((p for p in report_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and (since is None or p.stat().st_mtime >= since - MTIME_SLACK_S)),
                   key=lambda p: (order.get(p.name, len(order)), p.name))
    for path in files:
        owners = [t for t in teachers if path.name.startswith(f"{t}-")]
        if not owners:
            continue
        teacher = max(owners, key=len)
        caption = captions.get(path.name) or path.stem[len(teacher) + 1:].replace("_", " ")
        out[teacher].append((path, caption))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60] or "image"


def _is_grid(path: Path, caption: str) -> bool:
    text = f"{path.stem} {caption}".lower()
    return "grid" in text or "sample" in text


# --------------------------------------------------------------------------------------------
# Writing the site


def _environment() -> Environment:
    return Environment(loader=PackageLoader("bench.publish", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_site(built: Mapping[str, Mapping[str, Sequence[Entry]]], sections: Sequence[Section],
                kinds: RowKinds | None = None) -> str:
    """The text of ``index.html`` (images already placed; ``sections`` carry their relative paths)."""
    entries = [e for teachers in built.values() for es in teachers.values() for e in es]
    columns = metric_columns(entries)
    rows, data = site_rows(built, columns, kinds or RowKinds())
    groups = [(key, title) for key, title, _ in GROUPS[1:] if any(c.group == key for c in columns)]
    if any(c.group == "other" for c in columns):
        groups.append(("other", "Other metrics"))
    return _environment().get_template("site/index.html.j2").render(
        title="Report: " + ", ".join(built),
        rows=rows,
        columns=columns,
        groups=groups,
        suites=sorted({r.suite for r in rows}),
        teachers=sorted({r.teacher for r in rows}),
        steps=sorted({r.steps for r in rows}),
        show_student=any(r.student for r in rows),
        counts={"all": len(rows), "canonical": sum(r.canonical for r in rows)},
        sections=sections,
        data=data,
        skipped_mark=SKIPPED_MARK,
    )


def _section(suite: str, teacher: str, entries: Sequence[Entry]) -> Section:
    cells = [c for e in entries for c in e.cells.values()]
    devices = sorted({c.device for c in cells if c.metric in SPEED_METRICS and c.device and not c.skipped})
    return Section(suite, teacher, protocol_line(merge_protocols(c.protocol for c in cells)),
                   runs=sorted({c.run_id for c in cells}), devices=devices, notes=section_notes(entries))


def write_site(results: pd.DataFrame, out_dir: Path, reports: Mapping[str, Path], *,
               suites: Sequence[str] | None = None, teacher: str | None = None,
               since: float | None = None, kinds: RowKinds | None = None) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/assets/``; return the path of ``index.html``.

    ``reports`` maps a suite to the folder ``write_report`` wrote for it; its teachers' images
    (those written after ``since`` when given) are copied into ``assets/``. ``suites`` limits the
    tables (default: every suite of the results) and ``teacher`` keeps that teacher only."""
    frame = normalize_frame(results)
    built = build(frame[frame["metric"] != ""], suites)
    if teacher is not None:
        built = {s: {teacher: t[teacher]} for s, t in built.items() if teacher in t}
    if not built:
        raise BenchError("no result rows to put in the HTML report; run `python -m bench run` first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".site-", dir=out_dir))
    try:
        assets = staging / "assets"
        assets.mkdir()
        sections = []
        copied = 0
        for suite, teachers in built.items():
            images = report_images(Path(reports[suite]), list(teachers), since) if suite in reports else {}
            for name, entries in teachers.items():
                section = _section(suite, name, entries)
                for path, caption in images.get(name, []):
                    target = assets / f"{copied:03d}-{_slug(suite)}-{_slug(path.name)}"
                    shutil.copyfile(path, target)
                    try:
                        with Image.open(target) as image:
                            width, height = image.size
                    except OSError as exc:   # not an image after all: leave it out, keep the rest
                        log.warning("left out of the HTML report: %s (%s)", path, exc)
                        target.unlink()
                        continue
                    copied += 1
                    section.figures.append(Figure(f"assets/{quote(target.name)}", caption, width, height,
                                                  _is_grid(path, caption)))
                sections.append(section)
        (staging / "index.html").write_text(render_site(built, sections, kinds), encoding="utf-8")
        _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    index = out_dir / "index.html"
    log.info("wrote %s", index)
    return index


def _publish(staging: Path, out_dir: Path) -> None:
    """Move ``staging/assets`` and ``staging/index.html`` into ``out_dir`` (index.html last, atomically)."""
    for path in [staging / "index.html", *(staging / "assets").iterdir()]:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    old = out_dir / "assets"
    aside = out_dir / f".assets-old-{secrets.token_hex(4)}"
    if old.is_dir():
        os.replace(old, aside)
    elif old.exists():
        raise BenchError(f"{old} is a file; move it away so that the HTML report can write its assets/ folder")
    os.replace(staging / "assets", old)
    os.replace(staging / "index.html", out_dir / "index.html")
    shutil.rmtree(aside, ignore_errors=True)


def write_html_report(results: pd.DataFrame, samples_root: Path | None, out_dir: Path, *, suite: str,
                      suites: Sequence[str], teacher: str | None = None, layout: GridLayout = GridLayout(),
                      since: float | None = None) -> Path:
    """What ``bench report --html`` adds after ``write_report`` wrote ``suite`` into ``out_dir``
    (starting at time ``since``): reports of the other ``suites`` into a temporary folder (their
    images only go to ``assets/``), then the site. A suite without ``teacher`` is left out."""
    reports = {suite: Path(out_dir)}
    with tempfile.TemporaryDirectory(prefix=".reports-", dir=out_dir) as tmp:
        frame = normalize_frame(results)
        for number, other in enumerate(suites):
            teachers = set(frame.loc[frame["suite"] == other, "teacher"])
            if other in reports or (teacher is not None and teacher not in teachers):
                continue
            folder = Path(tmp) / f"suite-{number}"
            write_report(frame, samples_root, folder, suite=other, teacher=teacher, layout=layout)
            reports[other] = folder
        return write_site(results, out_dir, reports, suites=list(reports), teacher=teacher, since=since)
