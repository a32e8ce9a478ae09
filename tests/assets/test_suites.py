"""Suites: selection rules, schema checks, fingerprints and errors, on small synthetic files."""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import pytest

from bench.assets import suites
from bench.assets.suites import (
    SUITE_NAMES,
    Suite,
    default_data_root,
    describe_suites,
    get_suite_spec,
    load_suite,
    parse_coco_captions,
    select_coco2014_captions,
    select_coco2017_captions,
    select_mjhq_keys,
)
from bench.core.errors import MissingResourceError, UsageError

# ---------------------------------------------------------------------------------------------
# Synthetic files with the real schemas (COCO captions json, MJHQ-30K ``meta_data.json``)


def coco_doc(num_images: int, *, year: int, seed: int = 0, first_id: int = 9) -> dict:
    """A COCO captions json: non-contiguous image ids, 5-7 captions each, images and annotations
    listed in scrambled order, annotation ids not in image order."""
    rng = random.Random(seed)
    image_ids = [first_id + 7 * k + rng.randrange(3) for k in range(num_images)]
    images = []
    for image_id in image_ids:
        name = f"COCO_val2014_{image_id:012d}.jpg" if year == 2014 else f"{image_id:012d}.jpg"
        images.append({"license": 1, "file_name": name, "coco_url": "", "height": 480, "width": 640,
                       "date_captured": "", "flickr_url": "", "id": image_id})
    annotations = []
    ann_ids = rng.sample(range(100, 100 + 10 * num_images), 7 * num_images)
    for image_id in image_ids:
        for c in range(rng.choice([5, 5, 6, 7])):
            annotations.append({"image_id": image_id, "id": ann_ids.pop(),
                                "caption": f"  A photo  number {c} of\nimage {image_id}. "})
    rng.shuffle(images)
    rng.shuffle(annotations)
    return {"info": {}, "images": images, "licenses": [], "annotations": annotations}


def write_json(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def expected_captions(doc: dict) -> dict[int, list[str]]:
    """Per image, its captions ordered by annotation id, whitespace collapsed (the documented rule)."""
    by_image: dict[int, list[tuple[int, str]]] = {}
    for ann in doc["annotations"]:
        by_image.setdefault(ann["image_id"], []).append((ann["id"], " ".join(ann["caption"].split())))
    return {k: [c for _, c in sorted(v)] for k, v in by_image.items()}


def mjhq_doc(n: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    cats = ["animals", "art", "fashion", "food", "indoor", "landscape", "logo", "people", "plants", "vehicles"]
    keys = [f"{rng.getrandbits(40):010x}" for _ in range(n)]
    return {k: {"category": cats[i % 10], "prompt": f" prompt  {i}\tfor {k} "} for i, k in enumerate(keys)}


def spec(name: str, **counts) -> suites.SuiteSpec:
    return dataclasses.replace(get_suite_spec(name), **counts)


COCO14_SMALL = dict(count=12, source_images=40)
COCO17_SMALL = dict(source_images=40)
MJHQ_SMALL = dict(count=10, source_images=40)


# ---------------------------------------------------------------------------------------------
# Selection rules


def test_coco2014_rule_matches_hand_computation():
    caps = {30: ["a30", "b30"], 10: ["a10"], 20: ["a20", "b20", "c20"], 40: ["a40", "b40", "c40", "d40"],
            50: ["a50", "b50"]}
    # Random(2014).sample([10, 20, 30, 40, 50], 3) draws [30, 40, 10] -> sorted [10, 30, 40]; the same
    # rng then picks a caption per image in that order: 10 -> a10 (only one), 30 -> a30, 40 -> d40.
    assert random.Random(2014).sample([10, 20, 30, 40, 50], 3) == [30, 40, 10]
    assert select_coco2014_captions(caps, 3, 2014) == [(10, "a10"), (30, "a30"), (40, "d40")]
    # independent of the mapping's insertion order, and a different seed gives another list
    reordered = {k: caps[k] for k in sorted(caps, reverse=True)}
    assert select_coco2014_captions(reordered, 3, 2014) == [(10, "a10"), (30, "a30"), (40, "d40")]
    assert select_coco2014_captions(caps, 3, 7) != select_coco2014_captions(caps, 3, 2014)


def test_coco2014_rule_properties_on_larger_case():
    caps = {i: [f"{i}-{c}" for c in range(5 + i % 3)] for i in range(1000, 1200, 2)}
    picked = select_coco2014_captions(caps, 60, 2014)
    ids = [i for i, _ in picked]
    assert len(picked) == 60 and ids == sorted(set(ids))
    assert all(c in caps[i] for i, c in picked)
    # captions are spread over positions, not always the first one
    assert len({caps[i].index(c) for i, c in picked}) >= 4
    assert picked == select_coco2014_captions(dict(caps), 60, 2014)
    with pytest.raises(ValueError):
        select_coco2014_captions(caps, 101, 2014)


def test_coco2017_rule_takes_first_caption_by_annotation_id():
    caps = {5: ["x", "y"], 2: ["p", "q", "r"]}
    assert select_coco2017_captions(caps) == [(2, "p"), (5, "x")]


def test_mjhq_rule_matches_hand_computation_and_uses_file_order():
    keys = [f"k{i}" for i in range(10)]
    # DeepCompressor: names = list(meta.keys()); Random(0).shuffle(names); sorted(names[:n])
    shuffled = list(keys)
    random.Random(0).shuffle(shuffled)
    assert select_mjhq_keys(keys, 4, 0) == sorted(shuffled[:4]) == ["k1", "k5", "k7", "k8"]
    # the rule shuffles the keys in file order (not pre-sorted), as DeepCompressor does
    assert select_mjhq_keys(list(reversed(keys)), 4, 0) == ["k1", "k2", "k4", "k8"]
    assert select_mjhq_keys(keys, 10, 0) == keys


# ---------------------------------------------------------------------------------------------
# COCO schema parsing


def test_parse_coco_orders_captions_by_annotation_id(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
           "annotations": [{"image_id": 1, "id": 9, "caption": "nine"},
                           {"image_id": 2, "id": 4, "caption": " four\n"},
                           {"image_id": 1, "id": 3, "caption": "three  times"},
                           {"image_id": 1, "id": 5, "caption": "five"}]}
    path = write_json(tmp_path / "c.json", doc)
    coco = parse_coco_captions(path, path.read_bytes(), "somewhere")
    assert coco.captions == {1: ["three times", "five", "nine"], 2: ["four"]}
    assert coco.file_names == {1: "a.jpg", 2: "b.jpg"}


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d.pop("annotations"), "'annotations'"),
        (lambda d: d.pop("images"), "'images'"),
        (lambda d: d["annotations"][0].pop("caption"), "'caption'"),
        (lambda d: d["annotations"][0].update(image_id=123456), "123456"),
        (lambda d: d["images"][0].pop("file_name"), "file_name"),
        (lambda d: d["images"].append(dict(d["images"][0])), "repeats image id"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), "repeats annotation id"),
        (lambda d: d["images"].append({"id": 999999, "file_name": "x.jpg"}), "no caption"),
        (lambda d: d["annotations"][0].update(caption=" \n "), "empty caption"),
    ],
)
def test_malformed_coco_json_is_usage_error_naming_file(tmp_path, mutate, fragment):
    doc = coco_doc(40, year=2017)
    mutate(doc)
    path = write_json(tmp_path / "coco2017/annotations/captions_val2017.json", doc)
    with pytest.raises(UsageError) as info:
        spec("coco2017-5k", **COCO17_SMALL).load(tmp_path)
    message = str(info.value)
    assert str(path) in message and fragment in message
    assert "images.cocodataset.org/annotations/annotations_trainval2017.zip" in message
    assert "\n" not in message and info.value.exit_code == 2


def test_invalid_json_and_wrong_top_level(tmp_path):
    path = tmp_path / "coco2017/annotations/captions_val2017.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"images": [', encoding="utf-8")
    with pytest.raises(UsageError, match="not valid JSON") as info:
        load_suite("coco2017-5k", data_root=tmp_path)
    assert str(path) in str(info.value)
    write_json(path, [1, 2])
    with pytest.raises(UsageError, match="top level is a JSON list"):
        load_suite("coco2017-5k", data_root=tmp_path)


# ---------------------------------------------------------------------------------------------
# coco2014-30k


def test_coco2014_from_json_follows_documented_rule(tmp_path):
    doc = coco_doc(40, year=2014)
    write_json(tmp_path / "coco2014/annotations/captions_val2014.json", doc)
    suite = spec("coco2014-30k", **COCO14_SMALL).load(tmp_path)
    caps = expected_captions(doc)
    expected = select_coco2014_captions(caps, 12, 2014)
    assert suite.prompts == tuple(c for _, c in expected)
    assert suite.image_ids == tuple(str(i) for i, _ in expected)
    assert [int(i) for i in suite.image_ids] == sorted(int(i) for i in suite.image_ids)
    assert all(p in caps[int(i)] for i, p in zip(suite.image_ids, suite.prompts))
    assert all("  " not in p and "\n" not in p and p == p.strip() for p in suite.prompts)
    proto = suite.protocol
    assert proto["seed"] == 2014 and proto["count"] == 12 and proto["num_images"] == 12
    assert "random.Random(2014)" in proto["selection"] and "annotation id" in proto["selection"]
    assert proto["reference"] == "val2014 (all 40 images)"
    assert proto["sources"][0]["file"] == "coco2014/annotations/captions_val2014.json"
    assert suite.reference_files is None and suite.categories is None

    # The same content in another file order selects the same prompts (ids and annotation ids are
    # what the rule sorts by), but the file's sha256 and so the fingerprint differ.
    doc2 = json.loads(json.dumps(doc))
    doc2["images"].reverse()
    doc2["annotations"].reverse()
    other = tmp_path / "other"
    write_json(other / "coco2014/annotations/captions_val2014.json", doc2)
    suite2 = spec("coco2014-30k", **COCO14_SMALL).load(other)
    assert suite2.prompts == suite.prompts and suite2.image_ids == suite.image_ids
    assert suite2.fingerprint != suite.fingerprint


def test_real_coco2014_spec_and_image_count_check(tmp_path):
    real = get_suite_spec("coco2014-30k")
    assert (real.count, real.source_images, real.seed) == (30_000, 40_504, 2014)
    write_json(tmp_path / "coco2014/annotations/captions_val2014.json", coco_doc(39, year=2014))
    with pytest.raises(UsageError, match="describes 39 images, not the 40 of val2014"):
        spec("coco2014-30k", **COCO14_SMALL).load(tmp_path)
    with pytest.raises(UsageError, match="40,504"):
        load_suite("coco2014-30k", data_root=tmp_path)


def _write_list(root: Path, lines: list[str]) -> Path:
    path = root / "coco2014/captions_coco14_test.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    return path


def test_coco2014_caption_list_is_preferred_and_verbatim(tmp_path, monkeypatch):
    lines = [f"caption {i} with a trailing space " if i % 3 == 0 else f"caption {i}" for i in range(12)]
    path = _write_list(tmp_path, lines)
    write_json(tmp_path / "coco2014/annotations/captions_val2014.json", coco_doc(40, year=2014))
    suite = spec("coco2014-30k", **COCO14_SMALL).load(tmp_path)
    assert suite.prompts == tuple(lines)  # trailing spaces kept: DMD2's list has 3,488 such lines
    assert suite.image_ids is None
    assert suite.protocol["list"].startswith("custom") and suite.protocol["seed"] is None
    assert suite.protocol["sources"] == [{"file": "coco2014/captions_coco14_test.txt",
                                          "sha256": suites.loaders._sha256_bytes(path.read_bytes())}]
    assert suite.protocol["reference"] == "val2014 (all 40 images)"
    # recognised as DMD2's file when its sha256 matches
    monkeypatch.setattr(suites.loaders, "DMD2_LIST_SHA256", suites.loaders._sha256_bytes(path.read_bytes()))
    dmd2 = spec("coco2014-30k", **COCO14_SMALL).load(tmp_path)
    assert dmd2.protocol["list"] == "DMD2 list"
    assert dmd2.fingerprint != suite.fingerprint


def test_coco2014_caption_list_count_checked(tmp_path):
    path = _write_list(tmp_path, [f"c{i}" for i in range(11)])
    with pytest.raises(UsageError, match="11 lines") as info:
        spec("coco2014-30k", **COCO14_SMALL).load(tmp_path)
    assert str(path) in str(info.value) and "github.com/tianweiy/DMD2" in str(info.value)
    with pytest.raises(UsageError, match="30,000-line"):
        load_suite("coco2014-30k", data_root=tmp_path)


# ---------------------------------------------------------------------------------------------
# coco2017-5k


def test_coco2017_first_caption_per_image(tmp_path):
    doc = coco_doc(40, year=2017, seed=3)
    write_json(tmp_path / "coco2017/annotations/captions_val2017.json", doc)
    suite = spec("coco2017-5k", **COCO17_SMALL).load(tmp_path)
    caps = expected_captions(doc)
    ids = sorted(caps)
    assert suite.image_ids == tuple(str(i) for i in ids)
    assert suite.prompts == tuple(caps[i][0] for i in ids)
    assert suite.reference_files == tuple(f"coco2017/val2017/{i:012d}.jpg" for i in ids)
    assert suite.protocol["reference"] == "the same 40 val2017 images"
    assert "smallest annotation id" in suite.protocol["selection"]
    assert len(suite) == 40


def test_coco2017_image_count_checked(tmp_path):
    write_json(tmp_path / "coco2017/annotations/captions_val2017.json", coco_doc(40, year=2017))
    with pytest.raises(UsageError, match="describes 40 images, not the 5,000 of val2017"):
        load_suite("coco2017-5k", data_root=tmp_path)


# ---------------------------------------------------------------------------------------------
# mjhq-5k


def test_mjhq_subset(tmp_path):
    meta = mjhq_doc(40)
    write_json(tmp_path / "mjhq/meta_data.json", meta)
    suite = spec("mjhq-5k", **MJHQ_SMALL).load(tmp_path)
    keys = select_mjhq_keys(list(meta), 10, 0)
    assert list(suite.image_ids) == keys == sorted(keys)
    assert suite.categories == tuple(meta[k]["category"] for k in keys)
    assert suite.prompts == tuple(" ".join(meta[k]["prompt"].split()) for k in keys)
    assert suite.reference_files == tuple(f"mjhq/mjhq30k_imgs/{meta[k]['category']}/{k}.jpg" for k in keys)
    assert suite.protocol["seed"] == 0 and "random.Random(0).shuffle" in suite.protocol["selection"]
    assert suite.protocol["image_ids_sha256"] is not None


@pytest.mark.parametrize(
    "meta, fragment",
    [
        ([{"category": "art", "prompt": "x"}], "top level is a JSON list"),
        ({"a": {"category": "art"}}, "lacks a string 'category' or 'prompt'"),
        ({"a": "just a string"}, "lacks a string"),
    ],
)
def test_mjhq_malformed(tmp_path, meta, fragment):
    path = write_json(tmp_path / "mjhq/meta_data.json", meta)
    with pytest.raises(UsageError, match=fragment) as info:
        spec("mjhq-5k", **MJHQ_SMALL).load(tmp_path)
    assert str(path) in str(info.value) and "playgroundai/MJHQ-30K" in str(info.value)


def test_mjhq_entry_count_checked(tmp_path):
    write_json(tmp_path / "mjhq/meta_data.json", mjhq_doc(40))
    with pytest.raises(UsageError, match="40 entries, not 30,000"):
        load_suite("mjhq-5k", data_root=tmp_path)


# ---------------------------------------------------------------------------------------------
# Missing files, data root, registry


@pytest.mark.parametrize(
    "name, rel, url",
    [
        ("coco2017-5k", "coco2017/annotations/captions_val2017.json", "annotations_trainval2017.zip"),
        ("mjhq-5k", "mjhq/meta_data.json", "playgroundai/MJHQ-30K"),
        ("coco2014-30k", "coco2014/annotations/captions_val2014.json", "annotations_trainval2014.zip"),
    ],
)
def test_missing_file_is_one_clear_line(tmp_path, monkeypatch, name, rel, url):
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path))
    with pytest.raises(MissingResourceError) as info:
        load_suite(name)
    message = str(info.value)
    assert str(tmp_path / rel) in message and url in message
    assert "--data-root" in message and "BENCH_DATA_ROOT" in message and "from BENCH_DATA_ROOT" in message
    assert "\n" not in message and info.value.exit_code == 1
    if name == "coco2014-30k":
        assert str(tmp_path / "coco2014/captions_coco14_test.txt") in message and "DMD2" in message


def test_default_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    assert default_data_root() == tmp_path / "home/.cache/distill-bench/data"
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "env"))
    assert default_data_root() == tmp_path / "env"
    assert default_data_root(tmp_path / "flag") == tmp_path / "flag"


def test_data_root_moves_without_changing_fingerprint(tmp_path):
    write_json(tmp_path / "a/coco2017/annotations/captions_val2017.json", coco_doc(40, year=2017))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    one = spec("coco2017-5k", **COCO17_SMALL).load(tmp_path / "a")
    two = spec("coco2017-5k", **COCO17_SMALL).load(tmp_path / "b")
    assert one.fingerprint == two.fingerprint and one == two
    assert one.data_root == tmp_path / "a" and one.source_files != two.source_files


def test_registry_and_unknown_name():
    assert SUITE_NAMES == ("toy", "smoke", "coco2014-30k", "coco2017-5k", "mjhq-5k", "prompts-file")
    described = describe_suites()
    assert [n for n, _ in described] == list(SUITE_NAMES)
    assert all(summary and "\n" not in summary for _, summary in described)
    with pytest.raises(UsageError) as info:
        load_suite("coco-30k")
    assert all(name in str(info.value) for name in SUITE_NAMES)


# ---------------------------------------------------------------------------------------------
# Fingerprints and subsets


def test_fingerprint_tracks_file_content_and_n(tmp_path):
    doc = coco_doc(40, year=2017)
    path = write_json(tmp_path / "coco2017/annotations/captions_val2017.json", doc)
    load = lambda: spec("coco2017-5k", **COCO17_SMALL).load(tmp_path)  # noqa: E731
    base = load()
    assert load().fingerprint == base.fingerprint  # stable
    # changing a caption that the rule does not select still changes the file hash
    first = {i: caps[0] for i, caps in expected_captions(doc).items()}
    unused = next(a for a in doc["annotations"] if " ".join(a["caption"].split()) != first[a["image_id"]])
    unused["caption"] = "an edited caption"
    write_json(path, doc)
    edited = load()
    assert edited.prompts == base.prompts and edited.fingerprint != base.fingerprint

    subsets = {n: edited.subset(n).fingerprint for n in (1, 5, 6, 40)}
    assert len(set(subsets.values())) == 4
    assert subsets[40] == edited.fingerprint  # N = all is the full suite
    assert edited.subset(6).subset(5).fingerprint == subsets[5]
    assert edited.subset(5).fingerprint == subsets[5]


def test_subset_slices_everything_and_records_n(tmp_path):
    write_json(tmp_path / "mjhq/meta_data.json", mjhq_doc(40))
    suite = spec("mjhq-5k", **MJHQ_SMALL).load(tmp_path)
    head = suite.subset(3)
    assert head.prompts == suite.prompts[:3] and head.image_ids == suite.image_ids[:3]
    assert head.categories == suite.categories[:3] and head.reference_files == suite.reference_files[:3]
    assert head.protocol["num_images"] == 3 and head.protocol["count"] == 10
    assert suite.protocol["num_images"] == 10  # the original is untouched
    for bad in (0, -1, 11, True, 2.0):
        with pytest.raises(UsageError):
            suite.subset(bad)


def test_suite_rejects_misaligned_fields():
    with pytest.raises(ValueError):
        Suite("x", ("a", "b"), ("1",), None, {})


# ---------------------------------------------------------------------------------------------
# smoke and prompts files


def test_smoke_suite():
    suite = load_suite("smoke")
    assert len(suite.prompts) == 8 and len(set(suite.prompts)) == 8
    # whitespace words lower-bound CLIP BPE tokens; +2 for start/end tokens
    assert max(len(p.split()) for p in suite.prompts) + 2 > 77
    assert min(len(p.split()) for p in suite.prompts) <= 5
    assert any(not p.isascii() for p in suite.prompts)
    assert suite.protocol["sources"][0]["file"] == "bench/data/smoke_prompts.txt"
    assert load_suite("smoke").fingerprint == suite.fingerprint


def test_prompts_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_bytes("a cat\r\nün café ☕\nthe end\n".encode("utf-8"))
    suite = load_suite("prompts-file", prompts_file=path)
    assert suite.prompts == ("a cat", "ün café ☕", "the end") and suite.name == "prompts-file"
    named = load_suite("my-prompts", prompts_file=path)
    assert named.name == "my-prompts" and named.fingerprint != suite.fingerprint
    path.write_bytes("\ufeffa cat\nün café ☕\nthe end".encode("utf-8"))  # BOM, no final newline
    assert load_suite("prompts-file", prompts_file=path).prompts == suite.prompts


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"one\ntwo\n\nfour\n", "line 3"),
        (b"one\n   \nthree\n\n", "line 2, 4"),
        (b"one\n\n", "line 2"),
        (b"", "empty"),
        (b"fine\nbad \xff byte\n", "line 2 is not valid UTF-8"),
    ],
)
def test_prompts_file_errors(tmp_path, content, fragment):
    path = tmp_path / "p.txt"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=fragment) as info:
        load_suite("prompts-file", prompts_file=path)
    assert str(path) in str(info.value)


def test_prompts_file_names_and_missing(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("x\n", encoding="utf-8")
    with pytest.raises(UsageError, match="built-in suite 'coco2017-5k'"):
        load_suite("coco2017-5k", prompts_file=path)
    with pytest.raises(UsageError, match="letters, digits"):
        load_suite("my prompts/../x", prompts_file=path)
    with pytest.raises(UsageError, match="needs --prompts-file"):
        load_suite("prompts-file")
    with pytest.raises(MissingResourceError, match="nope.txt"):
        load_suite("prompts-file", prompts_file=tmp_path / "nope.txt")
