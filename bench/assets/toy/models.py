"""The toy world's models, built from dataclass configs: the teacher and the two metric models.

* :class:`ToyFeatureNet`: the image feature network for FID and precision/recall/density/coverage.
  It follows clean-fid's custom feature-extractor contract (``model(batch)`` with ``batch`` a float
  tensor (B, 3, 299, 299) in 0..255, as clean-fid's "clean" resize hands it over) and returns
  (B, D) features. It resizes to the world resolution inside, so images at their native size work
  too (see ``ToyFeatureNet.prepare``). Trained as a multi-head classifier of the world's attributes, its features measure the
  factors the world varies.
* :func:`build_toy_clip`: a small ``open_clip.CLIP`` built from a custom config (ViT image tower at
  the world resolution, text tower with the real CLIP vocabulary and context length 77), trained
  contrastively on world image-caption pairs, for CLIP score.
* The toy teacher: the component classes of Stable Diffusion 1.5 (diffusers
  ``UNet2DConditionModel``, transformers ``CLIPTextModel``), epsilon prediction, the SD-1.5 noise
  schedule; its latent space is the pixels themselves (:class:`PixelCodec`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.assets.toy.world import ATTRIBUTES, ToyWorldConfig

Tensor = torch.Tensor


def _from_dict(cls, values: dict[str, Any]):
    """Rebuild a (flat) config dataclass from its ``asdict`` form, tuples restored."""
    kwargs = {}
    for f in fields(cls):
        if f.name in values:
            value = values[f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------------
# Image feature network (FID / PRDC)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureNetConfig:
    """A small CNN at the world resolution: two stride-2 stages, a flattened spatial map (so the
    features keep position), a ``feature_dim`` embedding and one linear head per attribute."""

    resolution: int = 16
    widths: tuple[int, ...] = (32, 64, 64)
    feature_dim: int = 64
    num_classes: tuple[int, ...] = (2, 6, 4, 9, 3)  # per attribute, in ATTRIBUTES order

    @classmethod
    def for_world(cls, world: ToyWorldConfig, **overrides: Any) -> "FeatureNetConfig":
        counts = tuple(len(world.values(a)) for a in ATTRIBUTES)
        return cls(resolution=world.resolution, num_classes=counts, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FeatureNetConfig":
        return _from_dict(cls, values)


class ToyFeatureNet(nn.Module):
    """Image features of the toy world for FID/PRDC (clean-fid custom feature-extractor contract)."""

    def __init__(self, config: FeatureNetConfig = FeatureNetConfig()):
        super().__init__()
        self.config = config
        w0, w1, w2 = config.widths
        self.body = nn.Sequential(
            nn.Conv2d(3, w0, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w0, w0, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w0, w1, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w1, w1, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w1, w2, 3, stride=2, padding=1), nn.SiLU(),
        )
        side = config.resolution // 4
        self.embed = nn.Linear(w2 * side * side, config.feature_dim)
        self.heads = nn.ModuleList(nn.Linear(config.feature_dim, k) for k in config.num_classes)
        # Standardisation of the output features, calibrated on real world images after training
        # (mean 0, unit variance per dimension), so FID reads in units of the real spread.
        self.register_buffer("feature_mean", torch.zeros(config.feature_dim))
        self.register_buffer("feature_std", torch.ones(config.feature_dim))

    def prepare(self, images: Tensor) -> Tensor:
        """float (B, 3, H, W) in 0..255 at any size -> (B, 3, res, res) in [-1, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        x = images.float()
        res = self.config.resolution
        height, width = x.shape[-2:]
        if (height, width) != (res, res):
            if height < res or width < res:
                raise ValueError(f"images smaller than the world resolution {res}: {height}x{width}")
            # Sample at the centres of the world's pixels: clean-fid upsamples the world images to
            # 299x299 (PIL bicubic, no quantisation), and bicubic interpolation reproduces a source
            # pixel at its centre, so this inverts that resize almost exactly (mean error ~0.1/255),
            # where an antialiased downsample would blur every image (~2/255).
            rows = ((torch.arange(res, device=x.device) + 0.5) * height / res).floor().long()
            cols = ((torch.arange(res, device=x.device) + 0.5) * width / res).floor().long()
            x = x.index_select(2, rows).index_select(3, cols)
        return x / 127.5 - 1.0

    def features(self, x: Tensor) -> Tensor:
        """Features of images already prepared (in [-1, 1] at the world resolution)."""
        return self.embed(self.body(x).flatten(1))

    def forward(self, images: Tensor) -> Tensor:
        """clean-fid contract: float (B, 3, 299, 299) (or any size) in 0..255 -> (B, feature_dim),
        standardised with the calibration of real images."""
        return (self.features(self.prepare(images)) - self.feature_mean) / self.feature_std

    def logits(self, images: Tensor) -> list[Tensor]:
        """One (B, k) logit tensor per attribute, in ATTRIBUTES order (images as in forward)."""
        feats = self.features(self.prepare(images))
        return [head(F.silu(feats)) for head in self.heads]

    @torch.no_grad()
    def attribute_frequencies(self, images: Tensor) -> dict[str, Tensor]:
        """Per attribute, the share of ``images`` (as in forward) classified as each of its values
        (in the world's order): where a sampler's mode coverage goes wrong, e.g. too many black
        backgrounds."""
        return {attribute: torch.bincount(logits.argmax(1), minlength=logits.shape[1]).float() / len(images)
                for attribute, logits in zip(ATTRIBUTES, self.logits(images))}

    @torch.no_grad()
    def calibrate(self, images: Tensor) -> None:
        """Set the output standardisation from real images (float (N, 3, H, W) in 0..255)."""
        feats = self.features(self.prepare(images))
        self.feature_mean.copy_(feats.mean(0))
        self.feature_std.copy_(feats.std(0).clamp(min=1e-6))


# ------------------------------------------------------------------------------------------------
# Toy CLIP (open_clip, custom config)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyClipConfig:
    """A tiny open_clip CLIP: ViT image tower at the world resolution, text tower with CLIP's BPE
    vocabulary (49408) and context length 77, as open_clip's default tokenizer produces."""

    embed_dim: int = 64
    image_size: int = 16
    patch_size: int = 4
    vision_width: int = 64
    vision_layers: int = 2
    vision_head_width: int = 32
    text_width: int = 32
    text_heads: int = 2
    text_layers: int = 2
    context_length: int = 77
    vocab_size: int = 49408
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ToyClipConfig":
        return _from_dict(cls, values)


def build_toy_clip(config: ToyClipConfig = ToyClipConfig()) -> nn.Module:
    """An ``open_clip.CLIP`` built directly from the config (random weights)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=config.vision_layers, width=config.vision_width,
                           head_width=config.vision_head_width, patch_size=config.patch_size,
                           image_size=config.image_size)
    text = CLIPTextCfg(context_length=config.context_length, vocab_size=config.vocab_size,
                       width=config.text_width, heads=config.text_heads, layers=config.text_layers)
    return CLIP(embed_dim=config.embed_dim, vision_cfg=vision, text_cfg=text)


def toy_clip_preprocess(config: ToyClipConfig = ToyClipConfig()):
    """open_clip's own eval transform (resize, centre crop, to tensor, normalise) for PIL images."""
    from open_clip.transform import image_transform

    return image_transform(config.image_size, is_train=False, mean=config.image_mean, std=config.image_std)


def toy_clip_tokenizer(config: ToyClipConfig = ToyClipConfig()):
    """open_clip's default BPE tokenizer (shipped inside the package: no download)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=config.context_length)


def clip_images_to_tensor(images_uint8: Tensor, config: ToyClipConfig = ToyClipConfig()) -> Tensor:
    """uint8 (B, H, W, 3) at the CLIP image size -> normalised float (B, 3, H, W), equal to what
    :func:`toy_clip_preprocess` makes of the same images (a fast path for training)."""
    x = images_uint8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------------------
# Toy teacher (SD-1.5 component classes)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyUNetConfig:
    """``UNet2DConditionModel`` arguments of the toy teacher: pixel space 16x16x3, three levels
    (16, 8, 4) of widths (16, 32, 64), one ResNet per level, cross-attention at the 4x4 level and
    in the mid block. Measured alternatives (2,000 training steps each, 2 CPU cores): the same U-Net on 8x8x12
    space-to-depth latents is ~1.5x faster but learns much worse (FID at 50 steps 12.8 vs 7.6 after
    2,000 steps); 32x32 pixels cost ~6x more per image."""

    sample_size: int = 16
    in_channels: int = 3
    out_channels: int = 3
    layers_per_block: int = 1
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    cross_attention_dim: int = 64
    attention_head_dim: int = 16
    norm_num_groups: int = 8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ToyUNetConfig":
        return _from_dict(cls, values)


@dataclass(frozen=True)
class ToyTextEncoderConfig:
    """``CLIPTextConfig`` arguments: SD-1.5's text encoder class, tiny widths, the real vocabulary
    and context length so that SD's tokenizer (transformers ``CLIPTokenizer``) drives it."""

    vocab_size: int = 49408
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 49407

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ToyTextEncoderConfig":
        return _from_dict(cls, values)


@dataclass(frozen=True)
class ToyTeacherConfig:
    unet: ToyUNetConfig = field(default_factory=ToyUNetConfig)
    text_encoder: ToyTextEncoderConfig = field(default_factory=ToyTextEncoderConfig)
    codec_factor: int = 1  # latents: pixels in [-1, 1], space-to-depth by this factor (PixelCodec)
    resolution: int = 16
    default_guidance_scale: float = 3.0  # diffusers convention (g = 1: no guidance)

    def codec(self) -> PixelCodec:
        return PixelCodec(self.codec_factor)

    def to_dict(self) -> dict:
        return {"unet": self.unet.to_dict(), "text_encoder": self.text_encoder.to_dict(),
                "codec_factor": self.codec_factor, "resolution": self.resolution,
                "default_guidance_scale": self.default_guidance_scale}

    @classmethod
    def from_dict(cls, values: dict) -> "ToyTeacherConfig":
        return cls(unet=ToyUNetConfig.from_dict(values["unet"]),
                   text_encoder=ToyTextEncoderConfig.from_dict(values["text_encoder"]),
                   codec_factor=values["codec_factor"], resolution=values["resolution"],
                   default_guidance_scale=values["default_guidance_scale"])


def build_toy_unet(config: ToyUNetConfig = ToyUNetConfig()) -> nn.Module:
    from diffusers import UNet2DConditionModel

    kwargs = config.to_dict()
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        kwargs[key] = tuple(kwargs[key])
    return UNet2DConditionModel(**kwargs)


def build_toy_text_encoder(config: ToyTextEncoderConfig = ToyTextEncoderConfig()) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**config.to_dict()))


class PixelCodec:
    """The toy teacher's latent space: the image itself in [-1, 1], losslessly rearranged by
    space-to-depth (``pixel_unshuffle``) with ``factor``: (B, 3, H, W) <-> (B, 3 f^2, H/f, W/f).
    ``factor=1`` (the toy teacher's choice) is the identity. Implements ``bench.assets.teachers.LatentCodec``;
    nothing is trained. ``factor=2`` was measured and rejected (see :class:`ToyUNetConfig`)."""

    def __init__(self, factor: int = 2):
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.factor = factor
        self.channels = 3 * factor * factor
        self.downsample = factor

    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> latents (B, 3 f^2, H/f, W/f)."""
        return F.pixel_unshuffle(images, self.factor) if self.factor > 1 else images

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images in [-1, 1] (clamped)."""
        images = F.pixel_shuffle(latents, self.factor) if self.factor > 1 else latents
        return images.clamp(-1.0, 1.0)


def images_to_unit_range(images_uint8: Tensor) -> Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1] (the teacher's data space)."""
    return images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def unit_range_to_images(x: Tensor) -> Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
