"""`bench eval`: score a folder of images (FID, CLIP score, Coverage) against a suite's reference.

Images are named by prompt index (``00000.png ...``), also when another tool made them. The same
functions score every cell of `bench run`. Metric models and reference images are resolved before
any image is generated, so a missing download fails in seconds, not after an hour of sampling.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.core.atomic import atomic_path
from bench.core.errors import UsageError
from bench.core.fingerprint import fingerprint, library_versions
from bench.core.paths import cache_dir
from bench.scoring.metrics.clip_score import (
    CLIP_PRECISIONS,
    ClipScoreConfig,
    ClipScorer,
    resolve_clip_protocol,
)
from bench.scoring.metrics.features import (
    ImageProtocol,
    inception_extractor,
    list_images,
    protocol_for_suite,
)
from bench.scoring.metrics.fid import fid_from_stats
from bench.scoring.metrics.prdc import prdc
from bench.scoring.metrics.reference import (
    folder_features,
    reference_features,
    samples_features,
)
from bench.scoring.metrics.standins import standin_extractor
from bench.scoring.results import Row, utc_now_iso
from bench.scoring.toy import toy_image_folder, toy_metric_models

log = logging.getLogger(__name__)

IMAGE_METRICS = ("fid", "clip", "coverage")
ALL_METRICS = (*IMAGE_METRICS, "latency")
DEFAULT_METRICS = ALL_METRICS
STANDIN_NOTE = "stand-in metric models (random weights): numbers exercise the code path, not image quality"
TOY_NOTE = "toy-world metric models (bench/data/toy): comparable across methods on the toy world only"


@dataclass
class MetricModels:
    """The networks behind the numbers, with the identities recorded in every row."""

    extractor: Any | None            # bench.scoring.metrics.FeatureExtractor (FID and PRDC features)
    clip: Any | None                 # bench.scoring.metrics.ClipScorer
    note: str = ""                   # e.g. the stand-in warning
    nearest_k: int = 5               # Naeem et al. 2020

    def identities(self) -> dict:
        return {"features": None if self.extractor is None else self.extractor.describe(),
                "clip": None if self.clip is None else self.clip.identity}


@dataclass
class Reference:
    """The suite's real images as features (FID statistics + PRDC real set), or None."""

    features: Any | None             # bench.scoring.metrics.reference.FeatureSet
    protocol: Any                    # bench.scoring.metrics.ImageProtocol
    description: str = ""


@dataclass
class Evaluator:
    suite: Any
    metrics: tuple[str, ...]
    models: MetricModels
    reference: Reference
    extra_protocol: dict = field(default_factory=dict)

    def protocol(self) -> dict:
        clip = self.models.clip
        # The CLIP protocol (prefix, crop/resize) when it is not the "raw" one; rows without the key
        # (the toy rows, all rows made before per-suite CLIP protocols) were scored raw.
        recorded = None if clip is None else clip.config.clip_protocol.recorded()
        return {"num_images": len(self.suite.prompts), "suite_fingerprint": self.suite.fingerprint,
                "image_protocol": self.reference.protocol.as_dict(), "reference": self.reference.description,
                "metric_models": self.models.identities(), "nearest_k": self.models.nearest_k,
                **({"clip_protocol": recorded} if recorded is not None else {}),
                **self.extra_protocol}

    def score_folder(self, folder: Path, progress: bool = True, prompts: tuple[str, ...] | None = None,
                     metrics: tuple[str, ...] | None = None) -> dict[str, float]:
        """FID / CLIP / PRDC numbers of one samples folder (features cached by fingerprint).
        ``prompts`` (default: the suite's) are what CLIP scores image i against; ``metrics``
        narrows ``self.metrics``."""
        metrics = self.metrics if metrics is None else tuple(m for m in metrics if m in self.metrics)
        prompts = self.suite.prompts if prompts is None else prompts
        values: dict[str, float] = {}
        wants_features = any(m in metrics for m in ("fid", "coverage"))
        if wants_features and self.reference.features is not None:
            fake = samples_features(folder, self.models.extractor, self.reference.protocol,
                                    expected_count=len(self.suite.prompts), progress=progress)
            real = self.reference.features
            if "fid" in metrics:
                values["fid"] = fid_from_stats(real.mu, real.sigma, fake.mu, fake.sigma)
            if "coverage" in metrics:
                values.update(prdc(real.features, fake.features, nearest_k=self.models.nearest_k))
        if "clip" in metrics and self.models.clip is not None:
            files = list_images(folder, len(prompts), check_indices=True, take_first=True)
            values["clip"] = self.models.clip.score(files, list(prompts), progress=progress).mean_cosine
        return values


# ------------------------------------------------------------------------------------------------
# Metric models and references per suite
# ------------------------------------------------------------------------------------------------


def standin_clip_scorer(seed: int = 0, device: str | torch.device = "cpu"):
    """A tiny random-weight open_clip model passed through exactly the real CLIP-score code path."""
    import open_clip
    from open_clip.transform import image_transform


    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = open_clip.CLIP(
            embed_dim=16,
            vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
            text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
        ).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    preprocess = image_transform(32, is_train=False)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    return ClipScorer.from_model(model, preprocess, tokenizer, identity=f"standin-random-init:{seed}", device=device)


def smoke_reference_folder(num_images: int = 16, resolution: int = 16, seed: int = 0) -> Path:
    """Deterministic smooth random images standing in for the smoke suite's real images, written
    once into the cache (the stand-in feature network then gives real, meaningless, numbers)."""
    folder = cache_dir() / "reference-images" / f"smoke-n{num_images}-r{resolution}-s{seed}"
    if len(list(folder.glob("*.png"))) == num_images:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((resolution, resolution), Image.BICUBIC)
        with atomic_path(folder / f"{index:05d}.png") as tmp:
            image.save(tmp, format="PNG")
    return folder


def metric_models_for(suite, metrics: tuple[str, ...], inception_path: str | None = None,
                      clip_weights: str | None = None, clip_model: str | None = None,
                      clip_pretrained: str | None = None, clip_prefix: str | None = None,
                      device: torch.device | str | None = None, clip_resize: str | int | None = None,
                      clip_precision: str = "auto") -> MetricModels:
    """Real models for real suites (fail fast when the weights are missing), the trained toy models
    for the toy suite, stand-ins for smoke. The CLIP protocol is the suite's
    (:func:`bench.scoring.metrics.clip_score.clip_protocol_for_suite`) unless ``clip_prefix``
    (``none`` or a text) / ``clip_resize`` (``raw`` or a size) override it."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    wants_features = any(m in metrics for m in ("fid", "coverage"))
    clip_protocol = resolve_clip_protocol(suite.name, clip_prefix, clip_resize)

    def with_protocol(scorer):
        if scorer is not None:
            scorer.config = dataclasses.replace(scorer.config, prefix=clip_protocol.prefix,
                                                image_size=clip_protocol.image_size)
        return scorer

    if suite.name == "toy":
        extractor, clip = toy_metric_models(metrics, device)
        return MetricModels(extractor, with_protocol(clip), note=TOY_NOTE)
    if suite.name in ("smoke",) or suite.name == "prompts-file":
        extractor = standin_extractor(seed=0, device=device) if wants_features else None
        clip = standin_clip_scorer(device=device) if "clip" in metrics else None
        return MetricModels(extractor, with_protocol(clip), note=STANDIN_NOTE)

    extractor = inception_extractor(inception_path, device=device) if wants_features else None
    clip = None
    if "clip" in metrics:
        defaults = ClipScoreConfig()
        config = ClipScoreConfig(model_name=clip_model or defaults.model_name,
                                 pretrained=clip_pretrained or defaults.pretrained,
                                 prefix=clip_protocol.prefix, image_size=clip_protocol.image_size,
                                 weights_path=clip_weights, precision=clip_precision)
        clip = ClipScorer.from_config(config, device=device)
    return MetricModels(extractor, clip)


def reference_for(suite, models: MetricModels, data_root: str | None, metrics: tuple[str, ...],
                  progress: bool = True) -> Reference:
    """The suite's reference features; checked (and computed or loaded from the cache) up front."""
    wants_features = any(m in metrics for m in ("fid", "coverage"))
    if suite.name in ("smoke", "prompts-file"):
        protocol = ImageProtocol(resolution=None, center_crop_long_edge=False, resize_filter="none")
        if not wants_features:
            return Reference(None, protocol, "none")
        if suite.name == "prompts-file":
            raise UsageError("a --prompts-file suite has no reference images: use --metrics clip, or a suite "
                             "with references (coco2014-30k, coco2017-5k, mjhq-5k)")
        folder = smoke_reference_folder()
        return Reference(folder_features(folder, models.extractor, protocol, progress=progress), protocol,
                         "smoke: 16 synthetic images (stand-in reference)")
    protocol = protocol_for_suite(suite.name)
    if not wants_features:
        return Reference(None, protocol, "none")
    if suite.name == "toy":
        folder = toy_image_folder("reference", len(suite.prompts))
        return Reference(folder_features(folder, models.extractor, protocol, progress=progress), protocol,
                         f"toy: the {len(suite.prompts)} world images the prompts were drawn with")
    features = reference_features(suite.name, models.extractor, data_root=data_root,
                                  image_ids=suite.image_ids, reference_files=suite.reference_files,
                                  protocol=protocol, progress=progress)
    return Reference(features, protocol, f"{suite.protocol.get('reference', suite.name)}")


def parse_metrics(text: str | None) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_METRICS
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown or not names:
        raise UsageError(f"--metrics takes a comma-separated subset of {','.join(ALL_METRICS)}; got {text!r}")
    return names


def build_evaluator(suite, metrics: tuple[str, ...], args: argparse.Namespace, progress: bool = True) -> Evaluator:
    image_metrics = tuple(m for m in metrics if m in IMAGE_METRICS)
    nearest_k = MetricModels.nearest_k
    if "coverage" in image_metrics and len(suite.prompts) <= nearest_k:
        raise UsageError(f"coverage (k={nearest_k} nearest neighbours) needs more than {nearest_k} images; "
                         f"got {len(suite.prompts)}: raise --num-images or leave coverage out of --metrics")
    if "fid" in image_metrics and len(suite.prompts) < 2:
        raise UsageError("FID needs at least 2 images: raise --num-images or leave fid out of --metrics")
    models = metric_models_for(suite, image_metrics, getattr(args, "inception_path", None),
                               getattr(args, "clip_weights", None), getattr(args, "clip_model", None),
                               getattr(args, "clip_pretrained", None), getattr(args, "clip_prefix", None),
                               clip_resize=getattr(args, "clip_resize", None),
                               clip_precision=getattr(args, "clip_precision", None) or "auto")
    reference = reference_for(suite, models, getattr(args, "data_root", None), image_metrics, progress=progress)
    return Evaluator(suite, metrics, models, reference)


def add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", default=None, metavar="A,B",
                        help=f"comma-separated subset of {','.join(ALL_METRICS)} (default: all)")
    parser.add_argument("--inception-path", default=None, metavar="FILE",
                        help="clean-fid's inception-2015-12-05.pt (env BENCH_INCEPTION_PATH)")
    parser.add_argument("--clip-weights", default=None, metavar="FILE",
                        help="local open_clip checkpoint for the CLIP score (env BENCH_CLIP_PATH)")
    parser.add_argument("--clip-model", default=None, help="open_clip architecture (default ViT-g-14)")
    parser.add_argument("--clip-pretrained", default=None,
                        help="open_clip pretrained tag, recorded with every number (default laion2b_s12b_b42k)")
    parser.add_argument("--clip-prefix", default=None, metavar="TEXT|none",
                        help='caption prefix, or none (default: the suite\'s: "A photo depicts" on coco2014-30k, '
                             'coco2017-5k and mjhq-5k as DMD2, none on toy/smoke; recorded)')
    parser.add_argument("--clip-precision", default="auto", choices=CLIP_PRECISIONS,
                        help="precision of the CLIP encoders: auto = fp16 autocast on CUDA, each process's first "
                             "batch checked against fp32 (an error beyond 2e-3, naming fp32), fp32 elsewhere; "
                             "recorded with every CLIP number when not fp32")
    parser.add_argument("--clip-resize", default=None, metavar="N|raw",
                        help="centre crop + PIL Lanczos to NxN before the CLIP transform, or raw (no crop/resize) "
                             "(default: the suite's: 256 on coco2014-30k, coco2017-5k and mjhq-5k as DMD2, raw on "
                             "toy/smoke; recorded)")


# ------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------


def make_rows(values: dict[str, float], *, evaluator: Evaluator, cell: dict, samples_fingerprint: str,
              run_id: str, device: str) -> list:
    protocol = evaluator.protocol()
    note = evaluator.models.note
    rows = []
    for metric, value in values.items():
        fp = row_fingerprint(samples_fingerprint, metric, protocol)
        rows.append(Row(suite=evaluator.suite.name, metric=metric, value=float(value), fingerprint=fp,
                        run_id=run_id, time=utc_now_iso(), device=device, versions=library_versions(),
                        protocol=protocol, note=note, num_images=len(evaluator.suite.prompts), **cell))
    return rows


def row_fingerprint(samples_fingerprint: str, metric: str, protocol: dict) -> str:
    """A result row's fingerprint: the images' fingerprint + the metric + its full protocol."""
    return fingerprint({"samples": samples_fingerprint, "metric": metric, "protocol": protocol})


def samples_metadata(folder: Path) -> dict[str, Any]:
    """The metadata.json `bench sample` wrote into ``folder``; {} for a foreign folder."""
    meta = Path(folder) / "metadata.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def samples_fingerprint_of(folder: Path) -> str:
    """The folder fingerprint written by `bench sample`; for foreign folders, a hash of the files."""
    meta = samples_metadata(folder)
    if meta:
        return meta["fingerprint"]

    return fingerprint([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in list_images(folder)])
