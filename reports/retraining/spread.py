"""Print the retraining spread table from the results folders reports/retraining/measure.sh wrote:
for each method and step count, the released student's toy FID and how far each retrained variant
lands from it, one column per variant folder present under OUT (``seed-1-2-threads`` is not written by
measure.sh: it holds `bench run --experiment M/train-seed-1` run with OMP_NUM_THREADS=2).

    python reports/retraining/spread.py [OUT]      # OUT: measure.sh's folder (default runs/retraining)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.scoring.results import load_all

VARIANTS = {  # results folder -> column
    "seed-0-1-thread": "float32 original",
    "seed-0-2-threads": "2 threads",
    "seed-1-1-thread": "training seed 1",
    "seed-1-2-threads": "training seed 1, two threads",  # optional: splam's seed 1 was measured on two threads
}


def fid_by_cell(folder: Path) -> dict[tuple[str, int], float]:
    frame = load_all(folder / "results")
    frame = frame[(frame["metric"] == "fid") & frame["value"].notna() & (frame["steps"] > 0)].sort_values("time")
    # experiment rows are labelled <method>-train-seed-1: key them by the method
    return {(row.method.removesuffix("-train-seed-1"), int(row.steps)): float(row.value) for row in frame.itertuples()}


def released_fids(out: Path) -> dict[tuple[str, int], float]:
    """The released students' FIDs: from measure.sh's ``released`` folder when it ran, else from the
    committed leaderboards/toy.json (CI checks that the released students score exactly those)."""
    if (out / "released").is_dir():
        return fid_by_cell(out / "released")
    board = json.loads((Path(__file__).resolve().parents[2] / "leaderboards" / "toy.json").read_text())
    return {(row["method"], int(row["steps"])): float(row["metrics"]["fid"]) for row in board["rows"]
            if row["steps"] > 0 and row.get("students", {}).get("fid") == "released"}


def main(out: Path) -> None:
    released = released_fids(out)
    variants = {label: fid_by_cell(out / name) for name, label in VARIANTS.items() if (out / name).is_dir()}
    header = ["method", "steps", "released FID"] + [f"{label} (Δ)" for label in variants] + ["largest |Δ|"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
    for (method, steps), base in sorted(released.items()):
        cells, deltas = [], []
        for values in variants.values():
            value = values.get((method, steps))
            if value is None:
                cells.append("")
                continue
            deltas.append(value - base)
            cells.append(f"{value:.2f} ({value - base:+.2f})")
        largest = f"{max(abs(d) for d in deltas):.2f}" if deltas else ""
        print(f"| {method} | {steps} | {base:.2f} | " + " | ".join(cells) + f" | {largest} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/retraining"))
