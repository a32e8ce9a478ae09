"""Train the toy world's models from scratch with a fixed seed and write them to ``bench/data/toy``.

    python -m bench toy train [--what teacher|features|clip|students|all] [--out DIR] [--seed 0] [--steps N]

Every model trains on fresh draws of the world (item ``i`` of training step ``s`` comes from the
generator seeded by (data seed, s * batch + i)), never on the ``toy`` suite's seeds. The result is a
pure function of the seed, the configs and the library versions (torch CPU kernels are
deterministic for these ops with a fixed thread count). Checkpoints are stored as float16
safetensors; ``hashes.json`` records each file's sha256, the configs, the training time and the
machine.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.assets.tokenizer import build_clip_tokenizer
from bench.assets.toy.checkpoints import (
    TOY_MODELS,
    save_state_dict,
    write_model_entry,
)
from bench.assets.toy.models import (
    FeatureNetConfig,
    ToyClipConfig,
    ToyFeatureNet,
    ToyTeacherConfig,
    build_toy_clip,
    build_toy_text_encoder,
    build_toy_unet,
    clip_images_to_tensor,
    images_to_unit_range,
    toy_clip_tokenizer,
)
from bench.assets.toy.world import ATTRIBUTES, ToyWorldConfig, draw_scenes, render_batch
from bench.core.machine import machine_record
from methods.diffusion_math import NoiseSchedule, add_noise

logger = logging.getLogger(__name__)

#: Data seeds of the training draws; disjoint from the toy suite's prompt and floor seeds.
FEATURES_DATA_SEED = 101
CLIP_DATA_SEED = 202
TEACHER_DATA_SEED = 303


@dataclass(frozen=True)
class FeatureTrainConfig:
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    pixel_noise: float = 0.03  # Gaussian noise added to inputs in [-1, 1] (robustness to samples)
    calibration_images: int = 5000  # real images that set the output feature standardisation
    eval_images: int = 2000  # held-out images for the recorded attribute accuracy
    model: FeatureNetConfig = field(default_factory=FeatureNetConfig)


@dataclass(frozen=True)
class ClipTrainConfig:
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    eval_images: int = 1000  # held-out pairs for the recorded own- vs shuffled-caption scores
    model: ToyClipConfig = field(default_factory=ToyClipConfig)


@dataclass(frozen=True)
class TeacherTrainConfig:
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1  # probability of training on the empty caption (classifier-free guidance)
    # Min-SNR-gamma loss weight for epsilon prediction, min(SNR, gamma) / SNR (Hang et al. 2023,
    # "Efficient Diffusion Training via Min-SNR Weighting Strategy", Eq. 9); None: plain MSE.
    min_snr_gamma: float | None = 5.0
    train_text_encoder: bool = True
    grad_clip: float = 1.0
    model: ToyTeacherConfig = field(default_factory=ToyTeacherConfig)


# ------------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------------


def _world_batch(world: ToyWorldConfig, data_seed: int, step: int, batch_size: int):
    scenes, captions = draw_scenes(data_seed, batch_size, world, start=step * batch_size)
    images = torch.from_numpy(render_batch(scenes, world))
    return scenes, captions, images


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Progress:
    """Logs loss every ``every`` steps with throughput (library code: logging, no prints)."""

    def __init__(self, name: str, total: int, every: int = 100):
        self.name, self.total, self.every = name, total, every
        self.start = time.perf_counter()
        self.losses: list[float] = []

    def update(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            window = self.losses[-self.every:]
            elapsed = time.perf_counter() - self.start
            logger.info("%s step %d/%d loss %.4f (%.1fs, %.2f steps/s)", self.name, step + 1, self.total,
                        sum(window) / len(window), elapsed, (step + 1) / elapsed)


class PromptIds:
    """Caption -> token ids (B, 77) with a cache (the toy vocabulary is small)."""

    def __init__(self, tokenize: Callable[[list[str]], torch.Tensor]):
        self.tokenize = tokenize
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            for text, ids in zip(missing, self.tokenize(missing)):
                self.cache[text] = ids
        return torch.stack([self.cache[c] for c in captions])


def teacher_tokenizer():
    """The SD-style tokenizer (transformers ``CLIPTokenizer``) the toy teacher is trained and run with."""
    return build_clip_tokenizer()


def sd_token_ids(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Token ids exactly as diffusers' StableDiffusionPipeline makes them (max_length padding)."""
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


# ------------------------------------------------------------------------------------------------
# Feature network
# ------------------------------------------------------------------------------------------------


def train_features(config: FeatureTrainConfig, world: ToyWorldConfig, seed: int = 0) -> tuple[ToyFeatureNet, dict]:
    """Multi-head attribute classifier on world images; returns the model and a training record."""
    torch.manual_seed(seed)
    model = ToyFeatureNet(config.model)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    progress = _Progress("features", config.steps)
    data_seed = FEATURES_DATA_SEED + 1000 * seed
    model.train()
    for step in range(config.steps):
        scenes, _, images = _world_batch(world, data_seed, step, config.batch_size)
        labels = _attribute_labels(scenes, world)
        x = images_to_unit_range(images)
        x = x + config.pixel_noise * torch.randn(x.shape, generator=gen)
        for group in opt.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config.steps, 100)
        logits = [head(F.silu(model.features(x))) for head in model.heads]
        loss = sum(F.cross_entropy(lg, labels[:, k]) for k, lg in enumerate(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress.update(step, loss.item())
    model.eval()
    _, _, calibration = _world_batch(world, data_seed + 2, 0, config.calibration_images)
    model.calibrate(calibration.permute(0, 3, 1, 2).float())
    accuracy = evaluate_feature_accuracy(model, world, seed=data_seed + 1, n=config.eval_images)
    logger.info("features: held-out attribute accuracy %s", accuracy)
    return model, {"final_loss": float(np.mean(progress.losses[-50:])), "heldout_accuracy": accuracy}


def _attribute_labels(scenes, world: ToyWorldConfig) -> torch.Tensor:
    tables = [world.values(a) for a in ATTRIBUTES]
    return torch.tensor([[table.index(getattr(s, a)) for a, table in zip(ATTRIBUTES, tables)] for s in scenes])


@torch.no_grad()
def evaluate_feature_accuracy(model: ToyFeatureNet, world: ToyWorldConfig, seed: int, n: int = 2000) -> dict[str, float]:
    scenes, _ = draw_scenes(seed, n, world)
    images = torch.from_numpy(render_batch(scenes, world)).permute(0, 3, 1, 2).float()
    labels = _attribute_labels(scenes, world)
    logits = model.logits(images)
    return {a: round(float((lg.argmax(1) == labels[:, k]).float().mean()), 4)
            for k, (a, lg) in enumerate(zip(ATTRIBUTES, logits))}


# ------------------------------------------------------------------------------------------------
# Toy CLIP
# ------------------------------------------------------------------------------------------------


def train_clip(config: ClipTrainConfig, world: ToyWorldConfig, seed: int = 0) -> tuple[nn.Module, dict]:
    """Contrastive (InfoNCE) training on world pairs. Captions are often underspecified, so one
    batch holds several pairs with the same caption: the targets treat every identical caption as a
    positive (uniform over them) instead of as a negative."""
    if config.model.image_size != world.resolution:
        raise ValueError("toy CLIP image_size must equal the world resolution")
    torch.manual_seed(seed)
    model = build_toy_clip(config.model)
    tokenizer = toy_clip_tokenizer(config.model)
    ids_of = PromptIds(lambda texts: tokenizer(texts))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    progress = _Progress("clip", config.steps)
    data_seed = CLIP_DATA_SEED + 1000 * seed
    model.train()
    for step in range(config.steps):
        _, captions, images = _world_batch(world, data_seed, step, config.batch_size)
        for group in opt.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config.steps, 100)
        image_features = model.encode_image(clip_images_to_tensor(images, config.model), normalize=True)
        text_features = model.encode_text(ids_of(captions), normalize=True)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
        targets = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        progress.update(step, loss.item())
    model.eval()
    scores = evaluate_clip_alignment(model, config.model, world, seed=data_seed + 1, n=config.eval_images)
    logger.info("clip: held-out scores %s", scores)
    return model, {"final_loss": float(np.mean(progress.losses[-50:])), **scores}


@torch.no_grad()
def evaluate_clip_alignment(model: nn.Module, config: ToyClipConfig, world: ToyWorldConfig, seed: int,
                            n: int = 1000) -> dict[str, float]:
    """Mean cosine of images with their own captions vs. with a shuffled (derangement) caption."""
    _, captions, images = _world_batch(world, seed, 0, n)
    tokenizer = toy_clip_tokenizer(config)
    image_features = model.encode_image(clip_images_to_tensor(images, config), normalize=True)
    text_features = model.encode_text(tokenizer(captions), normalize=True)
    own = (image_features * text_features).sum(1)
    shuffled = (image_features * text_features.roll(1, dims=0)).sum(1)
    return {"clip_own_caption": round(float(own.mean()), 4),
            "clip_shuffled_caption": round(float(shuffled.mean()), 4)}


# ------------------------------------------------------------------------------------------------
# Toy teacher
# ------------------------------------------------------------------------------------------------


def train_teacher(config: TeacherTrainConfig, world: ToyWorldConfig, seed: int = 0,
                  tokenize: Callable[[list[str]], torch.Tensor] | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """Epsilon-prediction training on the SD-1.5 schedule with caption dropout for CFG; returns the
    EMA U-Net, the (EMA) text encoder and a training record."""
    model_cfg = config.model
    codec = model_cfg.codec()
    if model_cfg.resolution != world.resolution or model_cfg.unet.sample_size * codec.downsample != world.resolution:
        raise ValueError("toy teacher resolution (U-Net sample_size x codec factor) must equal the world resolution")
    if model_cfg.unet.in_channels != codec.channels or model_cfg.unet.out_channels != codec.channels:
        raise ValueError(f"toy teacher U-Net needs {codec.channels} in/out channels for codec factor {codec.downsample}")
    torch.manual_seed(seed)
    unet = build_toy_unet(model_cfg.unet)
    text_encoder = build_toy_text_encoder(model_cfg.text_encoder)
    if tokenize is None:
        tokenizer = teacher_tokenizer()
        tokenize = lambda texts: sd_token_ids(tokenizer, texts)  # noqa: E731
    ids_of = PromptIds(tokenize)
    params = list(unet.parameters())
    if config.train_text_encoder:
        params += list(text_encoder.parameters())
    else:
        text_encoder.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    ema = [p.detach().clone() for p in params]
    schedule = NoiseSchedule.sd15()
    abar = schedule.alphas_cumprod.float()
    gen = torch.Generator().manual_seed(seed)
    progress = _Progress("teacher", config.steps)
    data_seed = TEACHER_DATA_SEED + 1000 * seed
    unet.train()
    text_encoder.train(config.train_text_encoder)
    for step in range(config.steps):
        _, captions, images = _world_batch(world, data_seed, step, config.batch_size)
        x0 = codec.encode(images_to_unit_range(images))
        drop = torch.rand(len(captions), generator=gen) < config.cfg_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        t = torch.randint(0, schedule.num_train_timesteps, (len(captions),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t]
        x_t = add_noise(x0, eps, a.sqrt(), (1 - a).sqrt())
        with torch.set_grad_enabled(config.train_text_encoder):
            text = text_encoder(ids_of(captions)).last_hidden_state
        pred = unet(x_t, t, encoder_hidden_states=text).sample
        per_sample = (pred - eps).pow(2).mean(dim=(1, 2, 3))
        if config.min_snr_gamma is not None:
            snr = a / (1 - a)
            per_sample = per_sample * snr.clamp(max=config.min_snr_gamma) / snr
        loss = per_sample.mean()
        for group in opt.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config.steps, config.warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        progress.update(step, loss.item())
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval()
    text_encoder.eval()
    return unet, text_encoder, {"final_loss": float(np.mean(progress.losses[-200:]))}


# ------------------------------------------------------------------------------------------------
# Saving and the command line
# ------------------------------------------------------------------------------------------------


def _versions() -> dict:
    import diffusers
    import open_clip
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "open_clip": open_clip.__version__,
            "numpy": np.__version__}


def _record(name: str, files: dict[str, str], out: Path, config: dict, train_config, world: ToyWorldConfig,
            seed: int, seconds: float, extra: dict) -> None:
    train_dict = asdict(train_config)
    train_dict.pop("model", None)
    entry = {
        "files": {f: {"sha256": digest, "bytes": (out / f).stat().st_size} for f, digest in files.items()},
        "config": config,
        "world": world.to_dict(),
        "training": {"seed": seed, **train_dict, "seconds": round(seconds, 1), **extra},
        "versions": _versions(),
        "machine": machine_record(),
        "rebuild": f"python -m bench toy train --what {name}",
    }
    write_model_entry(name, entry, out)
    logger.info("toy %s: %s written to %s (%.0fs)", name, ", ".join(files), out, seconds)


def build_and_save(name: str, out: Path, seed: int = 0, steps: int | None = None,
                   world: ToyWorldConfig | None = None, overrides: dict | None = None) -> dict:
    """Train one toy model from scratch and write its checkpoint files and manifest entry.
    ``steps`` and ``overrides`` (fields of the model's train config) shorten it for quick checks."""
    overrides = {**(overrides or {}), **({"steps": steps} if steps is not None else {})}
    world = world or ToyWorldConfig()
    out = Path(out)
    start, cpu_start = time.perf_counter(), time.process_time()
    if name == "features":
        config = FeatureTrainConfig(model=FeatureNetConfig.for_world(world))
        config = replace(config, **overrides)
        model, extra = train_features(config, world, seed)
        files = {"features.safetensors": save_state_dict(out / "features.safetensors", model.state_dict())}
        model_config = config.model.to_dict()
    elif name == "clip":
        config = ClipTrainConfig(model=ToyClipConfig(image_size=world.resolution))
        config = replace(config, **overrides)
        model, extra = train_clip(config, world, seed)
        files = {"clip.safetensors": save_state_dict(out / "clip.safetensors", model.state_dict())}
        model_config = config.model.to_dict()
    elif name == "teacher":
        config = TeacherTrainConfig()
        config = replace(config, **overrides)
        unet, text_encoder, extra = train_teacher(config, world, seed)
        files = {
            "teacher_unet.safetensors": save_state_dict(out / "teacher_unet.safetensors", unet.state_dict()),
            "teacher_text_encoder.safetensors": save_state_dict(out / "teacher_text_encoder.safetensors",
                                                                text_encoder.state_dict()),
        }
        model_config = config.model.to_dict()
    else:
        raise ValueError(f"unknown toy model {name!r}; choose one of {', '.join(TOY_MODELS)}")
    seconds = time.perf_counter() - start
    extra = {**extra, "cpu_seconds": round(time.process_time() - cpu_start, 1)}
    _record(name, files, out, model_config, config, world, seed, seconds, extra)
    return {"seconds": seconds, **extra}


__all__ = ["build_and_save", "train_features", "train_clip", "train_teacher"]
