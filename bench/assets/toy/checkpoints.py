"""The toy world's committed checkpoints: safetensors files in ``bench/data/toy`` with a manifest
(``hashes.json``) that records each file's sha256, the model config, how it was trained and how long
it took. Loading verifies the hash; a missing or corrupted file raises one clear error naming the
command that rebuilds it."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bench.core.atomic import atomic_write_json, atomic_write_with
from bench.core.errors import MissingResourceError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "hashes.json"

#: Which files each trainable toy model owns (``--what`` names of ``python -m bench toy train``).
TOY_MODELS: dict[str, tuple[str, ...]] = {
    "features": ("features.safetensors",),
    "clip": ("clip.safetensors",),
    "teacher": ("teacher_unet.safetensors", "teacher_text_encoder.safetensors"),
}


def default_toy_dir() -> Path:
    """``bench/data/toy`` inside the installed package (the committed checkpoints)."""
    return Path(__file__).resolve().parents[2] / "data" / "toy"


def rebuild_command(name: str) -> str:
    return f"python -m bench toy train --what {name}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ToyCheckpointError(MissingResourceError):
    """A toy checkpoint is missing, corrupted or does not match its recorded hash."""


def read_manifest(root: Path | None = None) -> dict[str, Any]:
    root = Path(root) if root is not None else default_toy_dir()
    path = root / MANIFEST_NAME
    if not path.is_file():
        return {"models": {}}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_model_entry(name: str, entry: dict[str, Any], root: Path | None = None) -> None:
    """Record (or replace) one model's entry in the manifest, atomically."""
    root = Path(root) if root is not None else default_toy_dir()
    manifest = read_manifest(root)
    manifest.setdefault("models", {})[name] = entry
    manifest["rebuild"] = "python -m bench toy train --what all"
    atomic_write_json(root / MANIFEST_NAME, manifest)


def save_state_dict(path: Path, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float16,
                    metadata: dict[str, str] | None = None) -> str:
    """Save floating tensors as ``dtype`` (contiguous, no shared storage); return the sha256."""
    tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().clone()
               for k, v in state.items()}
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata or {}))
    return sha256_file(path)


@dataclass(frozen=True)
class LoadedCheckpoint:
    name: str
    tensors: dict[str, dict[str, torch.Tensor]]  # file name -> state dict (float32)
    entry: dict[str, Any]  # the manifest entry: config, training record, hashes


def load_toy_checkpoint(name: str, root: Path | None = None) -> LoadedCheckpoint:
    """Load a toy model's files after checking them against the manifest's sha256.

    Raises :class:`ToyCheckpointError` (naming ``python -m bench toy train --what <name>``) when a
    file or its manifest entry is missing, or a hash does not match."""
    if name not in TOY_MODELS:
        raise ValueError(f"unknown toy model {name!r}; choose one of {', '.join(TOY_MODELS)}")
    root = Path(root) if root is not None else default_toy_dir()
    fix = f"rebuild it with `{rebuild_command(name)}` (writes {root})"
    entry = read_manifest(root).get("models", {}).get(name)
    if entry is None:
        raise ToyCheckpointError(f"toy {name} checkpoint has no entry in {root / MANIFEST_NAME}; {fix}")
    tensors = {}
    for file_name in TOY_MODELS[name]:
        path = root / file_name
        if not path.is_file():
            raise ToyCheckpointError(f"toy {name} checkpoint {path} is missing; {fix}")
        expected = entry.get("files", {}).get(file_name, {}).get("sha256")
        actual = sha256_file(path)
        if expected != actual:
            raise ToyCheckpointError(
                f"toy {name} checkpoint {path} is corrupted or stale: sha256 {actual[:12]}... does not match "
                f"the recorded {str(expected)[:12]}... in {root / MANIFEST_NAME}; {fix}")
        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types on truncated files
            raise ToyCheckpointError(f"toy {name} checkpoint {path} cannot be read ({err}); {fix}") from err
        tensors[file_name] = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    logger.debug("loaded toy %s from %s", name, root)
    return LoadedCheckpoint(name, tensors, entry)
