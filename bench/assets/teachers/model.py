"""What a teacher is: its latent codec (the VAE, or identity for pixel-space teachers), the
:class:`Teacher` a method sees, and the named teachers (:data:`TEACHER_SPECS`); see
``bench.assets.teachers``."""
from __future__ import annotations

import logging
import types
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from bench.core.errors import UsageError
from methods.diffusion_math import NoiseSchedule

logger = logging.getLogger(__name__)

TEACHER_PATH_ENV = "BENCH_TEACHER_PATH"


# ------------------------------------------------------------------------------------------------
# Latent codecs
# ------------------------------------------------------------------------------------------------


class LatentCodec:
    """Maps images in [-1, 1] (B, 3, H, W) to the latents the U-Net works in, and back."""

    channels: int
    downsample: int

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class VaeCodec(LatentCodec):
    """A diffusers ``AutoencoderKL`` as a codec: latents = scaling_factor * (z - shift_factor).

    ``encode`` takes the posterior's mode (its mean) so that it is deterministic; pass a
    ``generator`` to draw ``z ~ q(z|x)`` instead, as SD's training scripts do. ``decode`` returns
    float32 images in [-1, 1] (not clamped).

    ``upcast`` (default: the VAE config's ``force_upcast``, True for the SD-1.5 VAEs) keeps the VAE
    in float32 even when the U-Net runs in fp16/bf16: the SD-1.5 VAE overflows in fp16 on some
    images, and diffusers' pipelines upcast it the same way. ``upcast=False`` runs it in its dtype.
    Neither method disables autograd; wrap calls in ``torch.no_grad()`` where no gradient is needed.
    """

    def __init__(self, vae: nn.Module, upcast: bool | None = None):
        config = vae.config
        if upcast is None:
            upcast = bool(getattr(config, "force_upcast", True))
        if upcast and next(vae.parameters()).dtype != torch.float32:
            nn.Module.to(vae, dtype=torch.float32)
        self.vae = vae
        self.upcast = upcast
        self.channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.scaling_factor = float(config.scaling_factor)
        shift = getattr(config, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0

    def _param(self) -> torch.Tensor:
        return next(self.vae.parameters())

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents (B, C, H/f, W/f) in the images' dtype."""
        param = self._param()
        posterior = self.vae.encode(images.to(device=param.device, dtype=param.dtype)).latent_dist
        z = posterior.sample(generator=generator) if generator is not None else posterior.mode()
        return ((z - self.shift_factor) * self.scaling_factor).to(images.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> float32 images (B, 3, H, W), nominally in [-1, 1]."""
        param = self._param()
        z = latents.to(device=param.device, dtype=param.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.float()


class IdentityCodec(LatentCodec):
    """Pixel-space teachers: the latents are the images (downsample 1)."""

    def __init__(self, channels: int = 3):
        self.channels = channels
        self.downsample = 1

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected (B, {self.channels}, H, W), got {tuple(x.shape)}")
        return x

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._check(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._check(latents).float()


# ------------------------------------------------------------------------------------------------
# Teacher
# ------------------------------------------------------------------------------------------------


@dataclass
class Teacher:
    name: str
    unet: nn.Module                 # diffusers UNet2DConditionModel
    text_encoder: nn.Module         # transformers CLIPTextModel
    tokenizer: Any                  # transformers CLIPTokenizer(-Fast)
    codec: LatentCodec
    schedule: NoiseSchedule
    scheduler_config: dict          # diffusers scheduler config, for DDIMScheduler.from_config(...)
    resolution: int                 # pixel side of generated images
    default_guidance_scale: float   # diffusers convention
    identity: dict = field(default_factory=dict)  # what goes into fingerprints: id, revision, weights
    # the schedule its students train on (bench.assets.train_data.training_scale); None: from the identity
    training_scale: str | None = None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.codec.downsample
        return (self.codec.channels, side, side)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompt embeddings (B, 77, D) as SD-1.5 conditions on them: padded to max length,
        truncated, the text encoder's last hidden state; on the U-Net's device and dtype.
        An empty prompt gives the unconditional embedding."""
        if isinstance(prompts, str):
            raise TypeError("encode_prompts takes a list of prompts, not a single string")
        # a tokenizer folder without tokenizer_config.json reports a huge model_max_length
        max_length = min(int(self.tokenizer.model_max_length),
                         int(self.text_encoder.config.max_position_embeddings))
        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        encoder_param = next(self.text_encoder.parameters())
        hidden = self.text_encoder(tokens.input_ids.to(encoder_param.device))[0]
        unet_param = next(self.unet.parameters())
        return hidden.to(device=unet_param.device, dtype=unet_param.dtype)


# ------------------------------------------------------------------------------------------------
# Specs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherSpec:
    """What a named teacher is. Exactly one of ``hub_id`` (real weights), ``config_dir`` (random
    weights from ``seed``, architecture from ``bench/configs/<config_dir>``) or ``toy_checkpoint``
    (the toy world's trained weights) is set."""

    name: str
    summary: str
    resolution: int
    default_guidance_scale: float = 3.0
    hub_id: str | None = None
    revision: str | None = None          # None: the repo's default branch (resolved sha is recorded)
    vae_id: str | None = None            # a separate VAE repo; None: the teacher repo's vae/
    vae_subfolder: str | None = None     # inside vae_id; None: the repo root
    vae_revision: str | None = None
    config_dir: str | None = None
    seed: int = 0
    toy_checkpoint: bool = False         # the toy world's committed, trained teacher (bench/data/toy)
    # students' schedule (bench.assets.train_data.training_scale); None: toy for toy and random weights
    training_scale: str | None = None

    @property
    def from_hub(self) -> bool:
        return self.hub_id is not None


TEACHER_SPECS: Mapping[str, TeacherSpec] = types.MappingProxyType({
    "sd15": TeacherSpec(
        name="sd15",
        summary="Stable Diffusion v1.5 (HF stable-diffusion-v1-5/stable-diffusion-v1-5, ex runwayml), 512 px",
        resolution=512,
        hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    ),
    "rv51": TeacherSpec(
        name="rv51",
        summary="Realistic Vision 5.1 (SD-1.5 fine-tune, SG161222) with the sd-vae-ft-mse VAE, 512 px",
        resolution=512,
        hub_id="SG161222/Realistic_Vision_V5.1_noVAE",
        vae_id="stabilityai/sd-vae-ft-mse",
    ),
    "sd15-arch": TeacherSpec(
        name="sd15-arch",
        summary="SD-1.5 architecture with random weights (seed 0): speed/memory only, 512 px",
        resolution=512,
        config_dir="sd15",
        seed=0,
    ),
    "toy": TeacherSpec(
        name="toy",
        summary="toy world teacher, trained (bench/data/toy): 16 px coloured shapes, pixel space, offline",
        resolution=16,
        toy_checkpoint=True,
    ),
    "tiny": TeacherSpec(
        name="tiny",
        summary="toy SD-1.5-shaped teacher with random weights (seed 0): 16 px, 4x8x8 latents, for tests; "
                "students train for a few steps (plumbing)",
        resolution=16,
        config_dir="tiny",
        seed=0,
        training_scale="plumbing",
    ),
})


def teacher_names() -> list[str]:
    return list(TEACHER_SPECS)


def _spec(name: str) -> TeacherSpec:
    try:
        return TEACHER_SPECS[name]
    except KeyError:
        raise UsageError(
            f"unknown teacher {name!r}; known teachers: {', '.join(teacher_names())} "
            f"(or a local diffusers folder with --teacher-path DIR / {TEACHER_PATH_ENV}=DIR)"
        ) from None


def _place(module: nn.Module, device, dtype: torch.dtype) -> None:
    """Move and cast. diffusers' ``ModelMixin.to`` warns on every dtype cast, even for models
    without fp32-pinned modules; those (SD's U-Net and VAE) go through ``nn.Module.to``."""
    if getattr(module, "_keep_in_fp32_modules", None):
        module.to(device=device, dtype=dtype)
    else:
        nn.Module.to(module, device=device, dtype=dtype)


def _assemble(name, unet, vae, text_encoder, tokenizer, scheduler_config, resolution, guidance, identity,
              device, dtype, vae_upcast) -> Teacher:
    for module in (unet, vae, text_encoder):
        module.eval()
        module.requires_grad_(False)
    _place(unet, device, dtype)
    _place(text_encoder, device, dtype)
    if vae_upcast is None:
        vae_upcast = bool(getattr(vae.config, "force_upcast", True))
    _place(vae, device, torch.float32 if vae_upcast else dtype)
    codec = VaeCodec(vae, upcast=vae_upcast)
    scheduler_config = dict(scheduler_config)
    return Teacher(
        name=name,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        codec=codec,
        schedule=NoiseSchedule.from_scheduler_config(scheduler_config),
        scheduler_config=scheduler_config,
        resolution=int(resolution),
        default_guidance_scale=float(guidance),
        identity=identity,
    )


