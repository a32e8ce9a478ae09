"""reports/retraining/spread.py (README, "Retraining a student"): each retrained variant's toy FID and
its distance from the released student's committed leaderboard number, one column per results folder
that exists, the newest row of a cell winning."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.scoring.results import ResultsStore, Row

REPO = Path(__file__).resolve().parents[2]


def fid_row(method: str, steps: int, value: float, time: str) -> Row:
    return Row(suite="toy", teacher="toy", method=method, steps=steps, nfe=steps, guidance=1.0, seed=0,
               num_images=1000, metric="fid", value=value, fingerprint=f"{method}-{steps}-{time}", run_id="r",
               time=time, device="cpu", student="trained")


def released_fid(method: str, steps: int) -> float:
    board = json.loads((REPO / "leaderboards" / "toy.json").read_text())
    (value,) = [row["metrics"]["fid"] for row in board["rows"]
                if row["method"] == method and row["steps"] == steps and row["students"]["fid"] == "released"]
    return float(value)


def test_spread_prints_each_variant_against_the_released_fid(tmp_path):
    ResultsStore(tmp_path / "seed-1-1-thread" / "results", run_id="a").append([
        fid_row("mcm-train-seed-1", 1, 99.0, "2026-12-07T10:00:00Z"),   # superseded by the newer row
        fid_row("mcm-train-seed-1", 1, 10.87, "2026-12-07T11:00:00Z"),
    ])
    ResultsStore(tmp_path / "seed-1-2-threads" / "results", run_id="b").append([
        fid_row("splam-train-seed-1", 2, 3.50, "2026-12-07T12:00:00Z"),
    ])
    table = subprocess.run([sys.executable, str(REPO / "reports" / "retraining" / "spread.py"), str(tmp_path)],
                           capture_output=True, text=True, check=True, cwd=REPO).stdout
    lines = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line for line in table.splitlines()}

    # one column per folder present: the two-thread seed-0 and the one-thread seed-0 folders are absent
    assert table.splitlines()[0] == ("| method | steps | released FID | training seed 1 (Δ) "
                                     "| training seed 1, two threads (Δ) | largest |Δ| |")
    mcm, splam = released_fid("mcm", 1), released_fid("splam", 2)
    assert lines[("mcm", "1")] == f"| mcm | 1 | {mcm:.2f} | 10.87 ({10.87 - mcm:+.2f}) |  | {abs(10.87 - mcm):.2f} |"
    assert lines[("splam", "2")] == (f"| splam | 2 | {splam:.2f} |  | 3.50 ({3.50 - splam:+.2f}) "
                                     f"| {abs(3.50 - splam):.2f} |")
    assert lines[("lcm", "1")].endswith("|  |  |  |")                # no variant measured this cell
