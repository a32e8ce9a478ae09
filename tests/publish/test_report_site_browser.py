"""`bench report --html` in a real browser: Debian's Chromium (/usr/bin/chromium) driven by Python
Playwright (the `test` extra; `playwright install` is never run, nothing is downloaded). The page is
loaded from file:// and checked as a reader sees it: no console or page errors, the expected rows,
sorting by a header click, the filters, every image decoded, a cell's fingerprint on demand. A
screenshot goes to $BENCH_SCREENSHOT_DIR (CI keeps it as an artifact) or to pytest's tmp_path."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from report_site_data import toy_frame, toy_rows, write_results, write_samples

from bench.cli import main
from bench.publish.kinds import RowKinds

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
METHODS = ["ddim", "dpmpp", "lcm", "scott", "dmd", "lcm-l2-3000-steps", "lcm-lora-huber", "scott-l2"]
STEPS = [1, 2, 4]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the `test` extra)")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and shutil.which("chromium") is None,
                                reason="no Chromium: `apt-get install chromium` (Debian's package; .ci/run does)")


def _site(tmp_path: Path) -> Path:
    results = write_results(toy_frame(METHODS, STEPS), tmp_path / "results")
    rows = [r for r in toy_rows() if r["method"] in METHODS and r["steps"] in STEPS]
    write_samples(tmp_path / "samples", [("toy", r["teacher"], r["method"], r["steps"], r["guidance"])
                                         for r in rows if r["method"] in ("ddim", "lcm", "scott")])
    assert main(["report", "--results", str(results), "--samples-root", str(tmp_path / "samples"),
                 "--out", str(tmp_path / "site"), "--html"]) == 0
    return tmp_path / "site" / "index.html"


def _visible(page, column: str) -> list[str]:
    """The texts of one column of the rows on screen, top to bottom."""
    return page.eval_on_selector_all(
        "#board tbody tr:not([hidden])",
        "(rows, i) => rows.map(r => r.cells[i].textContent.trim())",
        _column_index(page, column))


def _column_index(page, header: str) -> int:
    return page.eval_on_selector_all("#board thead th", "(ths, h) => ths.findIndex(th => th.textContent.trim() === h)",
                                     header)


def test_report_site_in_chromium(tmp_path):
    index = _site(tmp_path)
    rows = [r for r in toy_rows() if r["method"] in METHODS and r["steps"] in STEPS]
    kinds = RowKinds()
    canonical = [r for r in rows if kinds.of(r["method"]).canonical]
    assert len(canonical) < len(rows)
    shots = Path(os.environ.get("BENCH_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM if CHROMIUM.exists() else
                                                                 shutil.which("chromium")), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.set_default_timeout(10_000)
            page.goto(index.as_uri(), wait_until="load")
            assert errors == []

            # Rows: every leaderboard row is in the table, the canonical ones on screen.
            assert page.locator("#board tbody tr").count() == len(rows)
            assert page.locator("#board tbody tr:not([hidden])").count() == len(canonical)
            assert page.locator("#count").inner_text() == f"Showing {len(canonical)} of {len(rows)} rows"

            # Images: all decoded, at their natural size (the page gives width/height attributes).
            sizes = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.width > 0])")
            assert len(sizes) >= 2 and all(s == [True, s[1], s[2], True] and s[1] > 0 and s[2] > 0 for s in sizes)
            page.screenshot(path=str(shots / "report-site.png"), full_page=True)

            # Sorting: a click on FID sorts ascending (unmeasured or skipped cells last), a second descending.
            page.get_by_role("button", name="FID ↓", exact=True).click()
            fids = _visible(page, "FID ↓")
            numbers = [float(x) for x in fids if x not in ("", "—")]
            assert numbers == sorted(numbers) and len(numbers) >= 5
            assert fids == [f for f in fids if f not in ("", "—")] + [f for f in fids if f in ("", "—")]
            page.get_by_role("button", name="FID ↓", exact=True).click()
            numbers = [float(x) for x in _visible(page, "FID ↓") if x not in ("", "—")]
            assert numbers == sorted(numbers, reverse=True)
            page.get_by_role("button", name="Method", exact=True).click()
            methods = _visible(page, "Method")
            assert methods == sorted(methods)

            # Filters: steps, then kind, then the method box.
            page.select_option("#f-steps", "2")
            assert set(_visible(page, "Steps")) == {"2"}
            assert len(_visible(page, "Steps")) == len([r for r in canonical if r["steps"] == 2])
            page.select_option("#f-kind", "ablation")
            ablations_2 = [r for r in rows if r["steps"] == 2 and not kinds.of(r["method"]).canonical]
            assert sorted(_visible(page, "Method")) == sorted(r["method"] for r in ablations_2)
            page.select_option("#f-kind", "")
            page.select_option("#f-steps", "")
            page.fill("#f-method", "lcm")
            assert len(_visible(page, "Method")) == len([r for r in rows if "lcm" in r["method"]])
            page.fill("#f-method", "")
            assert page.locator("#board tbody tr:not([hidden])").count() == len(rows)

            # Columns on demand: precision is hidden until its group is ticked.
            precision = page.locator("#board thead th[data-metric=precision]")
            assert not precision.is_visible()
            page.check("input[data-group=prdc]")
            assert precision.is_visible()

            # A cell's details: its fingerprint, run and protocol.
            (lcm2,) = [r for r in rows if (r["method"], r["steps"]) == ("lcm", 2)]
            row = page.locator('#board tbody tr[data-method="lcm"][data-steps="2"]')
            row.locator("td.g-main button[data-metric=clip]").click()
            panel = page.locator("#panel")
            assert panel.is_visible()
            assert panel.locator(".cell-detail h3").inner_text() == "CLIP×100 cell"
            detail = panel.locator(".cell-detail").inner_text()
            assert lcm2["fingerprints"]["clip"] in detail and lcm2["runs"]["clip"] in detail
            assert '"suite_fingerprint"' in panel.locator("pre.protocol").inner_text()
            panel.locator("tr[data-metric=fid]").click()
            assert lcm2["fingerprints"]["fid"] in panel.locator(".cell-detail").inner_text()
            page.screenshot(path=str(shots / "report-site-details.png"))
            page.keyboard.press("Escape")
            assert not panel.is_visible()

            assert errors == []
            assert all(url.startswith("file://") for url in requests), requests
        finally:
            browser.close()
    print(f"screenshots: {shots / 'report-site.png'} {shots / 'report-site-details.png'}")
