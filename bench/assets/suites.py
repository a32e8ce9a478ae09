"""Suites: the prompt lists a benchmark samples, with the protocol facts that pin them down.

A suite is an ordered tuple of prompts (prompt *i* is image *i*; its seed is derived from *i*
elsewhere), optionally the dataset image id and MJHQ category of each prompt, and a ``protocol``
dict: the source file(s) and their sha256, the selection rule in words, its seed, the count, and
a sha256 of the selected list. :attr:`Suite.fingerprint` hashes the name, the protocol and the
prompts, so any change of source file, rule or N gives a new fingerprint.

Registered suites (``SUITE_SPECS``; add a :class:`SuiteSpec` to extend):

``smoke``
    8 built-in prompts (``bench/data/smoke_prompts.txt``) for tests: mixed lengths, one longer
    than CLIP's 77 tokens, one with non-ASCII text.

``coco2014-30k``
    The 30,000 COCO-2014 captions of the GigaGAN / DMD / DMD2 FID protocol. Sources, first found
    wins:

    (a) ``<data_root>/coco2014/captions_coco14_test.txt``: one caption per line, exactly 30,000
        lines, taken verbatim in file order (only the line terminator is removed; trailing spaces
        are kept). When its sha256 is that of DMD2's committed list
        (tianweiy/DMD2 ``main/coco_eval/captions_coco14_test.txt``) the protocol says
        ``"list": "DMD2 list"``.
    (b) ``<data_root>/coco2014/annotations/captions_val2014.json`` (official COCO captions json,
        which must describe exactly 40,504 images). Rule: the image ids sorted ascending;
        ``rng = random.Random(2014)``; ``chosen = sorted(rng.sample(ids, 30000))``; then for each
        chosen id in ascending order ``caption = rng.choice(captions)``, where ``captions`` are
        that image's captions ordered by ascending annotation id. Prompts are ordered by image id.

    The FID reference is all 40,504 val2014 images, whichever source gave the prompts.

``coco2017-5k``
    ``<data_root>/coco2017/annotations/captions_val2017.json`` (must describe exactly 5,000
    images): the images sorted by image id, one prompt each, the caption with the smallest
    annotation id. The reference is the same 5,000 val2017 images.

``mjhq-5k``
    ``<data_root>/mjhq/meta_data.json`` (``{image_id: {"category": ..., "prompt": ...}}``, exactly
    30,000 entries): the DeepCompressor / SVDQuant rule: the keys in file order,
    ``random.Random(0).shuffle(keys)``, the first 5,000, then sorted. The reference is the 5,000
    matching images ``mjhq30k_imgs/<category>/<image_id>.jpg``.

``toy``
    The toy world's suite (:mod:`bench.assets.toy.world`, the embedded default): the captions of a seeded
    draw of 1,000 world scenes; the FID/Coverage reference is that draw's images (image *i* fits
    prompt *i*), and a second draw conditioned on the same captions measures the real-vs-real floor.
    Generated on the fly from the seed: nothing to download.

``prompts-file`` (or any unregistered name together with ``prompts_file=``)
    A UTF-8 text file, one prompt per line, taken verbatim (a final newline is allowed; empty or
    whitespace-only lines are rejected with their line numbers).

Text normalisation: prompts read from json files (COCO captions, MJHQ prompts) have their
whitespace collapsed, ``" ".join(text.split())``: COCO captions carry stray newlines and double
spaces, CLIP's tokenizer collapses whitespace anyway, and the result can be written one prompt per
line. Prompts read from text files are kept verbatim.

Paths in the protocol are relative to the data root, so a fingerprint does not depend on where the
data lives; the absolute paths that were read are in :attr:`Suite.source_files`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bench.assets.toy.world import ToySuiteConfig, toy_suite_prompts
from bench.core.errors import MissingResourceError, UsageError
from bench.core.fingerprint import fingerprint, sha256_lines
from bench.core.fingerprint import fingerprint as config_fingerprint

log = logging.getLogger(__name__)

DATA_ROOT_ENV = "BENCH_DATA_ROOT"
DEFAULT_DATA_ROOT = Path("~/.cache/distill-bench/data")
_DATA_ROOT_HOW = f"point --data-root DIR or {DATA_ROOT_ENV}=DIR at the folder that holds it"

COCO2014_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
COCO2017_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
MJHQ_META_URL = "https://huggingface.co/datasets/playgroundai/MJHQ-30K/resolve/main/meta_data.json"
DMD2_LIST_URL = "https://github.com/tianweiy/DMD2/blob/main/main/coco_eval/captions_coco14_test.txt"
# sha256 of tianweiy/DMD2 main/coco_eval/captions_coco14_test.txt (git blob
# fb13e7efe10d3b3fce05a38185aa49b92c009929, 1,595,018 bytes, 30,000 lines).
DMD2_LIST_SHA256 = "edabd2a556026cbf5d36a5fffa35ad43d7ba71b72f6d640b727c1edefb7f1945"

_COCO_EXPECTED = "a COCO captions json with 'images' and 'annotations' lists"
_MJHQ_EXPECTED = "MJHQ-30K meta_data.json, an object {image_id: {\"category\": ..., \"prompt\": ...}}"
_SMOKE_RESOURCE = "smoke_prompts.txt"


# --------------------------------------------------------------------------------------------
# The suite


@dataclass(frozen=True)
class Suite:
    """An ordered prompt list (prompt *i* is image *i*) and the protocol facts that define it."""

    name: str
    prompts: tuple[str, ...]
    image_ids: tuple[str, ...] | None      # COCO / MJHQ image id per prompt, where the suite has them
    categories: tuple[str, ...] | None     # MJHQ category per prompt
    protocol: dict                         # source files + sha256, rule, seed, counts, list hashes
    # Per prompt, the matched real image relative to the data root, where the FID reference is
    # exactly the prompts' own images (coco2017-5k, mjhq-5k); None otherwise.
    reference_files: tuple[str, ...] | None = None
    # Where the data was read from; informative only, not part of the fingerprint or equality.
    data_root: Path | None = field(default=None, compare=False)
    source_files: tuple[Path, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if not self.prompts:
            raise UsageError(f"suite {self.name!r} has no prompts")
        for attr in ("image_ids", "categories", "reference_files"):
            values = getattr(self, attr)
            if values is None:
                continue
            values = tuple(values)
            if len(values) != len(self.prompts):
                raise ValueError(f"suite {self.name!r}: {len(values)} {attr} for {len(self.prompts)} prompts")
            object.__setattr__(self, attr, values)
        object.__setattr__(self, "source_files", tuple(Path(p) for p in self.source_files))

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def fingerprint(self) -> str:
        """Hash of (name, protocol, sha256 of the prompts): changes with the source, rule or N."""
        return fingerprint((self.name, self.protocol, sha256_lines(list(self.prompts))))

    def subset(self, num_images: int) -> Suite:
        """The first ``num_images`` prompts (deterministic); the protocol records the N."""
        if isinstance(num_images, bool) or not isinstance(num_images, int):
            raise UsageError(f"the number of images must be an integer, got {num_images!r}")
        if not 1 <= num_images <= len(self.prompts):
            raise UsageError(
                f"cannot take {num_images} images from suite {self.name!r}: "
                f"it has {len(self.prompts):,} prompts (use 1..{len(self.prompts)})"
            )

        def head(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
            return None if values is None else values[:num_images]

        protocol = copy.deepcopy(self.protocol)
        protocol["num_images"] = num_images
        return dataclasses.replace(
            self,
            prompts=self.prompts[:num_images],
            image_ids=head(self.image_ids),
            categories=head(self.categories),
            reference_files=head(self.reference_files),
            protocol=protocol,
        )


@dataclass(frozen=True)
class SuiteSpec:
    """A registered suite: its name, a one-line summary and the loader that builds it.

    ``count`` is the number of prompts, ``source_images`` the number of images (or entries) the
    source annotation file must describe, ``seed`` the seed of the selection rule. They are
    fields so a test can build a spec with small counts (``dataclasses.replace``).
    """

    name: str
    summary: str
    loader: Callable[[SuiteSpec, Path], Suite]
    count: int | None = None
    source_images: int | None = None
    seed: int | None = None
    needs_data_root: bool = True

    def load(self, data_root: str | Path | None = None) -> Suite:
        if not self.needs_data_root:
            return self.loader(self, Path("."))
        root, origin = _resolve_data_root(data_root)
        try:
            return self.loader(self, root)
        except MissingResourceError as exc:
            raise MissingResourceError(
                f"{exc}; looked under data root {root} (from {origin}); {_DATA_ROOT_HOW}"
            ) from None


# --------------------------------------------------------------------------------------------
# Data root


def _resolve_data_root(data_root: str | Path | None) -> tuple[Path, str]:
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser(), "--data-root"
    env = os.environ.get(DATA_ROOT_ENV, "")
    if env:
        return Path(env).expanduser(), DATA_ROOT_ENV
    return DEFAULT_DATA_ROOT.expanduser(), "the default"


def default_data_root(data_root: str | Path | None = None) -> Path:
    """The data root: ``data_root`` (the --data-root flag) > env BENCH_DATA_ROOT >
    ~/.cache/distill-bench/data."""
    return _resolve_data_root(data_root)[0]


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
    """Validate the COCO captions schema (notes/evaluation.md §6.1) and group captions by image.

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


# --------------------------------------------------------------------------------------------
# Loaders


def _protocol(
    *,
    dataset: str,
    sources: list[dict],
    selection: str,
    seed: int | None,
    prompts: Sequence[str],
    image_ids: Sequence[str] | None = None,
    reference: str | None = None,
    reference_dir: str | None = None,
    **extra: Any,
) -> dict:
    protocol = {
        "dataset": dataset,
        "sources": sources,
        "selection": selection,
        "seed": seed,
        "count": len(prompts),
        "num_images": len(prompts),
        "prompts_sha256": sha256_lines(list(prompts)),
        "image_ids_sha256": None if image_ids is None else sha256_lines(list(image_ids)),
        "reference": reference,
        "reference_dir": reference_dir,
    }
    protocol.update(extra)
    return protocol


def _load_smoke(spec: SuiteSpec, data_root: Path) -> Suite:
    resource = resources.files("bench") / "data" / _SMOKE_RESOURCE
    data = resource.read_bytes()
    path = Path(str(resource))
    prompts = read_prompt_lines(path, data, "one prompt per line", "the distill-bench package")
    if spec.count is not None and len(prompts) != spec.count:
        raise RuntimeError(f"packaging bug: {path} has {len(prompts)} prompts, expected {spec.count}")
    protocol = _protocol(
        dataset="built-in smoke prompts",
        sources=[{"file": f"bench/data/{_SMOKE_RESOURCE}", "sha256": _sha256_bytes(data)}],
        selection="every line of the built-in file, verbatim",
        seed=None,
        prompts=prompts,
    )
    return Suite(spec.name, tuple(prompts), None, None, protocol, source_files=(path,))


TOY_RULE = (
    "captions of toy-world draw seed {seed} (item i from generator (seed, i)), first {count}; "
    "reference = that draw's images; floor = a redraw conditioned on the same captions, seed {floor_seed}"
)


def _load_toy(spec: SuiteSpec, data_root: Path) -> Suite:
    config = ToySuiteConfig(n=spec.count) if spec.count is not None else ToySuiteConfig()
    prompts = toy_suite_prompts(config.prompt_seed, config.n, config.world)
    protocol = _protocol(
        dataset="toy world (bench.assets.toy.world)",
        sources=[{"file": "<generated>", "world_fingerprint": config_fingerprint(config.world.to_dict())}],
        selection=TOY_RULE.format(seed=config.prompt_seed, count=config.n, floor_seed=config.floor_seed),
        seed=config.prompt_seed,
        prompts=prompts,
        reference=f"the {config.n:,} world images the prompts were drawn with",
        floor_seed=config.floor_seed,
        resolution=config.world.resolution,
    )
    return Suite(spec.name, tuple(prompts), None, None, protocol)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_coco2014_30k(spec: SuiteSpec, data_root: Path) -> Suite:
    assert spec.count is not None and spec.source_images is not None and spec.seed is not None
    list_rel = "coco2014/captions_coco14_test.txt"
    json_rel = "coco2014/annotations/captions_val2014.json"
    list_path, json_path = data_root / list_rel, data_root / json_rel
    reference = f"val2014 (all {spec.source_images:,} images)"
    common = dict(
        dataset="COCO 2014 val captions, GigaGAN/DMD/DMD2 30K FID protocol",
        reference=reference,
        reference_dir="coco2014/val2014",
    )
    list_expected = f"a {spec.count:,}-line caption list, one caption per line (DMD2's captions_coco14_test.txt)"

    if list_path.is_file():
        data = _read_bytes(list_path, spec.name, list_expected, DMD2_LIST_URL)
        prompts = read_prompt_lines(list_path, data, list_expected, DMD2_LIST_URL)
        if len(prompts) != spec.count:
            raise _malformed(list_path, f"it has {len(prompts):,} lines", list_expected, DMD2_LIST_URL)
        digest = _sha256_bytes(data)
        is_dmd2 = digest == DMD2_LIST_SHA256
        if not is_dmd2:
            log.warning("%s: %s is not DMD2's list (sha256 %s); results will not compare with DMD2's",
                        spec.name, list_path, digest[:12])
        protocol = _protocol(
            sources=[{"file": list_rel, "sha256": digest}],
            list="DMD2 list" if is_dmd2 else f"custom {spec.count:,}-line list (not DMD2's file)",
            selection="every line of the caption list in file order, verbatim (line terminator removed)",
            seed=None,
            prompts=prompts,
            **common,
        )
        log.info("%s: %d prompts from %s (%s)", spec.name, len(prompts), list_path, protocol["list"])
        return Suite(spec.name, tuple(prompts), None, None, protocol, data_root=data_root, source_files=(list_path,))

    if not json_path.exists():
        raise MissingResourceError(
            f"{spec.name}: neither {list_path} ({list_expected}, from {DMD2_LIST_URL}) nor {json_path} "
            f"({_COCO_EXPECTED}, from {COCO2014_ANNOTATIONS_URL}) exists"
        )
    data = _read_bytes(json_path, spec.name, _COCO_EXPECTED, COCO2014_ANNOTATIONS_URL)
    coco = parse_coco_captions(json_path, data, COCO2014_ANNOTATIONS_URL)
    if len(coco.file_names) != spec.source_images:
        raise _malformed(
            json_path, f"it describes {len(coco.file_names):,} images, not the {spec.source_images:,} of val2014",
            "the official captions_val2014.json", COCO2014_ANNOTATIONS_URL,
        )
    pairs = select_coco2014_captions(coco.captions, spec.count, spec.seed)
    prompts = [caption for _, caption in pairs]
    image_ids = [str(image_id) for image_id, _ in pairs]
    protocol = _protocol(
        sources=[{"file": json_rel, "sha256": _sha256_bytes(data)}],
        list="derived from captions_val2014.json",
        selection=COCO2014_RULE.format(seed=spec.seed, count=spec.count),
        seed=spec.seed,
        prompts=prompts,
        image_ids=image_ids,
        **common,
    )
    log.info("%s: %d prompts selected from %s", spec.name, len(prompts), json_path)
    return Suite(spec.name, tuple(prompts), tuple(image_ids), None, protocol,
                 data_root=data_root, source_files=(json_path,))


def _load_coco2017_5k(spec: SuiteSpec, data_root: Path) -> Suite:
    assert spec.source_images is not None
    json_rel = "coco2017/annotations/captions_val2017.json"
    json_path = data_root / json_rel
    data = _read_bytes(json_path, spec.name, _COCO_EXPECTED, COCO2017_ANNOTATIONS_URL)
    coco = parse_coco_captions(json_path, data, COCO2017_ANNOTATIONS_URL)
    if len(coco.file_names) != spec.source_images:
        raise _malformed(
            json_path, f"it describes {len(coco.file_names):,} images, not the {spec.source_images:,} of val2017",
            "the official captions_val2017.json", COCO2017_ANNOTATIONS_URL,
        )
    pairs = select_coco2017_captions(coco.captions)
    prompts = [caption for _, caption in pairs]
    image_ids = [str(image_id) for image_id, _ in pairs]
    files = [f"coco2017/val2017/{coco.file_names[image_id]}" for image_id, _ in pairs]
    protocol = _protocol(
        dataset="COCO 2017 val captions, one per image",
        sources=[{"file": json_rel, "sha256": _sha256_bytes(data)}],
        selection=COCO2017_RULE,
        seed=None,
        prompts=prompts,
        image_ids=image_ids,
        reference=f"the same {spec.source_images:,} val2017 images",
        reference_dir="coco2017/val2017",
    )
    log.info("%s: %d prompts from %s", spec.name, len(prompts), json_path)
    return Suite(spec.name, tuple(prompts), tuple(image_ids), None, protocol, reference_files=tuple(files),
                 data_root=data_root, source_files=(json_path,))


def _load_mjhq_5k(spec: SuiteSpec, data_root: Path) -> Suite:
    assert spec.count is not None and spec.source_images is not None and spec.seed is not None
    json_rel = "mjhq/meta_data.json"
    json_path = data_root / json_rel
    data = _read_bytes(json_path, spec.name, _MJHQ_EXPECTED, MJHQ_META_URL)
    meta = _load_json(json_path, data, _MJHQ_EXPECTED, MJHQ_META_URL)

    def bad(problem: str) -> UsageError:
        return _malformed(json_path, problem, _MJHQ_EXPECTED, MJHQ_META_URL)

    if not isinstance(meta, dict):
        raise bad(f"the top level is a JSON {type(meta).__name__}, not an object")
    for key, entry in meta.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("category"), str) \
                or not isinstance(entry.get("prompt"), str):
            raise bad(f"entry {key!r} lacks a string 'category' or 'prompt'")
    if len(meta) != spec.source_images:
        raise bad(f"it has {len(meta):,} entries, not {spec.source_images:,}")

    keys = select_mjhq_keys(list(meta), spec.count, spec.seed)
    prompts = [_clean(meta[key]["prompt"]) for key in keys]
    empty = [key for key, prompt in zip(keys, prompts) if not prompt]
    if empty:
        raise bad(f"entry {empty[0]!r} has an empty prompt")
    categories = [meta[key]["category"] for key in keys]
    files = [f"mjhq/mjhq30k_imgs/{category}/{key}.jpg" for key, category in zip(keys, categories)]
    protocol = _protocol(
        dataset="MJHQ-30K",
        sources=[{"file": json_rel, "sha256": _sha256_bytes(data)}],
        selection=MJHQ_RULE.format(seed=spec.seed, count=spec.count),
        seed=spec.seed,
        prompts=prompts,
        image_ids=keys,
        reference=f"the {spec.count:,} selected MJHQ images (mjhq30k_imgs/<category>/<image_id>.jpg)",
        reference_dir="mjhq/mjhq30k_imgs",
    )
    log.info("%s: %d prompts selected from %s", spec.name, len(prompts), json_path)
    return Suite(spec.name, tuple(prompts), tuple(keys), tuple(categories), protocol, reference_files=tuple(files),
                 data_root=data_root, source_files=(json_path,))


def load_prompts_file(path: str | Path, name: str = "prompts-file") -> Suite:
    """A suite from a UTF-8 text file, one prompt per line (see :func:`read_prompt_lines`)."""
    path = Path(path).expanduser()
    expected = "a UTF-8 text file with one prompt per line"
    where = "your --prompts-file"
    data = _read_bytes(path, f"suite {name!r}", expected, "the path given to --prompts-file")
    prompts = read_prompt_lines(path, data, expected, where)
    protocol = _protocol(
        dataset="user prompts file",
        sources=[{"file": "<prompts file>", "sha256": _sha256_bytes(data)}],
        selection="every line of the prompts file in order, verbatim (UTF-8, line terminator removed)",
        seed=None,
        prompts=prompts,
    )
    log.info("%s: %d prompts from %s", name, len(prompts), path)
    return Suite(name, tuple(prompts), None, None, protocol, source_files=(path,))


def _needs_prompts_file(spec: SuiteSpec, data_root: Path) -> Suite:
    raise UsageError(f"suite {spec.name!r} needs --prompts-file PATH (a UTF-8 text file, one prompt per line)")


# --------------------------------------------------------------------------------------------
# Registry

SUITE_SPECS: tuple[SuiteSpec, ...] = (
    SuiteSpec("toy", "1,000 toy-world captions (16 px coloured shapes), reference + floor draws; offline default",
              _load_toy, count=1_000, seed=20240, needs_data_root=False),
    SuiteSpec("smoke", "8 built-in prompts for tests (mixed lengths, one over 77 CLIP tokens, one non-ASCII)",
              _load_smoke, count=8, needs_data_root=False),
    SuiteSpec("coco2014-30k", "30,000 COCO-2014 val captions (GigaGAN/DMD2 protocol); FID vs all 40,504 val2014 images",
              _load_coco2014_30k, count=30_000, source_images=40_504, seed=2014),
    SuiteSpec("coco2017-5k", "5,000 COCO-2017 val images, first caption each; FID vs the same images",
              _load_coco2017_5k, count=5_000, source_images=5_000),
    SuiteSpec("mjhq-5k", "5,000 MJHQ-30K prompts (DeepCompressor/SVDQuant subset) with categories",
              _load_mjhq_5k, count=5_000, source_images=30_000, seed=0),
    SuiteSpec("prompts-file", "your own prompts: --prompts-file PATH, one prompt per line",
              _needs_prompts_file, needs_data_root=False),
)
SUITE_NAMES: tuple[str, ...] = tuple(spec.name for spec in SUITE_SPECS)
_PROMPTS_FILE = "prompts-file"


def describe_suites() -> list[tuple[str, str]]:
    """(name, one-line summary) of every registered suite, in registry order."""
    return [(spec.name, spec.summary) for spec in SUITE_SPECS]


def get_suite_spec(name: str) -> SuiteSpec:
    for spec in SUITE_SPECS:
        if spec.name == name:
            return spec
    raise UsageError(f"unknown suite {name!r}; known suites: {', '.join(SUITE_NAMES)}")


def _valid_custom_name(name: str) -> bool:
    return bool(name) and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


def load_suite(
    name: str,
    data_root: str | Path | None = None,
    prompts_file: str | Path | None = None,
) -> Suite:
    """Load a suite by name. With ``prompts_file``, ``name`` may be ``prompts-file`` or any new
    name (letters, digits, ``._-``) that labels the file's prompts; registered data suites cannot
    be overridden by a prompts file."""
    if prompts_file is not None:
        if name != _PROMPTS_FILE and name in SUITE_NAMES:
            raise UsageError(
                f"--prompts-file cannot relabel the built-in suite {name!r}; "
                f"use --suite {_PROMPTS_FILE} or a new name"
            )
        if not _valid_custom_name(name):
            raise UsageError(f"suite name {name!r} must be letters, digits, '.', '_' or '-'")
        return load_prompts_file(prompts_file, name)
    return get_suite_spec(name).load(data_root)
