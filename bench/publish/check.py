"""Regression check: compare a new run with a committed leaderboard baseline.

    python -m bench check --baseline leaderboards/<suite>.json [--results runs/results | --current new.json]
                          [--tolerance fid=0.5,clip=0.002,coverage=0.01] [--methods A,B] [--allow-mismatch]

Every (teacher, method, steps, guidance, metric) of the baseline is compared with the current
numbers (by default the current state of ``runs/results``, selected exactly as ``bench leaderboard``
selects cells; or another leaderboard JSON given with ``--current``).

Like with like
    Two numbers are compared only when they were measured under the same protocol: the same N
    (``num_images``), sampling seed and metric models (FID is biased at small N, so a run at N = 200
    "regresses" against a baseline at N = 1000 by that bias alone). The first lines of the report
    give N, seed, metric models and library versions of both sides; a field one side did not record
    is "not recorded", never a mismatch. Numbers whose protocol differs are listed as "not compared:
    N 1000 vs 200" instead of regressed or ok; ``--allow-mismatch`` compares them anyway and flags
    them. Library versions are reported only (the leaderboard JSON does not record them; ``--results``
    does for the current run).

Exit status
    0  nothing got worse by more than its tolerance (improvements and new rows are reported, not failed)
    1  at least one regression, or a baseline number that is missing now (row absent, metric absent
       or skipped); a table lists baseline, current, delta and tolerance for each. Also when no number
       was compared at all (an empty baseline, or every metric switched off): the gate fails closed
    2  usage error: unreadable or malformed baseline/current JSON, missing file, bad --tolerance; or
       nothing comparable: every number differs from the baseline in protocol (see --allow-mismatch)

Direction: lower is better for fid and the latency/memory metrics, higher is better for clip,
coverage, precision, recall, density and throughput. A number regresses when it is worse than the
baseline by more than the tolerance (a change of exactly the tolerance passes).

Default tolerances (absolute, in the metric's raw units; CLIP is the raw cosine, not x100):

    fid=0.5  clip=0.002  coverage=0.01  precision=0.01  recall=0.01  density=0.01

Latency, throughput and memory are not checked unless asked for, because they depend on the
machine: add e.g. ``--tolerance latency_ms=10%`` (a trailing ``%`` makes a tolerance relative to
the baseline value). ``metric=off`` stops checking a metric. Tolerances given on the command line
are merged over the defaults.

CI job (GitHub Actions; the toy world runs offline on a CPU)::

    # .github/workflows/regression.yml
    name: regression
    on: [pull_request]
    jobs:
      toy-regression:
        runs-on: ubuntu-latest
        steps:
          - uses: actions/checkout@v4
          - uses: actions/setup-python@v5
            with:
              python-version: "3.11"
          - run: pip install -e ".[test]"
          - name: Run the toy world (the default teacher and suite; CPU, no downloads)
            run: >-
              python -m bench run --methods ddim,dpmpp,er-sde --steps 1,2,4,8,25,50
              --metrics fid,clip,coverage --out runs
          - name: Compare with the committed baseline
            run: >-
              python -m bench check --baseline leaderboards/toy.json --results runs/results
              --methods ddim,dpmpp,er-sde
          - name: Keep the new leaderboard for review
            if: always()
            run: python -m bench leaderboard --base leaderboards/toy.json --results runs/results --out leaderboards-new
          - uses: actions/upload-artifact@v4
            if: always()
            with:
              name: leaderboards-new
              path: leaderboards-new/

To accept an intended change of the numbers, regenerate the baseline and commit it:
``python -m bench leaderboard --base leaderboards/toy.json --results runs/results --suite toy`` (writes
``leaderboards/toy.json``; ``--base`` keeps the committed rows the new run did not measure).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from bench.core.errors import UsageError
from bench.publish.cells import Key, index_rows
from bench.publish.leaderboard import build, suite_json
from bench.scoring.results import METRICS, load_all, metric_spec

DEFAULT_TOLERANCES: Mapping[str, float] = {
    "fid": 0.5,
    "clip": 0.002,
    "coverage": 0.01,
    "precision": 0.01,
    "recall": 0.01,
    "density": 0.01,
}



@dataclass(frozen=True)
class Tolerance:
    """How much worse than the baseline a number may get: absolute, or a percentage of the baseline."""

    amount: float
    relative: bool = False

    def allowed(self, baseline: float) -> float:
        return abs(baseline) * self.amount / 100.0 if self.relative else self.amount

    def __str__(self) -> str:
        return f"{self.amount:g}%" if self.relative else f"{self.amount:g}"


def default_tolerances() -> dict[str, Tolerance]:
    return {m: Tolerance(v) for m, v in DEFAULT_TOLERANCES.items()}


def parse_tolerances(text: str | Sequence[str] | None,
                     base: Mapping[str, Tolerance] | None = None) -> dict[str, Tolerance]:
    """Parse ``"fid=0.5,clip=0.002,latency_ms=10%,coverage=off"`` over ``base`` (default: the defaults).

    Raises :class:`UsageError` (exit 2) with one line naming the bad item.
    """
    tolerances = dict(default_tolerances() if base is None else base)
    if text is None:
        return tolerances
    chunks = [text] if isinstance(text, str) else list(text)
    seen: set[str] = set()
    for chunk in chunks:
        for item in chunk.split(","):
            item = item.strip()
            if not item:
                raise UsageError(f"--tolerance: empty item in {chunk!r} (expected metric=value, comma separated)")
            name, sep, value = item.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not name or not value:
                raise UsageError(f"--tolerance: {item!r} is not metric=value (e.g. fid=0.5 or latency_ms=10%)")
            if name not in METRICS:
                raise UsageError(f"--tolerance: unknown metric {name!r}; known: {', '.join(METRICS)}")
            if name in seen:
                raise UsageError(f"--tolerance: {name} given twice")
            seen.add(name)
            if value.lower() in ("off", "none"):
                tolerances.pop(name, None)
                continue
            relative = value.endswith("%")
            number_text = value[:-1].strip() if relative else value
            try:
                amount = float(number_text)
            except ValueError:
                raise UsageError(f"--tolerance: {item!r}: {value!r} is not a number (or N%, or off)") from None
            if not math.isfinite(amount) or amount < 0:
                raise UsageError(f"--tolerance: {item!r}: a tolerance must be a finite number >= 0")
            tolerances[name] = Tolerance(amount, relative)
    return tolerances


def format_tolerances(tolerances: Mapping[str, Tolerance]) -> str:
    return ",".join(f"{m}={t}" for m, t in sorted(tolerances.items()))


@dataclass(frozen=True)
class Comparison:
    teacher: str
    method: str
    steps: int
    guidance: float
    metric: str
    baseline: float
    current: float
    tolerance: Tolerance
    fingerprint_changed: bool = False
    mismatch: str = ""       # the protocol difference it was compared across (--allow-mismatch), e.g. "N 1000 vs 200"

    @property
    def delta(self) -> float:
        return self.current - self.baseline

    @property
    def worse_by(self) -> float:
        """How much worse than the baseline (negative when better), in the metric's units."""
        return -self.delta if metric_spec(self.metric).higher_is_better else self.delta

    @property
    def regressed(self) -> bool:
        allowed = self.tolerance.allowed(self.baseline)
        return self.worse_by > allowed + 1e-9 * max(1.0, abs(self.baseline))

    @property
    def status(self) -> str:
        if self.regressed:
            return "regressed"
        if self.worse_by < 0:
            return "improved"
        if self.worse_by == 0:
            return "unchanged"
        return "worse within tolerance"


@dataclass(frozen=True)
class Absence:
    teacher: str
    method: str
    steps: int
    guidance: float
    metric: str   # "*" for a whole row
    reason: str


@dataclass
class CheckResult:
    suite: str
    tolerances: dict[str, Tolerance]
    comparisons: list[Comparison] = field(default_factory=list)
    missing: list[Absence] = field(default_factory=list)
    new: list[Absence] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # metrics in the baseline without a tolerance
    not_compared: list[Absence] = field(default_factory=list)  # protocol differs; reason "N 1000 vs 200"
    protocol_line: str = ""                             # N, seed, metric models, versions of both sides

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.regressed]

    @property
    def improvements(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.status == "improved"]

    @property
    def ok(self) -> bool:
        """Nothing regressed, nothing is missing, and something was compared: a gate that compared
        no number (an empty baseline, every metric switched off) fails closed."""
        return bool(self.comparisons) and not self.regressions and not self.missing

    @property
    def nothing_comparable(self) -> bool:
        """Numbers were found on both sides, but every one under another protocol."""
        return bool(self.not_compared) and not self.comparisons

    @property
    def flagged(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.mismatch]

    @property
    def exit_code(self) -> int:
        if self.ok:
            return 0
        return 2 if self.nothing_comparable and not self.missing else 1

    def format(self) -> str:
        return format_result(self)


# --------------------------------------------------------------------------------------------
# Comparing


def _values(row: Mapping[str, Any]) -> dict[str, float]:
    return {m: float(v) for m, v in (row.get("metrics") or {}).items()
            if v is not None and math.isfinite(float(v))}


def check(baseline: Mapping[str, Any], current: Mapping[str, Any],
          tolerances: Mapping[str, Tolerance | float] | None = None, allow_mismatch: bool = False) -> CheckResult:
    """Compare two leaderboard JSON documents (``bench/publish/leaderboard.py::suite_json`` format).

    ``tolerances`` maps metric -> :class:`Tolerance` (or a plain number, absolute); metrics without
    one are not checked. Default: :data:`DEFAULT_TOLERANCES`. A number whose protocol (N, seed,
    metric models) differs from the baseline's is listed in ``not_compared``, or compared and
    flagged when ``allow_mismatch``.
    """
    if tolerances is None:
        tols = default_tolerances()
    else:
        tols = {m: t if isinstance(t, Tolerance) else Tolerance(float(t)) for m, t in tolerances.items()}
    base_suite, cur_suite = baseline.get("suite"), current.get("suite")
    if base_suite and cur_suite and base_suite != cur_suite:
        raise UsageError(f"baseline is suite {base_suite!r} but the current numbers are suite {cur_suite!r}")
    base_rows = index_rows(baseline, "baseline")
    cur_rows = index_rows(current, "current")
    result = CheckResult(suite=str(base_suite or cur_suite or "?"), tolerances=dict(tols))
    unchecked: set[str] = set()
    pairs: list[tuple[Mapping, Mapping, str]] = []   # (baseline row, current row, metric) found on both sides
    for key in sorted(base_rows, key=_sort_key):
        base_row = base_rows[key]
        base_values = _values(base_row)
        checked = {m: v for m, v in base_values.items() if m in tols}
        unchecked.update(m for m in base_values if m not in tols)
        if not checked:
            continue
        cur_row = cur_rows.get(key)
        if cur_row is None:
            result.missing.append(Absence(*key, "*", "row absent from the current run"))
            continue
        cur_values = _values(cur_row)
        skipped = cur_row.get("skipped") or {}
        base_fps = base_row.get("fingerprints") or {}
        cur_fps = cur_row.get("fingerprints") or {}
        for metric, base_value in sorted(checked.items()):
            if metric not in cur_values:
                reason = skipped.get(metric) if metric in skipped else "metric absent from the current run"
                result.missing.append(Absence(*key, metric, str(reason)))
                continue
            pairs.append((base_row, cur_row, metric))
            mismatch = "; ".join(text for _, text in
                                 protocol_differences(baseline, base_row, current, cur_row, metric))
            if mismatch and not allow_mismatch:
                result.not_compared.append(Absence(*key, metric, mismatch))
                continue
            changed = bool(base_fps.get(metric)) and base_fps.get(metric) != cur_fps.get(metric)
            result.comparisons.append(
                Comparison(*key, metric, base_value, cur_values[metric], tols[metric], changed, mismatch))
    for key in sorted(cur_rows, key=_sort_key):
        cur_values = _values(cur_rows[key])
        if key not in base_rows:
            if cur_values:
                result.new.append(Absence(*key, "*", "row not in the baseline"))
            continue
        base_values = _values(base_rows[key])
        for metric in sorted(cur_values):
            if metric in tols and metric not in base_values:
                result.new.append(Absence(*key, metric, "metric not in the baseline"))
    result.unchecked = sorted(unchecked)
    result.protocol_line = protocol_summary(baseline, current, pairs)
    return result


def _sort_key(key: Key) -> tuple:
    teacher, method, steps, guidance = key
    return (teacher, steps, method, guidance)


# --------------------------------------------------------------------------------------------
# Protocol: what two numbers must share to be compared


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {k: v for key, inner in value.items() for k, v in _flat(inner, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def cell_protocol(document: Mapping[str, Any], row: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """The flattened protocol of one cell: the row's own ``protocols`` entry (written when it differs
    from the document's), else the document's ``protocol``."""
    protocols = row.get("protocols") or {}
    return _flat(protocols[metric] if metric in protocols else document.get("protocol") or {})


def _shown(value: Any) -> str:
    """Values as text; a merged protocol holds a list where its rows disagreed."""
    return "/".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _num_images(protocol: Mapping[str, Any]) -> Any:
    return protocol.get("num_images", protocol.get("N"))


def _metric_models(protocol: Mapping[str, Any]) -> dict[str, str]:
    """``{"features.identity": ..., "clip": ...}``; a model a cell did not use (None) is left out."""
    prefix = "metric_models."
    return {k[len(prefix):]: _shown(v) for k, v in protocol.items() if k.startswith(prefix) and v is not None}


def protocol_differences(baseline: Mapping[str, Any], base_row: Mapping[str, Any], current: Mapping[str, Any],
                         cur_row: Mapping[str, Any], metric: str) -> list[tuple[str, str]]:
    """``[("N", "N 1000 vs 200"), ("seed", "seed 0 vs 1"), ("metric models", "metric model clip a vs b")]``:
    the fields of one number that both sides recorded and that differ (a field one side lacks is no
    difference)."""
    base, cur = cell_protocol(baseline, base_row, metric), cell_protocol(current, cur_row, metric)
    found = []
    for name, b, c in (("N", _num_images(base), _num_images(cur)), ("seed", base_row.get("seed"), cur_row.get("seed"))):
        if b is not None and c is not None and _shown(b) != _shown(c):
            found.append((name, f"{name} {_shown(b)} vs {_shown(c)}"))
    base_models, cur_models = _metric_models(base), _metric_models(cur)
    for model in sorted(base_models.keys() & cur_models.keys()):
        if base_models[model] != cur_models[model]:
            found.append(("metric models", f"metric model {model} {base_models[model]} vs {cur_models[model]}"))
    return found


def _side_by_side(label: str, base: set[str], cur: set[str]) -> str:
    if not base and not cur:
        return f"{label} not recorded"
    if not base or not cur:
        where, other = ("baseline", cur) if not base else ("current run", base)
        return f"{label} {'/'.join(sorted(other))} (not recorded in the {where})"
    if base == cur:
        return f"{label} {'/'.join(sorted(base))} on both sides"
    return f"{label} {'/'.join(sorted(base))} vs {'/'.join(sorted(cur))} (DIFFERS)"


def protocol_summary(baseline: Mapping[str, Any], current: Mapping[str, Any],
                     pairs: Sequence[tuple[Mapping, Mapping, str]]) -> str:
    """One line: N, seed, metric models and library versions of both sides, over the numbers found on both."""
    base_n, cur_n, base_seed, cur_seed = set(), set(), set(), set()
    base_models = cur_models = False     # whether any number of that side recorded its metric models
    model_diffs: set[str] = set()
    for base_row, cur_row, metric in pairs:
        base, cur = cell_protocol(baseline, base_row, metric), cell_protocol(current, cur_row, metric)
        for values, value in ((base_n, _num_images(base)), (cur_n, _num_images(cur)),
                              (base_seed, base_row.get("seed")), (cur_seed, cur_row.get("seed"))):
            if value is not None:
                values.add(_shown(value))
        base_models = base_models or bool(_metric_models(base))
        cur_models = cur_models or bool(_metric_models(cur))
        model_diffs.update(text for name, text in protocol_differences(baseline, base_row, current, cur_row, metric)
                           if name == "metric models")
    if not base_models or not cur_models:
        models = "metric models not recorded" + (
            "" if not base_models and not cur_models else f" in the {'baseline' if not base_models else 'current run'}")
    else:
        models = f"metric models DIFFER: {', '.join(sorted(model_diffs))}" if model_diffs else "metric models same"
    parts = [_side_by_side("N", base_n, cur_n), _side_by_side("seed", base_seed, cur_seed), models,
             _versions_text(baseline.get("versions"), current.get("versions"))]
    return "protocol (baseline vs current): " + "; ".join(parts)


def _versions_text(base: Any, cur: Any) -> str:
    if not base and not cur:
        return "library versions not recorded"
    if not base or not cur:
        return f"library versions not recorded in the {'baseline' if not base else 'current run'}"
    diffs = [f"{name} {base[name]} vs {cur[name]}" for name in sorted(base.keys() & cur.keys())
             if base[name] != cur[name]]
    return f"library versions differ: {', '.join(diffs)}" if diffs else "library versions same"


# --------------------------------------------------------------------------------------------
# Output


def _num(value: float) -> str:
    return f"{value:.6g}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [list(r) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def format_result(result: CheckResult) -> str:
    regressions, flagged = result.regressions, result.flagged
    lines = [
        f"bench check: suite {result.suite}: {len(regressions)} regression(s), {len(result.missing)} missing, "
        f"{len(result.improvements)} improved, {len(result.new)} new; {len(result.comparisons)} number(s) compared"
        + (f", {len(result.not_compared)} not compared (protocol differs)" if result.not_compared else "")
        + (f", {len(flagged)} of them across a protocol difference" if flagged else ""),
    ]
    if result.protocol_line:
        lines.append(result.protocol_line)
    if result.not_compared:
        lines.append(f"not compared: {len(result.not_compared)} number(s) measured under another protocol than the "
                     f"baseline's ({_differences(a.reason for a in result.not_compared)}): such a difference moves "
                     "the numbers by itself (FID is biased at small N); pass --allow-mismatch to compare them anyway")
    if flagged:
        lines.append(f"--allow-mismatch: {len(flagged)} number(s) compared across a protocol difference "
                     f"({_differences(c.mismatch for c in flagged)}); their deltas include its effect")
    lines += [f"tolerances: {format_tolerances(result.tolerances) or 'none'}"
              + (f"; not checked: {', '.join(result.unchecked)}" if result.unchecked else ""), ""]
    head = ["teacher", "method", "steps", "cfg", "metric"]
    if regressions:
        lines.append("Regressions (worse than the baseline by more than the tolerance):")
        protocol = ["protocol"] if flagged else []
        lines += _table(head + ["better", "baseline", "current", "delta", "tolerance"] + protocol, [
            [c.teacher, c.method, str(c.steps), f"{c.guidance:g}", c.metric,
             "higher" if metric_spec(c.metric).higher_is_better else "lower",
             _num(c.baseline), _num(c.current), f"{c.delta:+.6g}", str(c.tolerance)]
            + ([c.mismatch or "same"] if flagged else [])
            for c in regressions])
        lines.append("")
    if result.not_compared:
        lines.append("Not compared (measured under another protocol than the baseline's):")
        lines += _table(head + ["not compared"], [
            [a.teacher, a.method, str(a.steps), f"{a.guidance:g}", a.metric, a.reason] for a in result.not_compared])
        lines.append("")
    if result.missing:
        lines.append("Missing (in the baseline, absent now):")
        lines += _table(head + ["reason"], [
            [a.teacher, a.method, str(a.steps), f"{a.guidance:g}", a.metric, a.reason] for a in result.missing])
        lines.append("")
    if result.new:
        lines.append("New (not in the baseline; not a failure):")
        lines += _table(head + ["note"], [
            [a.teacher, a.method, str(a.steps), f"{a.guidance:g}", a.metric, a.reason] for a in result.new])
        lines.append("")
    changed = [c for c in result.comparisons if c.fingerprint_changed]
    if changed:
        lines.append(f"{len(changed)} compared number(s) come from a different fingerprint than the baseline "
                     "(code, config, protocol or library versions changed).")
        lines.append("")
    if result.nothing_comparable:
        lines.append(f"FAILED: nothing comparable: every number differs from the baseline in protocol "
                     f"({_differences(a.reason for a in result.not_compared)}); run at the baseline's protocol, "
                     "or pass --allow-mismatch to compare them anyway.")
    elif not result.comparisons:
        lines.append("FAILED: no number was compared (an empty baseline, or no metric of it has a tolerance); "
                     "a regression check that checks nothing does not pass.")
    else:
        lines.append("OK: nothing got worse beyond tolerance." if result.ok else
                     "FAILED: regressions or missing numbers (see above).")
    return "\n".join(lines) + "\n"


def _differences(reasons: Iterable[str]) -> str:
    """The distinct differences of several numbers: "N 1000 vs 200, seed 0 vs 1"."""
    return ", ".join(sorted({part for reason in reasons for part in reason.split("; ")}))


def current_from_results(results_dir: Path, suite: str) -> dict:
    """The leaderboard JSON of ``suite`` built from a results folder (same cell selection as the leaderboard)."""
    if not results_dir.is_dir():
        raise UsageError(f"results folder not found: {results_dir} (pass --results DIR or --current FILE)")
    frame = load_all(results_dir)
    document = suite_json(suite, build(frame, [suite]).get(suite, {}))
    versions = _versions_of(frame, {run for row in document["rows"] for run in (row.get("runs") or {}).values()})
    if versions:   # the leaderboard JSON does not carry them; the check reports them
        document["versions"] = versions
    return document


def _versions_of(frame: pd.DataFrame, run_ids: set[str]) -> dict[str, str]:
    """Library versions recorded by the rows of ``run_ids`` ("2.13.0/2.14.1" where runs disagree)."""
    seen: dict[str, set[str]] = {}
    for text in frame.loc[frame["run_id"].isin(run_ids), "versions"]:
        for name, version in json.loads(text or "{}").items():
            seen.setdefault(name, set()).add(str(version))
    return {name: "/".join(sorted(values)) for name, values in sorted(seen.items())}


def restrict_to_methods(baseline: Mapping[str, Any], methods: str) -> dict:
    """The baseline with only the rows of ``methods`` (comma-separated) and the steps-0 real-image
    rows; a name with no baseline row is a usage error (a typo would otherwise check nothing)."""
    names = method_names_of(methods)
    present = {str(row.get("method")) for row in baseline.get("rows", [])}
    unknown = sorted(names - present)
    if not names or unknown:
        raise UsageError(f"--methods: no baseline rows for {', '.join(unknown) or '(empty list)'}; "
                         f"the baseline has {', '.join(sorted(present))}")
    return {**baseline, "rows": rows_of(baseline, names)}


def method_names_of(methods: str) -> set[str]:
    return {name.strip() for name in methods.split(",") if name.strip()}


def rows_of(doc: Mapping[str, Any], names: set[str]) -> list:
    """The rows of ``names`` and the steps-0 real-image rows (the new run's other rows are not
    reported as new either)."""
    return [row for row in doc.get("rows", []) if row.get("method") in names or int(row.get("steps", -1)) == 0]


def restrict_to_steps(doc: Mapping[str, Any], steps: list[int]) -> dict:
    """``doc`` with only the rows at ``steps`` sampling steps and the steps-0 real-image rows."""
    wanted = set(steps) | {0}
    return {**doc, "rows": [row for row in doc.get("rows", []) if int(row.get("steps", -1)) in wanted]}
