"""Students: what a method samples with. Teacher solvers sample with the teacher itself;
distilled methods sample with a released student, a cached one, or one trained on first use.

Cache layout (``cache_dir()/students``)::

    <method>-<fingerprint>/             a finished student, published atomically (temp dir + rename)
        student.json                    fingerprint, kind, method config, schedule, data, teacher,
                                        versions, training time, final loss (written last)
        unet/                           kind "unet": a diffusers UNet2DConditionModel folder
                                        (``save_pretrained(safe_serialization=True)``);
                                        ``LatentConsistencyModelPipeline`` / ``from_pretrained(DIR,
                                        subfolder="unet")`` load it
        pytorch_lora_weights.safetensors
                                        kind "lora": diffusers LoRA weights
                                        (``StableDiffusionPipeline.save_lora_weights``);
                                        ``pipe.load_lora_weights(DIR)`` loads them
    .<method>-<fingerprint>.work/checkpoints/step-XXXXXXXX/
                                        training checkpoints (bench.engine.training); a killed training
                                        resumes from the newest; removed once the student is saved

Where a student comes from (:func:`load_student`, flags ``--student-source`` and ``--retrain``):

1. **released**: a student shipped with the package (:mod:`bench.assets.released`; the toy world's are in
   ``bench/data/toy/students``), hash-checked, whose recorded training fingerprint equals the one
   asked for;
2. **trained**: the cache folder of that fingerprint, a student trained on this machine;
3. otherwise the student is trained now and cached.

``--student-source released`` allows only 1 (an error when none matches: what CI wants),
``--student-source trained`` skips 1, and ``--retrain`` trains anew even when 1 or 2 exist (the new
student replaces the cached one).

The training fingerprint names the recipe: teacher identity, method name and its training config
(not its sampling-only fields), the effective training schedule, the data source's identity (and
the step count for methods with one student per step count). What a recipe produces bit for bit
also depends on the library versions and, on a CPU, on the thread count; both are recorded in the
student's record (``student.json``, or the released manifest), not fingerprinted, so a library
upgrade does not orphan the released students. Samples are fingerprinted with the student's
weights (``LoadedStudent.identity``), so a retrained student never shares a sample folder or a
result row with the released one.

Schedules by teacher (:func:`bench.assets.train_data.training_scale`): on the toy world's teacher and on
random-weight teachers the harness trains with the method's toy schedule in place of the paper's
values (:mod:`methods.toy_schedule`, ``methods/configs/<method>/toy.toml``); on the ``tiny`` plumbing
teacher it also caps the schedule at a few steps (``bench.engine.training.apply_plumbing_schedule``).
The fingerprint records the values actually used.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.metadata as md
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from bench.assets.released import (
    ReleasedStudent,
    ReleasedStudentError,
    ReleasedStudents,
    rebuild_command,
    release_name,
)
from bench.assets.train_data import TrainingData, training_data_for, training_scale
from bench.core.atomic import atomic_write_json
from bench.core.errors import BenchError, MissingResourceError, UsageError
from bench.core.fingerprint import fingerprint, library_versions, sha256_file
from bench.core.machine import machine_record
from bench.core.paths import cache_dir
from bench.engine.training import Trainer, TrainSchedule, apply_plumbing_schedule
from methods.base import Denoiser, Method, Student, TrainingContext, TrainingMethod
from methods.toy_schedule import TOY_FIELD, apply_toy_schedule

log = logging.getLogger(__name__)

STUDENT_FILE = "student.json"
#: 2: library versions left the fingerprint (they are recorded in student.json)
STUDENT_FORMAT = 2
UNET_FOLDER = "unet"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: schedule/config fields that do not change the trained weights (kept out of the fingerprint)
NOT_IN_FINGERPRINT = ("checkpointing_steps", "checkpoints_total_limit")
#: --student-source values (see the module docstring)
STUDENT_SOURCES = ("auto", "released", "trained")


@dataclass
class StudentPolicy:
    """Where :func:`load_student` may take students from: the ``--student-source`` and
    ``--retrain`` flags of one command, and the students that command has retrained already (a
    ``bench run`` over several step counts retrains a shared student once, not per cell)."""

    source: str = "auto"
    retrain: bool = False
    max_train_steps: int | None = None     # --max-train-steps: overrides every method's schedule
    released: ReleasedStudents = field(default_factory=ReleasedStudents)
    retrained: set[str] = field(default_factory=set)   # fingerprints trained anew by this command

    def __post_init__(self):
        if self.source not in STUDENT_SOURCES:
            raise UsageError(f"--student-source {self.source!r}: choose one of {', '.join(STUDENT_SOURCES)}")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise UsageError(f"--max-train-steps must be >= 1, got {self.max_train_steps} (an untrained student "
                             "would be cached as if it were trained)")
        if self.retrain and self.source == "released":
            raise UsageError("--retrain trains a student on this machine; it cannot be combined with "
                             "--student-source released")


@dataclass
class LoadedStudent:
    denoiser: Denoiser
    fingerprint: str            # training fingerprint; "teacher" for teacher solvers
    path: Path | None = None    # folder of a trained student, or a released student's file
    info: dict = field(default_factory=dict)  # its student.json, or its released record
    # the method instance to sample with: the config the student was trained with (on toy
    # teachers the toy schedule's values, e.g. dmd's toy denoising_step_list); None: the caller's
    sampler: Method | None = None
    # "teacher" (teacher solvers), "released", "trained" (on this machine) or "published"
    # (``--student``: bench.engine.published)
    source: str = "teacher"
    weights: str = ""           # sha256 of the student's weight files ("" for teacher solvers)

    def sampling_method(self, method: Method) -> Method:
        """What samples this student: ``self.sampler`` when set, else ``method``."""
        return self.sampler if self.sampler is not None else method

    @property
    def identity(self) -> str:
        """What samples are fingerprinted with: source, training fingerprint and weights, so that
        a released and a retrained student of one recipe never share a sample folder or a row."""
        return f"{self.source}:{self.fingerprint}:{self.weights[:16]}" if self.weights else self.fingerprint

    @property
    def row_label(self) -> str:
        """The ``student`` field of result rows: "released", "trained", "published", or "" (no student)."""
        return self.source if self.source in ("released", "trained", "published") else ""


def students_dir() -> Path:
    return cache_dir() / "students"


def training_versions() -> dict[str, str]:
    versions = library_versions()
    for name in ("accelerate", "peft", "safetensors"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _mixed_precision(teacher: Any) -> str:
    dtype = next(teacher.unet.parameters()).dtype
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")


def training_plan(method: Method, teacher: Any, max_train_steps: int | None = None,
                  steps: int | None = None) -> tuple[Method, TrainSchedule]:
    """The method instance to train (its config with the toy schedule applied on toy teachers; for
    a method with one student per step count, the toy schedule of the ``steps`` student; capped at
    a few steps on plumbing teachers) and the schedule. Mixed precision follows the teacher's dtype
    (fp16 teacher: fp16 autocast with fp32 master weights). ``max_train_steps`` wins over all."""
    config = method.config
    scale = training_scale(teacher)
    if scale in ("toy", "plumbing"):
        config = apply_toy_schedule(config)
        if method.student_per_step_count and steps is not None:
            config = method.toy_config_for_steps(config, steps)
    if scale == "plumbing":
        config = apply_plumbing_schedule(method, config)
    train_method = method if config is method.config else type(method)(config)
    schedule = TrainSchedule.from_config(config, max_train_steps=max_train_steps,
                                         mixed_precision=_mixed_precision(teacher))
    return train_method, schedule


def unsupported_steps_on(method: Method, teacher: Any, steps: int) -> str | None:
    """Why ``method`` skips ``steps`` on ``teacher``, judged on the config it trains there (the toy
    schedule applied on toy teachers, not on real ones): ``Method.unsupported_steps_reason`` alone
    cannot know the teacher and also accepts a count that only the toy schedule serves."""
    if not method.trains:
        limit = teacher.schedule.num_train_timesteps       # one range check for every teacher solver
        if steps > limit:
            return f"{method.name}: at most {limit} steps (the teacher's schedule has {limit} timesteps); " \
                   f"{steps} skipped"
        return method.unsupported_steps_reason(steps)
    return strict_steps_reason(training_plan(method, teacher, None, steps)[0], steps)


def strict_steps_reason(method: Method, steps: int) -> str | None:
    """``method.unsupported_steps_reason(steps)`` for its config as it is, the toy schedule ignored."""
    config = method.config
    if TOY_FIELD in {f.name for f in dataclasses.fields(config)} and config.toy:
        method = type(method)(dataclasses.replace(config, **{TOY_FIELD: {}}))
    return method.unsupported_steps_reason(steps)


def _training_identity(method: TrainingMethod) -> dict[str, Any]:
    """The config fields that change the student, minus the schedule fields (the effective
    schedule is fingerprinted on its own) and the toy schedule (already applied to the effective
    config): so ``--max-train-steps 3`` and ``--config toy_max_train_steps=3`` name the same
    student on a toy teacher."""
    values = method.training_identity()
    schedule_fields = {f.name for f in dataclasses.fields(TrainSchedule)}
    return {k: v for k, v in values.items()
            if k not in NOT_IN_FINGERPRINT and k not in schedule_fields and k != TOY_FIELD}


def student_fingerprint(method: TrainingMethod, teacher: Any, schedule: TrainSchedule, data: TrainingData,
                        steps: int | None = None) -> str:
    """The training recipe's fingerprint (module docstring): no library versions, no thread count."""
    value = {
        "format": STUDENT_FORMAT,
        "teacher": teacher.identity,
        "method": method.name,
        "config": _training_identity(method),
        "schedule": {k: v for k, v in dataclasses.asdict(schedule).items() if k not in NOT_IN_FINGERPRINT},
        "data": data.identity,
    }
    if method.student_per_step_count:
        value["steps"] = steps
    return fingerprint(value)


# ------------------------------------------------------------------------------------------------
# Saving and loading student folders
# ------------------------------------------------------------------------------------------------


def save_lora_weights(unet: nn.Module, folder: Path) -> None:
    """The peft adapter of ``unet`` as diffusers LoRA weights (``unet.``-prefixed peft keys, the
    adapter's LoraConfig as metadata), loadable by ``StableDiffusionPipeline.load_lora_weights``.

    The keys stay in peft format (``...to_q.lora_A.weight``). ``convert_state_dict_to_diffusers``
    is not applied: with the LCM-LoRA target modules it renames only the attention projections
    (``to_q.lora.down``) and leaves ``proj_in.lora_A`` as it is, and diffusers 0.42's loader
    decides the format from the first key alone, so it silently drops every attention LoRA
    weight of such a mixed file (tests/test_lcm.py checks the U-Net output after loading)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(unet)
    metadata = unet.peft_config["default"].to_dict() if hasattr(unet, "peft_config") else None
    if metadata is not None:   # peft keeps target_modules as a set: its order (hash-seeded) would change the file
        metadata = {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in metadata.items()}
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=layers, safe_serialization=True,
                                              weight_name=LORA_WEIGHT_NAME, unet_lora_adapter_metadata=metadata)


def write_student_files(student: Student, folder: Path) -> None:
    if student.kind == "unet":
        student.unet.save_pretrained(str(folder / UNET_FOLDER), safe_serialization=True)
    elif student.kind == "lora":
        save_lora_weights(student.unet, folder)
    else:
        raise BenchError(f"unknown student kind {student.kind!r} (expected 'unet' or 'lora')")


def read_student_info(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / STUDENT_FILE).read_text())
    except (OSError, ValueError):
        return None


def student_complete(folder: Path, fp: str) -> bool:
    info = read_student_info(folder)
    return info is not None and info.get("fingerprint") == fp


def weights_digest(folder: Path, canonical: bool = True) -> str:
    """sha256 over a student folder's weight files (every file but student.json, by relative path).
    ``canonical``: a ``.safetensors`` file is hashed with its JSON header's keys sorted, since the
    library writes a metadata table of two or more keys in a per-process hash order (the tensors'
    bytes and offsets do not move); ``False``: the raw bytes (records written before 2026-12-07)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STUDENT_FILE):
        file_digest = canonical_safetensors_sha256(path) if canonical and path.suffix == ".safetensors" \
            else sha256_file(path)
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_digest}\n".encode())
    return digest.hexdigest()


def canonical_safetensors_sha256(path: Path) -> str:
    """sha256 of a safetensors file with its header re-serialised with sorted keys."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        digest = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def save_student(student: Student, folder: Path, info: dict, replace: bool = False) -> Path:
    """Write a student folder atomically: files into a temp folder beside ``folder``, student.json
    (with the weights' sha256) last, then one rename. An existing complete folder with the same
    fingerprint wins (another process finished first) unless ``replace`` (``--retrain``); an
    incomplete or different one is replaced. The old folder is renamed aside before the new one
    takes its place, so a kill at any point leaves one complete student or the old one."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    aside = None
    try:
        write_student_files(student, tmp)
        atomic_write_json(tmp / STUDENT_FILE, {**info, "weights_sha256": weights_digest(tmp)})
        tmp.chmod(0o755)
        if folder.exists():
            if not replace and student_complete(folder, info["fingerprint"]):
                return folder
            aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old.tmp", dir=folder.parent))
            os.replace(folder, aside / folder.name)
        os.replace(tmp, folder)
    finally:
        for leftover in (tmp, aside):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return folder


def _place(unet: nn.Module, like: nn.Module) -> nn.Module:
    param = next(like.parameters())
    unet = nn.Module.to(unet, device=param.device, dtype=param.dtype)
    return unet.eval().requires_grad_(False)


def _lora_unet(teacher: Any, folder: Path, weight_name: str, fuse: bool) -> nn.Module:
    """A copy of the teacher U-Net with the LoRA weights of ``folder/weight_name`` (cast to the
    teacher's dtype; released ones are float16) loaded and, with ``fuse``, merged into it."""
    from diffusers import StableDiffusionPipeline

    unet = copy.deepcopy(teacher.unet)
    dtype = next(teacher.unet.parameters()).dtype
    state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
        str(folder), weight_name=weight_name, return_lora_metadata=True)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet=unet, metadata=metadata)
    if fuse:
        unet.fuse_lora(lora_scale=1.0)
        unet.unload_lora()
    return _place(unet, teacher.unet)


def load_student_unet(folder: Path, teacher: Any, fuse: bool = True) -> nn.Module:
    """The U-Net a student folder describes, on the teacher's device and dtype. LoRA students are
    loaded onto a fresh copy of the teacher U-Net and (``fuse=True``) merged into its weights, so
    sampling runs a plain U-Net at the teacher's speed."""
    folder = Path(folder)
    info = read_student_info(folder) or {}
    kind = info.get("kind", "unet")
    if kind == "unet":
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder=UNET_FOLDER)
        return _place(unet, teacher.unet)
    if kind == "lora":
        return _lora_unet(teacher, folder, LORA_WEIGHT_NAME, fuse)
    raise BenchError(f"{folder / STUDENT_FILE}: unknown student kind {kind!r}")


def load_released_unet(store: ReleasedStudents, released: ReleasedStudent, teacher: Any) -> nn.Module:
    """The U-Net of a released student (hash-checked first), on the teacher's device and dtype."""
    if released.kind == "lora":
        store.verify(released)
        return _lora_unet(teacher, released.path.parent, released.path.name, fuse=True)
    if released.kind != "unet":
        raise ReleasedStudentError(f"{store.manifest_path}: student {released.name} has unknown kind {released.kind!r}")
    from diffusers import UNet2DConditionModel

    tensors, _ = store.read(released)
    unet = UNet2DConditionModel.from_config(released.record["unet_config"])
    missing, unexpected = unet.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ReleasedStudentError(
            f"released student {released.name} ({released.path}) does not fit the U-Net config of its record "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); rebuild it with `{rebuild_command(released.name)}`")
    return _place(unet, teacher.unet)


# ------------------------------------------------------------------------------------------------
# Train or load
# ------------------------------------------------------------------------------------------------


def train_student(method: Method, teacher: Any, data: TrainingData, schedule: TrainSchedule, folder: Path,
                  fp: str, steps: int | None = None, progress: bool = True, replace: bool = False) -> Path:
    """Train ``method`` (resuming from checkpoints in the work folder beside ``folder``) and save
    the student atomically into ``folder`` (replacing a finished one there with ``replace``)."""
    if not getattr(data, "has_images", True) and method.needs_images:
        raise UsageError(f"{method.name} trains on real images, and the training data {data.identity} has captions "
                         "only: point BENCH_TRAIN_DATA at a folder of images with same-stem .txt captions")
    work = folder.parent / f".{folder.name}.work"
    device = next(teacher.unet.parameters()).device
    trainer = Trainer(schedule, work / "checkpoints", device=device, progress=progress,
                      description=f"train {method.name}")
    log.info("training %s on %s (%d steps, batch %d, lr %g) into %s", method.name, teacher.name,
             schedule.max_train_steps, schedule.train_batch_size, schedule.learning_rate, folder)
    student = method.train(TrainingContext(teacher, trainer, data, steps if method.student_per_step_count else None))
    report = trainer.report
    info = {
        "fingerprint": fp,
        "format": STUDENT_FORMAT,
        "method": method.name,
        "kind": student.kind,
        "config": method.config_dict(),
        "schedule": dataclasses.asdict(trainer.schedule),
        "data": data.identity,
        "teacher": teacher.identity,
        "versions": training_versions(),
        "steps": steps if method.student_per_step_count else None,
        "trained_steps": report.steps if report else None,
        "training_seconds": report.seconds if report else None,
        "final_loss": report.final_loss if report else None,
        "resumed_from_step": report.resumed_from if report else None,
        "fp16_skipped_steps": report.skipped_steps if report else None,
        "device": str(device),
        # not in the fingerprint, but CPU training is bit-reproducible only at one thread count
        "torch_threads": torch.get_num_threads(),
        "machine": machine_record(),
        "metadata": student.metadata,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if trainer.is_main_process:
        save_student(student, folder, info, replace=replace)
        shutil.rmtree(work, ignore_errors=True)
    trainer.wait_for_everyone()
    return folder


def _no_released_match(method: Method, fp: str, steps: int | None, store: ReleasedStudents, teacher: Any) -> str:
    """Why no released student serves ``fp``: the one-line message for ``--student-source released``
    and the notice before training in ``auto``."""
    name = release_name(method.name, steps if method.student_per_step_count else None)
    same_name = store.get(name)
    if same_name is None:
        return f"no released student of {name} in {store.root} (fingerprint {fp})"
    released_teacher = same_name.record.get("teacher") or {}
    if released_teacher != teacher.identity:
        return (f"no released student of {name} for teacher {teacher.identity.get('name', teacher.identity)} "
                f"(the one in {store.root} is of teacher {released_teacher.get('name', released_teacher)})")
    return (f"the released student {name} ({same_name.path.name}) was trained under fingerprint "
            f"{same_name.fingerprint}, this recipe is {fp} (a config, schedule or teacher differs; rebuild the "
            f"released ones with `{rebuild_command()}` if that change is meant to stay)")


def released_student_for(method: Method, teacher: Any, steps: int, policy: StudentPolicy) -> ReleasedStudent | None:
    """The released student ``load_student`` would take for ``method`` at ``steps`` under ``policy``
    (None for teacher solvers, ``--student-source trained`` and ``--retrain``), without loading it;
    with ``--student-source released`` and no match, the error ``load_student`` would raise, so
    that ``bench run`` can stop before any sampling or scoring."""
    if not method.trains or policy.source == "trained" or policy.retrain:
        return None
    train_method, schedule = training_plan(method, teacher, policy.max_train_steps, steps)
    data = training_data_for(teacher, seed=schedule.seed)
    return _released_match(method, teacher, student_fingerprint(train_method, teacher, schedule, data, steps), steps,
                           policy)


def _released_match(method: Method, teacher: Any, fp: str, steps: int, policy: StudentPolicy) -> ReleasedStudent | None:
    """The released student of fingerprint ``fp``; None when there is none (an error with
    ``--student-source released``)."""
    released = policy.released.find(fp)
    if released is None and policy.source == "released":
        raise MissingResourceError(
            f"{_no_released_match(method, fp, steps, policy.released, teacher)}; --student-source released uses "
            "released students only: drop it to train one on this machine")
    return released


def load_student(method: Method, teacher: Any, steps: int, batching: str = "exact", progress: bool = True, *,
                 max_train_steps: int | None = None, data: TrainingData | None = None,
                 policy: StudentPolicy | None = None) -> LoadedStudent:
    """The denoiser ``method`` samples with at ``steps`` steps: the teacher for teacher solvers;
    for distilled methods a released student, else the cached one, else one trained now (module
    docstring; ``policy`` narrows the sources).

    ``max_train_steps`` overrides the schedule (``--max-train-steps``; default: the policy's); ``data``
    overrides the training source (default: ``bench.assets.train_data.training_data_for(teacher)``)."""
    policy = policy if policy is not None else StudentPolicy()
    if max_train_steps is None:
        max_train_steps = policy.max_train_steps
    images_per_call = 1 if batching == "exact" else None

    def denoiser_of(unet: nn.Module) -> Denoiser:
        return Denoiser(unet, teacher.schedule, images_per_call=images_per_call,
                        scheduler_config=teacher.scheduler_config)

    if not method.trains:
        return LoadedStudent(denoiser_of(teacher.unet), "teacher")
    train_method, schedule = training_plan(method, teacher, max_train_steps, steps)
    if data is None:
        data = training_data_for(teacher, seed=schedule.seed)
    fp = student_fingerprint(train_method, teacher, schedule, data, steps)
    retrain_now = policy.retrain and fp not in policy.retrained
    released = (None if policy.source == "trained" or policy.retrain
                else _released_match(method, teacher, fp, steps, policy))
    if released is not None:
        unet = load_released_unet(policy.released, released, teacher)
        log.info("%s: released student %s (%s)", method.name, released.name, released.path)
        return LoadedStudent(denoiser_of(unet), fp, released.path, released.record, sampler=train_method,
                             source="released", weights=released.sha256)
    folder = students_dir() / f"{method.name}-{fp}"
    if retrain_now or not student_complete(folder, fp):
        for stale in folder.parent.glob(f".{folder.name}.*.tmp") if folder.parent.is_dir() else ():
            shutil.rmtree(stale, ignore_errors=True)     # a save that a kill interrupted
        if not retrain_now and policy.source == "auto" and training_scale(teacher) == "toy":
            log.warning("%s: %s; training one on this machine (%d steps)", method.name,
                        _no_released_match(method, fp, steps, policy.released, teacher), schedule.max_train_steps)
        train_student(train_method, teacher, data, schedule, folder, fp, steps, progress, replace=retrain_now)
        if retrain_now:
            policy.retrained.add(fp)
    info = read_student_info(folder) or {}
    weights = verified_weights(folder, info)
    unet = load_student_unet(folder, teacher)
    return LoadedStudent(denoiser_of(unet), fp, folder, info, sampler=train_method, source="trained",
                         weights=weights)


def verified_weights(folder: Path, info: dict) -> str:
    """The sha256 of a cached student's weight files, checked against the one its student.json
    recorded when it was saved: a damaged folder is one error naming it and the fix, never a
    student that samples black images. Folders saved before the record had it are hashed as they are."""
    actual = weights_digest(folder)
    recorded = info.get("weights_sha256")
    if recorded is not None and recorded != actual and recorded == weights_digest(folder, canonical=False):
        return recorded                                 # recorded as raw bytes, before canonical hashing
    if recorded is not None and recorded != actual:
        raise BenchError(f"cached student {folder} is damaged: its weight files hash to {actual[:12]}..., not the "
                         f"{recorded[:12]}... recorded in {STUDENT_FILE} when it was saved; delete the folder (or "
                         "run with --retrain) to train it again")
    return actual


def release_student(student: LoadedStudent, store: ReleasedStudents) -> ReleasedStudent:
    """Publish a student trained on this machine (``bench toy train --what students``): its
    weights in float16 (a LoRA student: its LoRA weights only) and its record."""
    if student.source != "trained" or student.path is None:
        raise BenchError(f"only a student trained on this machine can be released, not a {student.source} one")
    info = student.info
    if info["kind"] == "unet":
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(str(student.path), subfolder=UNET_FOLDER)
        tensors, metadata, extra = unet.state_dict(), {}, {"unet_config": json.loads(json.dumps(dict(unet.config)))}
    else:
        with safe_open(str(student.path / LORA_WEIGHT_NAME), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        extra = {}
    record = {
        "method": info["method"], "steps": info["steps"], "kind": info["kind"], "fingerprint": student.fingerprint,
        "config": info["config"], "schedule": info["schedule"], "teacher": info["teacher"], "data": info["data"],
        "training": {key: info.get(key) for key in ("trained_steps", "training_seconds", "final_loss", "torch_threads",
                                                    "device", "created", "weights_sha256")},
        "machine": info.get("machine") or machine_record(),
        "versions": info["versions"],
        **extra,
    }
    name = release_name(info["method"], info["steps"])
    return store.publish(name, tensors, metadata, record)


def export_student(student: LoadedStudent, out: str | os.PathLike) -> Path:
    """Copy a student to ``out`` as a student folder (``bench train --out DIR``), atomically. An
    existing ``out`` holding the same student is left alone; anything else there is an error. A
    released student is written in the cache's layout (its float16 weights; a U-Net as a diffusers
    folder, LoRA weights as ``pytorch_lora_weights.safetensors``) with its record as student.json."""
    if student.path is None:
        raise UsageError("a teacher solver has no student to export")
    out = Path(out).expanduser()
    if out.exists():
        if student_complete(out, student.fingerprint):
            return out
        raise UsageError(f"--out {out} exists and is not this student; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        if student.source == "released":
            if student.info["kind"] == "lora":
                shutil.copyfile(student.path, tmp / LORA_WEIGHT_NAME)
            else:
                student.denoiser.unet.save_pretrained(str(tmp / UNET_FOLDER), safe_serialization=True)
            atomic_write_json(tmp / STUDENT_FILE, {**student.info, "source": "released"})
        else:
            shutil.copytree(student.path, tmp, dirs_exist_ok=True)
        tmp.chmod(0o755)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = ["LoadedStudent", "StudentPolicy", "STUDENT_SOURCES", "load_student", "train_student", "save_student",
           "load_student_unet", "load_released_unet", "release_student", "export_student", "student_fingerprint",
           "training_plan", "students_dir", "read_student_info", "save_lora_weights", "weights_digest",
           "released_student_for", "unsupported_steps_on", "strict_steps_reason"]
