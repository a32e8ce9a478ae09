"""Progress bars that suit where stderr goes.

:func:`progress_bar` returns a tqdm bar when stderr is a terminal (tqdm redraws one line in place)
and a :class:`LineProgress` otherwise: a log file, CI or ``nohup`` gets one plain line at most every
``interval`` seconds (default 10; the environment variable ``BENCH_PROGRESS_INTERVAL`` overrides)
and one final line at close, instead of the hundreds of carriage-return frames tqdm writes there::

    lcm 4 step(s): 250/1000 img (41.7 img/s, eta 00:18)
    lcm 4 step(s): 1000/1000 img (40.0 img/s, done in 00:25)

Both have the interface the call sites use: iterating over a wrapped iterable, ``update(n)``,
``set_postfix(**values)``, ``close()`` and ``with``.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

from tqdm.auto import tqdm

from bench.core.errors import UsageError

INTERVAL_ENV = "BENCH_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0


def progress_interval() -> float:
    """Seconds between two lines of a non-terminal progress report (``BENCH_PROGRESS_INTERVAL``)."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{INTERVAL_ENV}={text!r} is not a number of seconds >= 0; unset it or set e.g. "
                         f"{INTERVAL_ENV}=30")
    return value


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, disable: bool = False, leave: bool = True, stream: TextIO | None = None,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> Any:
    """A tqdm bar on a terminal, a :class:`LineProgress` elsewhere (``stream``: default stderr).

    ``interval`` (seconds) and ``clock`` apply to the line reports only; ``leave=False`` erases
    the tqdm bar at close (the line report always writes its final line)."""
    stream = sys.stderr if stream is None else stream
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if disable or is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=leave,
                    file=stream, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream,
                        interval=progress_interval() if interval is None else interval, clock=clock)


def format_seconds(seconds: float) -> str:
    """``MM:SS``, or ``H:MM:SS`` from an hour on (tqdm's notation)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class LineProgress:
    """Plain-text progress: ``desc: n/total unit (rate, eta MM:SS)`` at most every ``interval``
    seconds of ``clock``, and ``desc: n/total unit (rate, done in MM:SS)`` at close."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None, desc: str, unit: str,
                 initial: int, stream: TextIO, interval: float, clock: Callable[[], float]) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self._initial = initial, initial
        self.stream, self.interval, self.clock = stream, interval, clock
        self._start = self._last = clock()
        self._postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in () if self.iterable is None else self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self._write(self.line(now))

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values: Any) -> None:
        """Shown after the counts on the next line (``loss=0.123``); ``refresh`` is tqdm's, ignored."""
        values = {**(ordered_dict or {}), **values}
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(self.line(self.clock(), final=True))

    def line(self, now: float, final: bool = False) -> str:
        elapsed = max(now - self._start, 0.0)
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else None
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        if final:
            when = f"done in {format_seconds(elapsed)}"
        elif rate and self.total is not None:
            when = f"eta {format_seconds(max(self.total - self.n, 0) / rate)}"
        else:
            when = "eta ?"
        text = f"{self.desc}: " if self.desc else ""
        text += f"{count} {self.unit} ({self._rate_text(rate)}, {when})"
        return text + (f" {self._postfix}" if self._postfix else "")

    def _rate_text(self, rate: float | None) -> str:
        if rate is None:
            return f"? {self.unit}/s"
        if 0 < rate < 1:
            return f"{1 / rate:.1f} s/{self.unit}"
        return f"{rate:.1f} {self.unit}/s"

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
