"""Reports: plots and an image grid that people would rather look at than read.

    python -m bench report [--results runs/results] [--samples-root runs/samples]
                           [--out reports/<run_id>] [--suite S] [--teacher T] [--prompts 4]

For one suite (default: the suite of the most recent result row) and each of its teachers, writes
into ``--out`` (default ``reports/<latest run id of that suite>``):

    <teacher>-fid_vs_steps.png     FID against step count (log2 axis), one line per method
    <teacher>-fid_vs_latency.png   FID against latency, the Pareto front (nothing both faster and better) highlighted
    <teacher>-clip_vs_fid.png      CLIP x100 against FID, each point labelled method@steps
    <teacher>-samples_grid.png     the same prompts and seeds for every method x step count
    index.md                       links to all of the above, with the leaderboard tables

The numbers are the leaderboard's cells (same selection: one fingerprint per cell, the most recent
run wins). The grid reads ``<samples-root>/<suite>/<teacher>/<method>/steps<K>-g<G>-seed<S>/00000.png``
for the seed of each cell's latest row and takes the first prompt indices present in every folder.
A plot whose numbers are missing is skipped with a note in ``index.md``; nothing here raises on
missing metrics or samples.

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch) at fixed sizes
(:data:`PLOT_SIZE_PX`), and the grid is drawn with PIL at sizes given by :class:`GridLayout`.
"""
from __future__ import annotations

import json
import logging
import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from bench.core.atomic import atomic_write_text, atomic_write_with
from bench.core.errors import BenchError
from bench.publish.cells import Entry, format_guidance
from bench.publish.leaderboard import build
from bench.publish.markdown import render_section_markdown
from bench.scoring.results import metric_spec, normalize_frame

log = logging.getLogger(__name__)

PLOT_DPI = 100
PLOT_SIZE_PX = (800, 500)
_FOLDER_RE = re.compile(r"^steps(?P<steps>\d+)-g(?P<guidance>[0-9.]+)-seed(?P<seed>\d+)$")


# --------------------------------------------------------------------------------------------
# Points and series


@dataclass(frozen=True)
class Point:
    method: str
    steps: int
    guidance: float
    series: str
    fid: float | None
    clip: float | None
    latency_ms: float | None

    @property
    def label(self) -> str:
        return f"{self.method}@{self.steps}"


def points_of(entries: Sequence[Entry]) -> list[Point]:
    """One point per leaderboard entry; a method measured at several guidance scales gets one series each."""
    guidances: dict[str, set[float]] = {}
    for e in entries:
        guidances.setdefault(e.method, set()).add(e.guidance)
    points = []
    for e in entries:
        series = e.method if len(guidances[e.method]) == 1 else f"{e.method} (cfg {format_guidance(e.guidance)})"
        points.append(Point(e.method, e.steps, e.guidance, series, e.value("fid"), e.value("clip"), e.value("latency_ms")))
    return points


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x and lower y), sorted by x.

    A point is on the front when no other point is at least as good on both axes and strictly better
    on one. Equal duplicates are both kept.
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox <= x and oy <= y) and (ox < x or oy < y) for j, (ox, oy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def _colors(series: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(sorted(set(series)))}


def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PLOT_SIZE_PX[0] / PLOT_DPI, PLOT_SIZE_PX[1] / PLOT_DPI), dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=PLOT_DPI))


def plot_fid_vs_steps(points: Sequence[Point], path: Path, title: str) -> str | None:
    """Write the plot; return None, or the reason it was skipped."""
    usable = [p for p in points if p.fid is not None]
    if not usable:
        return "no FID numbers"
    colors = _colors([p.series for p in usable])
    fig = _new_figure()
    ax = fig.add_subplot()
    for series in sorted(colors):
        pts = sorted((p for p in usable if p.series == series), key=lambda p: p.steps)
        ax.plot([p.steps for p in pts], [p.fid for p in pts], marker="o", label=series, color=colors[series])
    steps = sorted({p.steps for p in usable})
    ax.set_xscale("log", base=2)
    ax.set_xticks(steps, labels=[str(s) for s in steps])
    ax.minorticks_off()
    if len(steps) == 1:
        ax.set_xlim(steps[0] / 1.5, steps[0] * 1.5)
    ax.set_xlabel("sampling steps (log scale)")
    ax.set_ylabel("FID ↓")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)
    return None


def plot_fid_vs_latency(points: Sequence[Point], path: Path, title: str) -> str | None:
    usable = [p for p in points if p.fid is not None and p.latency_ms is not None]
    if not usable:
        return "no configuration has both FID and latency"
    colors = _colors([p.series for p in usable])
    front = pareto_front([(p.latency_ms, p.fid) for p in usable])
    fig = _new_figure()
    ax = fig.add_subplot()
    for series in sorted(colors):
        pts = [p for p in usable if p.series == series]
        ax.scatter([p.latency_ms for p in pts], [p.fid for p in pts], color=colors[series], label=series, s=36, zorder=3)
    fx = [usable[i].latency_ms for i in front]
    fy = [usable[i].fid for i in front]
    ax.step(fx, fy, where="post", color="black", linewidth=1.5, alpha=0.7, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=120, facecolors="none", edgecolors="black", linewidths=1.5, zorder=4)
    for p in usable:
        ax.annotate(p.label, (p.latency_ms, p.fid), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel(f"{metric_spec('latency_ms').label} ↓ (median, batch 1)")
    ax.set_ylabel("FID ↓")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)
    return None


def plot_clip_vs_fid(points: Sequence[Point], path: Path, title: str) -> str | None:
    usable = [p for p in points if p.fid is not None and p.clip is not None]
    if not usable:
        return "no configuration has both CLIP and FID"
    colors = _colors([p.series for p in usable])
    scale = metric_spec("clip").scale
    fig = _new_figure()
    ax = fig.add_subplot()
    for series in sorted(colors):
        pts = [p for p in usable if p.series == series]
        ax.scatter([p.fid for p in pts], [p.clip * scale for p in pts], color=colors[series], label=series, s=36)
    for p in usable:
        ax.annotate(p.label, (p.fid, p.clip * scale), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel("FID ↓")
    ax.set_ylabel("CLIP ×100 ↑")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)
    return None


# --------------------------------------------------------------------------------------------
# Sample folders and the image grid


@dataclass(frozen=True)
class GridLayout:
    """Pixel layout of the sample grid: a label column, a header row, square thumbnails."""

    thumb: int = 160
    label_width: int = 180
    header_height: int = 64
    max_prompts: int = 4
    gutter: int = 2          # white margin inside each cell, so neighbouring samples stay apart

    def size(self, n_rows: int, n_cols: int) -> tuple[int, int]:
        return (self.label_width + n_cols * self.thumb, self.header_height + n_rows * self.thumb)


@dataclass
class SampleFolder:
    path: Path
    method: str
    steps: int
    guidance: float
    seed: int
    prompts: dict[int, tuple[str, Any]] = field(default_factory=dict)  # index -> (prompt, seed)

    def indices(self) -> set[int]:
        out = set()
        for png in self.path.glob("*.png"):
            if png.stem.isdigit():
                out.add(int(png.stem))
        return out

    def image_path(self, index: int) -> Path:
        return self.path / f"{index:05d}.png"


def read_sample_folder(path: Path) -> SampleFolder | None:
    """Describe a samples folder from its ``metadata.json`` (or, failing that, its name)."""
    meta: dict = {}
    meta_path = path / "metadata.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError) as exc:
            log.warning("ignoring unreadable %s: %s", meta_path, exc)
            meta = {}
    match = _FOLDER_RE.match(path.name)
    try:
        method = str(meta.get("method") or path.parent.name)
        steps = int(meta["steps"]) if "steps" in meta else int(match["steps"])
        guidance = float(meta["guidance_scale"]) if "guidance_scale" in meta else float(match["guidance"])
        seed = int(meta["seed"]) if "seed" in meta else int(match["seed"])
    except (TypeError, ValueError, KeyError):
        return None
    folder = SampleFolder(path, method, steps, guidance, seed)
    for item in meta.get("prompts") or []:
        try:
            folder.prompts[int(item["index"])] = (str(item.get("prompt", "")), item.get("seed"))
        except (TypeError, ValueError, KeyError):
            continue
    return folder


def find_sample_folders(samples_root: Path, suite: str, teacher: str) -> list[SampleFolder]:
    base = Path(samples_root) / suite / teacher
    if not base.is_dir():
        return []
    folders = []
    for method_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for run_dir in sorted(p for p in method_dir.iterdir() if p.is_dir()):
            folder = read_sample_folder(run_dir)
            if folder is not None:
                folders.append(folder)
    return folders


def match_folders(entries: Sequence[Entry], folders: Sequence[SampleFolder]) -> list[tuple[Entry, SampleFolder]]:
    """For each entry, the samples folder with its method, steps, guidance and (when known) seed."""
    pairs = []
    for entry in sorted(entries, key=lambda e: (e.method, e.steps, e.guidance)):
        candidates = [f for f in folders if f.method == entry.method and f.steps == entry.steps
                      and math.isclose(f.guidance, entry.guidance, rel_tol=0, abs_tol=1e-9)]
        if entry.seed is not None:
            seeded = [f for f in candidates if f.seed == entry.seed]
            candidates = seeded or candidates
        if candidates:
            pairs.append((entry, min(candidates, key=lambda f: f.seed)))
    return pairs


def choose_prompts(folders: Sequence[SampleFolder], count: int) -> tuple[list[int], list[str]]:
    """The first ``count`` prompt indices present in every folder with the same prompt and seed."""
    notes: list[str] = []
    if not folders:
        return [], notes
    common = set.intersection(*(f.indices() for f in folders))
    chosen = []
    for index in sorted(common):
        described = {f.prompts[index] for f in folders if index in f.prompts}
        if len(described) > 1:
            notes.append(f"prompt {index} left out: its prompt or seed differs between sample folders")
            continue
        chosen.append(index)
        if len(chosen) == count:
            break
    return chosen, notes


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _fit(image, side: int):
    image = ImageOps.contain(image.convert("RGB"), (side, side), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def draw_grid(pairs: Sequence[tuple[Entry, SampleFolder]], indices: Sequence[int], path: Path,
              layout: GridLayout = GridLayout()) -> tuple[int, int]:
    """Rows: method@steps; columns: prompt index. Returns the image size."""
    width, height = layout.size(len(pairs), len(indices))
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(12)
    small = _font(10)
    first = pairs[0][1]
    chars = max(8, layout.thumb // 7)
    for col, index in enumerate(indices):
        x = layout.label_width + col * layout.thumb
        prompt, seed = first.prompts.get(index, ("", None))
        header = f"#{index}" + (f"  seed {seed}" if seed is not None else "")
        draw.text((x + 4, 4), header, fill="black", font=font)
        wrapped = textwrap.wrap(prompt, chars)[:3]
        if len(textwrap.wrap(prompt, chars)) > 3:
            wrapped[-1] = wrapped[-1][: max(0, chars - 1)] + "…"
        draw.multiline_text((x + 4, 20), "\n".join(wrapped), fill="dimgray", font=small, spacing=2)
    for row, (entry, folder) in enumerate(pairs):
        y = layout.header_height + row * layout.thumb
        label = f"{entry.method}\n{entry.steps} step{'s' if entry.steps != 1 else ''} · cfg {format_guidance(entry.guidance)}"
        draw.multiline_text((6, y + layout.thumb // 2 - 14), label, fill="black", font=font, spacing=4)
        for col, index in enumerate(indices):
            x = layout.label_width + col * layout.thumb
            try:
                with Image.open(folder.image_path(index)) as image:
                    side = layout.thumb - 2 * layout.gutter
                    grid.paste(_fit(image, side), (x + layout.gutter, y + layout.gutter))
            except OSError as exc:
                log.warning("cannot read %s: %s", folder.image_path(index), exc)
                draw.rectangle([x, y, x + layout.thumb - 1, y + layout.thumb - 1], outline="red")
    atomic_write_with(path, lambda tmp: grid.save(tmp, format="PNG"))
    return width, height


# --------------------------------------------------------------------------------------------
# The report


def latest_suite(frame: pd.DataFrame) -> str:
    frame = frame.sort_values(["time", "run_id"], kind="mergesort")
    return str(frame.iloc[-1]["suite"])


def latest_run_id(results: pd.DataFrame, suite: str | None = None) -> str:
    frame = normalize_frame(results)
    if suite:
        frame = frame[frame["suite"] == suite]
    if frame.empty:
        raise BenchError("no result rows" + (f" for suite {suite}" if suite else ""))
    return str(frame.sort_values(["time", "run_id"], kind="mergesort").iloc[-1]["run_id"])


def write_report(results: pd.DataFrame, samples_root: Path | None, out_dir: Path, *,
                 suite: str | None = None, teacher: str | None = None,
                 layout: GridLayout = GridLayout()) -> Path:
    """Write plots, sample grids and ``index.md`` into ``out_dir``; return the path of ``index.md``."""
    frame = normalize_frame(results)
    frame = frame[frame["metric"] != ""]
    if frame.empty:
        raise BenchError("no result rows to report on; run `python -m bench run` first")
    suite = suite or latest_suite(frame)
    built = build(frame, [suite]).get(suite)
    if not built:
        raise BenchError(f"no result rows for suite {suite!r}; suites present: {', '.join(sorted(set(frame['suite'])))}")
    if teacher is not None:
        if teacher not in built:
            raise BenchError(f"no result rows for teacher {teacher!r} in suite {suite!r}; teachers: {', '.join(built)}")
        built = {teacher: built[teacher]}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = sorted({c.run_id for entries in built.values() for e in entries for c in e.cells.values()})
    lines = [f"# Report: {suite}", "", f"Runs: {', '.join(f'`{r}`' for r in runs)}", "",
             "Numbers are the leaderboard's cells: one fingerprint per cell, the most recent run wins. "
             "CLIP is shown ×100. See the notes under each table for skipped or superseded cells.", ""]
    for name, entries in built.items():
        lines += _teacher_section(suite, name, entries, samples_root, out_dir, layout)
    index = out_dir / "index.md"
    while lines and lines[-1] == "":
        lines.pop()
    atomic_write_text(index, "\n".join(lines) + "\n")
    log.info("wrote report %s", index)
    return index


def _teacher_section(suite: str, teacher: str, entries: Sequence[Entry], samples_root: Path | None,
                     out_dir: Path, layout: GridLayout) -> list[str]:
    points = points_of(entries)
    lines = [f"## Teacher: {teacher}", ""]
    skipped: list[str] = []
    plots = [
        ("fid_vs_steps", "FID vs sampling steps", plot_fid_vs_steps),
        ("fid_vs_latency", "FID vs latency (Pareto front outlined)", plot_fid_vs_latency),
        ("clip_vs_fid", "CLIP vs FID", plot_clip_vs_fid),
    ]
    for stem, title, plot in plots:
        path = out_dir / f"{teacher}-{stem}.png"
        try:
            reason = plot(points, path, f"{suite} · {teacher}: {title}")
        except Exception as exc:  # a broken plot must not cost the rest of the report
            log.exception("plot %s failed", stem)
            reason = f"plotting failed ({type(exc).__name__}: {exc})"
        if reason:
            skipped.append(f"{title}: skipped, {reason}.")
        else:
            lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    lines += _grid_section(suite, teacher, entries, samples_root, out_dir, layout, skipped)
    if skipped:
        lines += ["### Not shown", ""] + [f"- {s}" for s in skipped] + [""]
    lines += ["### Tables", ""]
    lines += render_section_markdown(suite, teacher, entries, level=3)[2:]  # drop the section title
    return lines


def _grid_section(suite: str, teacher: str, entries: Sequence[Entry], samples_root: Path | None,
                  out_dir: Path, layout: GridLayout, skipped: list[str]) -> list[str]:
    title = "Samples: same prompts and seeds across methods and steps"
    if samples_root is None:
        skipped.append(f"{title}: skipped, no samples folder given (--samples-root).")
        return []
    folders = find_sample_folders(Path(samples_root), suite, teacher)
    pairs = match_folders(entries, folders)
    if not pairs:
        skipped.append(f"{title}: skipped, no sample folders for the reported rows under "
                       f"{Path(samples_root) / suite / teacher}.")
        return []
    indices, notes = choose_prompts([f for _, f in pairs], layout.max_prompts)
    skipped.extend(notes)
    if not indices:
        skipped.append(f"{title}: skipped, no prompt index has an image in every sample folder.")
        return []
    path = out_dir / f"{teacher}-samples_grid.png"
    try:
        draw_grid(pairs, indices, path, layout)
    except Exception as exc:
        log.exception("sample grid failed")
        skipped.append(f"{title}: skipped, drawing failed ({type(exc).__name__}: {exc}).")
        return []
    measured = [e for e in entries if any(not c.skipped for c in e.cells.values())]
    missing = sorted({f"{e.method}@{e.steps}" for e in measured} - {f"{e.method}@{e.steps}" for e, _ in pairs})
    lines = [f"### {title}", "", f"![{title}]({path.name})", ""]
    if missing:
        lines += [f"No samples found for: {', '.join(missing)}.", ""]
    return lines
