"""What a suite is (:class:`Suite`: prompts, reference images, protocol, fingerprint), how one is
named (:class:`SuiteSpec`), and where suite data lives (the data root); see ``bench.assets.suites``."""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.errors import MissingResourceError, UsageError
from bench.core.fingerprint import fingerprint, sha256_lines

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


