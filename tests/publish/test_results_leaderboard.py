"""Results store, leaderboards (golden files), reported numbers and the report."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from bench.assets.reported import load_reported
from bench.cli.leaderboard import add_arguments as lb_add_arguments
from bench.cli.leaderboard import command as lb_command
from bench.core import atomic
from bench.core.errors import BenchError, UsageError
from bench.publish.cells import select_cells
from bench.publish.kinds import REAL_IMAGE_ROWS
from bench.publish.leaderboard import build, render_markdown, rows_from_leaderboard, suite_json, write_leaderboards
from bench.publish.markdown import best_in_groups
from bench.publish.report import PLOT_SIZE_PX, GridLayout, pareto_front, write_report
from bench.scoring.results import ResultsStore, Row, load_all, new_run_id, rows_to_frame
from methods.registry import method_names

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"

SMOKE_NOTE = "smoke suite: stand-in metric models, numbers are not comparable to papers"
RUN_OLD = "20250101T000000000000Z-aaaaaa"
RUN_NEW = "20250102T000000000000Z-bbbbbb"
PROTOCOL = {"N": 64, "resolution": 64, "crop": "center", "filter": "bicubic",
            "fid_model": "toy-inception@sha256:1234abcd", "clip_model": "toy-clip@sha256:5678ef90",
            "feature_space": "toy-inception-pool"}
METRIC_NAMES = ("fid", "clip", "precision", "recall", "density", "coverage", "latency_ms")

# (method, steps, nfe, metric values in METRIC_NAMES order); None: the method does not support it.
MEASURED = [
    ("ddim", 1, 2, (180.5, 0.201, 0.05, 0.01, 0.02, 0.03, 5.1)),
    ("ddim", 2, 4, (95.25, 0.245, 0.21, 0.11, 0.18, 0.20, 9.8)),
    ("ddim", 4, 8, (40.0, 0.281, 0.48, 0.35, 0.51, 0.55, 19.2)),
    ("ddim", 8, 16, (22.125, 0.299, 0.61, 0.52, 0.77, 0.74, 38.0)),
    ("lcm", 1, 1, (60.3, 0.262, 0.40, 0.20, 0.45, 0.41, 3.0)),
    ("lcm", 2, 2, (31.75, 0.288, 0.55, 0.33, 0.66, 0.62, 5.4)),
    ("lcm", 4, 4, (25.5, 0.297, 0.60, 0.41, 0.74, 0.812, 10.1)),
    ("scott", 1, 1, (48.0, 0.270, 0.44, 0.25, 0.50, 0.47, 3.0)),
    ("scott", 2, 2, (26.9, 0.2951, 0.58, 0.39, 0.70, 0.71, 5.5)),
    ("scott", 4, 4, (21.0, 0.3049, 0.63, 0.47, 0.80, 0.8121, 10.3)),
    ("dmd", 1, 1, (35.2, 0.280, 0.66, 0.12, 0.95, 0.52, 2.9)),
    ("dmd", 2, 2, None),
    ("dmd", 4, 4, None),
]


def row(**overrides) -> Row:
    fields = dict(suite="smoke", teacher="toy", method="lcm", steps=2, nfe=2, guidance=3.0, seed=0,
                  num_images=64, metric="fid", value=1.0, fingerprint="fp", run_id=RUN_NEW,
                  time="2025-01-02T00:00:00.000000Z", device="cpu (test)", versions={"torch": "2.x"},
                  protocol=PROTOCOL, note=SMOKE_NOTE)
    fields.update(overrides)
    return Row(**fields)


def smoke_rows() -> list[Row]:
    rows = []
    for method, steps, nfe, values in MEASURED:
        for i, metric in enumerate(METRIC_NAMES):
            if values is None:
                extra = dict(value=None, note="skipped: dmd supports 1 step")
            else:
                extra = dict(value=values[i])
            rows.append(row(method=method, steps=steps, nfe=nfe, metric=metric,
                            fingerprint=f"{method}{steps}-{metric}", **extra))
    # An older measurement of lcm@2 FID under another fingerprint: it must not share the cell.
    rows.append(row(method="lcm", steps=2, metric="fid", value=12.0, fingerprint="old-lcm2-fid",
                    run_id=RUN_OLD, time="2025-01-01T00:00:00.000000Z"))
    return rows


def smoke_frame() -> pd.DataFrame:
    return rows_to_frame(smoke_rows())


# --------------------------------------------------------------------------------------------
# Results store


def test_store_round_trip_and_find(tmp_path):
    first = ResultsStore(tmp_path, RUN_OLD)
    second = ResultsStore(tmp_path, RUN_NEW)
    a = row(value=0.1 + 0.2, run_id=RUN_OLD, time="2025-01-01T00:00:00.000000Z", fingerprint="same")
    skipped = row(metric="clip", value=None, note="skipped: not supported", run_id=RUN_OLD)
    first.append([a, skipped])
    b = row(value=7.25, fingerprint="same", run_id=RUN_NEW)
    second.append([b])

    frame = load_all(tmp_path)
    assert len(frame) == 3
    assert set(frame["run_id"]) == {RUN_OLD, RUN_NEW}
    assert frame["steps"].dtype.name == "Int64" and frame["value"].dtype == float
    back = [Row.from_record(r) for r in first.load().to_dict(orient="records")]
    assert back[0] == a and back[0].value == 0.30000000000000004  # exact float round trip
    assert back[1].skipped and pd.isna(back[1].value)
    assert json.loads(back[0].protocol) == PROTOCOL and back[0].versions_dict() == {"torch": "2.x"}

    # find: most recent row of that (fingerprint, metric), across runs; None when unknown.
    fresh = ResultsStore(tmp_path, "20250103T000000000000Z-cccccc")
    assert fresh.find("same", "fid").value == 7.25
    assert fresh.find("same", "clip") is None
    assert fresh.find("nope", "fid") is None
    reused = fresh.reuse(fresh.find("same", "fid"))
    assert reused.run_id == fresh.run_id and fresh.load()["value"].tolist() == [7.25]

    # Each line of the file is one complete JSON row.
    lines = first.path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["suite"] == "smoke" for line in lines)


def test_append_is_atomic_when_killed_before_rename(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path, RUN_NEW)
    store.append([row(value=1.0)])
    before = store.path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated kill between temp write and rename")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="simulated kill"):
        store.append([row(value=2.0, metric="clip")])
    monkeypatch.undo()

    assert store.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [store.path.name]  # no temp file left behind
    assert load_all(tmp_path)["value"].tolist() == [1.0]
    store.append([row(value=3.0, metric="clip")])  # and the store keeps working
    assert load_all(tmp_path)["value"].tolist() == [1.0, 3.0]


def test_load_all_skips_temp_files_and_reports_corrupt_rows(tmp_path):
    ResultsStore(tmp_path, RUN_NEW).append([row()])
    (tmp_path / f".{RUN_OLD}.jsonl.abc.tmp").write_text('{"half": ')
    assert len(load_all(tmp_path)) == 1
    (tmp_path / "broken.jsonl").write_text('{"suite": "smoke"}\n{"half": \n')
    with pytest.raises(BenchError, match=r"broken.jsonl:2"):
        load_all(tmp_path)


def test_run_ids_sort_by_time_and_are_unique():
    ids = [new_run_id() for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert re.fullmatch(r"\d{8}T\d{12}Z-[0-9a-f]{6}", ids[0])


def test_row_rejects_bad_fields():
    with pytest.raises(ValueError):
        row(metric="")
    with pytest.raises(ValueError):
        row(protocol="not json")


# --------------------------------------------------------------------------------------------
# Leaderboard


def _check_golden(path: Path, text: str) -> None:
    if UPDATE_GOLDEN:
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{path.name} changed; rerun with UPDATE_GOLDEN=1 and review"


def test_leaderboard_matches_golden_files(tmp_path):
    paths = write_leaderboards(smoke_frame(), tmp_path)
    assert [p.name for p in paths] == ["smoke.md", "smoke.json"]
    _check_golden(GOLDEN / "leaderboard_smoke.md", (tmp_path / "smoke.md").read_text(encoding="utf-8"))
    _check_golden(GOLDEN / "leaderboard_smoke.json", (tmp_path / "smoke.json").read_text(encoding="utf-8"))
    # Deterministic: the same rows in another order give the same bytes.
    shuffled = smoke_frame().sample(frac=1.0, random_state=3)
    write_leaderboards(shuffled, tmp_path / "again")
    assert (tmp_path / "again" / "smoke.md").read_bytes() == (tmp_path / "smoke.md").read_bytes()
    assert (tmp_path / "again" / "smoke.json").read_bytes() == (tmp_path / "smoke.json").read_bytes()


def _table_rows(markdown: str, header_start: str) -> dict[tuple[str, str], list[str]]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[(cells[0].split(" [")[0], cells[1])] = cells
    return out


def test_best_per_step_bolding_hand_checked():
    rows = []
    # steps 1: fid 10.0 (a) vs 10.004 (b) display as 10.00 and 10.00 -> every value ties: nothing bold.
    #          clip 0.3001 (a) vs 0.2999 (b): x100 30.01 vs 29.99 -> a; higher is better.
    # steps 2: fid 5 (a), 7 (b), 5 (c) -> a and c (tied best, and 7 differs); clip only c has a value ->
    #          nothing bold (needs two).
    # steps 4: a alone -> nothing bold. steps 0 (real-image rows) are references: never bold.
    spec = [("a", 1, "fid", 10.0), ("b", 1, "fid", 10.004), ("a", 1, "clip", 0.3001), ("b", 1, "clip", 0.2999),
            ("a", 2, "fid", 5.0), ("b", 2, "fid", 7.0), ("c", 2, "fid", 5.0), ("c", 2, "clip", 0.25),
            ("a", 4, "fid", 3.0), ("a", 4, "clip", 0.9),
            ("real-2nd-draw", 0, "fid", 0.5), ("real-shuffled-captions", 0, "fid", 0.7)]
    for method, steps, metric, value in spec:
        rows.append(row(method=method, steps=steps, metric=metric, value=value, fingerprint=f"{method}{steps}{metric}", note=""))
    entries = select_cells(rows_to_frame(rows))[("smoke", "toy")]
    names = [(e.method, e.steps) for e in entries]
    assert names == [("real-2nd-draw", 0), ("real-shuffled-captions", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2),
                     ("c", 2), ("a", 4)]
    assert best_in_groups(entries, "fid") == {4, 6}
    assert best_in_groups(entries, "clip") == {2}

    md = render_markdown("smoke", {"toy": entries}, reported=None)
    table = _table_rows(md, "| Method")
    assert table[("a", "1")][4:6] == ["10.00", "**30.01**"]
    assert table[("b", "1")][4:6] == ["10.00", "29.99"]
    assert table[("real-2nd-draw", "0")][4] == "0.50"
    assert table[("a", "2")][4] == "**5.00**" and table[("b", "2")][4] == "7.00" and table[("c", "2")][4] == "**5.00**"
    assert table[("c", "2")][5] == "25.00"          # alone in its step group: not bold
    assert table[("a", "4")][4:6] == ["3.00", "90.00"]


def test_fingerprints_never_share_a_cell():
    frame = smoke_frame()
    md = render_markdown("smoke", build(frame)["smoke"], reported=None)
    table = _table_rows(md, "| Method | Steps | NFE | CFG | FID")
    assert table[("lcm", "2")][4] == "31.75"                   # the most recent fingerprint wins
    assert "12.00" not in md                                   # the older number is not shown anywhere
    assert "old-lcm2-fid" not in md                            # hashes stay in the JSON; the page counts them
    assert "1 cell(s) were measured again under a newer fingerprint" in md

    doc = suite_json("smoke", build(frame)["smoke"])
    lcm2 = next(r for r in doc["rows"] if (r["method"], r["steps"]) == ("lcm", 2))
    assert lcm2["metrics"]["fid"] == 31.75 and lcm2["fingerprints"]["fid"] == "lcm2-fid"
    assert lcm2["superseded"] == {"fid": ["old-lcm2-fid"]}

    # Recency is by time, not by file order: a later row in an older file still wins.
    late = row(method="lcm", steps=2, metric="fid", value=99.0, fingerprint="late", run_id=RUN_OLD,
               time="2025-01-03T00:00:00.000000Z")
    entries = select_cells(pd.concat([rows_to_frame([late]), frame]))[("smoke", "toy")]
    cell = next(e for e in entries if (e.method, e.steps) == ("lcm", 2)).cells["fid"]
    assert (cell.value, cell.fingerprint) == (99.0, "late")
    assert [fp for fp, _ in cell.superseded] == ["lcm2-fid", "old-lcm2-fid"]

    # Same fingerprint in two runs is one measurement: nothing is listed as superseded.
    again = dataclasses.replace(smoke_rows()[0], run_id=RUN_OLD, time="2025-01-01T00:00:00.000000Z")
    entries = select_cells(rows_to_frame(smoke_rows() + [again]))[("smoke", "toy")]
    assert entries[0].cells["fid"].superseded == ()


def test_skipped_cells_show_a_dash_and_their_note():
    md = (GOLDEN / "leaderboard_smoke.md").read_text(encoding="utf-8")
    table = _table_rows(md, "| Method | Steps | NFE | CFG | FID")
    dmd2 = table[("dmd", "2")]
    marker = dmd2[4].split()[-1]
    assert dmd2[4:8] == [f"— {marker}"] * 4
    assert f"{marker.strip('[]')}. skipped: dmd supports 1 step" in md
    doc = json.loads((GOLDEN / "leaderboard_smoke.json").read_text(encoding="utf-8"))
    dmd2_row = next(r for r in doc["rows"] if (r["method"], r["steps"]) == ("dmd", 2))
    assert dmd2_row["metrics"] == {} and dmd2_row["skipped"]["fid"] == "skipped: dmd supports 1 step"


def test_reported_numbers_file_is_consistent():
    data = load_reported()
    entries = data["entries"]
    assert len(entries) == 100
    required = {"paper", "table", "suite", "teacher", "teacher_as_written", "method", "steps", "metric", "value",
                "value_as_printed", "guidance", "latency_s", "latency_gpu"}
    tables = {(t["paper"], t["table"]) for t in data["tables"]}
    for e in entries:
        assert required <= set(e), e
        assert e["suite"] in {"coco2014-30k", "coco2017-5k", "mjhq-5k"}
        assert e["teacher"] in {"sd15", "rv51"}
        assert e["paper"] in data["papers"] and (e["paper"], e["table"]) in tables
        assert e["metric"] in {"fid", "clip", "coverage"}
        assert e["value"] == float(e["value_as_printed"])
        if e["metric"] != "fid":
            assert 0 < e["value"] < 1
    def find(paper, table, method, steps, metric):
        hits = [e["value"] for e in entries if (e["paper"], e["table"], e["method"], e["steps"], e["metric"])
                == (paper, table, method, steps, metric)]
        assert len(hits) == 1, (paper, table, method, steps, metric)
        return hits[0]
    # Spot checks against the papers' text (abstract / body sentences quote these numbers).
    assert find("2403.01505", "2", "SCott", 2, "fid") == 21.9
    assert find("2403.01505", "4", "SCott", 2, "clip") == 0.301
    assert find("2403.01505", "4", "LCM", 2, "fid") == 37.2
    assert find("2403.01505", "3", "SCott", 4, "fid") == 10.68
    assert find("2311.18828", "3", "DMD", 1, "fid") == 11.49
    assert find("2404.13903", "2b", "SPLAM", 4, "fid") == 20.77
    assert find("2404.13903", "2c", "SPLAM", 4, "fid") == 13.39
    counts = {}
    for e in entries:
        counts[e["paper"]] = counts.get(e["paper"], 0) + 1
    assert counts == {"2403.01505": 45, "2311.18828": 21, "2404.13903": 34}


def test_reported_table_is_separate_from_measured_rows(tmp_path):
    measured = [dataclasses.replace(r, suite="coco2017-5k", teacher="sd15", note="") for r in smoke_rows()]
    write_leaderboards(rows_to_frame(measured), tmp_path)
    md = (tmp_path / "coco2017-5k.md").read_text(encoding="utf-8")
    measured_part, reported_part = md.split("## Reported in the papers (not measured here)")
    assert "SCott T2" not in measured_part and "21.9" not in measured_part
    assert "| SCott T2 | SD1.5 | SCott | 2 | ? | 21.9 | 31.0 | 0.9114 | 0.12 |" in reported_part
    assert "| SPLAM T2b | SDv1.5 | SPLAM | 4 | 3 | 20.77 |" in reported_part
    assert "arXiv:2403.01505" in reported_part and "Table 2" in reported_part
    assert "2311.18828" not in reported_part  # DMD has no COCO-2017 table
    doc = json.loads((tmp_path / "coco2017-5k.json").read_text(encoding="utf-8"))
    assert all("paper" not in r for r in doc["rows"])  # the JSON baseline holds measured rows only


def test_leaderboard_command(tmp_path):
    results = tmp_path / "results"
    ResultsStore(results, RUN_NEW).append(smoke_rows())
    parser = argparse.ArgumentParser()
    lb_add_arguments(parser)
    out = tmp_path / "lb"
    args = parser.parse_args(["--results", str(results), "--out", str(out), "--suite", "smoke"])

    class Sink(list):
        write = list.append

    sink = Sink()
    assert lb_command(args, sink) == 0
    assert (out / "smoke.md").exists() and (out / "smoke.json").exists() and len(sink) == 2
    assert (out / "smoke.md").read_text() == (GOLDEN / "leaderboard_smoke.md").read_text()
    with pytest.raises(UsageError):
        lb_command(parser.parse_args(["--results", str(tmp_path / "nowhere")]), sink)
    with pytest.raises(BenchError, match="no result rows for suite"):
        lb_command(parser.parse_args(["--results", str(results), "--out", str(out), "--suite", "mjhq-5k"]), sink)


# --------------------------------------------------------------------------------------------
# Report


def _sample_folders(root: Path, methods_steps, n_images: int = 5, size: int = 48) -> None:
    prompts = ["a red cube", "two cats on a long wooden bench next to a lighthouse at dusk", "a green sphere",
               "a yellow triangle", "a tree"]
    for method, steps in methods_steps:
        folder = root / "smoke" / "toy" / method / f"steps{steps}-g3.0-seed0"
        folder.mkdir(parents=True)
        for i in range(n_images):
            Image.new("RGB", (size, size), (40 * i % 255, 10 * steps, 100)).save(folder / f"{i:05d}.png")
        meta = {"suite": "smoke", "teacher": "toy", "method": method, "steps": steps, "guidance_scale": 3.0,
                "seed": 0, "num_images": n_images, "fingerprint": f"{method}{steps}",
                "prompts": [{"index": i, "prompt": prompts[i], "seed": i} for i in range(n_images)]}
        (folder / "metadata.json").write_text(json.dumps(meta))


def test_report_writes_plots_grid_and_index(tmp_path):
    measured = [(m, s) for m, s, _, v in MEASURED if v is not None]
    _sample_folders(tmp_path / "samples", measured)
    (tmp_path / "samples" / "smoke" / "toy" / "lcm" / "steps4-g3.0-seed0" / "00003.png").unlink()  # not in every folder
    layout = GridLayout(thumb=64, label_width=100, header_height=40, max_prompts=4)
    index = write_report(smoke_frame(), tmp_path / "samples", tmp_path / "report", layout=layout)
    assert index == tmp_path / "report" / "index.md"
    text = index.read_text(encoding="utf-8")
    for stem in ("fid_vs_steps", "fid_vs_latency", "clip_vs_fid"):
        path = tmp_path / "report" / f"toy-{stem}.png"
        assert f"]({path.name})" in text
        with Image.open(path) as image:
            assert image.size == PLOT_SIZE_PX
    with Image.open(tmp_path / "report" / "toy-samples_grid.png") as grid:
        # 11 measured method@steps rows; prompts 0, 1, 2, 4 (3 is missing in one folder).
        assert grid.size == layout.size(len(measured), 4) == (100 + 4 * 64, 40 + 11 * 64)
        # Row 0 is ddim@1 and column 3 is prompt index 4: the cell holds that image's colour.
        x, y = 100 + 3 * 64 + 32, 40 + 32
        assert grid.getpixel((x, y)) == (160, 10, 100)
    assert "| Method | Steps | NFE | CFG | FID ↓" in text and "Not shown" not in text


def test_report_handles_missing_metrics_and_samples(tmp_path):
    frame = smoke_frame()
    frame = frame[frame["metric"].isin(["fid", "coverage"])]  # no CLIP, no latency
    index = write_report(frame, None, tmp_path / "report")
    text = index.read_text(encoding="utf-8")
    assert (tmp_path / "report" / "toy-fid_vs_steps.png").exists()
    assert not (tmp_path / "report" / "toy-fid_vs_latency.png").exists()
    assert "FID vs latency (Pareto front outlined): skipped, no configuration has both FID and latency." in text
    assert "CLIP vs FID: skipped, no configuration has both CLIP and FID." in text
    assert "no samples folder given" in text
    # Only coverage: every plot is skipped, the report is still written.
    index = write_report(smoke_frame().query("metric == 'coverage'"), tmp_path / "nowhere", tmp_path / "r2")
    assert "FID vs sampling steps: skipped, no FID numbers." in index.read_text(encoding="utf-8")
    with pytest.raises(BenchError):
        write_report(smoke_frame().iloc[0:0], None, tmp_path / "r3")


def test_pareto_front():
    # (latency, fid): b dominates d; a and c trade off; e duplicates c exactly.
    points = [(1.0, 30.0), (2.0, 20.0), (3.0, 10.0), (2.5, 25.0), (3.0, 10.0), (0.5, 40.0)]
    assert pareto_front(points) == [5, 0, 1, 2, 4]


def test_a_leaderboard_rebuilds_from_its_own_json_byte_for_byte(tmp_path):
    other_protocol = row(method="dpmpp", steps=1, fingerprint="dpmpp1-fid", protocol={**PROTOCOL, "N": 32})
    write_leaderboards(rows_to_frame(smoke_rows() + [other_protocol]), tmp_path / "a")
    doc = json.loads((tmp_path / "a" / "smoke.json").read_text(encoding="utf-8"))
    assert doc["protocol"]["N"] == ["32", "64"]  # the protocol varies, so every cell records its own
    assert [r["protocols"] for r in doc["rows"] if r["method"] == "dpmpp"] == [{"fid": {**PROTOCOL, "N": 32}}]
    write_leaderboards(rows_from_leaderboard(doc), tmp_path / "b")
    for name in ("smoke.md", "smoke.json"):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
    # The committed toy leaderboard too: its canonical page and its ablations page, each rebuilt from
    # its own JSON (superseded fingerprints with their runs). The ablations page links each row to its
    # experiment file relative to where the page is written, so the links are compared from methods/ on.
    committed = Path(__file__).resolve().parents[2] / "leaderboards"
    docs = {name: json.loads((committed / f"{name}.json").read_text(encoding="utf-8")) for name in ("toy", "toy-ablations")}
    frame = pd.concat([rows_from_leaderboard(doc) for doc in docs.values()], ignore_index=True)
    written = write_leaderboards(frame, tmp_path / "toy", suites=["toy"])
    assert [p.name for p in written] == ["toy.md", "toy.json", "toy-ablations.md", "toy-ablations.json"]

    def page(folder: Path, name: str) -> str:
        return re.sub(r"\]\([^)]*?methods/configs/", "](methods/configs/", (folder / name).read_text(encoding="utf-8"))

    for name, doc in docs.items():
        assert page(tmp_path / "toy", f"{name}.md") == page(committed, f"{name}.md"), name
        assert json.loads((tmp_path / "toy" / f"{name}.json").read_text(encoding="utf-8")) == doc, name
    assert "](../methods/configs/dmd/ablations/" in (committed / "toy-ablations.md").read_text(encoding="utf-8")
    assert {r["method"] for r in docs["toy"]["rows"]} <= set(method_names()) | set(REAL_IMAGE_ROWS)


def test_rows_say_which_student_they_came_from_and_keep_it_through_the_json(tmp_path):
    """A distilled method's rows carry their student's source (released, or trained on the machine
    that ran them); the table shows it in a Student column, and --base rebuilds keep it."""
    rows = [r for r in smoke_rows() if r.method in ("ddim", "lcm", "scott")]
    rows = [dataclasses.replace(r, student={"lcm": "released", "scott": "trained"}.get(r.method, "")) for r in rows]
    write_leaderboards(rows_to_frame(rows), tmp_path / "a")
    markdown = (tmp_path / "a" / "smoke.md").read_text(encoding="utf-8")
    table = markdown.split("### All cells")[1].split("###")[0]
    assert "| Method | Steps | NFE | CFG | Student | FID ↓" in table
    assert "| lcm | 4 | 4 | 3 | released | 25.50 |" in table and "| scott | 4 | 4 | 3 | trained here | **21.00** |" in table
    assert "| ddim | 4 | 8 | 3 |  | 40.00 |" in table
    assert markdown.count("| Student |") == 1                             # one column, in the main table only
    doc = json.loads((tmp_path / "a" / "smoke.json").read_text(encoding="utf-8"))
    by_method = {(r["method"], r["steps"]): r for r in doc["rows"]}
    assert set(by_method[("lcm", 2)]["students"].values()) == {"released"} and "students" not in by_method[("ddim", 2)]
    write_leaderboards(rows_from_leaderboard(doc), tmp_path / "b")
    assert (tmp_path / "b" / "smoke.md").read_bytes() == (tmp_path / "a" / "smoke.md").read_bytes()
    # a table without any student (teacher solvers, older results) has no Student column
    write_leaderboards(rows_to_frame([r for r in smoke_rows() if r.method == "ddim"]), tmp_path / "c")
    assert "Student" not in (tmp_path / "c" / "smoke.md").read_text(encoding="utf-8")


def test_base_leaderboard_plus_new_results_equals_the_leaderboard_of_all_rows(tmp_path, monkeypatch):
    old_rows = [r for r in smoke_rows() if r.method != "scott"]
    newer = "2025-01-03T00:00:00.000000Z"
    new_rows = [r for r in smoke_rows() if r.method == "scott"]            # a new method
    new_rows += [row(method="lcm", steps=2, metric="fid", value=30.5, fingerprint="lcm2-fid-v2",
                     run_id="20250103T000000000000Z-cccccc", time=newer)]  # a re-measured cell
    write_leaderboards(rows_to_frame(old_rows), tmp_path / "published")
    results = tmp_path / "results"
    ResultsStore(results, "20250103T000000000000Z-cccccc").append(new_rows)
    parser = argparse.ArgumentParser()
    lb_add_arguments(parser)

    class Sink(list):
        write = list.append

    args = ["--base", str(tmp_path / "published" / "smoke.json"), "--results", str(results), "--out", str(tmp_path / "merged")]
    assert lb_command(parser.parse_args(args), Sink()) == 0
    write_leaderboards(rows_to_frame(old_rows + new_rows), tmp_path / "direct")
    for name in ("smoke.md", "smoke.json"):
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes(), name
    md = (tmp_path / "merged" / "smoke.md").read_text(encoding="utf-8")
    table = _table_rows(md, "| Method | Steps | NFE | CFG | FID")
    assert table[("lcm", "2")][4] == "30.50" and table[("scott", "4")][4] == "**21.00**"
    merged = json.loads((tmp_path / "merged" / "smoke.json").read_text(encoding="utf-8"))
    lcm2 = next(r for r in merged["rows"] if (r["method"], r["steps"]) == ("lcm", 2))
    assert lcm2["superseded"]["fid"] == ["lcm2-fid", "old-lcm2-fid"]
    assert lcm2["superseded_runs"]["fid"][0] == "20250102T000000000000Z-bbbbbb"

    # --base alone (no results folder yet) rebuilds the published table; bad input is one clear error.
    monkeypatch.chdir(tmp_path)
    alone = ["--base", "published/smoke.json", "--out", "alone"]
    assert lb_command(parser.parse_args(alone), Sink()) == 0
    assert (tmp_path / "alone" / "smoke.md").read_bytes() == (tmp_path / "published" / "smoke.md").read_bytes()
    with pytest.raises(UsageError, match="results folder not found"):
        lb_command(parser.parse_args(alone + ["--results", "nowhere"]), Sink())
    with pytest.raises(UsageError, match="base leaderboard file not found"):
        lb_command(parser.parse_args(["--base", "missing.json"]), Sink())
    (tmp_path / "broken.json").write_text('{"suite": "smoke", "rows": [{"method": "lcm"}]}')
    with pytest.raises(UsageError, match=r"broken.json: rows\[0\]: row has no 'teacher' field"):
        lb_command(parser.parse_args(["--base", "broken.json"]), Sink())
    assert not (tmp_path / "leaderboards").exists()


def test_one_section_per_teacher_and_one_file_pair_per_suite(tmp_path):
    rows = smoke_rows() + [dataclasses.replace(r, teacher="toy-b") for r in smoke_rows()[:7]]
    rows += [dataclasses.replace(r, suite="coco2014-30k", teacher="sd15") for r in smoke_rows()[:7]]
    paths = write_leaderboards(rows_to_frame(rows), tmp_path, suites=["smoke"], reported={"entries": []})
    assert [p.name for p in paths] == ["smoke.md", "smoke.json"]
    md = (tmp_path / "smoke.md").read_text(encoding="utf-8")
    assert md.count("## Teacher: ") == 2 and md.index("## Teacher: toy\n") < md.index("## Teacher: toy-b\n")
    doc = json.loads((tmp_path / "smoke.json").read_text(encoding="utf-8"))
    assert [r["teacher"] for r in doc["rows"]].count("toy-b") == 1
    paths = write_leaderboards(rows_to_frame(rows), tmp_path / "all", generated_at="2025-01-05T00:00:00Z")
    assert sorted(p.name for p in paths) == ["coco2014-30k.json", "coco2014-30k.md", "smoke.json", "smoke.md"]
    assert json.loads((tmp_path / "all" / "smoke.json").read_text())["generated_at"] == "2025-01-05T00:00:00Z"


def test_published_students_sit_beside_their_printed_numbers():
    """A zoo student's measured FID is shown next to the number printed for the same checkpoint,
    suite and step count, with where it was printed; other suites and step counts are left out."""
    from bench.publish.cells import Cell, Entry
    from bench.publish.markdown import render_printed_beside

    def entry(suite, steps, fid):
        cell = Cell("fid", fid, "", "fp", "run", "2026-12-07T00:00:00", "cpu", 1, 0, "{}", student="published")
        return Entry(suite, "sd15", "dmd2-sd15", steps, 1.0, {"fid": cell})

    lines = render_printed_beside("coco2014-30k", [entry("coco2014-30k", 1, 10.5)], level=3)
    assert "| dmd2-sd15 | 1 | FID | 10.50 | 9.28 | tianweiy/DMD2 experiments/sdv1.5/README.md (model zoo) |" in lines
    assert render_printed_beside("coco2017-5k", [entry("coco2017-5k", 1, 10.5)], level=3) == []
