"""The ``toy`` suite inside the benchmark: its real-image folders, its metric models and its
"real images" rows.

* :func:`toy_image_folder`: the reference draw (what FID/Coverage compare against) or the floor draw
  (an independent second draw for the same prompts) as PNG files in the cache, written once.
* :func:`toy_metric_models`: the committed toy feature network (through clean-fid's custom
  feature-extractor path, as Inception is for real suites) and the toy open_clip model.
* :func:`real_image_cells`: the rows that show what the metrics can resolve, scored exactly like a
  method's samples: the floor draw (FID and Coverage of real against real: the metric floor; CLIP of
  real images with their own captions) and the same images with shuffled captions (CLIP only).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.assets.toy.load import load_toy_clip, load_toy_feature_net
from bench.assets.toy.world import (
    ToySuiteConfig,
    draw_pairs,
    redraw_for_captions,
    toy_suite_prompts,
)
from bench.core.atomic import atomic_path
from bench.core.fingerprint import fingerprint
from bench.core.paths import cache_dir
from bench.scoring.metrics.clip_score import ClipScoreConfig, ClipScorer
from bench.scoring.metrics.features import FeatureExtractor

logger = logging.getLogger(__name__)

TOY_FEATURES_NAME = "toy-features"
#: Method labels of the real-image rows (steps 0: no sampling).
FLOOR_METHOD = "real-2nd-draw"
SHUFFLED_METHOD = "real-shuffled-captions"


def toy_image_folder(kind: str, n: int, suite: ToySuiteConfig = ToySuiteConfig()) -> Path:
    """``reference`` (the draw the prompts come from) or ``floor`` (a redraw conditioned on the same
    prompts) images 0..n-1 as ``00000.png ...`` in the cache; written once, atomically per file."""
    if kind not in ("reference", "floor"):
        raise ValueError(f"kind must be 'reference' or 'floor', got {kind!r}")
    if not 1 <= n <= suite.n:
        raise ValueError(f"the toy suite has {suite.n} prompts; asked for {n} images")
    key = fingerprint({"world": suite.world.to_dict(), "prompt_seed": suite.prompt_seed,
                       "floor_seed": suite.floor_seed, "kind": kind})
    folder = cache_dir() / "reference-images" / f"toy-{kind}-{key}-n{n}"
    if len(list(folder.glob("*.png"))) == n:
        return folder
    if kind == "reference":
        images, _ = draw_pairs(suite.prompt_seed, n, suite.world)
    else:
        prompts = toy_suite_prompts(suite.prompt_seed, n, suite.world)
        images = redraw_for_captions(prompts, suite.floor_seed, suite.world)
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        with atomic_path(folder / f"{index:05d}.png", durable=False) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
    logger.info("toy %s images: %d written to %s", kind, n, folder)
    return folder


def toy_metric_models(metrics: tuple[str, ...], device: torch.device):
    """(feature extractor or None, CLIP scorer or None) from the committed, hash-checked checkpoints."""
    extractor = clip = None
    if any(m in metrics for m in ("fid", "coverage")):
        net = load_toy_feature_net().to(device)
        extractor = FeatureExtractor(TOY_FEATURES_NAME, f"toy-checkpoint:{net.identity}", net.config.feature_dim,
                                     net, device)
    if "clip" in metrics:
        toy = load_toy_clip()
        config = ClipScoreConfig(model_name="toy-clip", pretrained=None, batch_size=250, precision="fp32")
        clip = ClipScorer.from_model(toy.model.to(device), toy.preprocess, toy.tokenizer,
                                     identity=f"toy-checkpoint:{toy.identity}", config=config, device=device)
    return extractor, clip


@dataclass(frozen=True)
class RealImageCell:
    """Real images scored like a method's samples: ``prompts[i]`` is the caption image ``i`` is
    scored against (CLIP); FID/Coverage compare the folder with the suite's reference."""

    method: str
    folder: Path
    prompts: tuple[str, ...]
    metrics: tuple[str, ...]
    description: str


def real_image_cells(prompts: tuple[str, ...], metrics: tuple[str, ...]) -> list[RealImageCell]:
    """The floor row (all image metrics) and the shuffled-captions row (CLIP only)."""
    n = len(prompts)
    floor = toy_image_folder("floor", n)
    image_metrics = tuple(m for m in metrics if m in ("fid", "clip", "coverage"))
    cells = [RealImageCell(FLOOR_METHOD, floor, tuple(prompts), image_metrics,
                           "a second, independent draw of real images for the same prompts")]
    if "clip" in metrics and n > 1:
        shuffled = tuple(np.roll(np.array(prompts, dtype=object), 1).tolist())  # image i, caption i-1
        cells.append(RealImageCell(SHUFFLED_METHOD, floor, shuffled, ("clip",),
                                   "the same real images scored against another prompt's caption"))
    return cells
