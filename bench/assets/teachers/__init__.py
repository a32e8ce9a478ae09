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

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench.assets.teachers.built import (
    _build_from_configs,
    _load_toy,
    load_toy_teacher,
    read_teacher_configs,
)
from bench.assets.teachers.folders import _load_local
from bench.assets.teachers.hub import _load_from_hub, hf_hub_cache_dir
from bench.assets.teachers.model import (
    TEACHER_PATH_ENV,
    TEACHER_SPECS,
    IdentityCodec,
    LatentCodec,
    Teacher,
    TeacherSpec,
    VaeCodec,
    _spec,
    teacher_names,
)
from bench.core.errors import UsageError

logger = logging.getLogger(__name__)



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


__all__ = ["Teacher", "TeacherSpec", "TEACHER_SPECS", "LatentCodec", "VaeCodec", "IdentityCodec", "teacher_names",
           "load_teacher", "save_teacher", "load_toy_teacher", "read_teacher_configs", "hf_hub_cache_dir"]
