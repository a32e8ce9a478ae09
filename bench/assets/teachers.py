"""Teachers: the backbone every method distils from, loaded through diffusers/transformers.

A teacher is a U-Net, a CLIP text encoder with its tokenizer, a latent codec (the VAE) and a noise
schedule. Four are named (``TEACHER_SPECS``):

- ``sd15``: Stable Diffusion v1.5 from the Hugging Face repo
  ``stable-diffusion-v1-5/stable-diffusion-v1-5``. The historical id ``runwayml/stable-diffusion-v1-5``
  was removed from the Hub in 2024; the repo above is its mirror and the id papers' code now needs.
- ``rv51``: Realistic Vision 5.1 (an SD-1.5 fine-tune), repo ``SG161222/Realistic_Vision_V5.1_noVAE``.
  "noVAE": its checkpoints have no fine-tuned VAE baked in, and the author recommends pairing it with
  ``stabilityai/sd-vae-ft-mse``, which is how diffusers users run it (the repo's own diffusers
  ``vae/`` folder is not used). The VAE repo is a field of the spec (``vae_id``).
- ``sd15-arch``: the exact SD-1.5 architecture (``bench/configs/sd15``) with random weights from a
  fixed seed, for timing and memory numbers without the real weights.
- ``tiny``: the same component classes at toy size (``bench/configs/tiny``): 16 px images, 4x8x8
  latents, builds in well under a second; unit tests use it.
- ``toy``: the toy world's trained teacher (``bench/data/toy``, hash-checked; ``bench.assets.toy``): the
  same U-Net and text-encoder classes, epsilon prediction, SD-1.5's schedule, 16 px images in an
  identity latent space. The embedded default: it makes images that the toy metrics can judge.

Any diffusers-format folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``) loads with
``load_teacher(None, path=DIR)``: on the command line ``--teacher-path DIR``, or the environment
variable ``BENCH_TEACHER_PATH``. A path given together with a hub teacher's name (``sd15``/``rv51``)
is a local copy of that teacher; everything, the VAE included, then comes from the folder.

Hub weights come only from the Hugging Face cache or a download. With no copy in the cache and no
network (or ``HF_HUB_OFFLINE=1``), ``load_teacher`` stops before loading anything with one
``MissingResourceError`` naming the repo, the cache folder searched and the ways to provide it.
The network probe is bounded by ``BENCH_HUB_TIMEOUT`` seconds (default 5): without it a
firewalled network (packets dropped, not refused) makes ``huggingface_hub`` wait indefinitely.
Nothing is written to the cache unless the Hub answered.

Default guidance: 3.0 for every teacher, the diffusers convention ``uncond + g (cond - uncond)``.
DMD (Yin et al., 2024) evaluates zero-shot COCO FID against the SD-1.5 teacher at g = 3, the
low-guidance setting at which FID is meaningful; the benchmark's FID protocol follows it.

``Teacher.identity`` feeds fingerprints (see ``_weights_digest`` for what is hashed).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from bench.assets.tokenizer import build_clip_tokenizer
from bench.assets.toy.load import load_toy_teacher_parts
from bench.core.errors import MissingResourceError, UsageError
from bench.core.fingerprint import fingerprint
from methods.diffusion_math import NoiseSchedule

logger = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
TEACHER_PATH_ENV = "BENCH_TEACHER_PATH"
HUB_TIMEOUT_ENV = "BENCH_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT_S = 5.0


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


# ------------------------------------------------------------------------------------------------
# Public entry point
# ------------------------------------------------------------------------------------------------


def load_teacher(
    name: str | None,
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
    *,
    vae_upcast: bool | None = None,
) -> Teacher:
    """Load or build a teacher: every module in eval mode with ``requires_grad`` off.

    ``name`` is one of ``teacher_names()``, or None with ``path`` (or ``$BENCH_TEACHER_PATH``) naming a
    local diffusers-format folder. ``revision`` overrides a hub teacher's revision. The U-Net and the
    text encoder get ``dtype``; the VAE stays float32 unless ``vae_upcast=False`` (see VaeCodec).
    """
    start = time.perf_counter()
    spec = _spec(name) if name is not None else None
    if path is None and (spec is None or spec.from_hub):
        path = os.environ.get(TEACHER_PATH_ENV) or None
    if spec is None and path is None:
        raise UsageError(
            f"no teacher given: pass a name ({', '.join(teacher_names())}) or a local diffusers folder "
            f"with --teacher-path DIR (or {TEACHER_PATH_ENV}=DIR)"
        )
    if spec is not None and spec.toy_checkpoint:
        if path is not None or revision is not None:
            raise UsageError(f"teacher {spec.name!r} is the committed toy checkpoint; --teacher-path and "
                             "--revision do not apply to it")
        teacher = _load_toy(spec, device, dtype)
    elif spec is not None and not spec.from_hub:
        if path is not None:
            raise UsageError(f"teacher {spec.name!r} is built from configs; --teacher-path does not apply to it")
        if revision is not None:
            raise UsageError(f"teacher {spec.name!r} is built from configs; it has no revision")
        teacher = _build_from_configs(spec, device, dtype, vae_upcast)
    elif path is not None:
        if revision is not None:
            raise UsageError("a revision applies to Hugging Face downloads, not to a local teacher folder")
        teacher = _load_local(Path(path).expanduser(), spec, device, dtype, vae_upcast)
    else:
        teacher = _load_from_hub(spec, revision, device, dtype, vae_upcast)
    if spec is not None and spec.training_scale is not None and path is None:
        teacher.training_scale = spec.training_scale
    logger.info("teacher %s ready in %.1f s (%s, %s)", teacher.name, time.perf_counter() - start, device, dtype)
    return teacher


def save_teacher(teacher: Teacher, folder: str | os.PathLike) -> Path:
    """Write a VAE teacher as a diffusers-format folder (safetensors), loadable with
    ``load_teacher(None, path=folder)``. Published atomically: the folder appears complete or not at
    all; an existing folder is an error."""
    folder = Path(folder)
    if folder.exists():
        raise UsageError(f"{folder} exists; save_teacher writes a new folder")
    if not isinstance(teacher.codec, VaeCodec):
        raise UsageError("save_teacher writes diffusers layout, which needs a VAE codec")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        teacher.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        teacher.codec.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        teacher.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        teacher.tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(teacher.scheduler_config, indent=2, sort_keys=True) + "\n"
        )
        index = {
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", type(teacher.unet).__name__],
            "vae": ["diffusers", type(teacher.codec.vae).__name__],
            "text_encoder": ["transformers", type(teacher.text_encoder).__name__],
            "tokenizer": ["transformers", type(teacher.tokenizer).__name__],
            "scheduler": ["diffusers", teacher.scheduler_config.get("_class_name", "PNDMScheduler")],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


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


# ------------------------------------------------------------------------------------------------
# Diffusers-format folders (local copies and hub snapshots)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Need:
    """Files a component needs: the first of ``options`` (preference order) whose files all exist."""

    options: tuple[tuple[str, ...], ...]

    def find(self, root: Path) -> list[Path] | None:
        for group in self.options:
            # is_file follows symlinks: a dangling link into a cache counts as missing
            if all((root / name).is_file() for name in group):
                return [root / name for name in group]
        return None

    def choose(self, available: set[str]) -> tuple[str, ...] | None:
        return next((group for group in self.options if set(group) <= available), None)

    def describe(self) -> str:
        return " or ".join(" + ".join(group) for group in self.options)


def _component_needs(subfolder: str | None, kind: str) -> list[_Need]:
    def files(*names: str) -> tuple[str, ...]:
        return tuple(f"{subfolder}/{n}" if subfolder else n for n in names)

    if kind == "tokenizer":
        return [_Need((files("vocab.json", "merges.txt"), files("tokenizer.json")))]
    if kind == "scheduler":
        return [_Need((files("scheduler_config.json"),))]
    weights = {
        "diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
        "transformers": ("model.safetensors", "pytorch_model.bin"),
    }[kind]
    return [_Need((files("config.json"),)), _Need(tuple(files(name) for name in weights))]


def _teacher_needs(with_vae: bool) -> list[_Need]:
    needs = (_component_needs("unet", "diffusers") + _component_needs("text_encoder", "transformers")
             + _component_needs("tokenizer", "tokenizer") + _component_needs("scheduler", "scheduler"))
    if with_vae:
        needs += _component_needs("vae", "diffusers")
    return needs


def _missing(root: Path, needs: list[_Need]) -> list[str]:
    return [need.describe() for need in needs if need.find(root) is None]


def _found_files(root: Path, needs: list[_Need], label: str = "") -> dict[str, Path]:
    """``{label + relative path: path}`` for every file the needs resolve to under ``root``."""
    return {f"{label}{path.relative_to(root)}": path for need in needs for path in need.find(root)}


_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


def _file_digest(file: Path, sample: int = 1 << 20) -> str:
    """A content id for one file, fast even for multi-GB weights.

    In a Hugging Face cache a weights file is a link to ``blobs/<sha256 of the content>``: that name
    is the exact hash, free. Elsewhere: small files (<= 2 MiB) are hashed in full; larger ones by
    size plus their first and last MiB (safetensors: the header with every tensor's name, shape and
    offset, the first and the last tensors' bytes). That catches a different checkpoint or dtype, not
    an edit confined to the middle of the file; re-save or rename a folder whose weights you edit.
    """
    resolved = file.resolve()
    if _SHA256_NAME.fullmatch(resolved.name):
        return f"sha256:{resolved.name}"
    size = resolved.stat().st_size
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        if size <= 2 * sample:
            digest.update(handle.read())
            return f"sha256:{digest.hexdigest()}"
        digest.update(handle.read(sample))
        handle.seek(size - sample)
        digest.update(handle.read(sample))
    return f"sampled-sha256:{size}:{digest.hexdigest()}"


def _weights_digest(files: Mapping[str, Path]) -> str:
    return fingerprint({name: _file_digest(path) for name, path in sorted(files.items())}, length=32)


def _read_scheduler_config(root: Path, subfolder: str = "scheduler") -> dict:
    from diffusers import DDIMScheduler

    config = DDIMScheduler.load_config(str(root), subfolder=subfolder, local_files_only=True)
    # keep the class name, drop bookkeeping (_diffusers_version, _name_or_path, ...)
    return {k: v for k, v in dict(config).items() if not k.startswith("_") or k == "_class_name"}


def _load_folder(name: str, root: Path, vae_root: Path, vae_subfolder: str | None, resolution: int,
                 guidance: float, identity: dict, device, dtype, vae_upcast) -> Teacher:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    logger.info("loading teacher %s from %s", name, root)
    unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", local_files_only=True)
    vae_kwargs = {"subfolder": vae_subfolder} if vae_subfolder else {}
    vae = AutoencoderKL.from_pretrained(str(vae_root), local_files_only=True, **vae_kwargs)
    text_encoder = CLIPTextModel.from_pretrained(str(root), subfolder="text_encoder", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(str(root), subfolder="tokenizer", local_files_only=True)
    return _assemble(name, unet, vae, text_encoder, tokenizer, _read_scheduler_config(root), resolution,
                     guidance, identity, device, dtype, vae_upcast)


def _load_local(root: Path, spec: TeacherSpec | None, device, dtype, vae_upcast) -> Teacher:
    if not root.is_dir():
        raise UsageError(f"teacher folder {root} does not exist (from --teacher-path / {TEACHER_PATH_ENV})")
    needs = _teacher_needs(with_vae=True)
    missing = _missing(root, needs)
    if missing:
        raise UsageError(
            f"teacher folder {root} is not a diffusers-format Stable Diffusion folder: missing "
            f"{'; '.join(missing)} (expected subfolders unet/, vae/, text_encoder/, tokenizer/, scheduler/, "
            "as written by save_pretrained or `hf download <repo> --local-dir DIR`)"
        )
    name = spec.name if spec is not None else f"local:{root.resolve().name}"
    identity = {
        "name": name,
        "source": "local-folder",
        "hub_id": spec.hub_id if spec is not None else None,
        "weights": _weights_digest(_found_files(root, needs)),
    }
    logger.info("teacher %s: local folder %s (identity %s)", name, root, identity["weights"])
    resolution = spec.resolution if spec is not None else _folder_resolution(root)
    guidance = spec.default_guidance_scale if spec is not None else 3.0
    return _load_folder(name, root, root, "vae", resolution, guidance, identity, device, dtype, vae_upcast)


def _folder_resolution(root: Path) -> int:
    """Pixel side of a local folder's images: U-Net sample_size x the VAE's downsampling."""
    unet = json.loads((root / "unet" / "config.json").read_text())
    vae = json.loads((root / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


# ------------------------------------------------------------------------------------------------
# Hugging Face Hub
# ------------------------------------------------------------------------------------------------


def hf_hub_cache_dir() -> Path:
    """Where huggingface_hub keeps models, read from the environment at call time (the library reads
    it once at import): $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
    ~/.cache/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def hf_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_timeout() -> float:
    raw = os.environ.get(HUB_TIMEOUT_ENV)
    try:
        return float(raw) if raw else DEFAULT_HUB_TIMEOUT_S
    except ValueError:
        raise UsageError(f"{HUB_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


@dataclass
class _HubRepo:
    """One repo a hub teacher needs, and where it stands in the local cache."""

    repo_id: str
    revision: str | None
    needs: list[_Need]
    snapshot: Path | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.snapshot is not None and not self.missing


def _find_cached(repo: _HubRepo, cache_dir: Path) -> None:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo.repo_id, revision=repo.revision, cache_dir=str(cache_dir),
                                   local_files_only=True)
    except Exception as err:  # LocalEntryNotFoundError and friends
        # huggingface_hub >= 2 calls a snapshot "incomplete" when any file of the repo is absent, but
        # a teacher needs only some of them (we download those alone): check them ourselves.
        folder = getattr(err, "snapshot_path", None)
        if folder is None:
            logger.debug("no cached snapshot of %s: %s", repo.repo_id, err)
            repo.snapshot, repo.missing = None, [need.describe() for need in repo.needs]
            return
    repo.snapshot = Path(folder)
    repo.missing = _missing(repo.snapshot, repo.needs)


def _download(repo: _HubRepo, cache_dir: Path, timeout: float) -> None:
    """Probe the Hub with a bounded request, then fetch only the files the teacher needs."""
    from huggingface_hub import HfApi, snapshot_download

    endpoint = os.environ.get("HF_ENDPOINT") or None
    info = HfApi(endpoint=endpoint).model_info(repo.repo_id, revision=repo.revision, timeout=timeout)
    present = {sibling.rfilename for sibling in (info.siblings or [])}
    chosen, absent = [], []
    for need in repo.needs:
        group = need.choose(present)
        if group is None:
            absent.append(need.describe())
        else:
            chosen.extend(group)
    # the small files beside them (tokenizer_config.json, special_tokens_map.json, ...) come along
    chosen += [f"{folder}/*" for folder in ("tokenizer", "scheduler") if any(n.startswith(f"{folder}/") for n in chosen)]
    if absent:
        raise MissingResourceError(
            f"Hugging Face repo {repo.repo_id} (revision {info.sha}) lacks {'; '.join(absent)}: "
            "it is not a diffusers-format Stable Diffusion repo"
        )
    logger.info("downloading %d files of %s@%s to %s", len(chosen), repo.repo_id, info.sha, cache_dir)
    folder = snapshot_download(repo.repo_id, revision=info.sha, cache_dir=str(cache_dir), allow_patterns=chosen,
                               etag_timeout=timeout, endpoint=endpoint)
    repo.snapshot = Path(folder)
    repo.missing = _missing(repo.snapshot, repo.needs)


def _include_args(repo: _HubRepo) -> str:
    """``--include`` patterns for just the files a teacher loads (SD repos also hold multi-GB
    single-file checkpoints and fp16/non-EMA variants that are not needed)."""
    patterns = []
    for need in repo.needs:
        for name in need.options[0]:
            folder = name.rpartition("/")[0]
            small = name.endswith((".json", ".txt"))
            pattern = f"{folder}/*.json" if small and folder else name
            if folder == "tokenizer" and small:
                pattern = "tokenizer/*"
            if pattern not in patterns:
                patterns.append(pattern)
    return "--include " + " ".join(f"'{p}'" for p in patterns)


def _missing_message(spec: TeacherSpec, repos: list[_HubRepo], cache_dir: Path, reason: str) -> str:
    lines = [f"teacher {spec.name!r} needs weights that are not available: {reason}."]
    for repo in repos:
        where = f"Hugging Face model {repo.repo_id} (revision {repo.revision or 'main'})"
        if repo.snapshot is None:
            lines.append(f"  - {where}: not in the cache")
        elif repo.missing:
            lines.append(f"  - {where}: the cached snapshot {repo.snapshot.name} lacks {'; '.join(repo.missing)}")
    if spec.hub_id == TEACHER_SPECS["sd15"].hub_id:
        lines.append("  (SD-1.5's former id runwayml/stable-diffusion-v1-5 was removed from the Hub; "
                     "this is its mirror)")
    lines.append(f"Searched the Hugging Face cache at {cache_dir} (set by HF_HUB_CACHE or HF_HOME; "
                 "default ~/.cache/huggingface/hub).")
    fetch = " and ".join(f"`hf download {r.repo_id} {_include_args(r)}`" for r in repos if not r.ready)
    lines.append(f"Fix: on a machine with internet run {fetch} (older huggingface_hub: `huggingface-cli download` "
                 "with the same arguments) and copy the cache here (or point HF_HUB_CACHE at it); or pass a local "
                 f"diffusers-format copy with --teacher-path DIR (or {TEACHER_PATH_ENV}=DIR).")
    if spec.vae_id:
        lines.append(f"A local copy for {spec.name!r} must hold the VAE to use in DIR/vae "
                     f"(for this teacher: the files of {spec.vae_id}).")
    return "\n".join(lines)


def _load_from_hub(spec: TeacherSpec, revision: str | None, device, dtype, vae_upcast) -> Teacher:
    cache_dir = hf_hub_cache_dir()
    repos = [_HubRepo(spec.hub_id, revision or spec.revision, _teacher_needs(with_vae=spec.vae_id is None))]
    if spec.vae_id:
        repos.append(_HubRepo(spec.vae_id, spec.vae_revision, _component_needs(spec.vae_subfolder, "diffusers")))
    for repo in repos:
        _find_cached(repo, cache_dir)
    pending = [repo for repo in repos if not repo.ready]
    if pending:
        if hf_offline():
            raise MissingResourceError(_missing_message(spec, repos, cache_dir,
                                                        "they are not in the cache and HF_HUB_OFFLINE is set"))
        timeout = _hub_timeout()
        for repo in pending:
            try:
                _download(repo, cache_dir, timeout)
            except MissingResourceError:
                raise
            except Exception as err:  # no network, DNS failure, timeout, 401/404, ...
                detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                raise MissingResourceError(_missing_message(
                    spec, repos, cache_dir,
                    f"they are not in the cache and the Hub could not be reached ({detail}; "
                    f"probe timeout {timeout:g} s, {HUB_TIMEOUT_ENV})")) from None
            if not repo.ready:
                raise MissingResourceError(_missing_message(spec, repos, cache_dir, "the download was incomplete"))
    main = repos[0]
    files = _found_files(main.snapshot, main.needs, f"{main.repo_id}/")
    identity: dict[str, Any] = {
        "name": spec.name,
        "source": "huggingface",
        "hub_id": spec.hub_id,
        "revision": main.snapshot.name,  # the snapshot folder is named by its commit sha
    }
    if spec.vae_id:
        vae_repo = repos[1]
        files.update(_found_files(vae_repo.snapshot, vae_repo.needs, f"{vae_repo.repo_id}/"))
        identity.update(vae_id=spec.vae_id, vae_revision=vae_repo.snapshot.name)
        vae_root, vae_subfolder = vae_repo.snapshot, spec.vae_subfolder
    else:
        vae_root, vae_subfolder = main.snapshot, "vae"
    identity["weights"] = _weights_digest(files)
    return _load_folder(spec.name, main.snapshot, vae_root, vae_subfolder, spec.resolution,
                        spec.default_guidance_scale, identity, device, dtype, vae_upcast)
