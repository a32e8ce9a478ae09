"""Reading the suites' annotation files (prompt lists, COCO captions, MJHQ metadata) with one
clear error naming the file, line and fix, and the seeded selection rules each suite records."""
from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.assets.suites.model import _COCO_EXPECTED
from bench.core.errors import MissingResourceError, UsageError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Readers


def _missing(what: str, path: Path, expected: str, where: str) -> MissingResourceError:
    return MissingResourceError(f"{what}: {path} not found; expected {expected}, from {where}")


def _malformed(path: Path, problem: str, expected: str, where: str) -> UsageError:
    return UsageError(f"{path}: {problem}; expected {expected} (get it from {where})")


def _read_bytes(path: Path, what: str, expected: str, where: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _missing(what, path, expected, where) from None
    except IsADirectoryError:
        raise _malformed(path, "is a directory, not a file", expected, where) from None
    except OSError as exc:
        raise MissingResourceError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None


def read_prompt_lines(path: Path, data: bytes, expected: str, where: str) -> list[str]:
    """Split a UTF-8 text file into lines: one prompt per line, verbatim.

    A final newline is allowed and CRLF endings are accepted; an empty or whitespace-only line
    anywhere is a UsageError naming its line number(s).
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _malformed(path, f"line {line} is not valid UTF-8 ({exc.reason})", expected, where) from None
    if text == "":
        raise _malformed(path, "the file is empty", expected, where)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if empty:
        shown = ", ".join(str(n) for n in empty[:5]) + (f" (and {len(empty) - 5} more)" if len(empty) > 5 else "")
        raise _malformed(path, f"empty line(s) at line {shown}; remove them", expected, where)
    return lines


def _load_json(path: Path, data: bytes, expected: str, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise _malformed(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})", expected, where) from None
    except json.JSONDecodeError as exc:
        raise _malformed(
            path, f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})", expected, where
        ) from None


def _clean(text: str) -> str:
    return " ".join(text.split())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class CocoCaptions:
    """A parsed COCO captions json: per image id its file name and its captions ordered by
    ascending annotation id (whitespace collapsed)."""

    file_names: dict[int, str]
    captions: dict[int, list[str]]


def parse_coco_captions(path: Path, data: bytes, where: str) -> CocoCaptions:
    """Validate the COCO captions schema (``captions_val2014.json`` / ``captions_val2017.json`` of the
    official ``annotations_trainval2014/2017.zip``) and group captions by image.

    Every image must have at least one caption and every annotation must name a listed image;
    image ids and annotation ids must be unique integers.
    """
    doc = _load_json(path, data, _COCO_EXPECTED, where)

    def bad(problem: str) -> UsageError:
        return _malformed(path, problem, _COCO_EXPECTED, where)

    if not isinstance(doc, dict):
        raise bad(f"the top level is a JSON {type(doc).__name__}, not an object")
    for key in ("images", "annotations"):
        if key not in doc:
            raise bad(f"no {key!r} key")
        if not isinstance(doc[key], list):
            raise bad(f"{key!r} is not a list")

    file_names: dict[int, str] = {}
    for i, image in enumerate(doc["images"]):
        if not isinstance(image, dict) or not _is_int(image.get("id")) or not isinstance(image.get("file_name"), str):
            raise bad(f"images[{i}] lacks an integer 'id' or a string 'file_name'")
        if image["id"] in file_names:
            raise bad(f"images[{i}] repeats image id {image['id']}")
        file_names[image["id"]] = image["file_name"]

    by_image: dict[int, list[tuple[int, str]]] = {image_id: [] for image_id in file_names}
    seen_ids: set[int] = set()
    for j, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            raise bad(f"annotations[{j}] is not an object")
        for key, ok in (("image_id", _is_int), ("id", _is_int), ("caption", lambda v: isinstance(v, str))):
            if not ok(ann.get(key)):
                raise bad(f"annotations[{j}] lacks {'a string' if key == 'caption' else 'an integer'} {key!r}")
        if ann["id"] in seen_ids:
            raise bad(f"annotations[{j}] repeats annotation id {ann['id']}")
        seen_ids.add(ann["id"])
        if ann["image_id"] not in by_image:
            raise bad(f"annotations[{j}] (id {ann['id']}) names image id {ann['image_id']}, which is not in 'images'")
        caption = _clean(ann["caption"])
        if not caption:
            raise bad(f"annotations[{j}] (id {ann['id']}) has an empty caption")
        by_image[ann["image_id"]].append((ann["id"], caption))

    without = [image_id for image_id, caps in by_image.items() if not caps]
    if without:
        raise bad(f"{len(without)} image(s) have no caption, e.g. image id {min(without)}")
    captions = {image_id: [c for _, c in sorted(caps)] for image_id, caps in by_image.items()}
    return CocoCaptions(file_names=file_names, captions=captions)


# --------------------------------------------------------------------------------------------
# Selection rules (pure functions; the loaders below record their text in the protocol)

COCO2014_RULE = (
    "val2014 image ids sorted ascending; rng = random.Random({seed}); chosen = sorted(rng.sample(ids, {count})); "
    "for each chosen id in ascending order, caption = rng.choice(that image's captions ordered by ascending "
    "annotation id); prompts in image-id order; whitespace collapsed"
)
COCO2017_RULE = (
    "all val2017 images sorted by image id, one prompt each: the caption with the smallest annotation id; "
    "whitespace collapsed"
)
MJHQ_RULE = (
    "DeepCompressor/SVDQuant rule: meta_data.json keys in file order, random.Random({seed}).shuffle(keys), "
    "first {count}, then sorted; prompt and category of each key; whitespace collapsed"
)


def select_coco2014_captions(captions: Mapping[int, Sequence[str]], count: int, seed: int) -> list[tuple[int, str]]:
    """COCO-2014 rule (b): ``count`` images sampled without replacement, one seeded caption each.

    ``captions`` maps image id -> that image's captions ordered by annotation id. Returns
    (image id, caption) pairs in ascending image id order.
    """
    ids = sorted(captions)
    if not 1 <= count <= len(ids):
        raise ValueError(f"cannot select {count} of {len(ids)} images")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(ids, count))
    return [(image_id, rng.choice(list(captions[image_id]))) for image_id in chosen]


def select_coco2017_captions(captions: Mapping[int, Sequence[str]]) -> list[tuple[int, str]]:
    """COCO-2017 rule: every image in id order with its first caption (smallest annotation id)."""
    return [(image_id, captions[image_id][0]) for image_id in sorted(captions)]


def select_mjhq_keys(keys: Sequence[str], count: int, seed: int = 0) -> list[str]:
    """DeepCompressor/SVDQuant MJHQ subset: shuffle the keys (file order) with
    ``random.Random(seed)``, keep the first ``count``, sort them."""
    names = list(keys)
    if not 1 <= count <= len(names):
        raise ValueError(f"cannot select {count} of {len(names)} keys")
    random.Random(seed).shuffle(names)
    return sorted(names[:count])


