"""Released students: trained students shipped with the package, hash-checked like the toy
teacher, and looked up by training fingerprint before the cache (:func:`bench.engine.students.load_student`).

Layout (``bench/data/toy/students``, the toy world's students)::

    hashes.json            one record per student: file, bytes, sha256, kind, training fingerprint,
                           the effective config and schedule, teacher, data, training time and
                           loss, machine, thread count, library versions, rebuild command
    lcm.safetensors        kind "unet": the student U-Net's state dict in float16; its
                           ``UNet2DConditionModel`` config is in the record
    lcm-lora.safetensors   kind "lora": the LoRA weights only (peft keys, the adapter's LoraConfig as
                           safetensors metadata, as ``StableDiffusionPipeline.save_lora_weights``
                           writes them), float16
    mcm-s4.safetensors     a method with one student per step count: one file per S

A record matches a run when its ``fingerprint`` equals the student fingerprint the run asks for
(:func:`bench.engine.students.student_fingerprint`: teacher, method, effective training config and
schedule, data, and S where it applies). A changed config, teacher or schedule therefore never
loads a released student; the harness trains its own instead. A record whose file is missing or
does not hash to the recorded sha256 is an error naming the fix, never a silent fallback.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bench.core.atomic import atomic_write_json, atomic_write_with
from bench.core.errors import MissingResourceError
from bench.core.fingerprint import sha256_file

log = logging.getLogger(__name__)

MANIFEST_NAME = "hashes.json"
REBUILD_COMMAND = "python -m bench toy train --what students"


def default_released_dir() -> Path:
    """``bench/data/toy/students`` inside the installed package."""
    return Path(__file__).resolve().parent.parent / "data" / "toy" / "students"


def release_name(method: str, steps: int | None) -> str:
    """``lcm``; ``mcm-s4`` for a method with one student per step count."""
    return method if steps is None else f"{method}-s{steps}"


def rebuild_command(name: str | None = None) -> str:
    return REBUILD_COMMAND if name is None else f"{REBUILD_COMMAND} --students {name}"


class ReleasedStudentError(MissingResourceError):
    """A released student's file is missing, unreadable or not the one its record describes."""


@dataclass(frozen=True)
class ReleasedStudent:
    """One record of the manifest and the file it describes."""

    name: str
    path: Path
    record: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def fingerprint(self) -> str:
        return self.record["fingerprint"]

    @property
    def sha256(self) -> str:
        return self.record["sha256"]


class ReleasedStudents:
    """The released students of one folder (default: :func:`default_released_dir`)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_released_dir()

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    def records(self) -> dict[str, dict[str, Any]]:
        """``{name: record}``; empty when the folder has no manifest."""
        if not self.manifest_path.is_file():
            return {}
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ReleasedStudentError(
                f"released students' manifest {self.manifest_path} cannot be read ({err}); restore it with "
                f"`git checkout -- {self.manifest_path}` or rebuild it with `{rebuild_command()}`") from err
        return manifest.get("students", {})

    def get(self, name: str) -> ReleasedStudent | None:
        record = self.records().get(name)
        return None if record is None else ReleasedStudent(name, self.root / record["file"], record)

    def find(self, fingerprint: str) -> ReleasedStudent | None:
        """The released student trained under ``fingerprint``, or None."""
        for name, record in self.records().items():
            if record.get("fingerprint") == fingerprint:
                return ReleasedStudent(name, self.root / record["file"], record)
        return None

    def verify(self, student: ReleasedStudent) -> ReleasedStudent:
        """``student`` when its file exists and hashes to the recorded sha256; else one error that
        names the file and the ways out."""
        fix = (f"restore it with `git checkout -- {student.path}`, rebuild it with "
               f"`{rebuild_command(student.name)}`, or train one on this machine instead with "
               "`--student-source trained`")
        if not student.path.is_file():
            raise ReleasedStudentError(f"released student {student.name} ({student.path}) is missing; {fix}")
        actual = sha256_file(student.path)
        if actual != student.sha256:
            raise ReleasedStudentError(
                f"released student {student.name} ({student.path}) is corrupted: sha256 {actual[:12]}... does not "
                f"match the recorded {student.sha256[:12]}... in {self.manifest_path}; {fix}")
        return student

    def read(self, student: ReleasedStudent) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The verified file's tensors (floating ones as float32) and its safetensors metadata."""
        self.verify(student)
        with safe_open(str(student.path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, metadata

    def publish(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                record: dict[str, Any]) -> ReleasedStudent:
        """Write ``<name>.safetensors`` (floating tensors as float16) and its manifest record,
        each atomically; returns the new release."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{name}.safetensors"
        half = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous().clone()
                for k, v in tensors.items()}
        atomic_write_with(path, lambda tmp: save_file(half, str(tmp), metadata=metadata))
        record = {**record, "file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                  "rebuild": rebuild_command(name)}
        manifest = {"students": {**self.records(), name: record}, "rebuild": rebuild_command()}
        atomic_write_json(self.manifest_path, manifest)
        log.info("released student %s: %s (%d bytes)", name, path, record["bytes"])
        return ReleasedStudent(name, path, record)


__all__ = ["ReleasedStudents", "ReleasedStudent", "ReleasedStudentError", "default_released_dir", "release_name",
           "rebuild_command"]
