"""`bench profile --cell`: one whole leaderboard cell timed end to end, and the projected time of the grid.

A cell of `bench run` is one method at one step count on one suite: N images sampled and written as
PNGs, then scored. This module runs the same code paths on N images and times four stages (wall
clock; ``torch.cuda.synchronize`` around each on CUDA):

1. **sampling**: ``bench.engine.cells.sample_one`` (the method's real sampler at K steps, batched,
   text encoding, VAE decode, PNG encode + atomic write into a temporary folder). The U-Net calls
   inside it are timed as well (forward hooks on the student's U-Net: CUDA events on a GPU, so
   nothing is synchronised per call), which splits the stage into a part that scales with the
   number of network evaluations (NFE) and a part that does not.
2. **FID features**: ``list_images`` (every PNG checked) + ``extract_features`` (clean-fid's
   ``get_files_features`` loop with the suite's crop/resize and the feature network), as
   ``samples_features`` runs them (its cache write is left out).
3. **CLIP**: ``ClipScorer.score`` of the folder against the prompts (image and text towers).
4. **metrics**: FID statistics of the samples, clean-fid's Frechet distance against the reference
   statistics, and PRDC (precision, recall, density, coverage; k = 5).

Teachers and their metric models:

* ``toy``: the toy suite's prompts, the toy feature network and toy CLIP, the toy reference draw
  (features cached once per suite, as a run reads them), the released student of the method.
* SD-1.5 architecture (``sd15-arch``, ``sd15``, ``rv51``): coco2014-30k's image and CLIP protocols;
  clean-fid's Inception file and the open_clip ViT-g-14 checkpoint when they are on this machine,
  else the same architectures with seeded random weights (the FID Inception graph of clean-fid's
  PyTorch port, ``cleanfid.inception_pytorch``; ``open_clip`` ViT-g-14 built without weights):
  timing does not depend on weight values. Prompts are coco2014-30k's when its captions are under the
  data root, else the built-in smoke prompts cycled (every prompt is encoded at 77 tokens, so the
  text costs the same). The reference is N random features of the feature dimension (a run reads
  the reference features from its cache, so only their count and dimension matter here).
* ``tiny``: the stand-in metric models of the smoke suite, smoke prompts, a random reference.

Distilled methods sample with a released student where one exists (toy), else with an untrained
student of the exact architecture (``bench.perf.sampling_speed.profile_student``; nothing is trained).

Projection of the full grid (the distilled methods x steps 1, 2, 4, 8 x coco2014-30k, coco2017-5k,
mjhq-5k): with the measured seconds S (sampling), D (its U-Net calls), F (FID features), C (CLIP),
Fr (Frechet distance), P (PRDC) and M' (the rest of the metrics: the FID statistics) at N images and
the measured method's NFE n0, a cell of method m at k steps on a suite of N_s images is projected,
with r = N_s / N, as ``r * ((S - D) + D * nfe_m(k) / n0 + F + C + M') + Fr + r^2 * P``
(:func:`cell_seconds`): U-Net time proportional to the NFE (every method samples the same U-Net
architecture), the Frechet distance constant (a matrix square root of dim x dim at any N), PRDC
quadratic (pairwise distances), everything else proportional to the number of images. Cells a real
run skips (an unsupported step count) are listed and not counted. Model loading is timed apart
(once per run, not per cell).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import resource
import shlex
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from bench.assets.suites import Suite, get_suite_spec, load_suite
from bench.assets.teachers import load_teacher
from bench.core.atomic import atomic_write_json, atomic_write_text
from bench.core.errors import MissingResourceError, UsageError
from bench.engine.cells import SamplingContext, guidance_for, sample_one
from bench.engine.published import rebatched
from bench.engine.sampling import PRECISIONS
from bench.engine.students import (
    StudentPolicy,
    load_student,
    released_student_for,
    strict_steps_reason,
    unsupported_steps_on,
)
from bench.perf.profile_report import device_info, device_slug, versions
from bench.perf.profile_spec import SD15_ARCHITECTURE_TEACHERS, read_peak, reset_peak
from bench.perf.sampling_speed import profile_student
from bench.perf.training_speed import device_mark, elapsed_ms
from bench.scoring.evaluate import metric_models_for, reference_for
from bench.scoring.metrics.clip_score import ClipScoreConfig, ClipScorer, clip_protocol_for_suite
from bench.scoring.metrics.features import (
    INCEPTION_DIM,
    FeatureExtractor,
    extract_features,
    inception_extractor,
    list_images,
    protocol_for_suite,
)
from bench.scoring.metrics.fid import feature_statistics, fid_from_stats
from bench.scoring.metrics.prdc import prdc
from methods import get_method_class, method_names

log = logging.getLogger(__name__)

DEFAULT_CELL_METHOD = "lcm"
DEFAULT_CELL_STEPS = 4
DEFAULT_GPU_CELL_TEACHER = "sd15-arch"
DEFAULT_CPU_CELL_TEACHER = "toy"
DEFAULT_GPU_CELL_IMAGES = 30_000
DEFAULT_CPU_CELL_IMAGES = 1_000
GRID_STEPS = (1, 2, 4, 8)
GRID_SUITES = ("coco2014-30k", "coco2017-5k", "mjhq-5k")
NEAREST_K = 5                      # PRDC's k (bench.scoring.evaluate.MetricModels.nearest_k)
FEATURE_BATCH = 32                 # files_features' default batch (what `bench run` extracts with)
CLIP_MODEL = "ViT-g-14"
STAGE_LABELS = {
    "sampling": "sampling (+ PNG encode/write)",
    "fid_features": "FID features",
    "clip": "CLIP image + text",
    "metrics": "FID stats + Frechet + PRDC",
}


@dataclass(frozen=True)
class CellSpec:
    """The validated request of ``bench profile --cell`` (checked before any model loads)."""

    method: Any                     # a methods.base.Method
    steps: int
    teacher: str
    device: torch.device
    num_images: int
    batch_size: int
    batching: str                   # "exact" | "fast" (bench.engine.sampling.BATCHING_MODES)
    out: Path
    seed: int = 0
    config: str | None = None
    networks: str = "eager"         # bench.engine.network_variants.RUN_VARIANTS

    def command(self) -> str:
        parts = ["python", "-m", "bench", "profile", "--cell", "--method", self.method.name, "--steps",
                 str(self.steps), "--teacher", self.teacher, "--device", str(self.device), "--num-images",
                 str(self.num_images), "--batch-size", str(self.batch_size), "--batching", self.batching,
                 "--seed", str(self.seed), "--out", str(self.out)]
        if self.config:
            parts += ["--config", self.config]
        if self.networks != "eager":
            parts += ["--networks", self.networks]
        return " ".join(shlex.quote(p) for p in parts)


@dataclass
class Stage:
    """One timed stage of the cell."""

    name: str
    label: str
    seconds: float
    images_per_s: float
    share: float = 0.0
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None
    detail: dict = field(default_factory=dict)


@dataclass
class CellWorld:
    """What scores the cell: prompts, feature network, CLIP scorer and reference, with how each was got."""

    suite: Suite
    prompts_note: str
    protocol: Any                   # bench.scoring.metrics.features.ImageProtocol
    extractor: FeatureExtractor
    extractor_note: str
    clip: ClipScorer
    clip_name: str
    clip_note: str
    reference: Any                  # namespace: features, mu, sigma; None until synthesized
    reference_note: str


# ------------------------------------------------------------------------------------------------
# Metric models, prompts and reference per teacher
# ------------------------------------------------------------------------------------------------


def world_kind(teacher: str) -> str:
    """``toy``, ``sd15`` (the SD-1.5 architecture: coco2014-30k's protocols) or ``standin``."""
    if teacher == "toy":
        return "toy"
    return "sd15" if teacher in SD15_ARCHITECTURE_TEACHERS else "standin"


def cycled_suite(base: Suite, n: int) -> Suite:
    """The first ``n`` prompts of ``base``, repeated from the start when it has fewer."""
    if n <= len(base):
        return base.subset(n)
    prompts = tuple(base.prompts[i % len(base)] for i in range(n))
    return Suite(name=f"{base.name}-cycled", prompts=prompts, image_ids=None, categories=None,
                 protocol={"rule": f"the {len(base)} prompts of {base.name} repeated to {n}",
                           "source": base.fingerprint})


def _cell_prompts(kind: str, n: int) -> tuple[Suite, str]:
    if kind == "toy":
        base = load_suite("toy")
        note = f"the toy suite's first {n:,} prompts" if n <= len(base) else \
            f"the toy suite's {len(base):,} prompts repeated to {n:,}"
        return cycled_suite(base, n), note
    smoke = load_suite("smoke")
    which = f"the first {n} of the {len(smoke)} built-in smoke prompts" if n <= len(smoke) else \
        f"the {len(smoke)} built-in smoke prompts repeated to {n:,}"
    synthesized = f"{which} (every prompt is encoded at 77 tokens, so the text costs the same)"
    if kind == "sd15":
        try:
            coco = load_suite("coco2014-30k")
        except (MissingResourceError, UsageError):
            return cycled_suite(smoke, n), synthesized + "; the coco2014-30k captions are not under the data root"
        return cycled_suite(coco, n), f"coco2014-30k's first {min(n, len(coco)):,} captions" + \
            ("" if n <= len(coco) else f" repeated to {n:,}")
    return cycled_suite(smoke, n), synthesized


class RandomFIDInception(nn.Module):
    """The FID Inception graph (TF ``inception-2015-12-05``, as clean-fid's PyTorch port
    ``cleanfid.inception_pytorch`` builds it) up to the 2048-d pool3 features, with seeded random
    weights; input as clean-fid's TorchScript wrapper takes it: [B, 3, 299, 299] in 0..255.

    The default initialisation alone shrinks the activations to ~1e-7 by pool3, which would make
    every sample's features nearly equal; the BatchNorm statistics are therefore set from one
    forward pass over seeded random images (colour fields from flat to pixel noise), so each layer
    works at about unit scale, as a trained one does."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        import torchvision
        from cleanfid import inception_pytorch as fid

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                                  num_classes=1008)
            # the blocks clean-fid's fid_inception_v3 swaps in (it then loads the weights: not here)
            net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
            net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
            net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
            net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
            net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
            net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
            net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
            net.Mixed_7b = fid.FIDInceptionE_1(1280)
            net.Mixed_7c = fid.FIDInceptionE_2(2048)
        pool = nn.MaxPool2d(kernel_size=3, stride=2)
        self.body = nn.Sequential(
            net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, pool,
            net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
            net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(1))
        self.requires_grad_(False)
        self._calibrate(seed)
        self.eval()

    @torch.no_grad()
    def _calibrate(self, seed: int) -> None:
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None                 # the plain average of the batches seen: here one
        generator = torch.Generator().manual_seed(seed)
        fields = [torch.rand(1, 3, size, size, generator=generator) for size in (1, 2, 4, 8, 16, 32, 64, 299)]
        images = torch.cat([nn.functional.interpolate(f, size=(299, 299), mode="bilinear") for f in fields])
        self.train()
        self(images * 255)
        for norm in norms:
            norm.momentum = 0.1                  # nn.BatchNorm2d's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - 128.0) / 128.0).flatten(1)


def fid_extractor(device: torch.device) -> tuple[FeatureExtractor, str]:
    """clean-fid's Inception from its local file, else the same graph with random weights."""
    try:
        return inception_extractor(None, device=device), "clean-fid's Inception (inception-2015-12-05.pt)"
    except MissingResourceError:
        module = RandomFIDInception().to(device)
        extractor = FeatureExtractor("inception-fid-graph", "random-init:0", INCEPTION_DIM, module, device)
        return extractor, ("the FID Inception graph with random weights (clean-fid's inception-2015-12-05.pt is "
                           "not on this machine; timing does not depend on weight values)")


def clip_scorer(device: torch.device) -> tuple[ClipScorer, str]:
    """The ViT-g-14 CLIP scorer of the coco suites (DMD2's protocol), random weights when the
    checkpoint is missing."""
    protocol = clip_protocol_for_suite("coco2014-30k")
    config = ClipScoreConfig(model_name=CLIP_MODEL, prefix=protocol.prefix, image_size=protocol.image_size)
    try:
        return ClipScorer.from_config(config, device=device), f"open_clip {CLIP_MODEL} ({config.pretrained})"
    except (MissingResourceError, UsageError):
        pass
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(CLIP_MODEL, pretrained=None, device=device)
    scorer = ClipScorer.from_model(model, preprocess, open_clip.get_tokenizer(CLIP_MODEL), "random-init:0",
                                   dataclasses.replace(config, pretrained=None), device)
    return scorer, (f"open_clip {CLIP_MODEL} with random weights (its {config.pretrained} checkpoint is not on "
                    "this machine; timing does not depend on weight values)")


def synthesized_reference(features: np.ndarray, seed: int = 0) -> types.SimpleNamespace:
    """As many Gaussian features as ``features`` with their per-dimension mean and standard
    deviation, and their FID statistics (as clean-fid computes them): a reference set that overlaps
    the samples, as a real one overlaps good samples, so PRDC does a real run's work."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(features.shape, dtype=np.float32)
    reference = (noise * features.std(axis=0) + features.mean(axis=0)).astype(np.float32)
    mu, sigma = feature_statistics(reference)
    return types.SimpleNamespace(features=reference, mu=mu, sigma=sigma)


def cell_world(teacher: str, n: int, device: torch.device, progress: bool = True) -> CellWorld:
    """Prompts, metric models and reference of a cell on ``teacher`` (module docstring)."""
    kind = world_kind(teacher)
    suite, prompts_note = _cell_prompts(kind, n)
    metrics = ("fid", "clip", "coverage")
    if kind == "sd15":
        protocol = protocol_for_suite("coco2014-30k")
        extractor, extractor_note = fid_extractor(device)
        clip, clip_note = clip_scorer(device)
        clip_name = CLIP_MODEL
    else:
        name = "toy" if kind == "toy" else "smoke"
        protocol = protocol_for_suite(name)
        models = metric_models_for(types.SimpleNamespace(name=name), metrics, device=device)
        extractor, clip = models.extractor, models.clip
        extractor_note = clip_note = models.note
        clip_name = clip.config.model_name if kind == "toy" else "stand-in CLIP"
    reference, reference_note = None, ""
    if kind == "toy" and n <= len(load_suite("toy")):      # the toy reference draw, cached as a run caches it
        ref = reference_for(types.SimpleNamespace(name="toy", prompts=suite.prompts), models, None, metrics,
                            progress=progress)
        reference, reference_note = ref.features, ref.description
    if reference is None:      # drawn after the FID features, outside the timing (run_cell_profile)
        reference_note = (f"synthesized: {n:,} Gaussian {extractor.dim}-d features with the samples' per-dimension "
                          "mean and standard deviation, drawn outside the timing (the real reference set is absent "
                          "here; a run reads its reference features from the cache, so what matters is their "
                          "count, dimension and overlap with the samples)")
    return CellWorld(suite, prompts_note, protocol, extractor, extractor_note, clip, clip_name, clip_note, reference,
                     reference_note)


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


class UNetTimer:
    """Time of every forward call of ``module`` (CUDA events on a GPU: no synchronisation per call)."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module, self.cuda = module, device.type == "cuda"
        self.calls = 0
        self._open: list[Any] = []
        self._spans: list[tuple[Any, Any]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> UNetTimer:
        self._handles = [self.module.register_forward_pre_hook(self._before),
                         self.module.register_forward_hook(self._after)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _before(self, *_) -> None:
        self._open.append(device_mark(self.cuda))

    def _after(self, *_) -> None:
        self.calls += 1
        self._spans.append((self._open.pop(), device_mark(self.cuda)))

    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return sum(elapsed_ms(start, end) for start, end in self._spans) / 1000.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def high_water_mb(device: torch.device) -> float:
    """The peak memory so far (since the last reset): ``torch.cuda.max_memory_allocated`` on CUDA,
    else the process's peak resident set size (``getrusage``; Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed_stage(name: str, n: int, device: torch.device, fn: Callable[[], Any], high_water: list[float],
                label: str | None = None) -> tuple[Stage, Any]:
    """Run ``fn`` once, timed (synchronised on CUDA), with its peak memory; ``high_water`` gets the
    peak before the stage (the reset below forgets it) and after it."""
    _sync(device)
    high_water.append(high_water_mb(device))
    reset_ok = reset_peak(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    seconds = time.perf_counter() - start
    peak, kind = read_peak(device, reset_ok)
    high_water.append(high_water_mb(device))
    stage = Stage(name, label or STAGE_LABELS[name], seconds, n / seconds if seconds > 0 else math.inf,
                  peak_memory_mb=peak, peak_memory_kind=kind)
    return stage, result


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def cell_student(method, teacher, steps: int, batching: str):
    """(what samples, where it came from): the teacher for solvers, the released student on toy,
    else an untrained student of the exact architecture."""
    if not method.trains:
        return load_student(method, teacher, steps, batching=batching, progress=False), "teacher"
    if teacher.name == "toy" and released_student_for(method, teacher, steps, StudentPolicy()) is not None:
        return load_student(method, teacher, steps, batching=batching, progress=False), "released"
    return rebatched(profile_student(method, teacher), batching), \
        "untrained (the exact architecture, no training: timing does not depend on weight values)"


def run_cell_profile(spec: CellSpec, progress: bool = True) -> dict:
    """Measure one cell of ``spec``; returns the report (JSON-serialisable)."""
    device, n, method = spec.device, spec.num_images, spec.method
    precision = "fp16" if device.type == "cuda" else "fp32"
    high_water: list[float] = []
    setup: dict[str, float] = {}

    started = time.perf_counter()
    teacher = load_teacher(spec.teacher, device=device, dtype=PRECISIONS[precision])
    reason = unsupported_steps_on(method, teacher, spec.steps)
    if reason:
        raise UsageError(f"{reason}: pick another --steps for --cell")
    guidance = guidance_for(None, method, teacher)
    student, student_source = cell_student(method, teacher, spec.steps, spec.batching)
    setup["teacher_and_student"] = time.perf_counter() - started
    mark = time.perf_counter()
    world = cell_world(spec.teacher, n, device, progress)
    setup["metric_models_and_reference"] = time.perf_counter() - mark
    ctx = SamplingContext(teacher, spec.teacher, device, precision, networks=spec.networks)
    nfe = method.nfe(spec.steps, guidance)

    with tempfile.TemporaryDirectory(prefix="bench-cell-") as tmp:
        folder = Path(tmp) / "samples"

        def sample():
            # a compiled U-Net is not hooked: torch.compile would trace the timer's hooks into its graph
            timed = spec.networks == "eager"
            with UNetTimer(student.denoiser.unet, device) if timed else contextlib.nullcontext() as timer:
                sample_one(ctx, method, world.suite, spec.steps, guidance, spec.seed, folder, spec.batch_size,
                           spec.batching, progress=progress, student=student)
            return timer

        sampling, timer = timed_stage("sampling", n, device, sample, high_water)
        # untimed: the whole stage counts as U-Net time, so the projection scales all of it with the NFE
        unet_seconds = timer.seconds() if timer is not None else sampling.seconds
        sampling.detail = {"unet_seconds": unet_seconds, "other_seconds": sampling.seconds - unet_seconds,
                           "unet_calls": timer.calls if timer is not None else None, "nfe_per_image": nfe,
                           "unet_timed": timer is not None}

        def fid_features():
            files = list_images(folder, n, check_indices=True, take_first=True)
            return extract_features(files, world.extractor, world.protocol, batch_size=FEATURE_BATCH, num_workers=0,
                                    progress=progress, description="samples features")

        features_stage, features = timed_stage("fid_features", n, device, fid_features, high_water,
                                               f"FID features ({world.extractor.name})")
        if world.reference is None:
            world.reference = synthesized_reference(features)

        def clip():
            files = list_images(folder, n, check_indices=True, take_first=True)
            return world.clip.score(files, list(world.suite.prompts), progress=progress).mean_cosine

        clip_stage, clip_value = timed_stage("clip", n, device, clip, high_water,
                                             f"CLIP image + text ({world.clip_name})")

        parts: dict[str, float] = {}

        def metrics():
            mark = time.perf_counter()
            mu, sigma = feature_statistics(features)
            parts["statistics_seconds"] = time.perf_counter() - mark
            mark = time.perf_counter()
            values = {"fid": fid_from_stats(world.reference.mu, world.reference.sigma, mu, sigma)}
            parts["frechet_seconds"] = time.perf_counter() - mark
            mark = time.perf_counter()
            values.update(prdc(world.reference.features, features, nearest_k=NEAREST_K))
            _sync(device)
            parts["prdc_seconds"] = time.perf_counter() - mark
            return values

        metrics_stage, values = timed_stage("metrics", n, device, metrics, high_water)
        metrics_stage.detail = dict(parts)
    stages = [sampling, features_stage, clip_stage, metrics_stage]
    total = sum(s.seconds for s in stages)
    for stage in stages:
        stage.share = stage.seconds / total
    if device.type == "cuda":
        peak = {"mb": max(high_water), "kind": "cuda_max_allocated",
                "note": "torch.cuda.max_memory_allocated since the process started (model loading included)"}
    else:
        peak = {"mb": max(high_water), "kind": "cpu_peak_rss",
                "note": "peak resident set size of the process (getrusage), model loading included"}
    grid = project_grid(stages, n, method, spec.steps, nfe, teacher)
    report = {
        "format": 1,
        "kind": "cell",
        "command": spec.command(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": device_info(device),
        "versions": versions(),
        "teacher": {"name": spec.teacher, "identity": teacher.identity, "resolution": teacher.resolution,
                    "precision": precision},
        "cell": {"method": method.name, "steps": spec.steps, "nfe": nfe, "guidance": guidance,
                 "num_images": n, "batch_size": spec.batch_size, "batching": spec.batching, "seed": spec.seed,
                 "student": student_source, "networks": spec.networks},
        "scoring": {"prompts": world.prompts_note, "image_protocol": world.protocol.as_dict(),
                    "features": world.extractor.describe() | {"note": world.extractor_note},
                    "clip": {"model": world.clip_name, "identity": world.clip.identity,
                             "protocol": world.clip.config.clip_protocol.as_dict(), "note": world.clip_note},
                    "reference": {"count": int(world.reference.features.shape[0]),
                                  "dim": int(world.reference.features.shape[1]), "note": world.reference_note}},
        "values": {"clip": clip_value, **values},
        "random_weights": random_parts(teacher, student_source, world),
        "stages": [dataclasses.asdict(s) for s in stages],
        "total_seconds": total,
        "images_per_s": n / total,
        "peak_memory": peak,
        "setup_seconds": setup,
        "projection": grid,
        "notes": cell_notes(spec, world, student_source),
    }
    return report


# ------------------------------------------------------------------------------------------------
# Projection
# ------------------------------------------------------------------------------------------------


def grid_methods() -> list[str]:
    """The registered distilled methods (the leaderboard's rows; teacher solvers are baselines)."""
    return [name for name in method_names() if get_method_class(name).trains]


def measured_parts(stages: list[Stage]) -> dict[str, float]:
    """The seconds the projection scales: each stage's, the U-Net share of sampling, and the
    Frechet distance and PRDC parts of the metrics."""
    seconds = {s.name: s.seconds for s in stages}
    by_name = {s.name: s for s in stages}
    seconds["unet"] = by_name["sampling"].detail["unet_seconds"]
    seconds["frechet"] = by_name["metrics"].detail["frechet_seconds"]
    seconds["prdc"] = by_name["metrics"].detail["prdc_seconds"]
    return seconds


def cell_seconds(measured: dict[str, float], n: int, nfe0: int, nfe: int, n_suite: int) -> float:
    """Projected seconds of a cell with ``nfe`` evaluations per image on ``n_suite`` images, from
    the parts measured at ``n`` images and ``nfe0`` (:func:`measured_parts`; module docstring):
    with r = n_suite / n, r * ((sampling - unet) + unet * nfe / nfe0 + fid_features + clip
    + (metrics - frechet - prdc)) + frechet + r^2 * prdc."""
    r = n_suite / n
    linear = (measured["sampling"] - measured["unet"] + measured["unet"] * nfe / nfe0 + measured["fid_features"]
              + measured["clip"] + measured["metrics"] - measured["frechet"] - measured["prdc"])
    return r * linear + measured["frechet"] + r * r * measured["prdc"]


def project_grid(stages: list[Stage], n: int, method, steps: int, nfe0: int, teacher) -> dict:
    """Every (method, steps, suite) cell of the full grid, projected from the measured stages."""
    measured = measured_parts(stages)
    paper_configs = teacher.name in SD15_ARCHITECTURE_TEACHERS
    suites = {name: get_suite_spec(name).count for name in GRID_SUITES}
    cells = []
    for name in grid_methods():
        grid_method = get_method_class(name)()
        guidance = guidance_for(None, grid_method, teacher)
        for k in GRID_STEPS:
            reason = strict_steps_reason(grid_method, k) if paper_configs else \
                unsupported_steps_on(grid_method, teacher, k)
            nfe = grid_method.nfe(k, guidance)
            for suite, count in suites.items():
                cells.append({"method": name, "steps": k, "suite": suite, "num_images": count, "nfe": nfe,
                              "guidance": guidance, "skipped": reason or "",
                              "seconds": None if reason else cell_seconds(measured, n, nfe0, nfe, count)})
    run = [c for c in cells if not c["skipped"]]
    return {
        "methods": grid_methods(), "steps": list(GRID_STEPS), "suites": suites,
        "measured": {"method": method.name, "steps": steps, "nfe": nfe0, "num_images": n, "seconds": measured},
        "cells": cells, "cells_run": len(run), "cells_skipped": len(cells) - len(run),
        "total_seconds": sum(c["seconds"] for c in run),
        "assumptions": [
            "U-Net time scales with the NFE per image (nfe_m(k) / nfe of the measured cell): every method samples "
            "the same U-Net architecture, and a CFG pair is one call of twice the rows",
            "the rest of sampling (text encoding, VAE decode, PNG encode + write), the FID and CLIP features and the "
            "FID statistics scale with the number of images N; the Frechet distance (a matrix square root of "
            "dim x dim) costs the same at any N; PRDC (pairwise distances of N x N) scales with N^2, with a "
            "reference of N features (coco2014-30k's has 40,504 images: about 1.4x more PRDC work there)",
            "every suite costs what the measured one costs per image (mjhq-5k crops to 512 px, the coco suites to 256 "
            "px: its FID preprocessing is a little slower)",
            "skipped cells: " + ("the step counts the methods' paper configs do not serve (what a real SD-1.5 run "
                                 "skips)" if paper_configs else f"the step counts {teacher.name}'s schedules do not "
                                 "serve (what `bench run` skips on it)"),
            "model loading and the reference features are not counted (once per run / cached once per suite)",
        ],
    }


def random_parts(teacher, student_source: str, world: CellWorld) -> list[str]:
    """The networks of this cell that have random weights (its metric values then mean nothing)."""
    parts = []
    if str(teacher.identity.get("weights", "")).startswith("random-init"):
        parts.append(f"teacher {teacher.name}")
    if student_source.startswith("untrained"):
        parts.append("student")
    for name, identity in (("FID features", world.extractor.identity), ("CLIP", world.clip.identity)):
        if identity.startswith(("random-init", "standin-random-init")):
            parts.append(name)
    return parts


def cell_notes(spec: CellSpec, world: CellWorld, student_source: str) -> list[str]:
    notes = [f"prompts: {world.prompts_note}", f"FID features: {world.extractor_note}",
             f"CLIP: {world.clip_note}", f"reference: {world.reference_note}",
             f"student: {student_source}",
             "stages are wall clock (torch.cuda.synchronize around each on CUDA); the U-Net share of sampling is "
             "timed by forward hooks (CUDA events on a GPU)",
             "the sample features' cache write of a real run (an .npz per folder) is left out"]
    if spec.device.type == "cpu":
        notes.append("CPU run: the harness samples in fp32; a GPU run samples in fp16 (the SD-1.5 VAE decodes "
                     "in fp32)")
    if spec.networks != "eager":
        notes.append(f"--networks {spec.networks}: the compiled U-Net is not hooked, so the projection scales the "
                     "whole sampling stage (compilation included) with the NFE")
    return notes


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:,.1f} h"


def _rate(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def render_stage_table(report: dict) -> str:
    rows = [("stage", "seconds", "images/s", "share", "peak MiB")]
    for i, s in enumerate(report["stages"], 1):
        rows.append((f"{i}. {s['label']}", f"{s['seconds']:.2f}", _rate(s['images_per_s']),
                     f"{100 * s['share']:.1f} %", _mib(s["peak_memory_mb"])))
        d, total = s["detail"], report["total_seconds"]
        timed_unet = s["name"] == "sampling" and d.get("unet_timed", True)   # not under a compiled --networks
        parts = [(f"U-Net ({d['unet_calls']:,} calls)", d["unet_seconds"])] if timed_unet else \
            [("Frechet distance", d["frechet_seconds"]), ("PRDC", d["prdc_seconds"])] if s["name"] == "metrics" else []
        rows += [(f"   of which {what}", f"{sec:.2f}", "", f"{100 * sec / total:.1f} %", "") for what, sec in parts]
    rows.append(("total", f"{report['total_seconds']:.2f}", _rate(report['images_per_s']), "100.0 %",
                 _mib(report["peak_memory"]["mb"]) + f" ({report['peak_memory']['kind']})"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


def render_grid_table(grid: dict) -> str:
    """Methods x steps, each summed over the suites; skipped cells as "-"."""
    steps = grid["steps"]
    header = "| method | " + " | ".join(f"{k} step{'s' * (k > 1)}" for k in steps) + " | all |"
    lines = [header, "|:---|" + "---:|" * (len(steps) + 1)]
    for name in grid["methods"]:
        mine = [c for c in grid["cells"] if c["method"] == name]
        per_step = []
        for k in steps:
            run = [c["seconds"] for c in mine if c["steps"] == k and c["seconds"] is not None]
            per_step.append(duration(sum(run)) if run else "-")
        total = sum(c["seconds"] for c in mine if c["seconds"] is not None)
        lines.append(f"| `{name}` | " + " | ".join(per_step) + f" | {duration(total)} |")
    lines.append("| **all** |" + " |" * len(steps) + f" **{duration(grid['total_seconds'])}** |")
    per_suite = {suite: sum(c["seconds"] for c in grid["cells"] if c["suite"] == suite and c["seconds"] is not None)
                 for suite in grid["suites"]}
    return "\n".join(lines) + "\n\nBy suite: " + ", ".join(f"{k} {duration(v)}" for k, v in per_suite.items()) + "."


def grid_headline(grid: dict) -> str:
    m = grid["measured"]
    return (f"projected full grid ({len(grid['methods'])} methods x {len(grid['steps'])} step counts x "
            f"{len(grid['suites'])} suites: {grid['cells_run']} cells run, {grid['cells_skipped']} skipped): "
            f"{duration(grid['total_seconds'])} ({grid['total_seconds']:,.0f} s), from {m['method']} at "
            f"{m['steps']} step{'s' * (m['steps'] != 1)} (NFE {m['nfe']}), N = {m['num_images']:,}")


def render_cell_summary(report: dict) -> str:
    c, t = report["cell"], report["teacher"]
    head = (f"cell: {c['method']} {c['steps']} step(s) (NFE {c['nfe']}, guidance {c['guidance']:g}), "
            f"teacher {t['name']} ({t['precision']}), N = {c['num_images']:,}, batch {c['batch_size']} "
            f"({c['batching']}{', ' + c['networks'] if c.get('networks', 'eager') != 'eager' else ''}), "
            f"{report['device']['name']}, {report['device']['torch_threads']} torch threads")
    return "\n".join([head, "", render_stage_table(report), "", grid_headline(report["projection"])])


def render_cell_markdown(report: dict) -> str:
    c, grid = report["cell"], report["projection"]
    values = ", ".join(f"{k} {v:.4g}" for k, v in report["values"].items())
    random = report["random_weights"]
    meaning = f"meaningless: random weights in {', '.join(random)}" if random else "trained networks"
    lines = [f"# One leaderboard cell, end to end: {report['device']['name']}", "",
             f"Command: `{report['command']}`", "",
             f"Created {report['created']}; torch {report['versions']['torch']}, diffusers "
             f"{report['versions']['diffusers']}; {report['device']['torch_threads']} torch threads.", "",
             "```text", render_cell_summary(report), "```", "",
             f"Values of this cell (N = {c['num_images']:,}; {meaning}): {values}.", "",
             "Setup, not part of the cell (once per run): "
             + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in report["setup_seconds"].items()) + ".", "",
             "## Projected full grid", "", grid_headline(grid) + ".", "", render_grid_table(grid), "",
             "Assumptions:", ""]
    lines += [f"- {a}" for a in grid["assumptions"]]
    skipped = sorted({(x["method"], x["steps"], x["skipped"]) for x in grid["cells"] if x["skipped"]})
    if skipped:
        lines += ["", "Skipped cells:", ""] + [f"- `{m}` {k} steps: {why}" for m, k, why in skipped]
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def write_cell_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """``<out>/cell-<device-slug>.md`` and ``.json``, each written atomically."""
    stem = f"cell-{device_slug(report['device']['name'])}"
    md_path, json_path = Path(out) / f"{stem}.md", Path(out) / f"{stem}.json"
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_cell_markdown(report))
    return md_path, json_path


__all__ = ["CellSpec", "run_cell_profile", "cell_seconds", "project_grid", "write_cell_report",
           "render_cell_summary", "grid_methods", "RandomFIDInception"]
