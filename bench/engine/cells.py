"""One cell of a run: a method's samples of a suite at one step count, written to a folder.

:class:`SamplingContext` is what every cell of a command shares (teacher, device, precision, where
students come from); :func:`sample_one` loads the student (``bench.engine.students``) and writes
the images (``bench.engine.sampling``); :func:`guidance_for` resolves the guidance scale a method
samples with; :func:`resolve_device` / :func:`resolve_precision` turn the flags into torch terms.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.core.errors import UsageError
from bench.engine.sampling import SampleSummary, SamplingSpec, sample_to_folder
from bench.engine.students import LoadedStudent, StudentPolicy, load_student
from methods.base import Method


@dataclass
class SamplingContext:
    teacher: Any
    teacher_name: str
    device: torch.device
    precision: str
    students: StudentPolicy = field(default_factory=StudentPolicy)   # --student-source, --retrain
    networks: str = "eager"                                          # --networks (bench.engine.network_variants)


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a torch device (try cpu or cuda:0)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def resolve_precision(name: str | None, device: torch.device) -> str:
    if name is None:
        return "fp16" if device.type == "cuda" else "fp32"
    if device.type == "cpu" and name != "fp32":
        raise UsageError(f"--precision {name} needs a GPU; on the CPU the harness runs fp32")
    return name


def guidance_for(requested: float | None, method: Method, teacher: Any, published: Any = None) -> float:
    """``requested`` (``--guidance``) if given, else a published student's released preset, else the
    method's own default, else the teacher's."""
    if requested is not None:
        return requested
    if published is not None and published.guidance_scale is not None:
        return published.guidance_scale
    if method.default_guidance_scale is not None:
        return method.default_guidance_scale
    return teacher.default_guidance_scale


def samples_dir(out: Path, suite: str, teacher: str, method: str, steps: int, guidance: float, seed: int) -> Path:
    return Path(out) / "samples" / suite / teacher / method / f"steps{steps}-g{guidance:g}-seed{seed}"


def sampling_spec(ctx: SamplingContext, method: Method, student: LoadedStudent, steps: int, guidance: float,
                  seed: int, batching: str) -> SamplingSpec:
    """What fingerprints every image: the method as asked for, and the student by its weights."""
    return SamplingSpec(method=method.name, method_config=method.config_dict(), student=student.identity,
                        teacher=ctx.teacher.identity, resolution=ctx.teacher.resolution, steps=steps,
                        guidance_scale=guidance, seed=seed, precision=ctx.precision, batching=batching,
                        networks=ctx.networks)


def sample_one(ctx: SamplingContext, method: Method, suite: Any, steps: int, guidance: float, seed: int,
               out_dir: Path, batch_size: int, batching: str, progress: bool,
               student: LoadedStudent | None = None, overwrite: bool = False) -> SampleSummary:
    """Sample ``suite`` into ``out_dir`` with ``student`` (a published one, ``--student``), else the
    student ``load_student`` finds or trains for ``method``."""
    if student is None:
        student = load_student(method, ctx.teacher, steps, batching=batching, progress=progress, policy=ctx.students)
    spec = sampling_spec(ctx, method, student, steps, guidance, seed, batching)
    # "student" (released / trained / published / empty) goes into every result row scored from this folder
    extra = {"suite": suite.name, "teacher": ctx.teacher_name, "nfe": method.nfe(steps, guidance),
             "student": student.row_label}
    summary = sample_to_folder(ctx.teacher, student.denoiser, student.sampling_method(method), suite.prompts, spec,
                               out_dir, batch_size=batch_size, suite_fingerprint=suite.fingerprint,
                               progress=progress, extra_metadata=extra, overwrite=overwrite)
    return dataclasses.replace(summary, student=student.row_label)


__all__ = ["SamplingContext", "resolve_device", "resolve_precision", "guidance_for", "samples_dir", "sampling_spec",
           "sample_one"]
