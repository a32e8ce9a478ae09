"""Scoring in `bench run` and `bench eval`: rows, reuse by fingerprint, bad folders, latency rows."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from bench.cli import main
from bench.scoring.results import load_all

pytestmark = pytest.mark.usefixtures("isolated_cache")


def _run(out, *extra):
    return main(["run", "--methods", "ddim", "--steps", "1", "--teacher", "tiny", "--suite", "smoke",
                 "--num-images", "8", "--out", str(out), "--quiet", *extra])


def test_run_scores_cells_writes_rows_and_leaderboard_and_reuses_rows(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, "--metrics", "fid,clip,coverage") == 0
    first = load_all(out / "results")
    metrics = set(first["metric"])
    assert metrics == {"fid", "clip", "precision", "recall", "density", "coverage"}
    assert (first["num_images"] == 8).all() and (first["method"] == "ddim").all()
    assert all(first["note"].str.contains("stand-in"))
    board = (out / "leaderboards" / "smoke.md").read_text()
    assert "| ddim | 1 | 2 | 3 |" in board
    assert json.loads((out / "leaderboards" / "smoke.json").read_text())["rows"][0]["method"] == "ddim"
    # FID of the samples equals a direct computation from the cached features
    from bench.scoring.evaluate import smoke_reference_folder
    from bench.scoring.metrics.features import ImageProtocol
    from bench.scoring.metrics.fid import fid_from_features
    from bench.scoring.metrics.reference import folder_features
    from bench.scoring.metrics.standins import standin_extractor
    extractor = standin_extractor(seed=0)
    native = ImageProtocol(resolution=None, center_crop_long_edge=False, resize_filter="none")
    real = folder_features(smoke_reference_folder(), extractor, native, progress=False).features
    fake = folder_features(out / "samples/smoke/tiny/ddim/steps1-g3-seed0", extractor, native, kind="samples",
                           progress=False).features
    fid = first.loc[first["metric"] == "fid", "value"].item()
    assert fid == pytest.approx(fid_from_features(real, fake), rel=1e-9)

    capsys.readouterr()
    assert _run(out, "--metrics", "fid,clip,coverage") == 0  # same fingerprints: rows reused
    both = load_all(out / "results")
    assert both["run_id"].nunique() == 2
    runs = [group.set_index("metric")["value"] for _, group in both.groupby("run_id")]
    assert (runs[0].sort_index() == runs[1].sort_index()).all()
    assert set(both.groupby("run_id")["fingerprint"].apply(frozenset)) == {frozenset(first["fingerprint"])}


def test_reused_rows_take_this_runs_labels(tmp_path):
    """A run that finds its cell's rows already measured under another label (``bench eval --method
    X`` on the same samples) records them under its own method name, not X."""
    out = tmp_path / "run"
    assert _run(out, "--metrics", "fid") == 0
    (first,) = (out / "results").glob("*.jsonl")
    relabelled = [dict(json.loads(line), method="ddim-as-evaluated") for line in first.read_text().splitlines()]
    first.write_text("".join(json.dumps(row) + "\n" for row in relabelled))
    assert _run(out, "--metrics", "fid") == 0
    rows = load_all(out / "results")
    second = rows[rows["run_id"] != relabelled[0]["run_id"]]
    assert len(second) == 1 and second["method"].tolist() == ["ddim"]
    assert second["fingerprint"].tolist() == [relabelled[0]["fingerprint"]]      # reused, not re-measured
    board = (out / "leaderboards" / "smoke.md").read_text()
    assert "| ddim | 1 | 2 | 3 |" in board


def test_run_latency_rows(tmp_path):
    out = tmp_path / "run"
    assert _run(out, "--metrics", "latency", "--throughput-batch", "2") == 0
    rows = load_all(out / "results").set_index("metric")["value"]
    assert {"latency_ms", "latency_p90_ms", "denoiser_ms", "throughput_ips", "peak_mem_mb"} <= set(rows.index)
    assert 0 < rows["denoiser_ms"] and rows["latency_ms"] <= rows["latency_p90_ms"]
    assert rows["throughput_ips"] > 0 and rows["peak_mem_mb"] > 0


def test_eval_scores_a_foreign_folder_and_rejects_bad_ones(tmp_path, capsys):
    samples = tmp_path / "samples"
    assert main(["sample", "--method", "ddim", "--steps", "1", "--teacher", "tiny", "--suite", "smoke",
                 "--num-images", "7", "--out", str(samples), "--quiet"]) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for png in samples.glob("*.png"):  # no metadata.json: as another tool would leave it
        shutil.copy(png, foreign / png.name)
    capsys.readouterr()
    assert main(["eval", "--samples", str(foreign), "--suite", "smoke", "--num-images", "7",
                 "--metrics", "fid,coverage", "--results", str(tmp_path / "results"), "--quiet"]) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines() if not line.startswith("note"))
    rows = load_all(tmp_path / "results").set_index("metric")["value"]
    assert float(printed["fid"]) == pytest.approx(rows["fid"], rel=1e-5)
    assert 0.0 <= rows["coverage"] <= 1.0 and not math.isnan(rows["fid"])
    # the NFE is the one bench sample recorded (CFG: two calls per step); a foreign folder: --steps (default 0)
    recorded = json.loads((samples / "metadata.json").read_text())["nfe"]
    assert main(["eval", "--samples", str(samples), "--suite", "smoke", "--num-images", "7", "--steps", "1",
                 "--metrics", "fid", "--results", str(tmp_path / "results-own"), "--quiet"]) == 0
    assert recorded == 2 and load_all(tmp_path / "results-own")["nfe"].tolist() == [2]
    assert set(load_all(tmp_path / "results")["nfe"]) == {0}

    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "no images in": empty,
        "expected 8": foreign,  # wrong count
    }
    for needle, folder in cases.items():
        count = "8" if needle == "expected 8" else "7"
        code = main(["eval", "--samples", str(folder), "--suite", "smoke", "--num-images", count, "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and needle in err, err
    (foreign / "notes.bin").write_bytes(np.zeros(4, np.uint8).tobytes())
    assert main(["eval", "--samples", str(foreign), "--suite", "smoke", "--num-images", "7", "--quiet"]) == 2
    assert "notes.bin is not an image" in capsys.readouterr().err


def test_accelerate_two_processes_score_a_folder_to_the_same_numbers(tmp_path):
    """`accelerate launch --cpu --num_processes 2 -m bench eval`: each process extracts the features and
    CLIP cosines of its share of the batches (bench.core.distributed.map_batches); the gathered numbers
    equal one process's exactly, and only the main process writes rows."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    samples = tmp_path / "samples"
    common = ["--suite", "toy", "--num-images", "70", "--teacher", "toy", "--quiet"]
    assert main(["sample", "--method", "ddim", "--steps", "1", "--out", str(samples), *common]) == 0
    score = ["eval", "--samples", str(samples), "--method", "ddim", "--steps", "1",
             "--metrics", "fid,clip,coverage", *common]               # 70 images: 3 feature batches of 32
    # one thread per process on both sides: CPU kernels are not thread-count-invariant in the last bits
    # (accelerate gives each of the 2 processes 1 of this machine's threads), sharding is what is compared
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache-1"), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "bench", *score, "--results", str(tmp_path / "one")],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    env = {**env, "BENCH_CACHE_DIR": str(tmp_path / "cache-2")}         # nothing reused from the first
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                          "-m", "bench", *score, "--results", str(tmp_path / "two")],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    values = {}
    for name in ("one", "two"):
        assert len(list((tmp_path / name).glob("*.jsonl"))) == 1        # one run file: the main process's
        rows = load_all(tmp_path / name)
        values[name] = dict(zip(rows["metric"], rows["value"]))
    assert set(values["one"]) == {"fid", "clip", "precision", "recall", "density", "coverage"}
    assert values["two"] == values["one"]
