"""Image protocol and feature extraction: the stage every image-set metric (FID, PRDC) reads from.

Protocol per suite (:func:`protocol_for_suite`; recorded with every number via
:meth:`ImageProtocol.as_dict`). Real *and* generated images go through the same
:meth:`ImageProtocol.preprocess` before clean-fid's own ``clean`` resize to 299x299 (PIL bicubic on
float channels, no re-quantisation) and the feature network:

``coco2014-30k``
    centre crop of the long edge to a square, PIL Lanczos resize to 256x256 (GigaGAN / DMD2
    protocol, ``CenterCropLongEdge`` + ``resize((256, 256), LANCZOS)``); reference = all 40,504
    val2014 images.
``coco2017-5k``
    the same 256 Lanczos crop: the literature pins no single choice for this set, 256 keeps the
    COCO numbers of both suites on one image protocol.
``mjhq-5k``
    centre crop + Lanczos to 512x512. Playground computes MJHQ FID at 1024, but an SD-1.5-class
    teacher generates 512x512, so upsampling its samples to 1024 would only add interpolation;
    the 1024-pixel MJHQ references are downsampled to 512 instead. Not comparable with the
    1024-pixel numbers of the MJHQ card.
``smoke``
    native resolution, no crop (the tiny test suite; clean-fid's resize to 299 still applies).

Feature extraction runs clean-fid's feature loop (``get_files_features`` with ``mode="clean"``,
``custom_image_tranform=protocol.preprocess``, ``model=extractor``; :func:`extract_features` writes
its few lines out to pin memory and shard): each batch reaches the extractor as a float32 tensor
[B, 3, 299, 299] with values in 0..255 (``cleanfid.utils.ResizeDataset``), which is the call
contract of :class:`FeatureExtractor`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from bench.core.distributed import map_loaded, process_shard
from bench.core.errors import MissingResourceError, UsageError
from bench.core.fingerprint import sha256_file
from bench.core.progress import progress_bar

log = logging.getLogger(__name__)

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_PATH_ENV = "BENCH_INCEPTION_PATH"
INCEPTION_DIM = 2048

_FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}
_FID_MODES = ("clean",)


# --------------------------------------------------------------------------------------------
# Image protocol


@dataclass(frozen=True)
class ImageProtocol:
    """How an image (real or generated) is brought to the size the FID/PRDC features see.

    ``resolution`` None keeps the native size (then ``resize_filter`` must be ``"none"``).
    ``center_crop_long_edge`` crops the long edge to a centred square first, with torchvision's
    ``center_crop`` offsets (``int(round((W - S) / 2))``), as GigaGAN's ``CenterCropLongEdge``.
    """

    resolution: int | None
    center_crop_long_edge: bool
    resize_filter: str
    fid_mode: str = "clean"

    def __post_init__(self) -> None:
        if self.resolution is None:
            if self.resize_filter != "none":
                raise ValueError("an ImageProtocol without resolution takes resize_filter='none'")
        else:
            if not isinstance(self.resolution, int) or self.resolution <= 0:
                raise ValueError(f"resolution must be a positive int or None, got {self.resolution!r}")
            if self.resize_filter not in _FILTERS:
                raise ValueError(f"resize_filter must be one of {sorted(_FILTERS)}, got {self.resize_filter!r}")
        if self.fid_mode not in _FID_MODES:
            raise ValueError(f"fid_mode must be one of {_FID_MODES}, got {self.fid_mode!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        size = "native size" if self.resolution is None else f"{self.resize_filter} {self.resolution}px"
        crop = "centre crop, " if self.center_crop_long_edge else ""
        return f"{crop}{size}, clean-fid {self.fid_mode}"

    def preprocess(self, img: Image.Image | np.ndarray) -> np.ndarray:
        """Crop and resize one image; returns uint8 HWC RGB (what clean-fid's resizer expects)."""
        return preprocess(img, self)


_SUITE_PROTOCOLS: dict[str, ImageProtocol] = {
    "coco2014-30k": ImageProtocol(256, True, "lanczos"),
    "coco2017-5k": ImageProtocol(256, True, "lanczos"),
    "mjhq-5k": ImageProtocol(512, True, "lanczos"),
    "smoke": ImageProtocol(None, False, "none"),
    "toy": ImageProtocol(None, False, "none"),
}


def protocol_for_suite(name: str) -> ImageProtocol:
    """The image protocol of a suite (see the module docstring for the reasons)."""
    try:
        return _SUITE_PROTOCOLS[name]
    except KeyError:
        raise UsageError(
            f"no image protocol for suite {name!r}; FID/PRDC are defined for: {', '.join(_SUITE_PROTOCOLS)}"
        ) from None


def _to_pil_rgb(img: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(img, Image.Image):
        return img if img.mode == "RGB" else img.convert("RGB")
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 array, got dtype {arr.dtype} shape {arr.shape}")
    return Image.fromarray(arr)


def preprocess(img: Image.Image | np.ndarray, protocol: ImageProtocol) -> np.ndarray:
    """Apply ``protocol``'s centre crop and resize to a PIL image or a uint8 HWC RGB array."""
    if protocol.resolution is None and not protocol.center_crop_long_edge:
        if isinstance(img, np.ndarray):
            _to_pil_rgb(img)  # validates dtype and shape
            return img
        return np.asarray(_to_pil_rgb(img))
    pil = _to_pil_rgb(img)
    if protocol.center_crop_long_edge:
        width, height = pil.size
        side = min(width, height)
        top = int(round((height - side) / 2.0))
        left = int(round((width - side) / 2.0))
        if (width, height) != (side, side):
            pil = pil.crop((left, top, left + side, top + side))
    if protocol.resolution is not None:
        size = (protocol.resolution, protocol.resolution)
        if pil.size != size:
            pil = pil.resize(size, resample=_FILTERS[protocol.resize_filter])
    return np.asarray(pil, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Feature extractors


@dataclass(frozen=True, eq=False)
class FeatureExtractor:
    """A feature network with clean-fid's custom-extractor contract.

    ``__call__(batch)``: float tensor [B, 3, 299, 299] with values in 0..255 -> float tensor
    [B, dim]. ``identity`` names the weights exactly (``sha256:<hex>`` of the weights file, or
    ``standin-random-init:<seed>``) and goes into every fingerprint and result row.
    """

    name: str
    identity: str
    dim: int
    module: torch.nn.Module
    device: torch.device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"{self.name}: expected a [B, 3, H, W] batch, got {tuple(batch.shape)}")
        with torch.no_grad():
            # a page-locked batch (extract_features on a GPU) is copied asynchronously
            features = self.module(batch.to(self.device, torch.float32, non_blocking=batch.is_pinned()))
        return features.reshape(batch.shape[0], self.dim).float()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "identity": self.identity, "dim": self.dim}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _inception_candidates(path: str | os.PathLike | None) -> tuple[Path, str]:
    if path is not None and str(path) != "":
        return Path(path).expanduser(), "--inception-path"
    env = os.environ.get(INCEPTION_PATH_ENV, "")
    if env:
        return Path(env).expanduser(), INCEPTION_PATH_ENV
    # clean-fid's own location (cleanfid.features.feature_extractor): where it downloads when online
    folder = "./" if platform.system() == "Windows" else "/tmp"
    return Path(folder) / INCEPTION_FILENAME, "clean-fid's default location"


def resolve_inception_path(path: str | os.PathLike | None = None) -> Path:
    """The Inception TorchScript file: ``path`` (the --inception-path flag) > env
    ``BENCH_INCEPTION_PATH`` > clean-fid's ``/tmp/inception-2015-12-05.pt``. A folder means the
    file ``inception-2015-12-05.pt`` inside it. Raises one MissingResourceError when absent."""
    candidate, origin = _inception_candidates(path)
    if candidate.is_dir():
        candidate = candidate / INCEPTION_FILENAME
    if not candidate.is_file():
        raise MissingResourceError(
            f"FID Inception weights not found: {candidate} (from {origin}) does not exist. "
            f"Download {INCEPTION_URL} on a machine with internet access and point "
            f"--inception-path FILE or {INCEPTION_PATH_ENV}=FILE at it"
        )
    return candidate


def inception_extractor(path: str | os.PathLike | None = None,
                        device: str | torch.device | None = None) -> FeatureExtractor:
    """clean-fid's TorchScript Inception (``InceptionV3W``, pool3, 2048-d) from a local file.

    The weights are never downloaded: clean-fid is called with ``download=False``. The identity is
    the sha256 of the file.
    """
    from cleanfid.inception_torchscript import InceptionV3W

    weights = resolve_inception_path(path)
    device = torch.device(device) if device is not None else default_device()
    digest = sha256_file(weights)
    # InceptionV3W takes a folder and loads <folder>/inception-2015-12-05.pt; link a file with
    # another name into a temporary folder so any file name works.
    with tempfile.TemporaryDirectory(prefix="bench-inception-") as tmp:
        folder = weights.parent
        if weights.name != INCEPTION_FILENAME:
            os.symlink(weights.resolve(), Path(tmp) / INCEPTION_FILENAME)
            folder = Path(tmp)
        try:
            model = InceptionV3W(str(folder), download=False, resize_inside=False)
        except Exception as exc:  # a truncated or foreign file: say which and how to fix
            raise MissingResourceError(
                f"could not load the FID Inception weights {weights} ({type(exc).__name__}: {exc}); "
                f"expected the TorchScript file {INCEPTION_URL}"
            ) from exc
    model = model.to(device).eval()
    log.info("FID Inception: %s (sha256 %s) on %s", weights, digest[:12], device)
    return FeatureExtractor("inception-2015-12-05", f"sha256:{digest}", INCEPTION_DIM, model, device)


# --------------------------------------------------------------------------------------------
# Image folders

IMAGE_EXTENSIONS = frozenset({".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"})
# Files a samples folder may hold besides its images (metadata.json, captions.txt, ...): ignored.
SIDECAR_EXTENSIONS = frozenset({".json", ".jsonl", ".txt", ".md", ".csv", ".log", ".yaml", ".yml"})


def list_images(folder: str | os.PathLike, expected_count: int | None = None, *,
                check_indices: bool = False, take_first: bool = False) -> list[Path]:
    """The images of a flat folder, sorted by name, checked before any feature is computed.

    Ignored: hidden files (including atomic-write temporaries) and sidecars (``.json``, ``.txt``,
    ...; e.g. a samples folder's ``metadata.json``). Rejected with one UsageError naming the
    entry: a subfolder (clean-fid globs recursively, so nested images would be mixed in), any other
    non-image file, a file with an image extension that PIL cannot identify, an empty folder, and
    a count different from ``expected_count``. With ``check_indices`` the names must be
    ``00000.png ...``, one per prompt index 0..N-1; with ``take_first`` too, a folder holding
    more indexed images than ``expected_count`` gives its first N (0..N-1), with a warning. PNGs
    are checked to their last chunk (``verify``: every CRC), so a truncated file is named here.
    """
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"image folder {root} does not exist or is not a folder")
    images: list[Path] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            raise UsageError(f"{root} contains the subfolder {entry.name!r}; an image folder must be flat "
                             "(clean-fid reads folders recursively, so nested images would be scored too)")
        suffix = entry.suffix.lower()
        if suffix in SIDECAR_EXTENSIONS:
            continue
        if suffix not in IMAGE_EXTENSIONS:
            raise UsageError(f"{entry} is not an image (extension {entry.suffix!r}); image files end in "
                             f"{', '.join(sorted(IMAGE_EXTENSIONS))}")
        images.append(entry)
    if not images:
        raise UsageError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    if all(p.stem.isdigit() for p in images):  # 00000.png ...: prompt-index order past 99999 too
        images.sort(key=lambda p: (int(p.stem), p.name))
    if check_indices:
        _check_indices(root, images)
    if (take_first and check_indices and expected_count is not None and len(images) > expected_count
            and [int(p.stem) for p in images[:expected_count]] == list(range(expected_count))):
        log.warning("%s holds %d images; scoring the first %d (indices 0..%d)", root, len(images), expected_count,
                    expected_count - 1)
        images = images[:expected_count]
    if expected_count is not None and len(images) != expected_count:
        raise UsageError(_count_message(root, images, expected_count, check_indices))
    for path in images:
        try:
            with Image.open(path) as im:
                im.verify() if im.format == "PNG" else im.size  # noqa: B018 - PNG: every chunk's CRC
        except Exception as exc:
            raise UsageError(f"{path} is not a readable image ({type(exc).__name__}: {exc}); delete it and "
                             "sample again (the run resumes), or replace it") from None
    return images


def _count_message(root: Path, images: Sequence[Path], expected: int, check_indices: bool) -> str:
    msg = f"{root} holds {len(images):,} images, expected {expected:,}"
    if check_indices:
        present = {int(p.stem) for p in images if p.stem.isdigit()}
        missing = [i for i in range(expected) if i not in present]
        if missing:
            shown = ", ".join(f"{i:05d}" for i in missing[:5])
            msg += f"; missing indices {shown}" + (" ..." if len(missing) > 5 else "")
    return msg


def _check_indices(root: Path, images: Sequence[Path]) -> None:
    bad = [p.name for p in images if not p.stem.isdigit()]
    if bad:
        raise UsageError(f"{bad[0]} in {root} is not named by a prompt index (images are named "
                         "00000.png ... by prompt index)")
    present = {int(p.stem) for p in images}
    missing = sorted(set(range(len(images))) - present)
    if missing or len(present) != len(images):
        extra = [p.name for p in images if int(p.stem) >= len(images)]
        raise UsageError(f"the images in {root} are not indices 0..{len(images) - 1}: missing "
                         f"{', '.join(f'{i:05d}' for i in missing[:5]) or 'none'}, unexpected "
                         f"{', '.join(extra[:5]) or 'duplicate indices'}")


def feature_loading(device: torch.device | str) -> tuple[int, int]:
    """(batch size, DataLoader workers) for feature extraction on ``device`` (the workers also load
    CLIP score's images). On a GPU: batches of 256 and up to 8 worker processes decoding and
    resizing PNGs into page-locked memory, so the network never waits for the CPU (under
    `accelerate launch`, the machine's cores shared among its processes); on the CPU: batches of 32
    in the main process (workers would only compete with the network for the same cores). Neither
    is part of the features' cache key."""
    if torch.device(device).type == "cuda":
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))     # set by `accelerate launch`
        return 256, max(1, min(8, (os.cpu_count() or 1) // processes))
    return 32, 0


def extract_features(files: Sequence[str | os.PathLike], extractor: FeatureExtractor,
                     protocol: ImageProtocol, *, batch_size: int = 32, num_workers: int = 0,
                     progress: bool = True, description: str = "features") -> np.ndarray:
    """Features [N, dim] (float32) of ``files`` in order: clean-fid's own dataset
    (``cleanfid.utils.ResizeDataset``: decode, ``protocol.preprocess`` as its custom image transform,
    clean-fid's resize) in batches of ``batch_size`` through ``extractor``. That is the loop of
    ``cleanfid.fid.get_files_features`` (equal to it bit for bit, tested), written out here so that
    batches land in page-locked memory on a GPU (clean-fid's loader has no ``pin_memory``) and are
    shared among `accelerate launch` processes (:func:`bench.core.distributed.map_loaded`)."""
    from cleanfid.utils import ResizeDataset

    if not files:
        raise UsageError("no images to extract features from")
    if batch_size < 1 or num_workers < 0:
        raise UsageError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    dataset = ResizeDataset([str(f) for f in files], mode=protocol.fid_mode)
    dataset.custom_image_tranform = protocol.preprocess
    batches = [range(i, min(i + batch_size, len(files))) for i in range(0, len(files), batch_size)]
    rank, world = process_shard()
    bar = progress_bar(total=len(range(rank, len(batches), world)), desc=description, unit="batch",
                       disable=not progress, leave=False)

    def run(batch: torch.Tensor) -> np.ndarray:
        out = extractor(batch).cpu().numpy()
        bar.update(1)
        return out

    parts = map_loaded(run, dataset, batches, num_workers=num_workers, pin_memory=extractor.device.type == "cuda")
    bar.close()
    features = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    if features.shape != (len(files), extractor.dim):
        raise RuntimeError(f"{extractor.name} returned features of shape {features.shape}, "
                           f"expected {(len(files), extractor.dim)}")
    return features
