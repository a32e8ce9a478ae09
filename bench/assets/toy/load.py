"""Load the committed toy models, hash-checked (see :mod:`bench.assets.toy.checkpoints`).

* :func:`load_toy_feature_net`: the FID/PRDC feature extractor (clean-fid custom extractor contract).
* :func:`load_toy_clip`: the open_clip model with its preprocess and tokenizer, for CLIP score.
* :func:`load_toy_teacher_parts`: the teacher's diffusers U-Net, transformers text encoder,
  transformers ``CLIPTokenizer``, latent codec and SD-1.5 scheduler config.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench.assets.tokenizer import build_clip_tokenizer
from bench.assets.toy.checkpoints import (
    ToyCheckpointError,
    load_toy_checkpoint,
    rebuild_command,
)
from bench.assets.toy.models import (
    FeatureNetConfig,
    PixelCodec,
    ToyClipConfig,
    ToyFeatureNet,
    ToyTeacherConfig,
    build_toy_clip,
    build_toy_text_encoder,
    build_toy_unet,
    toy_clip_preprocess,
    toy_clip_tokenizer,
)
from bench.assets.toy.world import ToyWorldConfig
from methods.diffusion_math import SD15_SCHEDULER_CONFIG

logger = logging.getLogger(__name__)


def _identity(entry: dict[str, Any]) -> str:
    """A short stable name of a checkpoint's weights for fingerprints: its files' hashes."""
    hashes = [info["sha256"] for _, info in sorted(entry["files"].items())]
    return "+".join(h[:16] for h in hashes)


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ToyCheckpointError(
            f"toy {what} checkpoint does not fit its config (missing {list(missing)[:3]}, unexpected "
            f"{list(unexpected)[:3]}); rebuild it with `{rebuild_command(what)}`")


def load_toy_world(root: Path | None = None, name: str = "teacher") -> ToyWorldConfig:
    """The world config a toy model was trained on (as recorded in the manifest)."""
    entry = load_toy_checkpoint(name, root).entry
    values = entry["world"]
    return ToyWorldConfig(**{k: _tuples(v) for k, v in values.items()})


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load_toy_feature_net(root: Path | None = None) -> ToyFeatureNet:
    ckpt = load_toy_checkpoint("features", root)
    net = ToyFeatureNet(FeatureNetConfig.from_dict(ckpt.entry["config"]))
    _load_strict(net, ckpt.tensors["features.safetensors"], "features")
    net.identity = _identity(ckpt.entry)  # type: ignore[attr-defined]
    return net.eval().requires_grad_(False)


@dataclass
class ToyClip:
    """The toy CLIP with what ``bench.scoring.metrics.clip_score.ClipScorer.from_model`` needs."""

    model: nn.Module
    preprocess: Callable  # PIL image -> (3, H, W) tensor
    tokenizer: Callable  # list[str] -> (B, 77) long tensor
    identity: str
    config: ToyClipConfig


def load_toy_clip(root: Path | None = None) -> ToyClip:
    ckpt = load_toy_checkpoint("clip", root)
    config = ToyClipConfig.from_dict(ckpt.entry["config"])
    model = build_toy_clip(config)
    _load_strict(model, ckpt.tensors["clip.safetensors"], "clip")
    model.eval().requires_grad_(False)
    return ToyClip(model, toy_clip_preprocess(config), toy_clip_tokenizer(config), _identity(ckpt.entry), config)


@dataclass
class ToyTeacherParts:
    """The toy teacher's components, the same classes as Stable Diffusion 1.5's."""

    unet: nn.Module  # diffusers UNet2DConditionModel
    text_encoder: nn.Module  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer (bench.assets.tokenizer.build_clip_tokenizer)
    codec: PixelCodec
    scheduler_config: dict  # SD-1.5's
    resolution: int
    default_guidance_scale: float
    identity: str
    config: ToyTeacherConfig

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.codec.downsample
        return (self.codec.channels, side, side)


def load_toy_teacher_parts(root: Path | None = None) -> ToyTeacherParts:
    ckpt = load_toy_checkpoint("teacher", root)
    config = ToyTeacherConfig.from_dict(ckpt.entry["config"])
    unet = build_toy_unet(config.unet)
    _load_strict(unet, ckpt.tensors["teacher_unet.safetensors"], "teacher")
    text_encoder = build_toy_text_encoder(config.text_encoder)
    _load_strict(text_encoder, ckpt.tensors["teacher_text_encoder.safetensors"], "teacher")
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return ToyTeacherParts(unet=unet, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(),
                           codec=config.codec(), scheduler_config=dict(SD15_SCHEDULER_CONFIG),
                           resolution=config.resolution, default_guidance_scale=config.default_guidance_scale,
                           identity=_identity(ckpt.entry), config=config)
