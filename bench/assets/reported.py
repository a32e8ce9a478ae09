"""The papers' numbers (``bench/data/reported.json``): every number the seed papers print for the
suites this benchmark runs, with its paper, table, guidance and GPU. The leaderboard shows them in
their own table, never mixed with measured rows; `bench profile` prints their latencies beside its
own."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from bench.core.errors import UsageError


def load_reported(path: str | Path | None = None) -> dict:
    """The papers' numbers: the packaged ``bench/data/reported.json`` unless a path is given."""
    if path is None:
        text = resources.files("bench").joinpath("data/reported.json").read_text(encoding="utf-8")
        source = "bench/data/reported.json"
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise UsageError(f"reported numbers file not found: {path}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise UsageError(f"{source}: expected an object with an 'entries' list")
    return data


__all__ = ["load_reported"]
