"""Reports: plots and an image grid that people would rather look at than read.

    python -m bench report [--results runs/results] [--samples-root runs/samples]
                           [--out reports/<run_id>] [--suite S] [--teacher T] [--prompts 4]

For one suite (default: the suite of the most recent result row) and each of its teachers, writes
into ``--out`` (default ``reports/<latest run id of that suite>``):

    <teacher>-fid_vs_steps.png       FID against step count, one line per method, the real-image floor as a line
    <teacher>-coverage_vs_steps.png  the same for Coverage
    <teacher>-fid_vs_latency.png     FID against latency; the Pareto front (nothing both faster and better)
                                     drawn and labelled, every other point coloured by method
    <teacher>-clip_vs_fid.png        CLIP x100 against FID, each method's step counts joined in order
    <teacher>-samples_grid.jpg|png   the same prompts and seeds for every method x step count: a JPEG
                                     (quality 90) or an optimized PNG, whichever is smaller
    index.md                         links to all of the above, with the leaderboard tables

Plots and grids show canonical rows only (``bench.publish.kinds``: registered methods at their default
config, zoo students, the real-image rows); ablations would bury them, so they are left out and
``index.md`` says how many (``write_report(..., ablations=True)`` keeps them). Each point is one
configuration: the newest row of each sampling seed (``seed`` column), averaged over the seeds
measured under the newest row's protocol, with error bars of ±1 sample standard deviation where
there are several (the legend gives the count). With one seed a point is the leaderboard's cell.
Axes are log-scaled where the numbers span a decade or more, with ticks at plain numbers (steps: at
exactly the step counts present). The FID floor (``real-2nd-draw``, steps 0) is a labelled
horizontal line, never a point on the step axis.

The grid reads ``<samples-root>/<suite>/<teacher>/<method>/steps<K>-g<G>-seed<S>/00000.png``
for the seed of each cell's latest row and takes the first prompt indices present in every folder.
Column headers are ``#<index> · <prompt, cut to fit>`` (never the per-image seeds); samples a
third of a thumbnail's side or smaller (the toy world's 16 px) are enlarged without smoothing; a
grid holds at most ``GridLayout.max_rows`` rows (a JPEG's height limit; the rest are listed as not
shown). A plot whose numbers are missing is skipped with a note in ``index.md``; nothing here
raises on missing metrics or samples.

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch) at fixed sizes
(:data:`PLOT_SIZE_PX`), and the grid is drawn with PIL at sizes given by :class:`GridLayout`.
"""
from __future__ import annotations

import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from bench.core.atomic import atomic_write_bytes, atomic_write_text, atomic_write_with
from bench.core.errors import BenchError
from bench.publish.cells import Entry, format_guidance
from bench.publish.kinds import REAL_IMAGE_ROWS, RowKinds
from bench.publish.leaderboard import build
from bench.publish.markdown import render_section_markdown, runs_line
from bench.scoring.results import is_skipped_note, metric_spec, normalize_frame, order_by_recency
from bench.scoring.toy import FLOOR_METHOD, SHUFFLED_METHOD
from methods.registry import get_method_class

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PLOT_DPI = 100
PLOT_SIZE_PX = (960, 560)
JPEG_MAX_SIDE = 65_500
LOG_METRICS = ("fid", "latency_ms")  # plotted on log axes when they span a decade (lower is better, no bound)
_FOLDER_RE = re.compile(r"^steps(?P<steps>\d+)-g(?P<guidance>[0-9.]+)-seed(?P<seed>\d+)$")


# --------------------------------------------------------------------------------------------
# Numbers across sampling seeds


@dataclass(frozen=True)
class SeedStat:
    """One metric of one configuration over its sampling seeds (one value per seed)."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1); 0 for a single seed."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else 0.0


StatKey = tuple[str, int, float, str]  # method, steps, guidance, metric


def seed_stats(frame: pd.DataFrame) -> dict[StatKey, SeedStat]:
    """``(method, steps, guidance, metric) -> SeedStat`` for the rows of one suite and teacher.

    Per seed the newest row wins (as in a leaderboard cell); seeds whose newest row was measured
    under another protocol than the configuration's newest row are left out, and skipped or
    missing values count as no seed.
    """
    frame = normalize_frame(frame)
    frame = frame[(frame["metric"] != "") & frame["steps"].notna() & frame["guidance"].notna()]
    if frame.empty:
        return {}
    frame = order_by_recency(frame)  # oldest first
    stats: dict[StatKey, SeedStat] = {}
    for (method, steps, guidance, metric), group in frame.groupby(["method", "steps", "guidance", "metric"]):
        protocol = group.iloc[-1]["protocol"]
        newest = group.groupby("seed", dropna=False, sort=True).tail(1)
        values = tuple(float(row.value) for row in newest.itertuples()
                       if row.protocol == protocol and not is_skipped_note(row.note) and _is_number(row.value))
        if values:
            stats[(str(method), int(steps), round(float(guidance), 6), str(metric))] = SeedStat(values)
    return stats


def _is_number(value: Any) -> bool:
    return value is not None and not pd.isna(value)


@dataclass(frozen=True)
class Point:
    """One configuration of one method (a leaderboard row) with its numbers across seeds."""

    method: str
    steps: int
    guidance: float
    series: str                         # the method, or "method (cfg G)" when it was run at several scales
    stats: Mapping[str, SeedStat]

    def stat(self, metric: str) -> SeedStat | None:
        return self.stats.get(metric)

    def mean(self, metric: str) -> float:
        """The metric's mean in display units (CLIP x100); only for metrics the point has."""
        return self.stats[metric].mean * metric_spec(metric).scale

    @property
    def label(self) -> str:
        return f"{self.method}@{self.steps}"

    @property
    def real(self) -> bool:
        return self.method in REAL_IMAGE_ROWS


def points_of(stats: Mapping[StatKey, SeedStat], keep: Callable[[str], bool] = lambda label: True) -> list[Point]:
    """One point per (method, steps, guidance) whose label ``keep`` accepts, sorted by method and steps."""
    grouped: dict[tuple[str, int, float], dict[str, SeedStat]] = {}
    for (method, steps, guidance, metric), stat in stats.items():
        if keep(method):
            grouped.setdefault((method, steps, guidance), {})[metric] = stat
    guidances: dict[str, set[float]] = {}
    for method, _, guidance in grouped:
        guidances.setdefault(method, set()).add(guidance)
    points = []
    for (method, steps, guidance), metrics in sorted(grouped.items()):
        several = len(guidances[method]) > 1
        series = f"{method} (cfg {format_guidance(guidance)})" if several else method
        points.append(Point(method, steps, guidance, series, metrics))
    return points


def seed_counts(points: Sequence[Point], metrics: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``series -> (fewest, most)`` seeds behind its points' ``metrics``, for series with several somewhere."""
    counts: dict[str, list[int]] = {}
    for p in points:
        for metric in metrics:
            stat = p.stat(metric)
            if stat is not None and not p.real:
                counts.setdefault(p.series, []).append(stat.n)
    return {s: (min(ns), max(ns)) for s, ns in sorted(counts.items()) if max(ns) > 1}


def _count_text(low: int, high: int) -> str:
    return f"{high} seeds" if low == high else f"{low}–{high} seeds"


def seed_caption(points: Sequence[Point], metrics: Sequence[str]) -> str:
    """The index.md line under a plot that says what its error bars are, or "" without any."""
    counts = seed_counts(points, metrics)
    if not counts:
        return ""
    listed = ", ".join(f"{s} {_count_text(*c)}" for s, c in counts.items())
    return (f"Points with several sampling seeds show their mean, error bars ±1 sample standard deviation "
            f"({listed}); every other point is one seed.")


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


# --------------------------------------------------------------------------------------------
# Styles, axes and labels


@dataclass(frozen=True)
class Style:
    """How one series is drawn, the same in every plot of a teacher."""

    color: Any
    marker: str
    linestyle: str      # solid: trained students; dashed: teacher solvers


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p")


def _is_teacher_solver(method: str) -> bool:
    try:
        return not getattr(get_method_class(method), "trains", True)
    except (KeyError, ValueError):
        return False


def series_styles(points: Sequence[Point]) -> dict[str, Style]:
    """A colour and a marker per series, students (solid) first, then teacher solvers (dashed).

    Colours are tab10's ten and black, so up to eleven series differ by colour alone; markers differ
    as well (eleven of them), so a colour that comes round again has another marker.
    """
    from matplotlib import colormaps

    palette = [colormaps["tab10"](i) for i in range(10)] + ["black"]
    series = sorted({(p.series, p.method) for p in points if not p.real})
    solver = {name: _is_teacher_solver(method) for name, method in series}
    ordered = sorted(series, key=lambda s: (solver[s[0]], s[0]))
    return {name: Style(palette[i % len(palette)], _MARKERS[i % len(_MARKERS)], "--" if solver[name] else "-")
            for i, (name, _) in enumerate(ordered)}


class NothingToPlot(Exception):
    """A plot has no numbers to show; the message says which."""


def _new_figure() -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PLOT_SIZE_PX[0] / PLOT_DPI, PLOT_SIZE_PX[1] / PLOT_DPI), dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=PLOT_DPI))


def _spans_a_decade(values: Sequence[float]) -> bool:
    """Whether the positive ``values`` (means and error-bar ends) span 10x or more: then a log axis."""
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) >= 10 * min(positive)


def _plain_log_axis(axis) -> None:
    """Log scale on ``axis`` (ax.xaxis / ax.yaxis) with ticks at 1-2-5 numbers printed plainly."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    (axis.axes.set_xscale if axis is axis.axes.xaxis else axis.axes.set_yscale)("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def _steps_axis(ax, steps: Sequence[int]) -> None:
    """Log2 x axis with a tick at exactly each step count present."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(steps, labels=[str(s) for s in steps])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(min(steps) / 2 ** 0.4, max(steps) * 2 ** 0.4)
    ax.set_xlabel("sampling steps (log scale)")


def _y_limits(ax, values: Sequence[float], reference: float | None, below: bool) -> None:
    """y limits holding ``values`` with a margin, plus a band beyond ``reference`` (on the side
    ``below`` or above it) where the reference line's label goes, clear of the data."""
    log_scale = ax.get_yscale() == "log"
    forward = np.log10 if log_scale else (lambda v: v)
    inverse = (lambda t: 10 ** t) if log_scale else (lambda t: t)
    ts = [float(forward(v)) for v in values if v > 0 or not log_scale]
    if reference is not None:
        ts.append(float(forward(reference)))
    low, high = min(ts), max(ts)
    span = (high - low) or 1.0
    low, high = low - 0.05 * span, high + 0.05 * span
    if reference is not None:
        if below:
            low = min(low, float(forward(reference)) - 0.1 * span)
        else:
            high = max(high, float(forward(reference)) + 0.1 * span)
    ax.set_ylim(inverse(low), inverse(high))


def _series_label(series: str, counts: Mapping[str, tuple[int, int]]) -> str:
    return f"{series} ({_count_text(*counts[series])})" if series in counts else series


def _errors(stats: Sequence[SeedStat], scale: float = 1.0) -> list[float] | None:
    """±1 sd per point for ``errorbar`` (None when every point is a single seed)."""
    return [s.std * scale for s in stats] if any(s.n > 1 for s in stats) else None


def _extent(stats: Sequence[SeedStat], scale: float = 1.0) -> list[float]:
    """Every mean and error-bar end, in display units (what the axis limits must hold)."""
    return [v * scale for s in stats for v in (s.mean - s.std, s.mean, s.mean + s.std)]


def _reference_line(ax, value: float, spread: float, text: str, *, below: bool):
    """A labelled horizontal line (a real-image row) with its ±sd band; the label sits at the left,
    just ``below`` (or above) the line; returns it."""
    ax.axhline(value, color="black", linewidth=1.2, linestyle=":", zorder=1)
    if spread > 0:
        ax.axhspan(value - spread, value + spread, color="black", alpha=0.08, linewidth=0, zorder=1)
    return ax.annotate(text, (0.01, value), xycoords=("axes fraction", "data"), xytext=(0, -3 if below else 3),
                       textcoords="offset points", va="top" if below else "bottom", ha="left", fontsize=8)


def _legend(fig, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize="small", frameon=False)


# Candidate label offsets (points): nearest first, then around the point starting to the right.
_DIRECTIONS = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))
_DISTANCES = (4, 9, 16, 26, 38)
_LEADER_FROM = 8  # labels this far away (points) or farther get a leader line to their point


def _text_box(text, renderer):
    """The window extent of a text or annotation's text alone (an annotation's arrow left out)."""
    from matplotlib.text import Annotation, Text

    if isinstance(text, Annotation):
        text.update_positions(renderer)  # what Annotation.get_window_extent does before adding the arrow
    return Text.get_window_extent(text, renderer)


def marker_boxes(ax, xy: Sequence[tuple[float, float]], radius_px: float = 5.0) -> list:
    """Display-space boxes around data points, for :func:`place_labels` to keep clear of."""
    return marker_boxes_px(ax.transData.transform(np.asarray(xy, dtype=float).reshape(-1, 2)), radius_px)


def line_boxes(ax, xy: Sequence[tuple[float, float]], step_px: float = 4.0) -> list:
    """Small display-space boxes along the polyline through ``xy`` (labels should not sit on it)."""
    points = ax.transData.transform(np.asarray(xy, dtype=float).reshape(-1, 2))
    dots = []
    for start, end in zip(points, points[1:]):
        count = max(1, int(np.hypot(*(end - start)) // step_px))
        dots += [start + (end - start) * k / count for k in range(count + 1)]
    return marker_boxes_px(dots, 1.5)


def marker_boxes_px(centres, radius_px: float) -> list:
    """Square display-space boxes of half-side ``radius_px`` around pixel positions."""
    from matplotlib.transforms import Bbox

    return [Bbox([[x - radius_px, y - radius_px], [x + radius_px, y + radius_px]]) for x, y in centres]


def place_labels(ax, items: Sequence[tuple[float, float, str]], obstacles: Sequence = (),
                 fontsize: float = 7.5, distances: Sequence[float] = _DISTANCES) -> list:
    """Label data points so that no two labels overlap and none covers a marker in ``obstacles``.

    Each label takes the first free spot of ``distances`` x :data:`_DIRECTIONS` inside the
    axes (far spots get a thin leader line); a label with no free spot is left out. Call after the
    figure's layout is final (``fig.canvas.draw()``) and freeze it afterwards. Returns the placed
    annotations.
    """
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = [box.padded(1) for box in obstacles]
    placed = []
    for x, y, text in items:
        for distance in distances:
            label = _try_spots(ax, x, y, text, distance, fontsize, renderer, frame, taken)
            if label is not None:
                taken.append(_text_box(label, renderer).padded(1))
                placed.append(label)
                break
    return placed


def _try_spots(ax, x, y, text, distance, fontsize, renderer, frame, taken):
    """The label at the first of the eight spots ``distance`` points from (x, y) that is free, or None."""
    leader = dict(arrowstyle="-", color="0.45", linewidth=0.6, shrinkA=0, shrinkB=3)
    for dx, dy in _DIRECTIONS:
        scale = distance * (0.75 if dx and dy else 1.0)
        label = ax.annotate(text, (x, y), xytext=(dx * scale, dy * scale), textcoords="offset points",
                            ha={1: "left", 0: "center", -1: "right"}[dx], va={1: "bottom", 0: "center", -1: "top"}[dy],
                            fontsize=fontsize, zorder=5,
                            arrowprops=leader if distance >= _LEADER_FROM else None, annotation_clip=False)
        label.set_in_layout(False)
        box = _text_box(label, renderer)
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        if inside and not any(box.overlaps(other) for other in taken):
            return label
        label.remove()
    return None


def _freeze_layout(fig) -> None:
    """Settle the layout and the axis limits so labels can be placed against the final geometry."""
    fig.canvas.draw()
    for ax in fig.axes:
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
    fig.set_layout_engine("none")


# --------------------------------------------------------------------------------------------
# Plots: each returns a figure (or raises NothingToPlot) that _teacher_section saves


def _reference(points: Sequence[Point], method: str, metric: str) -> SeedStat | None:
    """The real-image row ``method``'s numbers for ``metric``, if it has some."""
    found = [p.stat(metric) for p in points if p.method == method and p.stat(metric) is not None]
    return found[0] if found else None


def figure_metric_vs_steps(points: Sequence[Point], styles: Mapping[str, Style], metric: str, title: str) -> Figure:
    """``metric`` against step count, a line per series and the real-image floor as a labelled line."""
    spec = metric_spec(metric)
    usable = [p for p in points if not p.real and p.steps > 0 and p.stat(metric) is not None]
    if not usable:
        raise NothingToPlot(f"no {spec.label} numbers")
    counts = seed_counts(usable, [metric])
    fig = _new_figure()
    ax = fig.add_subplot()
    for series, style in styles.items():
        stats = [(p.steps, p.stat(metric)) for p in sorted(usable, key=lambda p: p.steps) if p.series == series]
        if stats:
            ax.errorbar([s for s, _ in stats], [st.mean * spec.scale for _, st in stats],
                        yerr=_errors([st for _, st in stats], spec.scale), color=style.color, marker=style.marker,
                        linestyle=style.linestyle, markersize=5, capsize=3, linewidth=1.4,
                        label=_series_label(series, counts))
    values = _extent([p.stat(metric) for p in usable], spec.scale)
    floor = _reference(points, FLOOR_METHOD, metric)
    floor_value = None if floor is None else floor.mean * spec.scale
    below = not spec.higher_is_better  # the floor is best: its label goes on the side away from the data
    if floor is not None:
        values += _extent([floor], spec.scale)
        _reference_line(ax, floor_value, floor.std * spec.scale,
                        f"real-image floor ({FLOOR_METHOD}): {spec.display(floor.mean)}", below=below)
    if metric in LOG_METRICS and _spans_a_decade(values):
        _plain_log_axis(ax.yaxis)
    _y_limits(ax, values, floor_value, below)
    _steps_axis(ax, sorted({p.steps for p in usable}))
    ax.set_ylabel(f"{spec.label} {spec.arrow}")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend(fig, ax)
    return fig


def figure_fid_vs_latency(points: Sequence[Point], styles: Mapping[str, Style], title: str) -> Figure:
    """FID against latency: every point coloured by series, the Pareto front drawn and labelled."""
    usable = [p for p in points if not p.real and p.stat("fid") is not None and p.stat("latency_ms") is not None]
    if not usable:
        raise NothingToPlot("no configuration has both FID and latency")
    counts = seed_counts(usable, ["fid", "latency_ms"])
    xy = [(p.mean("latency_ms"), p.mean("fid")) for p in usable]
    front = pareto_front(xy)
    fig = _new_figure()
    ax = fig.add_subplot()
    for series, style in styles.items():
        pts = [p for p in usable if p.series == series]
        if pts:
            ax.errorbar([p.mean("latency_ms") for p in pts], [p.mean("fid") for p in pts],
                        xerr=_errors([p.stat("latency_ms") for p in pts]), yerr=_errors([p.stat("fid") for p in pts]),
                        color=style.color, marker=style.marker, linestyle="none", markersize=6, capsize=2,
                        zorder=3, label=_series_label(series, counts))
    front_xy = [xy[i] for i in front]
    ax.step(*zip(*front_xy), where="post", color="black", linewidth=1.3, alpha=0.7, zorder=2, label="Pareto front")
    ax.scatter(*zip(*front_xy), s=110, facecolors="none", edgecolors="black", linewidths=1.3, zorder=4)
    fids = _extent([p.stat("fid") for p in usable])
    floor = _reference(points, FLOOR_METHOD, "fid")
    texts = []
    if floor is not None:
        fids += _extent([floor])
        texts.append(_reference_line(ax, floor.mean, floor.std, f"real-image floor ({FLOOR_METHOD}): "
                                     f"{metric_spec('fid').display(floor.mean)}", below=True))
    if _spans_a_decade(_extent([p.stat("latency_ms") for p in usable])):
        _plain_log_axis(ax.xaxis)
    if _spans_a_decade(fids):
        _plain_log_axis(ax.yaxis)
    _y_limits(ax, fids, None if floor is None else floor.mean, below=True)
    ax.margins(x=0.06)
    ax.set_xlabel(f"{metric_spec('latency_ms').label} {metric_spec('latency_ms').arrow} (median, batch 1)")
    ax.set_ylabel("FID ↓")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend(fig, ax)
    _freeze_layout(fig)
    renderer = fig.canvas.get_renderer()
    obstacles = marker_boxes(ax, xy, 6.0) + line_boxes(ax, _staircase(front_xy))
    obstacles += [_text_box(t, renderer) for t in texts]
    place_labels(ax, [(x, y, usable[i].label) for i, (x, y) in zip(front, front_xy)], obstacles, fontsize=8)
    return fig


def _staircase(xy: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The corners of ``ax.step(..., where="post")`` through ``xy``."""
    corners = []
    for (x, y), (next_x, _) in zip(xy, xy[1:]):
        corners += [(x, y), (next_x, y)]
    return corners + list(xy[-1:])


def figure_clip_vs_fid(points: Sequence[Point], styles: Mapping[str, Style], title: str) -> Figure:
    """CLIP x100 against FID; a method's step counts joined in order, each point marked with its steps."""
    usable = [p for p in points if not p.real and p.stat("fid") is not None and p.stat("clip") is not None]
    if not usable:
        raise NothingToPlot("no configuration has both CLIP and FID")
    counts = seed_counts(usable, ["fid", "clip"])
    scale = metric_spec("clip").scale
    fig = _new_figure()
    ax = fig.add_subplot()
    for series, style in styles.items():
        pts = sorted((p for p in usable if p.series == series), key=lambda p: p.steps)
        if pts:
            ax.errorbar([p.mean("fid") for p in pts], [p.mean("clip") for p in pts],
                        xerr=_errors([p.stat("fid") for p in pts]), yerr=_errors([p.stat("clip") for p in pts], scale),
                        color=style.color, marker=style.marker, linestyle=style.linestyle, linewidth=0.9,
                        markersize=5, capsize=2, alpha=0.9, label=_series_label(series, counts))
    xy = [(p.mean("fid"), p.mean("clip")) for p in usable]
    labels = [(x, y, str(p.steps)) for (x, y), p in zip(xy, usable)]
    fids = _extent([p.stat("fid") for p in usable])
    clips = _extent([p.stat("clip") for p in usable], scale)
    real = [p for p in points if p.method == FLOOR_METHOD and p.stat("fid") is not None and p.stat("clip") is not None]
    for p in real:
        ax.scatter([p.mean("fid")], [p.mean("clip")], marker="*", s=160, color="black", zorder=4,
                   label=f"real images, 2nd draw ({FLOOR_METHOD})")
        xy.append((p.mean("fid"), p.mean("clip")))
        fids += _extent([p.stat("fid")])
        clips += _extent([p.stat("clip")], scale)
    wrong = _reference(points, SHUFFLED_METHOD, "clip")
    texts = []
    if wrong is not None:
        texts.append(_reference_line(ax, wrong.mean * scale, wrong.std * scale,
                                     f"real images, wrong caption ({SHUFFLED_METHOD}): "
                                     f"{metric_spec('clip').display(wrong.mean)}", below=True))
    if _spans_a_decade(fids):
        _plain_log_axis(ax.xaxis)
    _y_limits(ax, clips, None if wrong is None else wrong.mean * scale, below=True)
    ax.margins(x=0.05)
    ax.set_xlabel("FID ↓")
    ax.set_ylabel("CLIP ×100 ↑")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend(fig, ax)
    _freeze_layout(fig)
    renderer = fig.canvas.get_renderer()
    place_labels(ax, labels, marker_boxes(ax, xy, 4.5) + [_text_box(t, renderer) for t in texts], fontsize=7,
                 distances=(3, 6))  # next to its point or not at all: no leader lines in the crowd
    return fig


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
    jpeg_quality: int = 90

    @property
    def max_rows(self) -> int:
        """The most rows a JPEG can hold (65,535 pixels high at most)."""
        return max(1, (JPEG_MAX_SIDE - self.header_height) // self.thumb)

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
    """The image on a white ``side`` square: tiny samples (the toy world's 16 px) enlarged by a whole
    factor without smoothing, so their pixels show as they are; larger ones resized to fit."""
    image = image.convert("RGB")
    factor = side // max(image.size)
    if factor >= 3:
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    else:
        image = ImageOps.contain(image, (side, side), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def cut_to_width(draw, text: str, font, width: float, *, ellipsis: bool = False) -> str:
    """``text`` shortened with "…" until it fits ``width`` pixels (always ending in "…" when ``ellipsis``)."""
    if not ellipsis and draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text.rstrip() + "…", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def header_lines(draw, index: int, prompt: str, font, width: float, max_lines: int) -> list[str]:
    """``#3 · a red cube on…``: the image index and the prompt, wrapped to ``width`` pixels, cut after ``max_lines``."""
    words = f"#{index} · {prompt}".split() if prompt.strip() else [f"#{index}"]
    lines: list[str] = []
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words:  # more prompt than room: the last line ends in "…"
        lines[-1] = cut_to_width(draw, " ".join([lines[-1], *words]), font, width, ellipsis=True)
    return [cut_to_width(draw, line, font, width) for line in lines]


def draw_grid(pairs: Sequence[tuple[Entry, SampleFolder]], indices: Sequence[int],
              layout: GridLayout = GridLayout()):
    """The grid image. Rows: method@steps; columns: prompt index (headers ``#3 · prompt…``)."""
    width, height = layout.size(len(pairs), len(indices))
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(12)
    small = _font(11)
    first = pairs[0][1]
    text_width = layout.thumb - 8
    max_lines = max(1, min(2, (layout.header_height - 6) // 15))
    for col, index in enumerate(indices):
        x = layout.label_width + col * layout.thumb
        prompt = first.prompts.get(index, ("", None))[0]
        lines = header_lines(draw, index, prompt, font, text_width, max_lines)
        draw.multiline_text((x + 4, 4), "\n".join(lines), fill="black", font=font, spacing=3)
    for row, (entry, folder) in enumerate(pairs):
        y = layout.header_height + row * layout.thumb
        steps = f"{entry.steps} step{'s' if entry.steps != 1 else ''} · cfg {format_guidance(entry.guidance)}"
        draw.text((6, y + layout.thumb // 2 - 16), cut_to_width(draw, entry.method, font, layout.label_width - 12),
                  fill="black", font=font)
        draw.text((6, y + layout.thumb // 2 + 2), cut_to_width(draw, steps, small, layout.label_width - 12),
                  fill="dimgray", font=small)
        for col, index in enumerate(indices):
            x = layout.label_width + col * layout.thumb
            try:
                with Image.open(folder.image_path(index)) as image:
                    side = layout.thumb - 2 * layout.gutter
                    grid.paste(_fit(image, side), (x + layout.gutter, y + layout.gutter))
            except OSError as exc:
                log.warning("cannot read %s: %s", folder.image_path(index), exc)
                draw.rectangle([x, y, x + layout.thumb - 1, y + layout.thumb - 1], outline="red")
    return grid


def encode_grid(grid, jpeg_quality: int = 90) -> tuple[str, bytes]:
    """``(suffix, bytes)``: the smaller of a JPEG (photographs) and an optimized PNG (the toy world's
    enlarged pixels, which PNG keeps exact and small)."""
    encoded = []
    for suffix, options in ((".jpg", dict(format="JPEG", quality=jpeg_quality, optimize=True, progressive=True)),
                            (".png", dict(format="PNG", optimize=True))):
        buffer = io.BytesIO()
        grid.save(buffer, **options)
        encoded.append((len(buffer.getvalue()), suffix, buffer.getvalue()))
    _, suffix, data = min(encoded)
    return suffix, data


def write_grid(grid, stem: Path, jpeg_quality: int = 90) -> Path:
    """Write the grid as ``<stem>.jpg`` or ``<stem>.png`` (:func:`encode_grid`), removing the other; return its path."""
    suffix, data = encode_grid(grid, jpeg_quality)
    path = stem.parent / f"{stem.name}{suffix}"  # not with_suffix: a teacher may be called "sd1.5"
    atomic_write_bytes(path, data)
    for other in (".jpg", ".png"):
        if other != suffix:
            (stem.parent / f"{stem.name}{other}").unlink(missing_ok=True)  # left by an earlier report
    return path


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


@dataclass(frozen=True)
class _Section:
    """What one teacher's part of the report is drawn from."""

    suite: str
    teacher: str
    entries: Sequence[Entry]            # the leaderboard rows (all of them, for the tables)
    frame: pd.DataFrame                 # this suite's and teacher's result rows
    keep: Callable[[str], bool]         # which row labels the plots and the grid show


def write_report(results: pd.DataFrame, samples_root: Path | None, out_dir: Path, *,
                 suite: str | None = None, teacher: str | None = None,
                 layout: GridLayout = GridLayout(), ablations: bool = False,
                 kinds: RowKinds | None = None) -> Path:
    """Write plots, sample grids and ``index.md`` into ``out_dir``; return the path of ``index.md``.

    Plots and grids show canonical rows only unless ``ablations``; ``kinds`` classifies the labels
    (default: this repository's registry, zoo and experiment files).
    """
    frame = normalize_frame(results)
    frame = frame[frame["metric"] != ""]
    if frame.empty:
        raise BenchError("no result rows to report on; run `python -m bench run` first")
    suite = suite or latest_suite(frame)
    built = build(frame, [suite]).get(suite)
    if not built:
        present = ", ".join(sorted(set(frame["suite"])))
        raise BenchError(f"no result rows for suite {suite!r}; suites present: {present}")
    if teacher is not None:
        if teacher not in built:
            raise BenchError(f"no result rows for teacher {teacher!r} in suite {suite!r}; teachers: {', '.join(built)}")
        built = {teacher: built[teacher]}
    kinds = kinds or RowKinds()
    keep = (lambda label: True) if ablations else kinds.is_canonical
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = [c for entries in built.values() for e in entries for c in e.cells.values()]
    lines = [f"# Report: {suite}", "", runs_line(cells), "",
             "Numbers are the leaderboard's cells: one fingerprint per cell, the most recent run wins; the "
             "plots average the sampling seeds of a configuration where there are several. "
             "CLIP is shown ×100. See the notes under each table for skipped or superseded cells.", ""]
    suite_frame = frame[frame["suite"] == suite]
    for name, entries in built.items():
        section = _Section(suite, name, entries, suite_frame[suite_frame["teacher"] == name], keep)
        lines += _teacher_section(section, samples_root, out_dir, layout)
    index = out_dir / "index.md"
    while lines and lines[-1] == "":
        lines.pop()
    atomic_write_text(index, "\n".join(lines) + "\n")
    log.info("wrote report %s", index)
    return index


def ablation_note(entries: Sequence[Entry], keep: Callable[[str], bool]) -> str:
    """The one index.md line that says how many ablation rows the plots and the grid leave out."""
    left_out = [e for e in entries if not keep(e.method)]
    if not left_out:
        return ""
    labels = sorted({e.method for e in left_out})
    return (f"Plots and the sample grid show canonical rows only: {len(left_out)} row(s) of {len(labels)} "
            f"ablation(s) (such as `{labels[0]}`; see `leaderboards/{entries[0].suite}-ablations.md`) are left out.")


def _plots(points: Sequence[Point], styles: Mapping[str, Style]) -> list[tuple[str, str, Callable, list[str], str]]:
    """(file stem, title, figure maker taking the plot title, metrics shown, caption) of each plot."""
    solvers = "Dashed lines: teacher solvers; solid: trained students."
    return [
        ("fid_vs_steps", "FID vs sampling steps",
         lambda title: figure_metric_vs_steps(points, styles, "fid", title), ["fid"], solvers),
        ("coverage_vs_steps", "Coverage vs sampling steps",
         lambda title: figure_metric_vs_steps(points, styles, "coverage", title), ["coverage"], solvers),
        ("fid_vs_latency", "FID vs latency (Pareto front outlined)",
         lambda title: figure_fid_vs_latency(points, styles, title), ["fid", "latency_ms"],
         "Labelled: the Pareto front (no other configuration is both faster and better)."),
        ("clip_vs_fid", "CLIP vs FID",
         lambda title: figure_clip_vs_fid(points, styles, title), ["clip", "fid"],
         "Lines join a method's step counts; the small numbers are the steps (left out where there is no room)."),
    ]


def _teacher_section(section: _Section, samples_root: Path | None, out_dir: Path, layout: GridLayout) -> list[str]:
    suite, teacher = section.suite, section.teacher
    points = points_of(seed_stats(section.frame), section.keep)
    styles = series_styles(points)
    lines = [f"## Teacher: {teacher}", ""]
    note = ablation_note(section.entries, section.keep)
    if note:
        lines += [note, ""]
    skipped: list[str] = []
    for stem, title, make, metrics, caption in _plots(points, styles):
        path = out_dir / f"{teacher}-{stem}.png"
        try:
            _save(make(f"{suite} · {teacher}: {title}"), path)
            reason = None
        except NothingToPlot as exc:
            reason = str(exc)
        except Exception as exc:  # a broken plot must not cost the rest of the report
            log.exception("plot %s failed", stem)
            reason = f"plotting failed ({type(exc).__name__}: {exc})"
        if reason:
            skipped.append(f"{title}: skipped, {reason}.")
            continue
        captions = " ".join(c for c in (caption, seed_caption(points, metrics)) if c)
        lines += [f"### {title}", "", f"![{title}]({path.name})", "", captions, ""]
    shown = [e for e in section.entries if section.keep(e.method)]
    lines += _grid_section(suite, teacher, shown, samples_root, out_dir, layout, skipped)
    if skipped:
        lines += ["### Not shown", ""] + [f"- {s}" for s in skipped] + [""]
    lines += ["### Tables", ""]
    lines += render_section_markdown(suite, teacher, section.entries, level=3)[2:]  # drop the section title
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
    matched = {f"{e.method}@{e.steps}" for e, _ in pairs}
    if len(pairs) > layout.max_rows:
        skipped.append(f"Samples: the grid holds the first {layout.max_rows} of {len(pairs)} rows "
                       f"(a JPEG is at most {JPEG_MAX_SIDE} pixels high).")
        pairs = pairs[:layout.max_rows]
    indices, notes = choose_prompts([f for _, f in pairs], layout.max_prompts)
    skipped.extend(notes)
    if not indices:
        skipped.append(f"{title}: skipped, no prompt index has an image in every sample folder.")
        return []
    try:
        path = write_grid(draw_grid(pairs, indices, layout), out_dir / f"{teacher}-samples_grid", layout.jpeg_quality)
    except Exception as exc:
        log.exception("sample grid failed")
        skipped.append(f"{title}: skipped, drawing failed ({type(exc).__name__}: {exc}).")
        return []
    measured = [e for e in entries if any(not c.skipped for c in e.cells.values())]
    missing = sorted({f"{e.method}@{e.steps}" for e in measured} - matched)
    lines = [f"### {title}", "", f"![{title}]({path.name})", "",
             "Each column is one prompt (#index in the suite) with the same noise seed in every row.", ""]
    if missing:
        lines += [f"No samples found for: {', '.join(missing)}.", ""]
    return lines
