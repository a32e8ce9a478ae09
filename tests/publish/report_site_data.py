"""Test data for the HTML report (tests/publish/test_report_site*.py): the committed toy leaderboard
(``leaderboards/toy*.json``) as a results folder, sample folders of a few of its rows, and a parser
of the written page."""
from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from PIL import Image

from bench.publish.leaderboard import rows_from_leaderboard

REPO = Path(__file__).resolve().parents[2]
# The committed toy leaderboard: canonical rows, and its ablations when they have a file of their own.
TOY_JSONS = [REPO / "leaderboards" / "toy.json", REPO / "leaderboards" / "toy-ablations.json"]
PROMPTS = ["a red cube", "a circle at the top right", "a green triangle", "a large orange square"]


def toy_rows() -> list[dict]:
    """The rows of the committed toy leaderboard files."""
    return [row for path in TOY_JSONS if path.exists()
            for row in json.loads(path.read_text(encoding="utf-8"))["rows"]]


def toy_frame(methods: Iterable[str] | None = None, steps: Iterable[int] | None = None) -> pd.DataFrame:
    """The result rows of the toy leaderboard (only these methods / step counts when given)."""
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in TOY_JSONS if p.exists()]
    frame = pd.concat([rows_from_leaderboard(doc) for doc in docs], ignore_index=True)
    if methods is not None:
        frame = frame[frame["method"].isin(list(methods))]
    if steps is not None:
        frame = frame[frame["steps"].isin(list(steps))]
    return frame.reset_index(drop=True)


def _plain(value: Any) -> Any:
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def write_results(frame: pd.DataFrame, folder: Path, name: str = "toy-leaderboard") -> Path:
    """``frame`` as ``<folder>/<name>.jsonl``, one row per line, as ``bench run`` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({k: _plain(v) for k, v in record.items()}, sort_keys=True)
             for record in frame.to_dict(orient="records")]
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_samples(root: Path, configs: Iterable[tuple[str, str, str, int, float]], n_images: int = 4,
                  size: int = 32) -> None:
    """Sample folders ``<suite>/<teacher>/<method>/steps<K>-g<G>-seed0/`` with flat-colour PNGs."""
    for suite, teacher, method, steps, guidance in configs:
        folder = root / suite / teacher / method / f"steps{steps}-g{guidance:g}-seed0"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_images):
            Image.new("RGB", (size, size), (60 * i % 256, 20 * steps % 256, 120)).save(folder / f"{i:05d}.png")
        meta = {"suite": suite, "teacher": teacher, "method": method, "steps": steps, "guidance_scale": guidance,
                "seed": 0, "num_images": n_images,
                "prompts": [{"index": i, "prompt": PROMPTS[i % len(PROMPTS)], "seed": 100 + i}
                            for i in range(n_images)]}
        (folder / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")


class Page(HTMLParser):
    """What the tests read back from ``index.html``: the board's rows, images, links and scripts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[dict[str, Any]] = []        # attrs of each <tr> of #board's body, plus "cells"
        self.headers: list[str] = []
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []                   # every src / href
        self.scripts: list[tuple[dict[str, str], str]] = []
        self.sections: list[dict[str, str]] = []
        self._stack: list[str] = []
        self._in_board = self._in_body = self._in_head = False
        self._cell: list[str] | None = None
        self._script: tuple[dict[str, str], list[str]] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs_list: list) -> None:
        attrs = {k: ("" if v is None else v) for k, v in attrs_list}
        for key in ("src", "href"):
            if key in attrs:
                self.urls.append(attrs[key])
        if tag == "table" and attrs.get("id") == "board":
            self._in_board = True
        elif self._in_board and tag == "thead":
            self._in_head = True
        elif self._in_board and tag == "tbody":
            self._in_body = True
        elif self._in_body and tag == "tr":
            self.rows.append({**attrs, "cells": []})
        elif (self._in_body or self._in_head) and tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "script":
            self._script = (attrs, [])
        elif tag == "section" and "teacher" in attrs.get("class", "").split():
            self.sections.append(attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            if self._in_body:
                self.rows[-1]["cells"].append(text)
            else:
                self.headers.append(text)
            self._cell = None
        elif tag == "thead":
            self._in_head = False
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._in_board = False
        elif tag == "script" and self._script is not None:
            self.scripts.append((self._script[0], "".join(self._script[1])))
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._script is not None:
            self._script[1].append(data)

    def data(self) -> dict:
        """The JSON block the details panel reads."""
        (text,) = [body for attrs, body in self.scripts if attrs.get("id") == "bench-data"]
        return json.loads(text)

    def column(self, header: str) -> int:
        return self.headers.index(header)
