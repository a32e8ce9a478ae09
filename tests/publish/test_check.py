"""`bench check`: direction-aware regression check against a leaderboard JSON baseline."""
from __future__ import annotations

import argparse
import copy
import io
import json

import pytest

from bench.cli.check import add_arguments, command
from bench.core.errors import UsageError
from bench.publish.check import Tolerance, check, parse_tolerances
from bench.publish.leaderboard import write_leaderboards
from bench.scoring.results import ResultsStore, Row, rows_to_frame


def board(*rows, suite="smoke") -> dict:
    """A minimal leaderboard JSON; each row is (method, steps, {metric: value}, [skipped metrics])."""
    out = []
    for method, steps, metrics, *rest in rows:
        skipped = rest[0] if rest else []
        out.append({"teacher": "toy", "method": method, "steps": steps, "guidance": 3.0, "nfe": steps,
                    "metrics": dict(metrics), "skipped": {m: "skipped: not supported" for m in skipped},
                    "fingerprints": {m: f"{method}{steps}{m}" for m in metrics}})
    return {"suite": suite, "rows": out}


BASE = board(("lcm", 2, {"fid": 30.0, "clip": 0.300, "coverage": 0.60, "latency_ms": 5.0}),
             ("scott", 2, {"fid": 25.0, "clip": 0.310, "coverage": 0.70, "latency_ms": 5.5}))


def changed(method: str, metric: str, value: float) -> dict:
    current = copy.deepcopy(BASE)
    next(r for r in current["rows"] if r["method"] == method)["metrics"][metric] = value
    return current


def test_equal_is_ok():
    result = check(BASE, copy.deepcopy(BASE))
    assert result.exit_code == 0 and result.ok
    assert len(result.comparisons) == 6  # fid, clip, coverage x 2 rows; latency not checked by default
    assert {c.status for c in result.comparisons} == {"unchanged"}
    assert result.unchecked == ["latency_ms"]


@pytest.mark.parametrize("metric,value", [("fid", 28.0), ("clip", 0.35), ("coverage", 0.9)])
def test_improved_is_ok(metric, value):
    result = check(BASE, changed("lcm", metric, value))
    assert result.exit_code == 0
    assert [c.metric for c in result.improvements] == [metric]


@pytest.mark.parametrize("metric,value", [
    ("fid", 30.6),        # lower is better: +0.6 > 0.5
    ("clip", 0.2975),     # higher is better: -0.0025 < -0.002
    ("coverage", 0.585),  # -0.015 beyond 0.01
])
def test_regressed_beyond_tolerance_fails(metric, value):
    result = check(BASE, changed("lcm", metric, value))
    assert result.exit_code == 1
    [reg] = result.regressions
    assert (reg.method, reg.metric, reg.baseline, reg.current) == \
        ("lcm", metric, BASE["rows"][0]["metrics"][metric], value)
    text = result.format()
    assert "Regressions" in text and "baseline" in text and "delta" in text and "tolerance" in text
    assert f"{value - reg.baseline:+.6g}" in text and "FAILED" in text


@pytest.mark.parametrize("metric,value", [("fid", 30.4), ("fid", 30.5), ("clip", 0.2985), ("coverage", 0.59)])
def test_regressed_within_tolerance_is_ok(metric, value):
    result = check(BASE, changed("lcm", metric, value))
    assert result.exit_code == 0
    assert [c.status for c in result.comparisons if c.metric == metric and c.method == "lcm"] == \
        ["worse within tolerance"]


def test_direction_matters():
    # A higher FID is worse, a higher CLIP is better: the same +0.6 fails one and passes the other.
    assert check(BASE, changed("lcm", "fid", 30.6)).exit_code == 1
    assert check(BASE, changed("lcm", "clip", 0.9)).exit_code == 0
    assert check(BASE, changed("lcm", "clip", 0.2)).exit_code == 1


def test_missing_row_and_missing_metric_fail_new_rows_do_not():
    current = copy.deepcopy(BASE)
    current["rows"] = [r for r in current["rows"] if r["method"] != "scott"]
    result = check(BASE, current)
    assert result.exit_code == 1
    assert [(a.method, a.metric) for a in result.missing] == [("scott", "*")]
    assert "Missing" in result.format() and "row absent from the current run" in result.format()

    skipped = board(("lcm", 2, {"clip": 0.300, "coverage": 0.60}, ["fid"]),
                    ("scott", 2, {"fid": 25.0, "clip": 0.310, "coverage": 0.70}))
    result = check(BASE, skipped)
    assert result.exit_code == 1
    assert [(a.method, a.metric, a.reason) for a in result.missing] == [("lcm", "fid", "skipped: not supported")]

    extra = copy.deepcopy(BASE)
    extra["rows"].append(board(("dmd", 1, {"fid": 20.0}))["rows"][0])
    result = check(BASE, extra)
    assert result.exit_code == 0
    assert [(a.method, a.metric) for a in result.new] == [("dmd", "*")]
    assert "New (not in the baseline; not a failure)" in result.format()


def test_a_check_that_compares_nothing_fails_closed():
    empty = check({"suite": "smoke", "rows": []}, copy.deepcopy(BASE))
    assert empty.exit_code == 1 and not empty.comparisons and "no number was compared" in empty.format()
    off = check(BASE, copy.deepcopy(BASE), parse_tolerances("fid=off,clip=off,coverage=off"))
    assert off.exit_code == 1 and "FAILED: no number was compared" in off.format()


def test_latency_only_checked_when_asked():
    slower = changed("lcm", "latency_ms", 50.0)
    assert check(BASE, slower).exit_code == 0
    assert check(BASE, slower, parse_tolerances("latency_ms=10%")).exit_code == 1
    assert check(BASE, changed("lcm", "latency_ms", 5.4), parse_tolerances("latency_ms=10%")).exit_code == 0
    assert check(BASE, changed("lcm", "fid", 99.0), parse_tolerances("fid=off")).exit_code == 0


def test_parse_tolerances():
    tols = parse_tolerances("fid=1, clip=0.01,latency_ms=5%")
    assert tols["fid"] == Tolerance(1.0) and tols["clip"] == Tolerance(0.01)
    assert tols["latency_ms"] == Tolerance(5.0, relative=True) and tols["coverage"] == Tolerance(0.01)
    assert parse_tolerances(None) == parse_tolerances([])
    assert set(parse_tolerances(None)) == {"fid", "clip", "coverage", "precision", "recall", "density"}


@pytest.mark.parametrize("text", ["fid", "fid=", "=1", "fid=abc", "foo=1", "fid=-1", "fid=1,,clip=2",
                                  "fid=1,fid=2", "fid=nan", "latency_ms=x%"])
def test_bad_tolerance_is_a_usage_error(text):
    with pytest.raises(UsageError) as info:
        parse_tolerances(text)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_suite_mismatch_is_a_usage_error():
    with pytest.raises(UsageError):
        check(BASE, board(("lcm", 2, {"fid": 30.0}), suite="coco2017-5k"))


# --------------------------------------------------------------------------------------------
# Command line


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_command_exit_codes_and_usage_errors(tmp_path):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(BASE))
    current = tmp_path / "current.json"
    current.write_text(json.dumps(changed("scott", "fid", 26.0)))
    out = io.StringIO()
    assert command(_args("--baseline", str(baseline), "--current", str(current)), out) == 1
    assert "scott" in out.getvalue() and "+1" in out.getvalue()
    assert command(_args("--baseline", str(baseline), "--current", str(current), "--tolerance", "fid=1"),
                   io.StringIO()) == 0

    for argv, message in [
        (["--baseline", str(tmp_path / "none.json"), "--current", str(current)], "baseline file not found"),
        (["--baseline", str(baseline), "--current", str(tmp_path / "none.json")], "current file not found"),
        (["--baseline", str(baseline), "--current", str(current), "--tolerance", "fid=x"], "not a number"),
    ]:
        with pytest.raises(UsageError, match=message):
            command(_args(*argv), io.StringIO())
    bad = tmp_path / "bad.json"
    for text, message in [("{not json", "not valid JSON"), ('{"suite": "smoke"}', "not a leaderboard JSON"),
                          ('{"rows": [{"method": "a"}]}', "no 'teacher' field"),
                          ('{"rows": [{"teacher": "t", "method": "a", "steps": 1, "guidance": 3, '
                           '"metrics": {"fid": "x"}}]}',
                           "not a number")]:
        bad.write_text(text)
        with pytest.raises(UsageError, match=message) as info:
            command(_args("--baseline", str(bad), "--current", str(current)), io.StringIO())
        assert info.value.exit_code == 2


def test_command_against_a_results_folder(tmp_path):
    """End to end: results -> leaderboard baseline -> check the same results (0), then a worse run (1)."""
    def row(value, run_id, time, fingerprint):
        return Row(suite="smoke", teacher="toy", method="lcm", steps=2, nfe=2, guidance=3.0, seed=0, num_images=8,
                   metric="fid", value=value, fingerprint=fingerprint, run_id=run_id, time=time, device="cpu",
                   versions={}, protocol={"N": 8})

    results = tmp_path / "results"
    ResultsStore(results, "r1").append([row(30.0, "r1", "2025-01-01T00:00:00Z", "a")])
    write_leaderboards(rows_to_frame([row(30.0, "r1", "2025-01-01T00:00:00Z", "a")]), tmp_path / "lb")
    baseline = str(tmp_path / "lb" / "smoke.json")
    assert command(_args("--baseline", baseline, "--results", str(results)), io.StringIO()) == 0
    ResultsStore(results, "r2").append([row(31.0, "r2", "2025-01-02T00:00:00Z", "b")])
    out = io.StringIO()
    assert command(_args("--baseline", baseline, "--results", str(results)), out) == 1
    assert "different fingerprint" in out.getvalue()
    with pytest.raises(UsageError, match="results folder not found"):
        command(_args("--baseline", baseline, "--results", str(tmp_path / "none")), io.StringIO())
    with pytest.raises(SystemExit):  # argparse: --results and --current are exclusive
        _args("--baseline", baseline, "--results", "x", "--current", "y")


def test_methods_restricts_the_baseline_and_keeps_the_real_image_rows(tmp_path):
    """CI checks the deterministic teacher solvers against a leaderboard that also holds trained
    methods: rows of other methods are not required, the steps-0 real-image rows still are."""
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps(board(("ddim", 1, {"fid": 20.0}), ("lcm", 1, {"fid": 17.0}),
                                         ("real-2nd-draw", 0, {"fid": 0.46}))))
    current = tmp_path / "cur.json"
    current.write_text(json.dumps(board(("ddim", 1, {"fid": 20.1}), ("real-2nd-draw", 0, {"fid": 0.46}),
                                        ("dmd", 1, {"fid": 11.0}))))
    out = io.StringIO()
    assert command(_args("--baseline", str(baseline), "--current", str(current)), out) == 1  # lcm missing
    assert "dmd" in out.getvalue()                                                          # a new row
    out = io.StringIO()
    assert command(_args("--baseline", str(baseline), "--current", str(current), "--methods", "ddim"), out) == 0
    assert "2 number(s) compared" in out.getvalue() and "0 new" in out.getvalue()
    current.write_text(json.dumps(board(("ddim", 1, {"fid": 20.1}))))
    assert command(_args("--baseline", str(baseline), "--current", str(current), "--methods", "ddim"),
                   io.StringIO()) == 1  # the floor row is still required
    with pytest.raises(UsageError, match="no baseline rows for ddmi"):
        command(_args("--baseline", str(baseline), "--current", str(current), "--methods", "ddmi"), io.StringIO())


def test_steps_restricts_both_sides_to_the_step_counts_that_were_run(tmp_path):
    """README command 1 runs 1, 2 and 4 steps; the baseline also has 8: `--steps 1,2,4` compares
    those cells (and the real-image rows) only, so the check passes without the 8-step rows."""
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps(board(("lcm", 1, {"fid": 11.0}), ("lcm", 8, {"fid": 1.5}),
                                         ("real-2nd-draw", 0, {"fid": 0.46}))))
    current = tmp_path / "cur.json"
    current.write_text(json.dumps(board(("lcm", 1, {"fid": 11.0}), ("real-2nd-draw", 0, {"fid": 0.46}))))
    assert command(_args("--baseline", str(baseline), "--current", str(current)), io.StringIO()) == 1  # 8 missing
    out = io.StringIO()
    assert command(_args("--baseline", str(baseline), "--current", str(current), "--steps", "1,2,4"), out) == 0
    assert "2 number(s) compared" in out.getvalue() and "0 missing" in out.getvalue()
    with pytest.raises(UsageError, match="--steps takes"):
        command(_args("--baseline", str(baseline), "--current", str(current), "--steps", "one"), io.StringIO())


# --------------------------------------------------------------------------------------------
# Like with like: N, seed and metric models


def at(document: dict, num_images: int | None = None, seed: int | None = None, features: str | None = None) -> dict:
    """``document`` with its protocol (N, metric models) and every row's seed set."""
    out = copy.deepcopy(document)
    protocol = {}
    if num_images is not None:
        protocol["num_images"] = num_images
    if features is not None:
        protocol["metric_models"] = {"features": {"identity": features}, "clip": None}
    out["protocol"] = protocol
    for row in out["rows"]:
        if seed is not None:
            row["seed"] = seed
    return out


def test_a_run_at_another_n_is_not_compared_and_says_so_first():
    """The issue: a run at N=200 against a baseline at N=1000 "regresses" by FID's small-N bias alone."""
    baseline = at(BASE, num_images=1000, seed=0, features="toy-checkpoint:a")
    current = at(changed("lcm", "fid", 33.0), num_images=200, seed=0, features="toy-checkpoint:a")
    result = check(baseline, current)
    assert not result.regressions and not result.comparisons
    assert len(result.not_compared) == 6 and {a.reason for a in result.not_compared} == {"N 1000 vs 200"}
    assert result.exit_code == 2                       # nothing comparable: an error, not a pass
    lines = result.format().splitlines()
    assert "0 regression(s)" in lines[0] and "6 not compared (protocol differs)" in lines[0]
    assert lines[1] == ("protocol (baseline vs current): N 1000 vs 200 (DIFFERS); seed 0 on both sides; "
                        "metric models same; library versions not recorded")
    assert "(N 1000 vs 200)" in lines[2] and "--allow-mismatch" in lines[2]
    assert "toy      lcm     2      3    fid       N 1000 vs 200" in lines
    assert lines[-1].startswith("FAILED: nothing comparable") and "--allow-mismatch" in lines[-1]

    allowed = check(baseline, current, allow_mismatch=True)
    [regression] = allowed.regressions
    assert (regression.method, regression.metric, regression.current, regression.mismatch) == \
        ("lcm", "fid", 33.0, "N 1000 vs 200")
    assert allowed.exit_code == 1 and len(allowed.flagged) == 6 and not allowed.not_compared
    text = allowed.format()
    assert "6 of them across a protocol difference" in text.splitlines()[0]
    assert "--allow-mismatch: 6 number(s) compared across a protocol difference (N 1000 vs 200)" in text


def test_only_the_mismatched_rows_are_set_aside():
    """Seed and metric models are per cell: the rows that match are still compared (and gate)."""
    baseline = at(BASE, num_images=1000, seed=0, features="toy-checkpoint:a")
    current = at(changed("scott", "fid", 26.0), num_images=1000, seed=0, features="toy-checkpoint:a")
    current["rows"][0]["seed"] = 1                                             # lcm at another seed
    result = check(baseline, current)
    assert [(a.method, a.reason) for a in result.not_compared] == [("lcm", "seed 0 vs 1")] * 3
    assert [(c.method, c.metric) for c in result.regressions] == [("scott", "fid")]
    assert result.exit_code == 1
    assert "seed 0 vs 0/1 (DIFFERS)" in result.format().splitlines()[1]

    current = at(BASE, num_images=1000, seed=0, features="toy-checkpoint:b")
    scott_fid = {"num_images": 1000, "metric_models": {"features": {"identity": "toy-checkpoint:a"}}}
    current["rows"][1]["protocols"] = {"fid": scott_fid}                     # the one cell on the old model
    result = check(baseline, current)
    assert {a.reason for a in result.not_compared} == {
        "metric model features.identity toy-checkpoint:a vs toy-checkpoint:b"}
    assert len(result.not_compared) == 5 and len(result.comparisons) == 1 and result.exit_code == 0
    assert "metric models DIFFER: metric model features.identity" in result.format().splitlines()[1]


def test_a_field_one_side_lacks_is_not_recorded_not_a_mismatch():
    result = check(BASE, at(changed("lcm", "fid", 30.6), num_images=200, seed=3))
    assert not result.not_compared and len(result.regressions) == 1 and result.exit_code == 1
    assert result.format().splitlines()[1] == (
        "protocol (baseline vs current): N 200 (not recorded in the baseline); seed 3 (not recorded in the "
        "baseline); metric models not recorded; library versions not recorded")


def test_command_against_results_at_another_n(tmp_path):
    """End to end: a baseline leaderboard at N=1000, a results folder at N=200 with a worse FID."""
    def row(value, run_id, num_images, time):
        return Row(suite="smoke", teacher="toy", method="lcm", steps=2, nfe=2, guidance=3.0, seed=0,
                   num_images=num_images, metric="fid", value=value, fingerprint=f"lcm-{num_images}", run_id=run_id,
                   time=time, device="cpu", versions={"torch": "2.14.1"},
                   protocol={"num_images": num_images, "metric_models": {"features": {"identity": "f"}}})

    write_leaderboards(rows_to_frame([row(30.0, "r1", 1000, "2025-01-01T00:00:00Z")]), tmp_path / "lb")
    results = tmp_path / "results"
    ResultsStore(results, "r2").append([row(34.0, "r2", 200, "2025-01-02T00:00:00Z")])
    argv = ["--baseline", str(tmp_path / "lb" / "smoke.json"), "--results", str(results)]
    out = io.StringIO()
    assert command(_args(*argv), out) == 2
    first = out.getvalue().splitlines()[:3]
    assert "0 regression(s)" in first[0] and "1 not compared" in first[0]
    assert first[1] == ("protocol (baseline vs current): N 1000 vs 200 (DIFFERS); seed 0 on both sides; "
                        "metric models same; library versions not recorded in the baseline")
    out = io.StringIO()
    assert command(_args(*argv, "--allow-mismatch"), out) == 1
    assert "1 regression(s)" in out.getvalue().splitlines()[0] and "N 1000 vs 200" in out.getvalue()
