"""`bench report`'s plots and sample grid (bench/publish/report.py): numbers across seeds, the
real-image floor as a line, the step axis, labels that do not collide, canonical rows only, short
grid headers and small grid files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text
from PIL import Image, ImageDraw

from bench.publish import report
from bench.publish.kinds import RowKinds
from bench.publish.leaderboard import build, rows_from_leaderboard
from bench.scoring.results import Row, rows_to_frame
from bench.scoring.toy import FLOOR_METHOD, SHUFFLED_METHOD

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = {"N": 64, "feature_space": "toy"}
SEED_19 = 8_123_456_789_012_345_678  # a per-image seed as `bench run` records them: 19 digits
PROMPTS = ["a red cube on a wooden table next to a tall lighthouse at dusk", "a green sphere", "a yellow triangle",
           "two small purple crosses at the bottom left on a grey background", "a tree"]


def row(method: str, steps: int, metric: str, value: float | None, *, seed: int = 0, time: str = "2025-01-02",
        protocol: dict = PROTOCOL, note: str = "", guidance: float = 3.0) -> Row:
    return Row(suite="smoke", teacher="toy", method=method, steps=steps, nfe=steps, guidance=guidance, seed=seed,
               num_images=64, metric=metric, value=value, fingerprint=f"{method}{steps}{metric}{seed}{time}",
               run_id=f"{time.replace('-', '')}T000000000000Z-{seed:06d}", time=f"{time}T00:00:00.000000Z",
               device="cpu", protocol=protocol, note=note)


def method_rows(method: str, steps_fid: dict[int, float], *, seed: int = 0, latency: float = 10.0) -> list[Row]:
    """FID, Coverage, CLIP and latency of ``method`` at each step count (made-up but ordered numbers)."""
    rows = []
    for steps, fid in steps_fid.items():
        rows += [row(method, steps, "fid", fid, seed=seed), row(method, steps, "coverage", 1 / (1 + fid), seed=seed),
                 row(method, steps, "clip", 0.3 - fid / 1000, seed=seed),
                 row(method, steps, "latency_ms", latency * steps, seed=seed)]
    return rows


def floor_rows() -> list[Row]:
    return [row(FLOOR_METHOD, 0, "fid", 0.5, guidance=0.0), row(FLOOR_METHOD, 0, "coverage", 0.99, guidance=0.0),
            row(FLOOR_METHOD, 0, "clip", 0.33, guidance=0.0), row(SHUFFLED_METHOD, 0, "clip", 0.02, guidance=0.0)]


def steps_frame() -> pd.DataFrame:
    solver = {1: 90.0, 2: 40.0, 4: 12.0, 8: 5.0, 25: 2.5, 50: 2.0}
    rows = method_rows("ddim", solver) + method_rows("dpmpp", {k: v * 0.9 for k, v in solver.items()})
    rows += method_rows("lcm", {1: 20.0, 2: 9.0, 4: 6.0, 8: 5.5}) + floor_rows()
    return rows_to_frame(rows)


def points(frame: pd.DataFrame, keep=RowKinds().is_canonical) -> list[report.Point]:
    return report.points_of(report.seed_stats(frame), keep)


def figure(kind: str, frame: pd.DataFrame, metric: str = "fid"):
    pts = points(frame)
    styles = report.series_styles(pts)
    if kind == "steps":
        fig = report.figure_metric_vs_steps(pts, styles, metric, "t")
    elif kind == "latency":
        fig = report.figure_fid_vs_latency(pts, styles, "t")
    else:
        fig = report.figure_clip_vs_fid(pts, styles, "t")
    fig.canvas.draw()
    return fig


def overlapping_pairs(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]


def label_boxes(fig, pattern: str = "@"):
    """Display boxes (text alone, leader lines left out) of the point labels of the figure's axes."""
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if pattern in t.get_text() or (pattern == "steps" and t.get_text().isdigit())]
    for label in labels:
        label.update_positions(renderer)
    return labels, [Text.get_window_extent(label, renderer) for label in labels]


# --------------------------------------------------------------------------------------------
# Numbers across seeds


def test_seed_stats_are_the_newest_row_of_each_seed_with_numpy_mean_and_std():
    fids = {0: 10.0, 1: 12.5, 2: 9.0, 5: 14.25}
    rows = [row("lcm", 2, "fid", v, seed=s, time="2025-01-03") for s, v in fids.items()]
    rows += [row("lcm", 2, "fid", 99.0, seed=1, time="2025-01-01"),               # older run of seed 1: superseded
             row("lcm", 2, "fid", 50.0, seed=7, time="2025-01-02", note="skipped: no FID model"),
             row("lcm", 2, "fid", 40.0, seed=8, time="2025-01-01", protocol={"N": 32}),  # another protocol
             row("lcm", 4, "fid", 3.0, seed=0)]
    stats = report.seed_stats(rows_to_frame(rows))
    stat = stats[("lcm", 2, 3.0, "fid")]
    expected = np.array(list(fids.values()))
    assert sorted(stat.values) == sorted(expected) and stat.n == 4
    assert stat.mean == pytest.approx(np.mean(expected), rel=1e-12)
    assert stat.std == pytest.approx(np.std(expected, ddof=1), rel=1e-12)
    single = stats[("lcm", 4, 3.0, "fid")]
    assert (single.n, single.mean, single.std) == (1, 3.0, 0.0)
    # With one seed a point is the leaderboard's cell.
    entry = next(e for e in build(rows_to_frame(rows))["smoke"]["toy"] if e.steps == 4)
    assert single.mean == entry.value("fid")


def test_error_bars_are_mean_and_sample_std_with_the_count_in_the_legend():
    base = {1: 20.0, 2: 9.0, 4: 6.0}
    by_seed = {0: base, 1: {k: v * 1.1 for k, v in base.items()}, 2: {k: v * 0.85 for k, v in base.items()}}
    rows = [r for seed, fids in by_seed.items() for r in method_rows("lcm", fids, seed=seed)]
    rows += method_rows("ddim", {1: 90.0, 2: 40.0, 4: 12.0}) + floor_rows()
    fig = figure("steps", rows_to_frame(rows))
    ax = fig.axes[0]
    [container] = [c for c in ax.containers if c.get_label() == "lcm (3 seeds)"]
    line, _, (bars,) = container.lines
    values = np.array([[by_seed[s][k] for s in by_seed] for k in base])  # steps x seeds
    np.testing.assert_allclose(np.asarray(line.get_xdata(), float), list(base))  # errorbar keeps object arrays
    np.testing.assert_allclose(np.asarray(line.get_ydata(), float), values.mean(axis=1), rtol=1e-12)
    for segment, mean, std in zip(bars.get_segments(), values.mean(axis=1), values.std(axis=1, ddof=1)):
        np.testing.assert_allclose(segment[:, 1], [mean - std, mean + std], rtol=1e-12)
    assert [c.get_label() for c in ax.containers if "ddim" in c.get_label()] == ["ddim"]  # one seed: no count
    caption = report.seed_caption(points(rows_to_frame(rows)), ["fid"])
    assert "lcm 3 seeds" in caption and "ddim" not in caption


# --------------------------------------------------------------------------------------------
# Steps plots: the floor is a line, the ticks are the step counts


@pytest.mark.parametrize("metric", ["fid", "coverage"])
def test_steps_plot_has_the_floor_as_a_labelled_line_and_ticks_at_the_step_counts(metric):
    frame = steps_frame()
    fig = figure("steps", frame, metric)
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [1, 2, 4, 8, 25, 50]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8", "25", "50"]
    assert ax.get_xscale() == "log" and ax.get_yscale() == ("log" if metric == "fid" else "linear")
    assert all(min(line.get_xdata()) >= 1 for line in ax.lines if len(line.get_xdata()) > 2)  # no step-0 point
    floor = frame[(frame["method"] == FLOOR_METHOD) & (frame["metric"] == metric)]["value"].item()
    flat = [line for line in ax.lines if len(set(line.get_ydata())) == 1 and line.get_ydata()[0] == floor]
    assert len(flat) == 1 and flat[0].get_linestyle() == ":"
    low, high = ax.get_ylim()
    assert low < floor < high
    [label] = [t for t in ax.texts if FLOOR_METHOD in t.get_text()]
    renderer = fig.canvas.get_renderer()
    box, frame_box = Text.get_window_extent(label, renderer), ax.get_window_extent(renderer)
    assert frame_box.contains(box.x0, box.y0) and frame_box.contains(box.x1, box.y1)
    ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    assert overlapping_pairs(ticks) == []
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:1] == ["lcm"] and set(legend) == {"lcm", "ddim", "dpmpp"}  # students first, then solvers


def test_steps_plot_ticks_of_the_committed_toy_leaderboard_do_not_overlap():
    frame = rows_from_leaderboard(json.loads((ROOT / "leaderboards" / "toy.json").read_text(encoding="utf-8")))
    fig = figure("steps", frame)
    ax = fig.axes[0]
    steps = sorted({int(s) for s in frame["steps"] if s > 0})
    assert list(ax.get_xticks()) == steps
    renderer = fig.canvas.get_renderer()
    assert overlapping_pairs([t.get_window_extent(renderer) for t in ax.get_xticklabels()]) == []


# --------------------------------------------------------------------------------------------
# Labels that do not collide


def crowded_frame() -> pd.DataFrame:
    """Forty configurations of ten methods packed into a small corner, most of them on the Pareto front."""
    rng = np.random.default_rng(0)
    rows = []
    for m, method in enumerate(("lcm", "lcm-lora", "scott", "splam", "dmd", "dmd2", "mcm", "ddim", "dpmpp", "er-sde")):
        for k, steps in enumerate((1, 2, 4, 8)):
            latency = 10 + 0.8 * (4 * m + k) + rng.uniform(0, 0.3)
            fid = 40 - 0.9 * (4 * m + k) + rng.uniform(0, 0.5)
            rows += [row(method, steps, "fid", fid), row(method, steps, "latency_ms", latency),
                     row(method, steps, "clip", 0.2 + 0.002 * (4 * m + k) + rng.uniform(0, 0.003))]
    return rows_to_frame(rows + floor_rows())


def test_pareto_labels_do_not_overlap_each_other_or_the_markers():
    frame = crowded_frame()
    fig = figure("latency", frame)
    ax = fig.axes[0]
    pts = [p for p in points(frame) if not p.real]
    xy = [(p.mean("latency_ms"), p.mean("fid")) for p in pts]
    front = {pts[i].label for i in report.pareto_front(xy)}
    labels, boxes = label_boxes(fig)
    assert len(front) >= 20 and {t.get_text() for t in labels} <= front
    assert len(labels) >= 0.75 * len(front)  # a crowded front still gets most of its labels
    assert overlapping_pairs(boxes) == []
    renderer = fig.canvas.get_renderer()
    frame_box = ax.get_window_extent(renderer)
    markers = report.marker_boxes(ax, xy, 3.0)
    for box in boxes:
        assert frame_box.x0 <= box.x0 and box.x1 <= frame_box.x1 and frame_box.y0 <= box.y0 and box.y1 <= frame_box.y1
        assert not any(box.overlaps(marker) for marker in markers)


def test_clip_vs_fid_step_labels_do_not_overlap():
    fig = figure("clip", crowded_frame())
    labels, boxes = label_boxes(fig, "steps")
    assert labels and overlapping_pairs(boxes) == []


def test_the_committed_toy_leaderboard_labels_every_pareto_point_without_overlaps():
    frame = rows_from_leaderboard(json.loads((ROOT / "leaderboards" / "toy.json").read_text(encoding="utf-8")))
    fig = figure("latency", frame)
    pts = [p for p in points(frame) if not p.real and p.stat("fid") and p.stat("latency_ms")]
    front = {pts[i].label for i in report.pareto_front([(p.mean("latency_ms"), p.mean("fid")) for p in pts])}
    labels, boxes = label_boxes(fig)
    assert {t.get_text() for t in labels} == front
    assert overlapping_pairs(boxes) == []


# --------------------------------------------------------------------------------------------
# Canonical rows only


def test_ablations_are_left_out_of_the_plots_and_counted_in_the_index(tmp_path):
    rows = method_rows("lcm", {1: 20.0, 2: 9.0}) + method_rows("dmd-ttur-5-4000-steps", {1: 3.0})
    rows += method_rows("lcm-l2-600-steps", {1: 4.0, 2: 3.0}) + floor_rows()
    frame = rows_to_frame(rows)
    assert {p.method for p in points(frame)} == {"lcm", FLOOR_METHOD, SHUFFLED_METHOD}
    index = report.write_report(frame, None, tmp_path / "r")
    text = index.read_text(encoding="utf-8")
    [line] = [line for line in text.splitlines() if "canonical rows only" in line]
    assert "3 row(s) of 2 ablation(s)" in line and "`dmd-ttur-5-4000-steps`" in line
    index = report.write_report(frame, None, tmp_path / "all", ablations=True)
    assert "canonical rows only" not in index.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# The sample grid


def test_header_lines_are_short_and_fit_the_column():
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = report._font(12)
    lines = report.header_lines(draw, 3, PROMPTS[0], font, 150, 2)
    assert len(lines) == 2 and lines[0].startswith("#3 · a red") and lines[-1].endswith("…")
    assert all(draw.textlength(line, font=font) <= 150 for line in lines)
    assert report.header_lines(draw, 1, "a green sphere", font, 150, 2) == ["#1 · a green sphere"]
    assert report.header_lines(draw, 4, "", font, 150, 2) == ["#4"]


def write_samples(root: Path, configs, size: int, make) -> None:
    """Sample folders as `bench run` writes them, per-image seeds of 19 digits in metadata.json."""
    for method, steps in configs:
        folder = root / "smoke" / "toy" / method / f"steps{steps}-g3-seed0"
        folder.mkdir(parents=True)
        for i in range(len(PROMPTS)):
            Image.fromarray(make(method, steps, i, size)).save(folder / f"{i:05d}.png")
        meta = {"method": method, "steps": steps, "guidance_scale": 3.0, "seed": 0,
                "prompts": [{"index": i, "prompt": p, "seed": SEED_19 + i} for i, p in enumerate(PROMPTS)]}
        (folder / "metadata.json").write_text(json.dumps(meta))


def toy_like(method: str, steps: int, i: int, size: int) -> np.ndarray:
    """A 16-pixel shape on a background with noise that shrinks with the step count, like the toy world."""
    rng = np.random.default_rng([len(method), steps, i])
    image = np.full((size, size, 3), 128.0)
    image[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = rng.uniform(0, 255, 3)
    return np.clip(image + rng.normal(0, 60 / (1 + steps), image.shape), 0, 255).astype(np.uint8)


def photo_like(method: str, steps: int, i: int, size: int) -> np.ndarray:
    """Smooth colour fields with fine texture: what a text-to-image sample looks like to a codec."""
    rng = np.random.default_rng([len(method), steps, i])
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(rng.uniform(2, 9) * x + rng.uniform(2, 9) * y + rng.uniform(0, 6)) for _ in range(3)]
    image = 127 + 100 * np.stack(channels, axis=-1) + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def recording(draw_text, drawn: list[str]):
    """``ImageDraw.text`` (or ``multiline_text``) that also notes the text it draws."""
    def wrapper(self, xy, text, *args, **kwargs):
        drawn.append(str(text))
        return draw_text(self, xy, text, *args, **kwargs)
    return wrapper


TOY_CONFIGS = [(m, k) for m in ("ddim", "dpmpp", "er-sde", "pndm") for k in (1, 2, 4, 8, 25, 50)]
TOY_CONFIGS += [(m, k) for m in ("lcm", "lcm-lora", "scott", "splam", "dmd", "dmd2", "mcm") for k in (1, 2, 4, 8)]


@pytest.mark.parametrize("make, size, suffix", [(toy_like, 16, ".png"), (photo_like, 256, ".jpg")])
def test_grid_of_the_default_toy_suite_is_well_under_a_megabyte(tmp_path, monkeypatch, make, size, suffix):
    configs = TOY_CONFIGS if make is toy_like else TOY_CONFIGS[:16]
    write_samples(tmp_path / "samples", configs, size, make)
    rows = [row(m, k, "fid", 10.0 / k) for m, k in configs]
    drawn: list[str] = []
    for name in ("text", "multiline_text"):
        monkeypatch.setattr(ImageDraw.ImageDraw, name, recording(getattr(ImageDraw.ImageDraw, name), drawn))
    index = report.write_report(rows_to_frame(rows), tmp_path / "samples", tmp_path / "report")
    [grid] = sorted((tmp_path / "report").glob("toy-samples_grid.*"))
    assert grid.suffix == suffix and f"]({grid.name})" in index.read_text(encoding="utf-8")
    assert grid.stat().st_size < 600_000, grid.stat().st_size
    layout = report.GridLayout()
    with Image.open(grid) as image:
        assert image.size == layout.size(len(configs), layout.max_prompts)
    assert any(t.startswith("#0 · a red cube on a") and t.endswith("…") for t in drawn)  # cut to fit
    assert not any(str(SEED_19)[:10] in t for t in drawn)  # no seed in any header


def test_grid_shows_tiny_samples_pixel_for_pixel(tmp_path):
    image = Image.fromarray(toy_like("lcm", 1, 0, 16))
    fitted = report._fit(image, 156)
    assert fitted.size == (156, 156)
    inner = fitted.crop((6, 6, 150, 150))  # 16 x 9 = 144 pixels, centred
    assert inner.resize((16, 16), Image.Resampling.NEAREST).tobytes() == image.tobytes()


def test_write_grid_keeps_the_smaller_encoding_and_removes_the_other(tmp_path):
    (tmp_path / "t.5-samples_grid.jpg").write_bytes(b"old")
    flat = Image.new("RGB", (300, 200), (10, 200, 30))
    path = report.write_grid(flat, tmp_path / "t.5-samples_grid")
    assert path.name == "t.5-samples_grid.png" and not (tmp_path / "t.5-samples_grid.jpg").exists()
    with Image.open(path) as back:
        assert back.getpixel((150, 100)) == (10, 200, 30)


def test_a_grid_taller_than_a_jpeg_allows_keeps_the_first_rows_and_says_so(tmp_path, monkeypatch):
    configs = [("lcm", k) for k in (1, 2, 4, 8, 16)]
    write_samples(tmp_path / "samples", configs, 16, toy_like)
    layout = report.GridLayout(thumb=48, header_height=40)
    monkeypatch.setattr(report, "JPEG_MAX_SIDE", 40 + 3 * 48 + 10)
    assert layout.max_rows == 3
    rows = [row(m, k, "fid", 10.0 / k) for m, k in configs]
    index = report.write_report(rows_to_frame(rows), tmp_path / "samples", tmp_path / "report", layout=layout)
    assert "the grid holds the first 3 of 5 rows" in index.read_text(encoding="utf-8")
    [grid] = (tmp_path / "report").glob("toy-samples_grid.*")
    with Image.open(grid) as image:
        assert image.size == layout.size(3, layout.max_prompts)
