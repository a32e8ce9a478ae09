"""Students: what a method samples with. Teacher solvers sample with the teacher itself;
distilled methods load their trained student from the cache (trained on first use)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError
from methods.base import Denoiser, Method


@dataclass
class LoadedStudent:
    denoiser: Denoiser
    fingerprint: str            # "teacher" for teacher solvers
    path: Path | None = None    # checkpoint folder of a trained student


def load_student(method: Method, teacher, steps: int, batching: str = "exact", progress: bool = True) -> LoadedStudent:
    """The denoiser ``method`` samples with at ``steps`` steps."""
    images_per_call = 1 if batching == "exact" else None
    if not method.trains:
        denoiser = Denoiser(teacher.unet, teacher.schedule, images_per_call=images_per_call,
                            scheduler_config=teacher.scheduler_config)
        return LoadedStudent(denoiser, "teacher")
    raise BenchError(f"{method.name}: this checkout has no training loop for distilled students yet")
