"""Reference image checks and the feature cache (bench/scoring/metrics/reference.py)."""
from __future__ import annotations

import os
from pathlib import Path

import cleanfid
import numpy as np
import pytest
from PIL import Image

from bench.core.errors import MissingResourceError, UsageError
from bench.scoring.metrics import reference as ref
from bench.scoring.metrics.features import protocol_for_suite
from bench.scoring.metrics.fid import fid_folders
from bench.scoring.metrics.standins import standin_extractor


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE_DIR", str(cache))
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    return cache


def _jpg(path: Path, seed: int, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def _pngs(folder: Path, count: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return folder


# ----------------------------------------------------------------------------------------------
# reference availability


def test_missing_reference_folder_names_folder_count_and_flag(tmp_path):
    with pytest.raises(MissingResourceError) as info:
        ref.check_reference_available("coco2014-30k", tmp_path / "data")
    message = str(info.value)
    assert str(tmp_path / "data" / "coco2014" / "val2014") in message
    assert "40,504" in message and "--data-root" in message and "BENCH_DATA_ROOT" in message


def test_incomplete_reference_counts_found_vs_expected(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for i in range(3):
        _jpg(root / "coco2017" / "val2017" / f"{i:012d}.jpg", i)
    monkeypatch.setenv("BENCH_DATA_ROOT", str(root))  # found through the env var
    with pytest.raises(MissingResourceError, match=r"holds 3 \.jpg images, expected 5,000.*from BENCH_DATA_ROOT"):
        ref.check_reference_available("coco2017-5k")
    # with the suite's ids: each selected image must exist
    with pytest.raises(MissingResourceError, match=r"2 of 3 selected images found.*000000000007\.jpg"):
        ref.check_reference_available("coco2017-5k", root, image_ids=["0", "1", "7"])
    images = ref.check_reference_available("coco2017-5k", root, image_ids=["2", "0"])
    assert [p.name for p in images.files] == ["000000000002.jpg", "000000000000.jpg"]


def test_mjhq_reference_by_ids_and_by_files(tmp_path):
    root = tmp_path / "data"
    _jpg(root / "mjhq" / "mjhq30k_imgs" / "animals" / "aaa.jpg", 1)
    _jpg(root / "mjhq" / "mjhq30k_imgs" / "food" / "bbb.jpg", 2)
    images = ref.check_reference_available("mjhq-5k", root, image_ids=["bbb", "aaa"])
    assert [p.relative_to(root).as_posix() for p in images.files] == [
        "mjhq/mjhq30k_imgs/food/bbb.jpg", "mjhq/mjhq30k_imgs/animals/aaa.jpg"]
    same = ref.check_reference_available("mjhq-5k", root, reference_files=[
        "mjhq/mjhq30k_imgs/food/bbb.jpg", "mjhq/mjhq30k_imgs/animals/aaa.jpg"])
    assert same.files == images.files
    with pytest.raises(MissingResourceError, match="1 of 2 selected images found"):
        ref.check_reference_available("mjhq-5k", root, image_ids=["aaa", "zzz"])
    with pytest.raises(UsageError, match="image_ids or reference_files"):
        ref.check_reference_available("mjhq-5k", root)


def test_suites_without_data_root_reference(tmp_path):
    assert ref.check_reference_available("smoke", tmp_path) is None
    assert ref.check_reference_available("my-prompts", tmp_path) is None  # a prompts-file suite
    with pytest.raises(UsageError, match="no image protocol for suite 'my-prompts'"):
        ref.reference_features("my-prompts", standin_extractor(), data_root=tmp_path)


# ----------------------------------------------------------------------------------------------
# feature cache


def test_folder_features_cached_by_fingerprint(tmp_path, _cache):
    folder = _pngs(tmp_path / "real", 6, seed=0)
    extractor = standin_extractor(seed=0)
    protocol = protocol_for_suite("smoke")
    package_stats = Path(cleanfid.__file__).parent / "stats"
    before = sorted(package_stats.rglob("*")) if package_stats.exists() else []
    first = ref.folder_features(folder, extractor, protocol, progress=False)
    after = sorted(package_stats.rglob("*")) if package_stats.exists() else []
    assert after == before  # nothing written into site-packages
    assert not first.from_cache and first.features.shape == (6, 64) and first.features.dtype == np.float32
    cache_file = _cache / "reference" / f"{first.fingerprint}.npz"
    assert cache_file.is_file()
    with np.load(cache_file, allow_pickle=False) as data:
        assert str(data["fingerprint"]) == first.fingerprint
        assert list(data["files"]) == [f"{i:05d}.png" for i in range(6)]
    second = ref.folder_features(folder, extractor, protocol, progress=False)
    assert second.from_cache and second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_array_equal(second.sigma, first.sigma)

    # anything that changes the output changes the fingerprint
    assert ref.folder_features(folder, standin_extractor(seed=1), protocol, progress=False).fingerprint \
        != first.fingerprint
    assert ref.folder_features(folder, extractor, protocol_for_suite("coco2017-5k"),
                               progress=False).fingerprint != first.fingerprint
    image = folder / "00003.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = ref.folder_features(folder, extractor, protocol, progress=False)
    assert changed.fingerprint != first.fingerprint and not changed.from_cache


def test_cached_statistics_are_clean_fids_and_old_format_entries_are_not_reused(tmp_path, _cache, monkeypatch):
    """mu is clean-fid's float32 np.mean of the features (format 2); a format-1 entry (float64 mu)
    has another fingerprint, so it is never read."""
    folder = _pngs(tmp_path / "real", 5, seed=4)
    extractor = standin_extractor(seed=0)
    protocol = protocol_for_suite("smoke")
    first = ref.folder_features(folder, extractor, protocol, progress=False)
    assert first.mu.dtype == np.float32 and first.sigma.dtype == np.float64
    assert np.array_equal(first.mu, np.mean(first.features, axis=0))
    assert np.array_equal(first.sigma, np.cov(first.features, rowvar=False))
    cached = ref.folder_features(folder, extractor, protocol, progress=False)
    assert cached.from_cache and cached.mu.dtype == np.float32 and np.array_equal(cached.mu, first.mu)
    monkeypatch.setattr(ref, "_CACHE_FORMAT", 1)
    old = ref.folder_features(folder, extractor, protocol, progress=False)
    assert old.fingerprint != first.fingerprint and not old.from_cache


def test_cache_entry_with_wrong_stored_fingerprint_is_not_used(tmp_path, _cache):
    folder = _pngs(tmp_path / "real", 4, seed=1)
    extractor = standin_extractor(seed=0)
    protocol = protocol_for_suite("smoke")
    first = ref.folder_features(folder, extractor, protocol, progress=False)
    cache_file = _cache / "reference" / f"{first.fingerprint}.npz"
    with np.load(cache_file, allow_pickle=False) as data:
        content = {name: data[name] for name in data.files}
    content["fingerprint"] = np.array("0" * 32)
    content["features"] = np.zeros_like(content["features"])
    with open(cache_file, "wb") as handle:
        np.savez(handle, **content)
    again = ref.folder_features(folder, extractor, protocol, progress=False)
    assert not again.from_cache
    np.testing.assert_array_equal(again.features, first.features)
    with np.load(cache_file, allow_pickle=False) as data:  # replaced by a valid entry
        assert str(data["fingerprint"]) == first.fingerprint
    cache_file.write_bytes(b"garbage")
    assert not ref.folder_features(folder, extractor, protocol, progress=False).from_cache


def test_samples_features_checks_folder_and_keys_metadata(tmp_path, _cache):
    folder = _pngs(tmp_path / "samples", 5, seed=2)
    (folder / "metadata.json").write_text('{"run": 1}')
    extractor = standin_extractor(seed=0)
    protocol = protocol_for_suite("smoke")
    first = ref.samples_features(folder, extractor, protocol, expected_count=5, progress=False)
    assert first.files == tuple(f"{i:05d}.png" for i in range(5))
    assert (_cache / "samples" / f"{first.fingerprint}.npz").is_file()
    (folder / "metadata.json").write_text('{"run": 2}')
    assert ref.samples_features(folder, extractor, protocol, progress=False).fingerprint != first.fingerprint
    with pytest.raises(UsageError, match="holds 5 images, expected 8; missing indices 00005, 00006, 00007"):
        ref.samples_features(folder, extractor, protocol, expected_count=8, progress=False)
    (folder / "00002.png").unlink()
    with pytest.raises(UsageError, match="missing 00002"):
        ref.samples_features(folder, extractor, protocol, progress=False)


def test_reference_features_and_fid_agree_with_folder_fid(tmp_path):
    root = tmp_path / "data"
    ids = [f"id{i}" for i in range(6)]
    for i, image_id in enumerate(ids):
        _jpg(root / "mjhq" / "mjhq30k_imgs" / ("animals" if i % 2 else "food") / f"{image_id}.jpg", 10 + i,
             size=(64, 64))
    samples = _pngs(tmp_path / "samples", 5, seed=3)
    extractor = standin_extractor(seed=0)
    protocol = protocol_for_suite("mjhq-5k")
    reference = ref.reference_features("mjhq-5k", extractor, data_root=root, image_ids=ids, progress=False)
    assert reference.files[0] == "mjhq/mjhq30k_imgs/food/id0.jpg"
    generated = ref.samples_features(samples, extractor, protocol, expected_count=5, progress=False)
    flat = tmp_path / "flat_reference"  # the same reference images in one flat folder
    flat.mkdir()
    for i, rel in enumerate(reference.files):
        (flat / f"{i:05d}.jpg").write_bytes((root / rel).read_bytes())
    expected = fid_folders(flat, samples, extractor, protocol)
    assert abs(reference.fid(generated) - expected) < 1e-6
    with pytest.raises(UsageError, match="different extractors or protocols"):
        reference.fid(ref.samples_features(samples, standin_extractor(seed=5), protocol, progress=False))


def test_feature_loading_is_large_batches_and_workers_on_a_gpu_only():
    import os

    from bench.scoring.metrics.features import feature_loading

    assert feature_loading("cpu") == (32, 0)
    assert feature_loading("cuda:0") == (256, min(8, os.cpu_count() or 1))


def test_feature_loading_shares_the_cores_among_a_machines_processes(monkeypatch):
    from bench.scoring.metrics.features import feature_loading

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")             # `accelerate launch` on 8 GPUs
    assert feature_loading("cuda:3") == (256, 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert feature_loading("cuda:3") == (256, 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert feature_loading("cuda:0") == (256, 8)
