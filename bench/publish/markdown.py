"""The leaderboard as markdown: one section per teacher (protocol line, quality / PRDC / speed
tables with the best value of a step count in bold and the notes), and the papers' numbers in a
table of their own; see ``bench.publish.leaderboard``."""
from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from bench.assets.zoo import ZOO
from bench.publish.cells import (
    MAIN_METRICS,
    PRDC_METRICS,
    PROTOCOL_KEY_ORDER,
    SKIPPED_MARK,
    SPEED_METRICS,
    Entry,
    _protocol_text,
    format_guidance,
    merge_protocols,
)
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
STUDENT_LABELS = {"released": "released", "trained": "trained here", "published": "published (--student)"}


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
    lines += render_printed_beside(suite, entries, level + 1)
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


