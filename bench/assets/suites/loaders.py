"""One loader per named suite (smoke, toy, COCO-2014 30K, COCO-2017 5K, MJHQ 5K) and for a
prompts file; see ``bench.assets.suites``."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from bench.assets.suites.model import (
    _COCO_EXPECTED,
    _MJHQ_EXPECTED,
    _SMOKE_RESOURCE,
    COCO2014_ANNOTATIONS_URL,
    COCO2017_ANNOTATIONS_URL,
    DMD2_LIST_SHA256,
    DMD2_LIST_URL,
    MJHQ_META_URL,
    Suite,
    SuiteSpec,
)
from bench.assets.suites.readers import (
    COCO2014_RULE,
    COCO2017_RULE,
    MJHQ_RULE,
    _clean,
    _load_json,
    _malformed,
    _read_bytes,
    parse_coco_captions,
    read_prompt_lines,
    select_coco2014_captions,
    select_coco2017_captions,
    select_mjhq_keys,
)
from bench.assets.toy.world import ToySuiteConfig, toy_suite_prompts
from bench.core.errors import MissingResourceError, UsageError
from bench.core.fingerprint import fingerprint as config_fingerprint
from bench.core.fingerprint import sha256_lines

log = logging.getLogger(__name__)

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
        # The text is part of the suite fingerprint: kept as first published, when the world lived in
        # bench/toy/world.py (now bench/assets/toy/world.py), so the committed toy rows keep theirs.
        dataset="toy world (bench.toy.world)",
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


