"""Training data: (image, caption) batches for distillation, a pure function of (seed, index).

Every source implements the :class:`TrainingData` protocol::

    images, captions = data.batch(index, batch_size)   # images: float32 (B, 3, H, W) in [-1, 1]

``index`` counts micro-batches (``bench.engine.training.Trainer`` asks for
``(step * accumulation + micro) * processes + rank``), and the result depends on
``(seed, index, batch_size)`` alone: no iterator state, so a run resumed after a kill sees exactly
the batches the uninterrupted run would have seen. ``identity`` is what goes into a student's
fingerprint.

Sources:

* :class:`SyntheticPairs`: seeded random smooth images with the smoke-suite prompts, for tests on
  the ``tiny`` teacher (its weights are random, so any images do).
* :class:`ToyWorldPairs`: the toy world's (image, caption) pairs (``bench.assets.toy.world.draw_pairs``),
  the training source of the toy teacher's students.
* :class:`ImageCaptionFolder`: a folder of images, each with a caption in a ``.txt`` file of the
  same stem (``cat_001.jpg`` + ``cat_001.txt``), searched recursively; for real teachers (SD-1.5).
  Preprocessing follows the LCM reference scripts (diffusers
  ``examples/consistency_distillation/train_lcm_distill_sd_wds.py``): resize the shorter side to the
  resolution (bilinear, antialiased), random crop to a square, scale to [-1, 1]. Point the harness
  at one with ``BENCH_TRAIN_DATA=DIR``.

* :class:`CaptionFile`: a UTF-8 text file with one caption per line (``BENCH_TRAIN_DATA=FILE.txt``),
  for methods that train on prompts only (``TrainingMethod.needs_images`` False: DMD and DMD2
  without the GAN term, whose real-image side is the teacher's score; DMD's regression pairs come
  from the teacher too). Batches carry captions and no images.

What each method needs: LCM, LCM-LoRA, SCott, SPLAM and MCM noise real images (image-caption pairs,
the papers' LAION-Aesthetics subsets: LAION-Aesthetics-6.5+ for LCM, 6.25+ for DMD/DMD2; any
folder of same-stem image/caption files); DMD and DMD2 stage 1 need captions only (DMD2 used
LAION-Aesthetics captions, DMD the first 500K LAION prompts for its regression pairs); DMD2 with
``gan=true`` (stage 2, the SDXL preset) needs images again.

WebDataset shards (the LAION tars the reference scripts stream) are **not supported yet**: unpack
them into a folder (``tar xf shard.tar -C DIR``; a shard holds ``KEY.jpg`` + ``KEY.txt`` pairs,
which is exactly the folder layout above).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from bench.assets.toy.load import load_toy_world
from bench.assets.toy.world import ToyWorldConfig, draw_pairs, with_resolution
from bench.core.errors import MissingResourceError, UsageError
from bench.core.fingerprint import fingerprint

TRAIN_DATA_ENV = "BENCH_TRAIN_DATA"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@runtime_checkable
class TrainingData(Protocol):
    """A deterministic source of (image, caption) training batches; ``has_images`` False: captions
    only (``batch`` returns None for the images)."""

    has_images: bool

    @property
    def identity(self) -> dict[str, Any]:
        """Everything that changes the batches (for fingerprints)."""

    def batch(self, index: int, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        """Batch number ``index``: float32 images (B, 3, H, W) in [-1, 1] and B captions."""


def batch_seed(seed: int, index: int, stream: str = "data") -> int:
    """A 63-bit seed for batch ``index`` of a source seeded with ``seed`` (a hash, so that
    neighbouring seeds share no batches)."""
    digest = hashlib.sha256(f"distill-bench:{stream}:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _generator(seed: int, index: int, stream: str = "data") -> torch.Generator:
    return torch.Generator("cpu").manual_seed(batch_seed(seed, index, stream))


def smoke_prompts() -> tuple[str, ...]:
    text = resources.files("bench").joinpath("data", "smoke_prompts.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


# ------------------------------------------------------------------------------------------------
# Synthetic pairs (tests)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticPairs:
    """Smooth random images with captions from the smoke prompts, for tests on the tiny teacher.

    Each image is a ``grid x grid`` random field upsampled bilinearly to ``resolution``, offset by
    a colour that depends on its caption, so the caption carries some information about the
    image."""

    has_images = True

    resolution: int = 16
    seed: int = 0
    grid: int = 4
    prompts: tuple[str, ...] = field(default_factory=smoke_prompts)

    @property
    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()[:16]
        return {"source": "synthetic-pairs", "resolution": self.resolution, "seed": self.seed,
                "grid": self.grid, "prompts_sha256": digest}

    def batch(self, index: int, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        g = _generator(self.seed, index)
        which = torch.randint(0, len(self.prompts), (batch_size,), generator=g)
        palette = torch.Generator("cpu").manual_seed(self.seed)
        colours = torch.rand(len(self.prompts), 3, 1, 1, generator=palette) * 1.2 - 0.6
        low = torch.rand(batch_size, 3, self.grid, self.grid, generator=g) * 0.8 - 0.4
        images = torch.nn.functional.interpolate(low, size=(self.resolution, self.resolution),
                                                 mode="bilinear", align_corners=False)
        images = (images + colours[which]).clamp(-1.0, 1.0)
        return images.float(), [self.prompts[int(i)] for i in which]


# ------------------------------------------------------------------------------------------------
# The toy world
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyWorldPairs:
    """The toy world's pairs (``bench.assets.toy.world.draw_pairs``): batch ``index`` of size B is items
    ``index * B .. index * B + B - 1`` of the world's draw with ``seed`` (each item has its own
    generator in the world, so this is a pure function of (seed, index, B))."""

    has_images = True

    world: Any = None           # bench.assets.toy.world.ToyWorldConfig; None: the default world
    seed: int = 0

    def _world(self):
        return self.world if self.world is not None else ToyWorldConfig()

    @property
    def identity(self) -> dict[str, Any]:
        return {"source": "toy-world", "seed": self.seed, "world": fingerprint(self._world())}

    def batch(self, index: int, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        images, captions = draw_pairs(self.seed, batch_size, self._world(), start=index * batch_size)
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return images, list(captions)


# ------------------------------------------------------------------------------------------------
# A folder of images with same-stem captions (real teachers)
# ------------------------------------------------------------------------------------------------


class ImageCaptionFolder:
    """``root/**/NAME.{jpg,jpeg,png,webp,bmp}`` with the caption in ``NAME.txt`` beside it.

    Images without a caption file are skipped (counted in ``skipped``); an empty folder is an
    error. The item order of epoch ``e`` is a permutation seeded by ``(seed, e)``; the crop of
    each item by ``(seed, index)``. ``identity`` hashes the relative file names and sizes (not the
    bytes: hashing a LAION-sized folder would take longer than the training)."""

    has_images = True

    def __init__(self, root: str | os.PathLike, resolution: int, seed: int = 0):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise MissingResourceError(
                f"training data folder {self.root} does not exist (set {TRAIN_DATA_ENV}=DIR to a folder of "
                "images with same-stem .txt captions)")
        self.resolution = int(resolution)
        self.seed = int(seed)
        images = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        self.items: list[tuple[Path, Path]] = [(p, p.with_suffix(".txt")) for p in images
                                               if p.with_suffix(".txt").is_file()]
        self.skipped = len(images) - len(self.items)
        if not self.items:
            raise UsageError(
                f"training data folder {self.root} has no image with a same-stem .txt caption "
                f"({len(images)} image(s) found; expected e.g. 0001.jpg + 0001.txt)")
        listing = hashlib.sha256()
        for image, text in self.items:
            for path in (image, text):
                listing.update(f"{path.relative_to(self.root)}:{path.stat().st_size}\n".encode())
        self._listing = listing.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def identity(self) -> dict[str, Any]:
        return {"source": "image-caption-folder", "root": str(self.root.resolve()), "listing": self._listing,
                "items": len(self.items), "resolution": self.resolution, "seed": self.seed,
                "preprocess": "resize-shorter-bilinear-antialias+random-crop"}

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.items), generator=_generator(self.seed, epoch, "epoch"))

    def _load(self, position: int, g: torch.Generator) -> tuple[torch.Tensor, str]:
        from torchvision.transforms.functional import (
            InterpolationMode,
            pil_to_tensor,
            resize,
        )

        image_path, text_path = self.items[position]
        with Image.open(image_path) as image:
            image = image.convert("RGB")
            tensor = pil_to_tensor(image)
        tensor = resize(tensor, self.resolution, interpolation=InterpolationMode.BILINEAR, antialias=True)
        h, w = tensor.shape[-2:]
        top = int(torch.randint(0, h - self.resolution + 1, (1,), generator=g))
        left = int(torch.randint(0, w - self.resolution + 1, (1,), generator=g))
        tensor = tensor[:, top:top + self.resolution, left:left + self.resolution]
        caption = text_path.read_text(encoding="utf-8").strip()
        return tensor.float() / 127.5 - 1.0, caption

    def batch(self, index: int, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        g = _generator(self.seed, index, "crop")
        images, captions = [], []
        n = len(self.items)
        permutations: dict[int, torch.Tensor] = {}
        for j in range(batch_size):
            item = index * batch_size + j
            epoch, offset = divmod(item, n)
            if epoch not in permutations:
                permutations[epoch] = self._permutation(epoch)
            image, caption = self._load(int(permutations[epoch][offset]), g)
            images.append(image)
            captions.append(caption)
        return torch.stack(images), captions


class CaptionFile:
    """One caption per line of a UTF-8 text file (blank lines skipped): a source of prompts only,
    for methods that do not noise real images. Epoch ``e`` visits the captions in a permutation
    seeded by ``(seed, e)``; ``identity`` hashes the file's bytes."""

    has_images = False

    def __init__(self, path: str | os.PathLike, seed: int = 0):
        self.path = Path(path).expanduser()
        try:
            text = self.path.read_bytes()
        except OSError as err:
            raise MissingResourceError(f"training captions file {self.path} cannot be read ({err.strerror}; set "
                                       f"{TRAIN_DATA_ENV} to a .txt file with one caption per line)") from None
        try:
            lines = text.decode("utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise UsageError(f"training captions file {self.path} is not UTF-8 text (byte {err.start})") from None
        self.captions = [line.strip() for line in lines if line.strip()]
        if not self.captions:
            raise UsageError(f"training captions file {self.path} has no caption (expected one per line)")
        self.seed = int(seed)
        self._digest = hashlib.sha256(text).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def identity(self) -> dict[str, Any]:
        return {"source": "caption-file", "sha256": self._digest, "items": len(self.captions), "seed": self.seed}

    def batch(self, index: int, batch_size: int) -> tuple[None, list[str]]:
        n, captions, permutations = len(self.captions), [], {}
        for j in range(batch_size):
            epoch, offset = divmod(index * batch_size + j, n)
            if epoch not in permutations:
                permutations[epoch] = torch.randperm(n, generator=_generator(self.seed, epoch, "epoch"))
            captions.append(self.captions[int(permutations[epoch][offset])])
        return None, captions


# ------------------------------------------------------------------------------------------------
# Which source a teacher trains on
# ------------------------------------------------------------------------------------------------


def is_toy_world_teacher(teacher: Any) -> bool:
    """The toy world's own teacher (``bench/assets/toy``): trained on ``ToyWorldPairs``.

    Hook: a teacher is a toy-world teacher when its identity says ``source: toy-world`` or its
    name is ``toy``; the world it was trained on comes from ``bench.assets.toy.load.load_toy_world``."""
    identity = getattr(teacher, "identity", {}) or {}
    return identity.get("source") == "toy-world" or getattr(teacher, "name", None) == "toy"


def is_random_weights_teacher(teacher: Any) -> bool:
    """Teachers built from configs with random weights (``tiny``, ``sd15-arch``)."""
    identity = getattr(teacher, "identity", {}) or {}
    return str(identity.get("weights", "")).startswith("random-init")


TRAINING_SCALES = ("paper", "toy", "plumbing")


def training_scale(teacher: Any) -> str:
    """Which schedule students of ``teacher`` train on: ``paper`` (the method's own values),
    ``toy`` (its toy schedule, :mod:`methods.toy_schedule`: the toy world's teacher and random-weight teachers) or
    ``plumbing`` (the toy values capped at a few steps: ``tiny``, a teacher for tests). A teacher
    may declare it (``Teacher.training_scale``); otherwise it follows from the identity."""
    declared = getattr(teacher, "training_scale", None)
    if declared:
        if declared not in TRAINING_SCALES:
            raise ValueError(f"teacher {getattr(teacher, 'name', '?')}: training_scale {declared!r} is not one of "
                             f"{TRAINING_SCALES}")
        return declared
    return "toy" if is_toy_world_teacher(teacher) or is_random_weights_teacher(teacher) else "paper"


def training_data_for(teacher: Any, seed: int = 0, root: str | os.PathLike | None = None) -> TrainingData:
    """The training source of ``teacher``: ``root`` (or ``$BENCH_TRAIN_DATA``) when given, else the
    toy world for the toy teacher, synthetic pairs for random-weight teachers; a real teacher
    without a data folder is an error naming the variable to set."""
    root = root if root is not None else (os.environ.get(TRAIN_DATA_ENV) or None)
    if root is not None and Path(root).expanduser().is_file():
        return CaptionFile(root, seed=seed)
    if root is not None:
        return ImageCaptionFolder(root, teacher.resolution, seed=seed)
    if is_toy_world_teacher(teacher):
        return ToyWorldPairs(with_resolution(load_toy_world(), teacher.resolution), seed=seed)
    if is_random_weights_teacher(teacher):
        return SyntheticPairs(resolution=teacher.resolution, seed=seed)
    raise MissingResourceError(
        f"training a student of teacher {getattr(teacher, 'name', '?')!r} needs training data: set "
        f"{TRAIN_DATA_ENV}=DIR to a folder of images with same-stem .txt captions (e.g. a LAION-Aesthetics "
        "subset; webdataset shards: unpack them into such a folder with `tar xf`), or, for dmd and dmd2 "
        f"without gan, {TRAIN_DATA_ENV}=FILE.txt with one caption per line (README, \"Training data for real "
        "teachers\"); or sample a published student with --student instead of training one")


__all__ = ["TrainingData", "SyntheticPairs", "ToyWorldPairs", "ImageCaptionFolder", "CaptionFile", "training_data_for",
           "is_toy_world_teacher", "is_random_weights_teacher", "batch_seed", "TRAIN_DATA_ENV"]
