"""The leaderboard as markdown: one section per teacher (protocol line, quality / PRDC / speed
tables with the best value of a step count in bold and the notes), and the papers' numbers in a
table of their own; see ``bench.publish.leaderboard``."""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from bench.assets.zoo import ZOO
from bench.publish.cells import (
    MAIN_METRICS,
    PROTOCOL_KEY_ORDER,
    SKIPPED_MARK,
    SPEED_METRICS,
    Cell,
    Entry,
    _protocol_text,
    format_guidance,
    merge_protocols,
)
from bench.publish.kinds import RowKind, RowKinds
from bench.scoring.results import (
    metric_spec,
)

log = logging.getLogger(__name__)

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

    Bold must discriminate: values are compared as displayed (rounded), the tied best are all
    marked, but nothing is marked in a step group with fewer than two values or where every value
    prints the same. Real-image reference rows (steps 0) are references, not competitors: never bold.
    """
    spec = metric_spec(metric)
    groups: dict[int, list[tuple[int, float]]] = {}
    for index, entry in enumerate(entries):
        cell = entry.cells.get(metric)
        if entry.steps == 0 or cell is None or cell.value is None or cell.skipped:
            continue
        groups.setdefault(entry.steps, []).append((index, float(spec.display(cell.value))))
    best: set[int] = set()
    for members in groups.values():
        shown = [v for _, v in members]
        if len(set(shown)) < 2:
            continue
        target = max(shown) if spec.higher_is_better else min(shown)
        best.update(i for i, v in members if v == target)
    return best


#: how the Student column prints a row's student source
STUDENT_LABELS = {"released": "released", "trained": "trained here", "published": "published (--student)"}


def _cell_text(entry: Entry, metric: str, bold: bool, notes: _Notes, common: Sequence[str]) -> str:
    """One cell as shown: the value (bold when best), "—" and a note marker when skipped, "" when absent."""
    cell = entry.cells.get(metric)
    if cell is None:
        return ""
    if cell.skipped:
        return f"{SKIPPED_MARK} {notes.mark(cell.note)}"
    text = "" if cell.value is None else metric_spec(metric).display(cell.value)
    if text and bold:
        text = f"**{text}**"
    if cell.note and cell.note not in common:
        text = f"{text} {notes.mark(cell.note)}".strip()
    return text


def _render_table(entries: Sequence[Entry], metrics: Sequence[str], notes: _Notes, student: bool = False) -> list[str]:
    """One markdown table, one row per entry; ``student`` adds the column saying where each row's
    student came from. Columns and rows without anything to show are left out."""
    metrics = [m for m in metrics if any(m in e.cells for e in entries)]
    entries = [e for e in entries if any(m in e.cells for m in metrics)]
    header = ["Method", "Steps", "NFE", "CFG"] + (["Student"] if student else [])
    header += [f"{metric_spec(m).label} {metric_spec(m).arrow}" for m in metrics]
    align = [":---" if name in ("Method", "Student") else "---:" for name in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    bold = {m: best_in_groups(entries, m) for m in metrics}
    common = _section_notes(entries)
    for index, entry in enumerate(entries):
        row = [_md_escape(entry.method), str(entry.steps), "" if entry.nfe is None else str(entry.nfe),
               format_guidance(entry.guidance)]
        if student:
            row.append(STUDENT_LABELS.get(entry.student, entry.student))
        row += [_cell_text(entry, m, index in bold[m], notes, common) for m in metrics]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def _matrix_rows(entries: Sequence[Entry]) -> dict[str, list[Entry]]:
    """The entries of a by-steps matrix keyed by row label: distilled students first, then teacher
    solvers, alphabetically; a method measured at several guidance scales gets one row per scale."""
    measured = [e for e in entries if e.steps > 0]
    scales: dict[str, set[float]] = {}
    for entry in measured:
        scales.setdefault(entry.method, set()).add(entry.guidance)
    rows: dict[str, list[Entry]] = {}
    for entry in sorted(measured, key=lambda e: (not e.student, e.method, e.guidance, e.steps)):
        label = _md_escape(entry.method)
        if len(scales[entry.method]) > 1:
            label += f" (CFG {format_guidance(entry.guidance)})"
        rows.setdefault(label, []).append(entry)
    return rows


def render_matrix(entries: Sequence[Entry], metric: str, notes: _Notes) -> list[str]:
    """``metric`` as papers print it: one row per method, one column per step count (best per column in bold)."""
    rows = _matrix_rows([e for e in entries if metric in e.cells])
    if not rows:
        return []
    steps = sorted({e.steps for members in rows.values() for e in members})
    spec = metric_spec(metric)
    flat = [e for members in rows.values() for e in members]
    bold = {id(flat[i]) for i in best_in_groups(flat, metric)}
    common = _section_notes(entries)
    lines = [f"| {spec.label} {spec.arrow} | " + " | ".join(f"{k} step{'s' if k > 1 else ''}" for k in steps) + " |",
             "|:---|" + "---:|" * len(steps)]
    for label, members in rows.items():
        by_steps = {e.steps: e for e in members}
        cells = [_cell_text(by_steps[k], metric, id(by_steps[k]) in bold, notes, common) if k in by_steps else ""
                 for k in steps]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def reference_line(entries: Sequence[Entry]) -> list[str]:
    """The real-image rows (steps 0) in one line: the floor every method is measured against."""
    parts = []
    for entry in (e for e in entries if e.steps == 0):
        values = [f"{metric_spec(m).label} {metric_spec(m).display(entry.value(m))}"
                  for m in MAIN_METRICS if entry.value(m) is not None]
        if values:
            parts.append(f"`{_md_escape(entry.method)}` {', '.join(values)}")
    return [f"Real images (steps 0, the reference): {'; '.join(parts)}.", ""] if parts else []


def _section_notes(entries: Sequence[Entry]) -> list[str]:
    """Notes carried by every measured (not skipped) cell of a section (e.g. the smoke-suite disclaimer)."""
    cells = [c for e in entries for c in e.cells.values() if not c.skipped]
    if not cells:
        return []
    counts = Counter(c.note for c in cells if c.note)
    return sorted(note for note, n in counts.items() if n == len(cells))


def _present(entries: Sequence[Entry], metrics: Iterable[str]) -> bool:
    return any(m in e.cells for e in entries for m in metrics)


def runs_line(cells: Sequence[Cell]) -> str:
    """How many runs the cells come from and the newest one (the list itself is in the JSON)."""
    runs = sorted({c.run_id for c in cells})
    if not runs:
        return "Runs: none"
    return f"Runs: {len(runs)}, newest `{runs[-1]}`" if len(runs) > 1 else f"Runs: `{runs[0]}`"


def render_section_markdown(suite: str, teacher: str, entries: Sequence[Entry], level: int = 2) -> list[str]:
    """Markdown for one (suite, teacher): protocol line, the by-steps matrices, every cell in one
    table, speed, and the notes. Fingerprints and superseded measurements stay in the JSON."""
    hashes = "#" * level
    notes = _Notes()
    cells = [c for e in entries for c in e.cells.values()]
    lines = [f"{hashes} Teacher: {teacher}", ""]
    lines += [protocol_line(merge_protocols(c.protocol for c in cells)), ""]
    runs = runs_line(cells)
    devices = sorted({c.device for c in cells if c.metric in SPEED_METRICS and c.device and not c.skipped})
    lines += [runs + (f" · speed measured on: {', '.join(devices)}" if devices else ""), ""]
    remeasured = sum(1 for c in cells if c.superseded)
    if remeasured:
        lines += [f"{remeasured} cell(s) were measured again under a newer fingerprint; the older fingerprints "
                  "and their runs are in the JSON (`superseded`).", ""]
    for note in _section_notes(entries):
        lines += [f"> {note}", ""]
    matrices = [m for m in ("fid", "clip", "coverage") if _present([e for e in entries if e.steps > 0], [m])]
    if matrices:
        lines += [f"{hashes}# By steps", ""] + reference_line(entries)
        for metric in matrices:
            lines += render_matrix(entries, metric, notes)
    main = ["fid", "clip", "coverage", "precision", "recall", "density", "latency_ms"]
    lines += [f"{hashes}# All cells", ""]
    lines += _render_table(entries, main, notes, student=any(e.student for e in entries))
    lines += render_printed_beside(suite, entries, level + 1)
    if _present(entries, SPEED_METRICS[1:]):
        lines += [f"{hashes}# Speed", ""]
        lines += _render_table(entries, SPEED_METRICS, notes)
    known = set(main) | set(SPEED_METRICS)
    others = sorted({m for e in entries for m in e.cells if m not in known})
    if others:
        lines += [f"{hashes}# Other metrics", ""]
        lines += _render_table(entries, others, notes)
    return lines + notes.render()


def render_printed_beside(suite: str, entries: Sequence[Entry], level: int) -> list[str]:
    """Published students of the zoo (``--student NAME``): our number beside the one printed for
    the same checkpoint, suite, metric and step count (``bench.assets.zoo``)."""
    lines = []
    for entry in entries:
        zoo = ZOO.get(entry.method) if entry.student == "published" else None
        for printed in zoo.paper if zoo else ():
            cell = entry.cells.get(printed.metric)
            if printed.suite != suite or printed.steps != entry.steps or cell is None or cell.value is None:
                continue
            spec = metric_spec(printed.metric)
            lines.append(f"| {_md_escape(entry.method)} | {entry.steps} | {spec.label} | {spec.display(cell.value)} | "
                         f"{spec.display(printed.value)} | {_md_escape(printed.source)} |")
    if not lines:
        return []
    header = [f"{'#' * level} Published students beside their printed numbers", "",
              "Each paper used its own evaluation code and reference set; same checkpoint, different protocol.", "",
              "| Student | Steps | Metric | Ours | Printed | Where printed |", "|:---|---:|:---|---:|---:|:---|"]
    return header + lines + [""]


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
        "↓ lower is better, ↑ higher is better. **Bold**: the best value of a step count, only where the "
        "shown values differ. CLIP×100: mean CLIP cosine similarity ×100, as papers print it (0.312 → 31.20). "
        "NFE: denoiser evaluations per image. CFG: guidance scale recorded by the run. Latency: median ms per "
        f"image, batch 1, end to end. {SKIPPED_MARK}: skipped (reason in the notes); empty: not measured.",
        "",
        "The registered methods at their default configs. Each cell comes from one fingerprint (teacher, "
        "method config, suite protocol, seed, metric models, library versions), the most recent run of it; "
        "fingerprints, runs and the cells they replaced are in the JSON beside this page.",
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


# --------------------------------------------------------------------------------------------
# Ablations page


def _experiment_link(kind: RowKind, page_dir: Path | None) -> str:
    """The row label, linked to its experiment file relative to the page when it has one."""
    label = _md_escape(kind.label)
    path = kind.experiment.path if kind.experiment else None
    if path is None:
        return label
    target = os.path.relpath(path, page_dir.resolve()) if page_dir is not None else kind.config_path()
    return f"[{label}]({Path(target).as_posix()})"


def render_ablations_markdown(suite: str, sections: Mapping[str, Sequence[Entry]],
                              canonical: Mapping[str, Sequence[Entry]], kinds: RowKinds,
                              page_dir: Path | None = None, generated_at: str | None = None) -> str:
    """The probes and ablations of ``suite``, grouped by the method they vary. Each group starts with
    the method's default rows at the same step counts (from the canonical leaderboard) for reference;
    each ablation links to the experiment file that produced it."""
    lines = [f"# Ablations and probes: {suite}", ""]
    if generated_at:
        lines += [f"Generated at {generated_at}.", ""]
    lines += [
        f"Rows that are not a registered method at its default config: named experiments "
        f"(`methods/configs/<method>/ablations/<name>.toml`, run with `bench run --experiment <method>/<name>`) "
        f"and labels given by hand to `bench eval --method`. The canonical table is `{suite}.md`; fingerprints "
        f"and runs are in `{suite}-ablations.json`. ↓ lower is better, ↑ higher is better; CLIP ×100; "
        f"**bold**: the best of a method's group at a step count, only where the values differ.",
        "",
    ]
    for teacher, entries in sections.items():
        notes = _Notes()
        cells = [c for e in entries for c in e.cells.values()]
        lines += [f"## Teacher: {teacher}", "", protocol_line(merge_protocols(c.protocol for c in cells)), "",
                  runs_line(cells), ""]
        common = _section_notes(entries)
        for note in common:
            lines += [f"> {note}", ""]
        groups: dict[str, list[Entry]] = {}
        for entry in entries:
            groups.setdefault(kinds.of(entry.method).method or "other", []).append(entry)
        defaults = {(e.method, e.steps): e for e in canonical.get(teacher, ())}
        for method in sorted(groups):
            members = sorted(groups[method], key=lambda e: (e.method, e.steps, e.guidance))
            reference = [defaults[(method, k)] for k in sorted({e.steps for e in members}) if (method, k) in defaults]
            rows = reference + members
            metrics = [m for m in ("fid", "clip", "coverage", "precision", "recall", "latency_ms")
                       if any(m in e.cells for e in rows)]
            lines += [f"### {method} ({len({e.method for e in members})} ablation(s))", ""]
            header = ["Row", "Steps", "CFG"] + [f"{metric_spec(m).label} {metric_spec(m).arrow}" for m in metrics]
            lines += ["| " + " | ".join(header + ["What"]) + " |",
                      "|:---|---:|---:|" + "---:|" * len(metrics) + ":---|"]
            bold = {m: best_in_groups(rows, m) for m in metrics}
            described: set[str] = set()
            for index, entry in enumerate(rows):
                kind = kinds.of(entry.method)
                if kind.canonical:
                    label, what = f"{_md_escape(entry.method)} (default)", "the canonical row, for reference"
                else:
                    label = _experiment_link(kind, page_dir)
                    what = (kind.experiment.description if kind.experiment
                            else "no experiment file (a label given to `bench eval --method`)")
                    what = "" if entry.method in described else what     # said once per label
                    described.add(entry.method)
                cells_text = [_cell_text(entry, m, index in bold[m], notes, common) for m in metrics]
                lines.append("| " + " | ".join([label, str(entry.steps), format_guidance(entry.guidance)]
                                                + cells_text + [_md_escape(what)]) + " |")
            lines.append("")
        lines += notes.render()
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"
