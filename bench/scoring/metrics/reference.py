"""Reference images and cached features (real references and generated sample folders).

Where the reference images live, under the data root (``--data-root`` > env ``BENCH_DATA_ROOT`` >
``~/.cache/distill-bench/data``, the conventions of :mod:`bench.assets.suites`):

=============== ============================================== ==========================
suite           images                                         expected
=============== ============================================== ==========================
coco2014-30k    ``coco2014/val2014/*.jpg`` (all of them)        40,504 (all of val2014)
coco2017-5k     ``coco2017/val2017/*.jpg``                      5,000
mjhq-5k         ``mjhq/mjhq30k_imgs/<category>/<image_id>.jpg`` one per selected id (5,000)
=============== ============================================== ==========================

:func:`check_reference_available` raises one MissingResourceError naming what is missing before any
image is generated.

Caching. Features are computed once per fingerprint and stored as ``.npz`` (features float32,
mu float32 / sigma float64 as clean-fid computes them (:func:`bench.scoring.metrics.fid.feature_statistics`),
the fingerprint and the file list; ``allow_pickle=False``) under the tool's cache
dir, ``cache_dir()/reference/<fingerprint>.npz`` and ``cache_dir()/samples/<fingerprint>.npz``,
never inside site-packages. The fingerprint covers: the image list, as sorted relative names +
byte sizes + mtimes in nanoseconds (rewriting or replacing an image changes it; copying a folder
without preserving timestamps only costs one recomputation), the image protocol, the extractor's
name / identity (weights sha256 or stand-in seed) / dim, the versions of clean-fid, Pillow, torch
and numpy, and for sample folders the sha256 of their ``metadata.json``. The fingerprint is also
stored inside the file and checked on load: an entry whose stored fingerprint or shape does not
match is never used (it is recomputed and replaced).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.assets.suites import default_data_root
from bench.core.atomic import atomic_path
from bench.core.errors import MissingResourceError, UsageError
from bench.core.fingerprint import (
    canonical_json,
    fingerprint,
    library_versions,
    sha256_file,
)
from bench.core.paths import cache_dir
from bench.scoring.metrics.features import (
    FeatureExtractor,
    ImageProtocol,
    extract_features,
    feature_loading,
    list_images,
    protocol_for_suite,
)
from bench.scoring.metrics.fid import feature_statistics, fid_from_stats

log = logging.getLogger(__name__)

DATA_ROOT_ENV = "BENCH_DATA_ROOT"
COCO2014_VAL_URL = "http://images.cocodataset.org/zips/val2014.zip"
COCO2017_VAL_URL = "http://images.cocodataset.org/zips/val2017.zip"
MJHQ_IMAGES_URL = "https://huggingface.co/datasets/playgroundai/MJHQ-30K/resolve/main/mjhq30k_imgs.zip"
# 2: mu is clean-fid's float32 np.mean of the float32 features (format 1 stored a float64 mean, which
# is not bit-equal to clean-fid's; its entries get other fingerprints and are never read again).
_CACHE_FORMAT = 2


@dataclass(frozen=True)
class _Layout:
    folder: str              # relative to the data root
    expected: int | None     # images in the folder (None: one per selected id)
    source: str              # where to get them


_LAYOUTS: dict[str, _Layout] = {
    "coco2014-30k": _Layout("coco2014/val2014", 40_504, COCO2014_VAL_URL),
    "coco2017-5k": _Layout("coco2017/val2017", 5_000, COCO2017_VAL_URL),
    "mjhq-5k": _Layout("mjhq/mjhq30k_imgs", None, MJHQ_IMAGES_URL),
}


@dataclass(frozen=True)
class ReferenceImages:
    """The reference image files of a suite, in a fixed order."""

    suite: str
    data_root: Path
    folder: Path
    files: tuple[Path, ...]


def _resolve_data_root(data_root: str | os.PathLike | None) -> tuple[Path, str]:
    if data_root is not None and str(data_root) != "":
        origin = "--data-root"
    elif os.environ.get(DATA_ROOT_ENV):
        origin = DATA_ROOT_ENV
    else:
        origin = "the default"
    return default_data_root(data_root), origin


def _coco2017_name(image_id: str) -> str:
    try:
        return f"{int(image_id):012d}.jpg"
    except ValueError:
        raise UsageError(f"coco2017-5k image id {image_id!r} is not an integer") from None


def reference_images(suite_name: str, data_root: str | os.PathLike | None = None,
                     image_ids: Sequence[str] | None = None,
                     reference_files: Sequence[str] | None = None) -> ReferenceImages:
    """The reference images of ``suite_name``, checked complete (see :func:`check_reference_available`).

    ``reference_files`` (paths relative to the data root, e.g. :attr:`bench.assets.suites.Suite.reference_files`)
    or ``image_ids`` select the images of coco2017-5k and mjhq-5k (mjhq-5k needs one of them);
    coco2014-30k always uses all of val2014.
    """
    layout = _LAYOUTS.get(suite_name)
    if layout is None:
        protocol_for_suite(suite_name)  # unknown name -> UsageError listing the known ones
        raise UsageError(f"suite {suite_name!r} has no reference images under the data root")
    root, origin = _resolve_data_root(data_root)
    folder = root / layout.folder
    how = (f"point --data-root DIR or {DATA_ROOT_ENV}=DIR at the folder that holds {layout.folder}/ "
           f"(data root now: {root}, from {origin})")

    if not folder.is_dir():
        raise MissingResourceError(
            f"{suite_name} FID reference missing: folder {folder} does not exist "
            f"(expected {_expected_words(layout, image_ids, reference_files)} from {layout.source}); {how}"
        )
    if suite_name == "coco2014-30k" or (image_ids is None and reference_files is None):
        if suite_name == "mjhq-5k":
            raise UsageError("the mjhq-5k reference is the images of the selected prompts: pass the suite's "
                             "image_ids or reference_files")
        files = sorted(folder.glob("*.jpg"))
        assert layout.expected is not None
        if len(files) != layout.expected:
            raise MissingResourceError(
                f"{suite_name} FID reference incomplete: {folder} holds {len(files):,} .jpg images, "
                f"expected {layout.expected:,} ({layout.source}); {how}"
            )
    else:
        files = _selected_files(suite_name, root, folder, image_ids, reference_files)
        missing = [f for f in files if not f.is_file()]
        if missing:
            shown = ", ".join(str(f.relative_to(root)) for f in missing[:3])
            raise MissingResourceError(
                f"{suite_name} FID reference incomplete: {len(files) - len(missing):,} of {len(files):,} "
                f"selected images found under {folder}; missing e.g. {shown} ({layout.source}); {how}"
            )
        if layout.expected is not None and len(files) != layout.expected:
            log.warning("%s: the reference has %d images, the protocol's full set is %d",
                        suite_name, len(files), layout.expected)
    return ReferenceImages(suite_name, root, folder, tuple(files))


def _expected_words(layout: _Layout, image_ids, reference_files) -> str:
    count = layout.expected
    if count is None:
        count = len(reference_files if reference_files is not None else image_ids or ())
    return f"{count:,} .jpg images"


def _selected_files(suite_name: str, root: Path, folder: Path, image_ids, reference_files) -> list[Path]:
    if reference_files is not None:
        files = [root / rel for rel in reference_files]
        outside = [f for f in files if folder not in f.parents]
        if outside:
            raise UsageError(f"{suite_name}: reference file {outside[0]} is not inside {folder}")
        return files
    ids = [str(i) for i in image_ids]
    if suite_name == "coco2017-5k":
        return [folder / _coco2017_name(i) for i in ids]
    # mjhq-5k: <category>/<image_id>.jpg; find each id's category folder
    index: dict[str, Path] = {}
    for category in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in category.glob("*.jpg"):
            index.setdefault(path.stem, path)
    return [index.get(i, folder / "<category>" / f"{i}.jpg") for i in ids]


def check_reference_available(suite_name: str, data_root: str | os.PathLike | None = None,
                              image_ids: Sequence[str] | None = None,
                              reference_files: Sequence[str] | None = None) -> ReferenceImages | None:
    """Raise one MissingResourceError, before any image is generated, when the suite's FID
    reference images are not all there (folder, count found vs expected, the flag / env var).
    Returns the images, or None for suites without data-root references (smoke, prompts files:
    they have no FID reference to check; :func:`protocol_for_suite` says which suites have FID)."""
    if suite_name not in _LAYOUTS:
        log.debug("suite %s has no reference images on the data root", suite_name)
        return None
    return reference_images(suite_name, data_root, image_ids, reference_files)


# --------------------------------------------------------------------------------------------
# Cached features


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Features of an image set, their FID statistics and the fingerprint that keys them."""

    features: np.ndarray        # float32 [N, dim], rows in the order of ``files``
    mu: np.ndarray              # float32 [dim] (np.mean of the float32 features, as clean-fid)
    sigma: np.ndarray           # float64 [dim, dim] (np.cov, as clean-fid)
    fingerprint: str
    files: tuple[str, ...]      # names relative to the folder or data root
    extractor: str              # extractor identity
    protocol: ImageProtocol
    from_cache: bool

    def __len__(self) -> int:
        return self.features.shape[0]

    def fid(self, other: FeatureSet) -> float:
        if self.extractor != other.extractor or self.protocol != other.protocol:
            raise UsageError(f"FID between feature sets of different extractors or protocols: "
                             f"{self.extractor} {self.protocol.describe()} vs {other.extractor} "
                             f"{other.protocol.describe()}")
        return fid_from_stats(self.mu, self.sigma, other.mu, other.sigma)


def _listing_digest(root: Path, files: Sequence[Path]) -> tuple[list[str], str]:
    names, lines = [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        stat = path.stat()
        names.append(rel)
        lines.append(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return names, hashlib.sha256("\n".join(lines).encode()).hexdigest()


def features_key(kind: str, root: Path, files: Sequence[Path], extractor: FeatureExtractor,
                 protocol: ImageProtocol, extra: dict | None = None) -> tuple[dict, list[str]]:
    """What the cache fingerprint hashes (see the module docstring)."""
    names, digest = _listing_digest(root, files)
    versions = library_versions()
    key = {
        "format": _CACHE_FORMAT,
        "kind": kind,
        "images": {"count": len(files), "listing_sha256": digest},
        "protocol": protocol.as_dict(),
        "extractor": extractor.describe(),
        "versions": {name: versions.get(name, "absent") for name in ("clean-fid", "pillow", "torch", "numpy")},
        "extra": extra or {},
    }
    return key, names


def _cache_file(kind: str, fp: str) -> Path:
    return cache_dir() / kind / f"{fp}.npz"


def _load_cached(path: Path, fp: str, names: list[str], dim: int) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {name: data[name] for name in ("fingerprint", "features", "mu", "sigma", "files")}
    except Exception as exc:  # corrupt or foreign file: recompute
        log.warning("ignoring unreadable feature cache %s (%s: %s)", path, type(exc).__name__, exc)
        return None
    problem = None
    if str(stored["fingerprint"]) != fp:
        problem = f"its stored fingerprint {str(stored['fingerprint'])[:16]} is not {fp}"
    elif stored["features"].shape != (len(names), dim) or list(stored["files"]) != names:
        problem = "its features or file list do not match"
    if problem:
        log.warning("ignoring feature cache %s: %s", path, problem)
        return None
    return stored


def _save_cached(path: Path, fp: str, key: dict, names: list[str], features: np.ndarray,
                 mu: np.ndarray, sigma: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a file object: np.savez adds no ".npz" suffix
            np.savez(handle, fingerprint=np.array(fp), key=np.array(canonical_json(key)),
                     files=np.array(names, dtype=str), features=features, mu=mu, sigma=sigma)


def files_features(files: Sequence[Path], root: str | os.PathLike, extractor: FeatureExtractor,
                   protocol: ImageProtocol, *, kind: str = "reference", extra_key: dict | None = None,
                   batch_size: int | None = None, num_workers: int | None = None, cache: bool = True,
                   progress: bool = True) -> FeatureSet:
    """Features of ``files`` (names taken relative to ``root``), from the cache when a valid entry
    exists, else computed with :func:`bench.scoring.metrics.features.extract_features` and cached.
    Batch size and loader workers default to the extractor's device (:func:`feature_loading`)."""
    default_batch, default_workers = feature_loading(extractor.device)
    batch_size = default_batch if batch_size is None else batch_size
    num_workers = default_workers if num_workers is None else num_workers
    root = Path(root)
    files = [Path(f) for f in files]
    if kind not in ("reference", "samples"):
        raise ValueError(f"kind must be 'reference' or 'samples', got {kind!r}")
    if len(files) < 2:
        raise UsageError(f"{kind} features need at least 2 images (FID statistics), got {len(files)} in {root}")
    key, names = features_key(kind, root, files, extractor, protocol, extra_key)
    fp = fingerprint(key, length=32)
    path = _cache_file(kind, fp)
    if cache:
        stored = _load_cached(path, fp, names, extractor.dim)
        if stored is not None:
            log.info("%s features: %d images from cache %s", kind, len(names), path)
            return FeatureSet(stored["features"], stored["mu"], stored["sigma"], fp, tuple(names),
                              extractor.identity, protocol, True)
    log.info("%s features: extracting %d images with %s (%s)", kind, len(files), extractor.name,
             protocol.describe())
    features = extract_features(files, extractor, protocol, batch_size=batch_size, num_workers=num_workers,
                                progress=progress, description=f"{kind} features")
    mu, sigma = feature_statistics(features)  # UsageError below 2 images
    if cache:
        _save_cached(path, fp, key, names, features, mu, sigma)
        log.info("cached %s features in %s", kind, path)
    return FeatureSet(features, mu, sigma, fp, tuple(names), extractor.identity, protocol, False)


def reference_features(suite_name: str, extractor: FeatureExtractor, *,
                       data_root: str | os.PathLike | None = None,
                       image_ids: Sequence[str] | None = None,
                       reference_files: Sequence[str] | None = None,
                       protocol: ImageProtocol | None = None, **kwargs) -> FeatureSet:
    """Cached features of a suite's reference images (checked complete first)."""
    images = reference_images(suite_name, data_root, image_ids, reference_files)
    protocol = protocol or protocol_for_suite(suite_name)
    return files_features(images.files, images.data_root, extractor, protocol, kind="reference",
                          extra_key={"suite": suite_name}, **kwargs)


def folder_features(folder: str | os.PathLike, extractor: FeatureExtractor, protocol: ImageProtocol, *,
                    expected_count: int | None = None, kind: str = "reference", **kwargs) -> FeatureSet:
    """Cached features of every image of a flat folder (see :func:`bench.scoring.metrics.features.list_images`)."""
    files = list_images(folder, expected_count)
    return files_features(files, folder, extractor, protocol, kind=kind, **kwargs)


def samples_features(folder: str | os.PathLike, extractor: FeatureExtractor, protocol: ImageProtocol, *,
                     expected_count: int | None = None, **kwargs) -> FeatureSet:
    """Cached features of a generated samples folder: images ``00000.png ...`` named by prompt index
    (checked: count and names), sidecars such as ``metadata.json`` ignored but hashed into the key."""
    folder = Path(folder)
    files = list_images(folder, expected_count, check_indices=True, take_first=True)
    metadata = folder / "metadata.json"
    extra = {"metadata_sha256": sha256_file(metadata) if metadata.is_file() else None}
    return files_features(files, folder, extractor, protocol, kind="samples", extra_key=extra, **kwargs)
