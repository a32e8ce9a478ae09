"""`bench report --html` (bench/publish/site.py) without a browser: the page is parsed with the
standard library's html.parser and checked against the committed toy leaderboard it was made from.
The browser test (sorting, filters, images, the details panel) is test_report_site_browser.py."""
from __future__ import annotations

import os
import re
import time

import pytest
from markupsafe import escape
from PIL import Image
from report_site_data import Page, toy_frame, toy_rows, write_results, write_samples

from bench.cli import main
from bench.publish import site
from bench.publish.kinds import RowKinds
from bench.scoring.results import metric_spec

SAMPLED = [("ddim", 1, 3.0), ("ddim", 2, 3.0), ("lcm", 1, 3.0), ("lcm", 2, 3.0)]


def _report(tmp_path, results, *extra: str, samples=None) -> tuple[list[str], Page]:
    argv = ["report", "--results", str(results), "--out", str(tmp_path / "site"), "--html", *extra]
    if samples is not None:
        argv += ["--samples-root", str(samples)]
    assert main(argv) == 0
    html = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    return html, Page(html)


def _report_images(out) -> list:
    """What `bench report` wrote for teacher toy (plots and sample grid)."""
    return sorted(p for p in out.iterdir() if p.name.startswith("toy-") and p.suffix in (".png", ".jpg"))


def _printed(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def _assert_images_are_the_assets(out, page: Page) -> None:
    """Every <img> is a relative file under assets/ with the size the page gives it, and every
    file of assets/ is shown once."""
    sources = [img["src"] for img in page.images]
    assert all(src.startswith("assets/") for src in sources)
    assert sorted(sources) == sorted(f"assets/{p.name}" for p in (out / "assets").iterdir())
    for img in page.images:
        with Image.open(out / img["src"]) as image:
            assert image.size == (int(img["width"]), int(img["height"])) and image.width > 0


def test_toy_leaderboard_site(tmp_path, capsys):
    rows = toy_rows()
    results = write_results(toy_frame(), tmp_path / "results")
    write_samples(tmp_path / "samples", [("toy", "toy", m, k, g) for m, k, g in SAMPLED])
    out = tmp_path / "site"
    out.mkdir()
    stale = out / "toy-left_by_an_earlier_report.png"   # not written by this report: not shown
    Image.new("RGB", (8, 8), "blue").save(stale)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    html, page = _report(tmp_path, results, samples=tmp_path / "samples")
    assert _printed(capsys) == [str(out / "index.md"), str(out / "index.html")]

    # One table row per leaderboard row; ablations are there but hidden until the filter asks.
    kinds = RowKinds()
    canonical = [r for r in rows if kinds.of(r["method"]).canonical]
    assert 0 < len(canonical) < len(rows)
    assert len(page.rows) == len(rows)
    assert len([r for r in page.rows if "hidden" not in r]) == len(canonical)
    assert all(r["data-kind"] == ("canonical" if kinds.of(r["data-method"]).canonical else "ablation")
               for r in page.rows)
    assert page.headers[:3] == ["Method", "Kind", "Steps"]   # one suite and teacher: no column for them

    # Displayed numbers: CLIP x100 with two decimals, a skipped cell as "—" (dmd has no 2-step mode).
    by_config = {(r["data-method"], r["data-steps"]): r for r in page.rows}
    clip, fid = page.column("CLIP×100 ↑"), page.column("FID ↓")
    for row in rows:
        shown = by_config[(row["method"], str(row["steps"]))]["cells"]
        if "clip" in row["metrics"]:
            assert shown[clip] == f"{row['metrics']['clip'] * 100:.2f}"
        if "fid" in row["skipped"]:
            assert shown[fid] == "—"
    assert by_config[("dmd", "2")]["cells"][fid] == "—"

    # The details panel's data: every cell's fingerprint, run and protocol, as the JSON recorded them.
    data = page.data()
    assert len(data["rows"]) == len(rows)
    details = {(r["method"], r["steps"], r["cfg"]): r for r in data["rows"]}
    for row in rows:
        cells = {c["metric"]: c for c in details[(row["method"], row["steps"], f"{row['guidance']:g}")]["cells"]}
        assert {m: c["fingerprint"] for m, c in cells.items()} == row["fingerprints"]
        assert {m: c["run_id"] for m, c in cells.items()} == row["runs"]
        assert all(c["seed"] == row["seed"] for c in cells.values())
    protocol = data["protocols"][details[("lcm", 1, "3")]["cells"][0]["protocol"]]
    assert '"suite_fingerprint": "910d2675ec9cc231"' in protocol
    ablation = details[("lcm-l2-3000-steps", 4, "3")]
    assert ablation["kind"] == "ablation" and ablation["varies"] == "lcm"
    assert ablation["config_path"] == "methods/configs/lcm/ablations/l2-3000-steps.toml"
    first = details[("lcm", 1, "3")]["cells"]
    assert [c["metric"] for c in first[:4]] == ["fid", "clip", "coverage", "latency_ms"]  # the table's order
    (lcm1,) = [r for r in rows if (r["method"], r["steps"]) == ("lcm", 1)]
    assert first[0]["value"] == metric_spec("fid").display(lcm1["metrics"]["fid"])

    # Images: the plots and the sample grid bench report wrote, copied into assets/ byte for byte.
    written = [p for p in _report_images(out) if p != stale]
    assert len(written) >= 2 and len(page.images) == len(written)
    assert sorted(p.read_bytes() for p in written) == sorted(p.read_bytes() for p in (out / "assets").iterdir())
    _assert_images_are_the_assets(out, page)

    # Self-contained: nothing from the network, no external script or style sheet.
    assert not re.search(r"https?://", html)
    assert all(not url.startswith(("//", "http:", "https:", "/")) for url in page.urls)
    assert [attrs for attrs, _ in page.scripts if "src" in attrs] == [] and "<link" not in html
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_every_suite_unless_one_is_asked_for_and_a_rerun_replaces_the_assets(tmp_path, capsys):
    toy = toy_frame(methods=["ddim", "lcm", "lcm-l2-3000-steps"], steps=[1, 2, 4])
    smoke = toy.assign(suite="smoke", fingerprint=toy["fingerprint"] + "-smoke")
    results = write_results(toy, tmp_path / "results", "a")
    write_results(smoke, tmp_path / "results", "b")
    configs = [(s, "toy", m, k, g) for s in ("toy", "smoke") for m, k, g in SAMPLED]
    write_samples(tmp_path / "samples", configs)
    entries = len(toy.groupby(["method", "steps"]))

    html, page = _report(tmp_path, results, samples=tmp_path / "samples")
    out = tmp_path / "site"
    per_suite = len(_report_images(out))   # the report of the latest suite, as bench report writes it
    assert {r["data-suite"] for r in page.rows} == {"toy", "smoke"} and len(page.rows) == 2 * entries
    assert page.headers[:3] == ["Suite", "Method", "Kind"]
    assert [r["cells"][0] for r in page.rows] == [r["data-suite"] for r in page.rows]
    assert [s["data-suite"] for s in page.sections] == ["smoke", "toy"]
    assert len(page.images) == 2 * per_suite
    fingerprints = {c["fingerprint"] for r in page.data()["rows"] if r["suite"] == "smoke" for c in r["cells"]}
    assert fingerprints and all(fp.endswith("-smoke") for fp in fingerprints)
    _assert_images_are_the_assets(out, page)

    html, page = _report(tmp_path, results, "--suite", "toy", samples=tmp_path / "samples")
    assert {r["data-suite"] for r in page.rows} == {"toy"} and len(page.rows) == entries
    assert len(page.images) == per_suite
    _assert_images_are_the_assets(out, page)   # the other suite's images are gone from assets/
    capsys.readouterr()


def test_labels_and_notes_are_escaped(tmp_path):
    frame = toy_frame(methods=["lcm"], steps=[1])
    label = '<img src=x onerror="alert(1)">'
    note = "</script><script>alert(2)</script> & 'quotes'"
    frame = frame.assign(method=label, note=note)
    out = tmp_path / "site"
    site.write_site(frame, out, reports={})
    html = (out / "index.html").read_text(encoding="utf-8")
    page = Page(html)
    assert "<img src=x" not in html and "<script>alert" not in html
    assert [r["data-method"] for r in page.rows] == [label]
    assert page.rows[0]["cells"][page.column("Method")] == label
    assert page.images == []
    cells = page.data()["rows"][0]["cells"]
    assert page.data()["rows"][0]["method"] == label and {c["note"] for c in cells} == {note}
    assert f'<p class="note">{escape(note)}</p>' in html   # the section's note, escaped once


def test_a_failed_write_keeps_the_previous_site(tmp_path, monkeypatch):
    frame = toy_frame(methods=["ddim", "lcm"], steps=[1, 2])
    out = tmp_path / "site"
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    Image.new("RGB", (20, 10), "red").save(report_dir / "toy-plot.png")
    site.write_site(frame, out, reports={"toy": report_dir})
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert sorted(map(str, before)) == ["assets/000-toy-toy-plot.png", "index.html"]

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure while rendering")

    monkeypatch.setattr(site, "render_site", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        site.write_site(toy_frame(methods=["lcm"], steps=[1]), out, reports={"toy": report_dir})
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_bad_results_is_one_usage_error(tmp_path, capsys):
    def run(results) -> tuple[int, list[str]]:
        code = main(["report", "--results", str(results), "--out", str(tmp_path / "site"), "--html"])
        return code, capsys.readouterr().err.splitlines()

    code, err = run(tmp_path / "missing")
    assert code == 2 and len(err) == 1 and "results folder not found" in err[0]
    (tmp_path / "empty").mkdir()
    code, err = run(tmp_path / "empty")
    assert code == 2 and len(err) == 1 and "no result rows" in err[0]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.jsonl").write_text('{"suite": "toy"}\nnot json\n', encoding="utf-8")
    code, err = run(bad)
    assert code == 2 and len(err) == 1 and "run.jsonl:2" in err[0]
    assert not (tmp_path / "site").exists()
