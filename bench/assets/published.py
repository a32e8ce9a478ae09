"""Published students on disk: find the files a ``--student`` reference names (a local path, or the
Hugging Face cache, downloading within a bounded time when online), tell their format, and hash
them for the fingerprint. Loading them into a U-Net is ``bench.engine.published``.

Formats (:data:`bench.assets.zoo.STUDENT_FORMATS`), told apart by the files:

- ``pipeline``: ``model_index.json`` and ``unet/`` (the student's own VAE, text encoder, tokenizer
  and scheduler config come with it);
- ``unet-folder``: ``config.json`` + ``diffusion_pytorch_model.{safetensors,bin}`` at the root or in
  ``unet/`` (this tool's student folders included);
- ``lora``: a ``.safetensors`` / ``.bin`` file whose keys are LoRA weights (``lora_A``/``lora_B``,
  ``lora.down``/``lora.up``, kohya ``lora_down``/``lora_up``), or a folder holding
  ``pytorch_lora_weights.safetensors``;
- ``state-dict``: any other weights file: a raw UNet state dict (``.bin`` files are read with
  ``torch.load(weights_only=True)``, which executes no pickled code).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bench.assets.teachers.folders import _component_needs, _found_files, _missing, _Need, _teacher_needs
from bench.assets.teachers.hub import HUB_TIMEOUT_ENV, _hub_timeout, hf_hub_cache_dir, hf_offline
from bench.assets.zoo import StudentRef
from bench.core.errors import MissingResourceError, UsageError
from bench.core.fingerprint import fingerprint, sha256_file

log = logging.getLogger(__name__)

LORA_WEIGHT_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
STATE_DICT_NAMES = ("pytorch_model.bin", "model.safetensors", "diffusion_pytorch_model.safetensors",
                    "diffusion_pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_LORA_MARKERS = ("lora_A", "lora_B", "lora.down", "lora.up", "lora_down", "lora_up")


@dataclass
class LocatedStudent:
    """A published student's files on this machine."""

    ref: StudentRef
    format: str
    root: Path                       # the folder (pipeline / unet-folder) or the weights file
    unet_subfolder: str | None = None
    files: dict[str, Path] = field(default_factory=dict)   # what is hashed: relative name -> file
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.ref.label

    @property
    def weights(self) -> str:
        return self.identity["weights"]


# ------------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------------


def weight_keys(path: Path) -> list[str]:
    """The tensor names of a weights file (safetensors: its header only)."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    return list(read_state_dict(path))


def read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a ``.safetensors`` file, or of a pickled ``.bin``/``.pt`` read without executing code
    (``torch.load(weights_only=True)``); a checkpoint wrapping its weights in ``state_dict`` is unwrapped."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for anything but plain tensors and containers
        raise UsageError(f"{path} is not a state dict torch.load(weights_only=True) can read "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                         "convert it to .safetensors") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UsageError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def _is_lora(keys: list[str]) -> bool:
    return any(marker in key for key in keys for marker in _LORA_MARKERS)


def _unet_folder(folder: Path) -> str | None:
    """"" when ``folder`` is a UNet folder, "unet" when ``folder/unet`` is one, else None."""
    for subfolder in ("", "unet"):
        needs = _component_needs(subfolder or None, "diffusers")
        if not _missing(folder, needs):
            return subfolder
    return None


def detect(ref: StudentRef, path: Path) -> LocatedStudent:
    """The format of the student at ``path`` (a folder or a weights file) and the files that make it."""
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise UsageError(f"--student {path}: not a weights file ({', '.join(WEIGHT_SUFFIXES)}) or folder")
        kind = "lora" if _is_lora(weight_keys(path)) else "state-dict"
        return LocatedStudent(ref, kind, path, files={path.name: path})
    if not path.is_dir():
        raise UsageError(f"--student {path} does not exist")
    if (path / "model_index.json").is_file() and not _missing(path, _teacher_needs(with_vae=True)):
        return LocatedStudent(ref, "pipeline", path, "unet", _found_files(path, _teacher_needs(with_vae=True)))
    subfolder = _unet_folder(path)
    if subfolder is not None:
        files = _found_files(path, _component_needs(subfolder or None, "diffusers"))
        return LocatedStudent(ref, "unet-folder", path, subfolder, files)
    for name in LORA_WEIGHT_NAMES:
        if (path / name).is_file():
            return LocatedStudent(ref, "lora", path / name, files={name: path / name})
    candidates = [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    if len(candidates) == 1:
        return detect(ref, candidates[0])
    raise UsageError(
        f"--student {path}: no student found: expected a diffusers pipeline (model_index.json, unet/, ...), a UNet "
        f"folder (config.json + diffusion_pytorch_model.safetensors, at the root or in unet/), "
        f"{LORA_WEIGHT_NAMES[0]}, or a single weights file ({', '.join(WEIGHT_SUFFIXES)}); found "
        f"{len(candidates)} weights files" + (f" ({', '.join(p.name for p in candidates[:4])}): name one" if candidates
                                              else ""))


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes; free for a Hugging Face cache file, a link to ``blobs/<sha256>``."""
    resolved = path.resolve()
    if len(resolved.name) == 64 and all(c in "0123456789abcdef" for c in resolved.name):
        return resolved.name
    return sha256_file(resolved)


def _finish(located: LocatedStudent, **identity: Any) -> LocatedStudent:
    """Record where the student came from and the sha256 of each of its files (what the sample
    fingerprint holds: another file under the same name is another student)."""
    hashes = {name: file_sha256(path) for name, path in sorted(located.files.items())}
    located.identity = {"student": located.label, "format": located.format, **identity, "files": hashes,
                        "weights": fingerprint(hashes, length=64)}
    return located


# ------------------------------------------------------------------------------------------------
# Local paths and the Hugging Face cache
# ------------------------------------------------------------------------------------------------


def locate_student(ref: StudentRef) -> LocatedStudent:
    """The files of ``ref`` on this machine: a local path as it is; a hub reference from the cache,
    else downloaded (bounded by ``BENCH_HUB_TIMEOUT``); one MissingResourceError naming the repo, the
    cache searched, the ``hf download`` command and the local-path alternative otherwise."""
    if ref.kind == "local":
        return _finish(detect(ref, ref.local), source="local")
    cache = hf_hub_cache_dir()
    snapshot = cached_snapshot(cache, ref.hub_id, ref.revision)
    target = snapshot / ref.path if snapshot is not None and ref.path else snapshot
    if target is None or not target.exists():
        if hf_offline():
            raise MissingResourceError(_missing_message(ref, cache, "it is not in the cache and HF_HUB_OFFLINE is set"))
        snapshot = _download(ref, cache)
        target = snapshot / ref.path if ref.path else snapshot
    located = detect(ref, target)
    if ref.entry is not None and located.format != ref.entry.format:
        raise MissingResourceError(f"{ref.label}: the files at {target} look like a {located.format} student, not "
                                   f"the {ref.entry.format} the zoo expects; the cached copy may be incomplete: "
                                   f"delete it and run `{download_command(ref)}`")
    return _finish(located, source="huggingface", hub_id=ref.hub_id, path=ref.path, revision=snapshot.name)


def cached_snapshot(cache: Path, repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of ``repo_id`` at ``revision`` (a branch, tag or commit) in the cache."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = revision or "main"
    ref_file = repo / "refs" / revision
    commit = ref_file.read_text().strip() if ref_file.is_file() else revision
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def download_command(ref: StudentRef) -> str:
    revision = f" --revision {ref.revision}" if ref.revision else ""
    files = f" {ref.path}" if ref.path and Path(ref.path).suffix in WEIGHT_SUFFIXES else \
        (f" --include '{ref.path}/*'" if ref.path else "")
    return f"hf download {ref.hub_id}{files}{revision}"


def _missing_message(ref: StudentRef, cache: Path, reason: str) -> str:
    what = f"student {ref.label!r}" + (f" (zoo: {ref.entry.reference})" if ref.kind == "zoo" else "")
    return "\n".join([
        f"{what} is not available: {reason}.",
        f"Searched the Hugging Face cache at {cache} for {ref.hub_id}@{ref.revision or 'main'}"
        + (f" / {ref.path}" if ref.path else "")
        + " (set by HF_HUB_CACHE or HF_HOME; default ~/.cache/huggingface/hub).",
        f"Fix: on a machine with internet run `{download_command(ref)}` and copy the cache here (or point HF_HUB_CACHE "
        "at it); or download the files anywhere and pass the folder or file with --student PATH.",
    ])


def _download(ref: StudentRef, cache: Path) -> Path:
    """Fetch only the files of ``ref`` (a file, or the student folder's files) into the cache."""
    from huggingface_hub import HfApi, snapshot_download

    timeout = _hub_timeout()
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        info = HfApi(endpoint=endpoint).model_info(ref.hub_id, revision=ref.revision, timeout=timeout)
        names = {sibling.rfilename for sibling in (info.siblings or [])}
        patterns = _files_to_fetch(ref, names)
        log.info("downloading %s of %s@%s to %s", patterns, ref.hub_id, info.sha, cache)
        folder = snapshot_download(ref.hub_id, revision=info.sha, cache_dir=str(cache), allow_patterns=patterns,
                                   etag_timeout=timeout, endpoint=endpoint)
    except (MissingResourceError, UsageError):
        raise
    except Exception as err:  # no network, DNS failure, timeout, 401/404, ...
        detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise MissingResourceError(_missing_message(
            ref, cache, f"it is not in the cache and the Hub could not be reached ({detail}; probe timeout "
                        f"{timeout:g} s, {HUB_TIMEOUT_ENV})")) from None
    return Path(folder)


def _files_to_fetch(ref: StudentRef, names: set[str]) -> list[str]:
    """The repo files (or patterns) of the student at ``ref.path``, from the repo's file list, in the
    order :func:`detect` tells formats apart: pipeline, UNet folder, LoRA / state-dict file."""
    prefix = f"{ref.path}/" if ref.path else ""
    if ref.path in names:
        return [ref.path]
    inside = {name[len(prefix):] for name in names if name.startswith(prefix)}
    if "model_index.json" in inside:
        chosen = _choose_all(_teacher_needs(with_vae=True), inside)
        if chosen is not None:
            return [f"{prefix}{name}" for name in chosen + ["model_index.json", "tokenizer/*", "scheduler/*"]]
    for subfolder in ("unet", None):
        chosen = _choose_all(_component_needs(subfolder, "diffusers"), inside)
        if chosen is not None:
            return [f"{prefix}{name}" for name in chosen]
    for name in LORA_WEIGHT_NAMES + STATE_DICT_NAMES:
        if name in inside:
            return [f"{prefix}{name}"]
    raise MissingResourceError(f"Hugging Face repo {ref.hub_id} has no student at {ref.path or 'its root'}: no "
                               "pipeline, UNet folder, LoRA or state-dict file there; name the file with "
                               "--student owner/name/path/to/file")


def _choose_all(needs: list[_Need], available: set[str]) -> list[str] | None:
    """The files that meet every need from ``available``, or None when one cannot be met."""
    chosen = [need.choose(available) for need in needs]
    return None if any(group is None for group in chosen) else [name for group in chosen for name in group]


__all__ = ["LocatedStudent", "locate_student", "detect", "read_state_dict", "weight_keys", "cached_snapshot",
           "download_command"]
