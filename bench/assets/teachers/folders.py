"""Teachers from diffusers-format folders: a local copy (``--teacher-path``) or a hub snapshot;
what must be in the folder, and the digest of the weights that goes into fingerprints."""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from bench.assets.teachers.model import (
    TEACHER_PATH_ENV,
    Teacher,
    TeacherSpec,
    _assemble,
)
from bench.core.errors import UsageError
from bench.core.fingerprint import fingerprint

logger = logging.getLogger(__name__)


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
    unet = _component(UNet2DConditionModel, root, "unet")
    vae = _component(AutoencoderKL, vae_root, vae_subfolder)
    text_encoder = _component(CLIPTextModel, root, "text_encoder")
    tokenizer = _component(CLIPTokenizer, root, "tokenizer")
    return _assemble(name, unet, vae, text_encoder, tokenizer, _read_scheduler_config(root), resolution,
                     guidance, identity, device, dtype, vae_upcast)


def _component(cls, root: Path, subfolder: str | None):
    """``cls.from_pretrained(root/subfolder)``; a damaged file is one error naming the folder."""
    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        return cls.from_pretrained(str(root), local_files_only=True, **kwargs)
    except Exception as err:   # a broken config.json, truncated weights, a wrong class, ...
        where = root / subfolder if subfolder else root
        detail = str(err).splitlines()[0] if str(err) else ""
        raise UsageError(f"teacher component {where} cannot be loaded as {cls.__name__} ({type(err).__name__}: "
                         f"{detail}); repair or re-download that folder") from None


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


def _read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path} is not a readable JSON config ({type(err).__name__}: {err}); repair or "
                         "re-download it") from None


def _folder_resolution(root: Path, vae_root: Path | None = None, vae_subfolder: str | None = "vae") -> int:
    """Pixel side of a folder's images: U-Net sample_size x the VAE's downsampling (the VAE in
    ``vae_root/vae_subfolder``, by default the folder's own vae/)."""
    vae_folder = (vae_root or root) / vae_subfolder if vae_subfolder else (vae_root or root)
    unet, vae = (_read_config(folder / "config.json") for folder in (root / "unet", vae_folder))
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


