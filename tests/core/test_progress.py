"""Progress reports: tqdm on a terminal, a plain line every few seconds in a log (injected clock)."""
from __future__ import annotations

import io
import re

import pytest
from tqdm import tqdm

from bench.core.errors import UsageError
from bench.core.progress import INTERVAL_ENV, LineProgress, progress_bar, progress_interval

LINE = re.compile(r"^(?P<desc>.+?): (?P<n>\d+)/(?P<total>\d+) (?P<unit>\S+) "
                  r"\((?P<rate>[\d.]+) (?P=unit)/s, (?P<when>eta|done in) (?P<clock>\d\d:\d\d)\)(?: (?P<postfix>.*))?$")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_every_interval_and_a_final_line():
    stream, clock = io.StringIO(), Clock()
    bar = progress_bar(total=1000, desc="lcm 4 step(s)", unit="img", stream=stream, interval=10, clock=clock)
    assert isinstance(bar, LineProgress)
    for i in range(1000):              # 1,000 updates over 50 simulated seconds
        clock.now = 1000.0 + (i + 1) / 20
        bar.update(1)
    bar.close()
    bar.close()                        # a second close writes nothing
    lines = stream.getvalue().splitlines()
    assert 1 < len(lines) <= 6, lines
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [p["when"] for p in parsed] == ["eta"] * (len(lines) - 1) + ["done in"]
    counts = [int(p["n"]) for p in parsed]
    assert counts == sorted(counts) and counts[0] == 200          # the first line after 10 s: 200 images
    final = parsed[-1]
    assert (final["n"], final["total"], final["unit"], final["clock"]) == ("1000", "1000", "img", "00:50")
    assert float(final["rate"]) == pytest.approx(20.0)
    assert parsed[0]["clock"] == "00:40"                           # 800 images left at 20 img/s


def test_resumed_bar_rates_only_the_new_steps_and_shows_the_postfix():
    stream, clock = io.StringIO(), Clock()
    with progress_bar(total=100, initial=40, desc="train lcm", unit="step", stream=stream, interval=5,
                      clock=clock) as bar:
        for step in range(60):
            clock.now += 0.5
            bar.update(1)
            bar.set_postfix(loss=f"{1 / (step + 1):.4g}", refresh=False)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 7                                         # every 5 s of 30 s, then the final line
    final = LINE.match(lines[-1])
    assert (final["n"], final["total"], final["rate"], final["postfix"]) == ("100", "100", "2.0", "loss=0.01667")
    assert LINE.match(lines[0])["n"] == "50"


def test_wrapping_an_iterable_yields_everything_and_closes():
    stream, clock = io.StringIO(), Clock()
    seen = []
    for item in progress_bar(range(7), desc="chunks", unit="chunk", stream=stream, interval=10, clock=clock):
        clock.now += 1
        seen.append(item)
    assert seen == list(range(7))
    [line] = stream.getvalue().splitlines()
    assert LINE.match(line)["n"] == "7" and "done in 00:07" in line


def test_a_terminal_gets_tqdm_and_disable_writes_nothing():
    terminal = Terminal()
    bar = progress_bar(total=3, desc="x", stream=terminal)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "3/3" in terminal.getvalue()
    log = io.StringIO()
    with progress_bar(total=3, desc="x", stream=log, disable=True) as quiet:
        quiet.update(3)
    assert log.getvalue() == ""


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert progress_interval() == 10.0
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert progress_interval() == 2.5
    stream, clock = io.StringIO(), Clock()
    bar = progress_bar(total=10, desc="d", stream=stream, clock=clock)
    for _ in range(10):
        clock.now += 1
        bar.update(1)
    assert len(stream.getvalue().splitlines()) == 3                # at 3, 6 and 9 s (2.5 s apart at least)
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(UsageError, match=INTERVAL_ENV):
            progress_interval()
