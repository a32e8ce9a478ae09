"""The toy world's released students: the student of every registered distillation method at its
default toy config, trained on the committed toy teacher and shipped in ``bench/data/toy/students``
(format and lookup: :mod:`bench.assets.released`), so that ``bench run`` on the toy world samples and
scores them without training.

    python -m bench toy train --what students [--students lcm,mcm-s4] [--threads 1] [--retrain]
    python -m bench toy verify

Training goes through the harness's own cache (``BENCH_CACHE_DIR``): a killed rebuild resumes
from its checkpoints, and a student already trained on this machine under the same fingerprint is
released as it is unless ``--retrain``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bench.assets.released import (
    ReleasedStudent,
    ReleasedStudentError,
    ReleasedStudents,
    rebuild_command,
    release_name,
)
from bench.assets.teachers.built import load_toy_teacher
from bench.assets.train_data import training_data_for
from bench.core.errors import UsageError
from bench.engine.students import (
    StudentPolicy,
    load_student,
    release_student,
    student_fingerprint,
    training_plan,
)
from methods import get_method_class, method_names

log = logging.getLogger(__name__)

#: the step counts released for a method with one student per step count (the leaderboard's)
RELEASED_STEP_COUNTS = (1, 2, 4, 8)


@dataclass(frozen=True)
class PlannedStudent:
    """One released student: a registered method at its default config (and S where it applies)."""

    method: str
    steps: int | None

    @property
    def name(self) -> str:
        return release_name(self.method, self.steps)

    def load_method(self):
        return get_method_class(self.method)()


def released_plan() -> list[PlannedStudent]:
    """Every student to release, from the method registry: each method that trains, once, or once
    per S of :data:`RELEASED_STEP_COUNTS` it supports when it trains one student per step count."""
    plan = []
    for name in method_names():
        cls = get_method_class(name)
        if not cls.trains:
            continue
        if cls.student_per_step_count:
            plan += [PlannedStudent(name, S) for S in RELEASED_STEP_COUNTS if cls().unsupported_steps_reason(S) is None]
        else:
            plan.append(PlannedStudent(name, None))
    return plan


def select(plan: list[PlannedStudent], names: str | None) -> list[PlannedStudent]:
    """The planned students named in ``names`` (comma-separated release names; None: all)."""
    if not names:
        return plan
    known = {p.name: p for p in plan}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UsageError(f"--students: unknown {', '.join(unknown)}; released students are {', '.join(known)}")
    return [known[n] for n in dict.fromkeys(wanted)]


def _toy_teacher(root: Path | None):
    return load_toy_teacher(None if root is None else root)


def build_students(names: str | None = None, root: Path | None = None, retrain: bool = False,
                   progress: bool = True) -> list[ReleasedStudent]:
    """Train (or take from the cache) and release the planned students named in ``names``, on the
    toy teacher in ``root`` (default: the committed one), into ``root/students``."""
    chosen = select(released_plan(), names)
    teacher = _toy_teacher(root)
    store = ReleasedStudents(None if root is None else Path(root) / "students")
    policy = StudentPolicy(source="trained", retrain=retrain, released=store)
    released = []
    for planned in chosen:
        loaded = load_student(planned.load_method(), teacher, steps=planned.steps or 1, progress=progress,
                              policy=policy)
        released.append(release_student(loaded, store))
        log.info("toy student %s released from %s", planned.name, loaded.path)
    return released


def verify_students(root: Path | None = None) -> list[str]:
    """One line per planned student: its file matches its recorded sha256 and its recorded
    fingerprint is the one the current code and toy teacher train under. Raises
    :class:`ReleasedStudentError` (naming the rebuild command) at the first one that does not."""
    teacher = _toy_teacher(root)
    store = ReleasedStudents(None if root is None else Path(root) / "students")
    lines = []
    for planned in released_plan():
        released = store.get(planned.name)
        if released is None:
            raise ReleasedStudentError(f"released student {planned.name} has no record in {store.manifest_path}; "
                                       f"build it with `{rebuild_command(planned.name)}`")
        store.verify(released)
        train_method, schedule = training_plan(planned.load_method(), teacher, steps=planned.steps)
        data = training_data_for(teacher, seed=schedule.seed)
        expected = student_fingerprint(train_method, teacher, schedule, data, planned.steps)
        if released.fingerprint != expected:
            raise ReleasedStudentError(
                f"released student {planned.name} is stale: it was trained under fingerprint {released.fingerprint}, "
                f"the current code and toy teacher train under {expected} (a default config, toy schedule or the "
                f"teacher changed); rebuild it with `{rebuild_command(planned.name)}`")
        lines.append(f"toy student {planned.name}: ok ({released.path.name}, {released.record['bytes']} bytes, "
                     f"sha256 as recorded, fingerprint {released.fingerprint} current)")
    return lines


__all__ = ["RELEASED_STEP_COUNTS", "PlannedStudent", "released_plan", "build_students", "verify_students"]
