"""`bench results`: the long table of result rows, written by the CLI and read back with pandas,
equals ``load_all`` (values to the last bit, integer steps/seed, NaN for skipped rows)."""
from __future__ import annotations

import argparse
import io
import json
import re

import pandas as pd
import pytest

from bench.cli import main
from bench.cli.results import add_arguments, command
from bench.scoring.results import ResultsStore, Row, load_all

TEXT_COLUMNS = ["suite", "teacher", "method", "metric", "fingerprint", "run_id", "time", "device", "versions",
                "protocol", "note", "student"]


def _row(run_id: str, suite: str, method: str, steps: int, metric: str, value, note: str = "", seed: int = 0) -> Row:
    return Row(suite=suite, teacher="toy", method=method, steps=steps, nfe=2 * steps, guidance=3.0, seed=seed,
               num_images=1000, metric=metric, value=value, fingerprint=f"{method}{steps}{metric}", run_id=run_id,
               time=f"2026-01-0{run_id[-1]}T00:00:00Z", device="cpu", versions={"torch": "2.14.1"},
               protocol={"num_images": 1000, "metric_models": {"features": "toy"}}, note=note,
               student="released" if method == "lcm" else "")


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    ResultsStore(folder, "run1").append([
        _row("run1", "toy", "lcm", 1, "fid", 11.348765432109876),
        _row("run1", "toy", "lcm", 1, "clip", 0.45161234567890123),
        _row("run1", "toy", "dmd2", 2, "fid", None, note="skipped: dmd2 serves 1 and 4 steps"),
    ])
    ResultsStore(folder, "run2").append([
        _row("run2", "smoke", "ddim", 4, "fid", 123.25, seed=7),
        _row("run2", "toy", "lcm", 1, "fid", 1e-17, note="a note, with \"quotes\"\nand a newline"),
    ])
    return folder


def _same_as_load_all(read_back: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(read_back.columns) == list(expected.columns)
    assert len(read_back) == len(expected)
    for column in ("steps", "nfe", "seed", "num_images"):
        assert pd.api.types.is_integer_dtype(read_back[column]), (column, read_back[column].dtype)
        assert read_back[column].tolist() == expected[column].tolist()
    assert read_back["value"].isna().tolist() == expected["value"].isna().tolist()
    assert read_back["value"].dropna().tolist() == expected["value"].dropna().tolist()       # exact
    assert read_back["guidance"].tolist() == expected["guidance"].tolist()
    for column in TEXT_COLUMNS:
        assert read_back[column].fillna("").astype(str).tolist() == expected[column].tolist(), column


def test_csv_round_trip_and_stdout(results, tmp_path, capsys):
    expected = load_all(results)
    assert len(expected) == 5 and expected["value"].isna().sum() == 1
    path = tmp_path / "all.csv"
    assert main(["results", "--format", "csv", "--results", str(results), "--out", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}\n"
    _same_as_load_all(pd.read_csv(path), expected)
    assert main(["results", "--results", str(results)]) == 0            # csv to stdout by default
    assert capsys.readouterr().out == path.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_parquet_round_trip_keeps_the_dtypes(results, tmp_path, capsys):
    path = tmp_path / "all.parquet"
    assert main(["results", "--results", str(results), "--out", str(path)]) == 0   # format from the suffix
    read_back = pd.read_parquet(path)
    _same_as_load_all(read_back, load_all(results))
    assert str(read_back["steps"].dtype) == "Int64" and str(read_back["seed"].dtype) == "Int64"


def test_json_round_trip_and_suite_filter(results, tmp_path, capsys):
    path = tmp_path / "toy.json"
    assert main(["results", "--format", "json", "--suite", "toy", "--results", str(results), "--out", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}\n"
    expected = load_all(results)
    expected = expected[expected["suite"] == "toy"].reset_index(drop=True)
    read_back = pd.read_json(path, orient="records", dtype=False, convert_dates=False, precise_float=True)
    _same_as_load_all(read_back, expected)
    records = json.loads(path.read_text())
    assert len(records) == 4 and {r["suite"] for r in records} == {"toy"}
    assert [r["value"] for r in records if r["note"].startswith("skipped")] == [None]
    assert main(["results", "--format", "json", "--suite", "toy", "--results", str(results)]) == 0
    assert json.loads(capsys.readouterr().out) == records


@pytest.mark.parametrize("argv, message", [
    (["--format", "parquet"], "parquet is binary and is not written to stdout; pass --out"),
    (["--suite", "coco2017-5k"], "no rows for suite 'coco2017-5k' in .*; suites there: smoke, toy"),
])
def test_usage_errors(results, capsys, argv, message):
    assert main(["results", "--results", str(results), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(message, err), err


def test_no_results_names_bench_run(tmp_path, capsys):
    for folder in (tmp_path / "missing", tmp_path):
        out = tmp_path / "x.csv"
        assert main(["results", "--results", str(folder), "--out", str(out)]) == 2
        assert "run `python -m bench run` first" in capsys.readouterr().err
        assert not out.exists()


def test_help_explains_the_table(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["results", "--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    for words in ("One row per measured number", "csv", "parquet", "json", "NaN in pandas", "load_all",
                  "--suite", "--out FILE"):
        assert words in text, words


def test_command_writes_to_the_given_stream(results):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = io.StringIO()
    assert command(parser.parse_args(["--results", str(results), "--suite", "smoke"]), out) == 0
    frame = pd.read_csv(io.StringIO(out.getvalue()))
    assert frame["method"].tolist() == ["ddim"] and frame["seed"].tolist() == [7]
