"""Teachers built without a download: the random-weight teachers from the configs in
``bench/configs`` (``sd15-arch``, ``tiny``) and the toy world's trained, hash-checked teacher."""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import torch

from bench.assets.teachers.model import (
    TEACHER_SPECS,
    Teacher,
    TeacherSpec,
    _assemble,
    _place,
)
from bench.assets.tokenizer import build_clip_tokenizer
from bench.assets.toy.load import load_toy_teacher_parts
from bench.core.errors import MissingResourceError
from bench.core.fingerprint import fingerprint
from methods.diffusion_math import NoiseSchedule

logger = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"


# ------------------------------------------------------------------------------------------------
# Config-built teachers (random weights)
# ------------------------------------------------------------------------------------------------


_COMPONENTS = ("unet", "vae", "text_encoder", "scheduler")


def read_teacher_configs(config_dir: str) -> dict[str, dict]:
    """``bench/configs/<config_dir>/{unet,vae,text_encoder,scheduler}.json``."""
    folder = CONFIG_ROOT / config_dir
    configs = {}
    for component in _COMPONENTS:
        file = folder / f"{component}.json"
        if not file.is_file():
            raise MissingResourceError(f"teacher config {file} is missing (the package install is incomplete)")
        configs[component] = json.loads(file.read_text())
    return configs


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU generator inside the block and restore the caller's state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _build_from_configs(spec: TeacherSpec, device, dtype, vae_upcast) -> Teacher:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel


    configs = read_teacher_configs(spec.config_dir)
    # one seed per component (seed, seed+1, seed+2) so that each module's weights depend on the
    # seed and its own config only; built on CPU, where torch's initialisers are deterministic
    with _seeded(spec.seed):
        unet = UNet2DConditionModel.from_config(configs["unet"])
    with _seeded(spec.seed + 1):
        vae = AutoencoderKL.from_config(configs["vae"])
    with _seeded(spec.seed + 2):
        text_config = {k: v for k, v in configs["text_encoder"].items() if k != "architectures"}
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    identity = {
        "name": spec.name,
        "weights": f"random-init:{spec.seed}",
        "config_hash": fingerprint(configs),
    }
    return _assemble(spec.name, unet, vae, text_encoder, build_clip_tokenizer(), configs["scheduler"],
                     spec.resolution, spec.default_guidance_scale, identity, device, dtype, vae_upcast)


def load_toy_teacher(root: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> Teacher:
    """The ``toy`` teacher from the checkpoints in ``root`` (default: the committed ``bench/data/toy``);
    ``bench toy train --out DIR`` trains the released students on the teacher it wrote there."""
    return _load_toy(TEACHER_SPECS["toy"], device, dtype, None if root is None else Path(root))


def _load_toy(spec: TeacherSpec, device, dtype, root: Path | None = None) -> Teacher:
    """The toy world's trained teacher from its hash-checked checkpoint (bench.assets.toy.load)."""
    parts = load_toy_teacher_parts(root)
    _place(parts.unet, device, dtype)
    _place(parts.text_encoder, device, dtype)
    return Teacher(
        name=spec.name,
        unet=parts.unet,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        codec=parts.codec,
        schedule=NoiseSchedule.from_scheduler_config(parts.scheduler_config),
        scheduler_config=parts.scheduler_config,
        resolution=parts.resolution,
        default_guidance_scale=parts.default_guidance_scale,
        identity={"name": spec.name, "weights": f"toy-checkpoint:{parts.identity}"},
    )


