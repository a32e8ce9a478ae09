"""Students: what a method samples with. Teacher solvers sample with the teacher itself;
distilled methods load their trained student from the cache, training it on first use.

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
                                        training checkpoints (bench.training); a killed training
                                        resumes from the newest; removed once the student is saved

The fingerprint hashes everything that changes the trained student: teacher identity, method name
and its training config (not its sampling-only fields), the training schedule, the data source's
identity, library versions (and the step count for methods with one student per step count).

Toy schedule: on toy-world and random-weight teachers the harness trains with the method's
``toy_*`` config fields in place of the paper's (``bench.training.apply_toy_schedule``); the
fingerprint records the values actually used.
"""
from __future__ import annotations

import copy
import dataclasses
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
from torch import nn

from bench.atomic import atomic_write_json
from bench.errors import BenchError, UsageError
from bench.fingerprint import fingerprint, library_versions
from bench.paths import cache_dir
from bench.train_data import TrainingData, is_random_weights_teacher, is_toy_world_teacher, training_data_for
from bench.training import TrainSchedule, Trainer, apply_toy_schedule
from methods.base import Denoiser, Method, Student

log = logging.getLogger(__name__)

STUDENT_FILE = "student.json"
STUDENT_FORMAT = 1
UNET_FOLDER = "unet"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: schedule/config fields that do not change the trained weights (kept out of the fingerprint)
NOT_IN_FINGERPRINT = ("checkpointing_steps", "checkpoints_total_limit", "toy_checkpointing_steps")


@dataclass
class LoadedStudent:
    denoiser: Denoiser
    fingerprint: str            # "teacher" for teacher solvers
    path: Path | None = None    # folder of a trained student
    info: dict = field(default_factory=dict)  # its student.json
    # the method instance to sample with: the config the student was trained with (on toy
    # teachers the toy schedule's values, e.g. dmd's toy denoising_step_list); None: the caller's
    sampler: Method | None = None

    def sampling_method(self, method: Method) -> Method:
        """What samples this student: ``self.sampler`` when set, else ``method``."""
        return self.sampler if self.sampler is not None else method


def students_dir() -> Path:
    return cache_dir() / "students"


def training_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = library_versions()
    for name in ("accelerate", "peft", "safetensors"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def is_toy_teacher(teacher: Any) -> bool:
    """Teachers the toy schedule applies to: the toy world's teacher and random-weight teachers."""
    return is_toy_world_teacher(teacher) or is_random_weights_teacher(teacher)


def _mixed_precision(teacher: Any) -> str:
    dtype = next(teacher.unet.parameters()).dtype
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")


def training_plan(method: Method, teacher: Any, max_train_steps: int | None = None,
                  steps: int | None = None) -> tuple[Method, TrainSchedule]:
    """The method instance to train (its config with the toy schedule applied on toy teachers; for
    a method with one student per step count, the toy schedule of the ``steps`` student) and the
    schedule. Mixed precision follows the teacher's dtype (fp16 teacher: fp16 autocast with fp32
    master weights)."""
    config = method.config
    if is_toy_teacher(teacher):
        config = apply_toy_schedule(config)
        if method.student_per_step_count and steps is not None:
            config = method.toy_config_for_steps(config, steps)
    train_method = method if config is method.config else type(method)(config)
    schedule = TrainSchedule.from_config(config, max_train_steps=max_train_steps,
                                         mixed_precision=_mixed_precision(teacher))
    return train_method, schedule


def _training_identity(method: Method) -> dict[str, Any]:
    """The config fields that change the student, minus the schedule fields (the effective
    schedule is fingerprinted on its own) and the ``toy_*`` fields (already applied to the
    effective config): so ``--max-train-steps 3`` and ``--config toy_max_train_steps=3`` name the
    same student on a toy teacher."""
    identity = getattr(method, "training_identity", None)
    values = identity() if callable(identity) else method.config_dict()
    schedule_fields = {f.name for f in dataclasses.fields(TrainSchedule)}
    return {k: v for k, v in values.items()
            if k not in NOT_IN_FINGERPRINT and k not in schedule_fields and not k.startswith("toy_")}


def student_fingerprint(method: Method, teacher: Any, schedule: TrainSchedule, data: TrainingData,
                        steps: int | None = None) -> str:
    value = {
        "format": STUDENT_FORMAT,
        "teacher": teacher.identity,
        "method": method.name,
        "config": _training_identity(method),
        "schedule": {k: v for k, v in dataclasses.asdict(schedule).items() if k not in NOT_IN_FINGERPRINT},
        "data": data.identity,
        "versions": training_versions(),
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


def save_student(student: Student, folder: Path, info: dict) -> Path:
    """Write a student folder atomically: files into a temp folder beside ``folder``, student.json
    last, then one rename. An existing complete folder with the same fingerprint wins (another
    process finished first); an incomplete or different one is replaced."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        write_student_files(student, tmp)
        atomic_write_json(tmp / STUDENT_FILE, info)
        tmp.chmod(0o755)
        if folder.exists():
            if student_complete(folder, info["fingerprint"]):
                return folder
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _place(unet: nn.Module, like: nn.Module) -> nn.Module:
    param = next(like.parameters())
    unet = nn.Module.to(unet, device=param.device, dtype=param.dtype)
    return unet.eval().requires_grad_(False)


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
        from diffusers import StableDiffusionPipeline

        unet = copy.deepcopy(teacher.unet)
        state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
            str(folder), weight_name=LORA_WEIGHT_NAME, return_lora_metadata=True)
        StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet=unet, metadata=metadata)
        if fuse:
            unet.fuse_lora(lora_scale=1.0)
            unet.unload_lora()
        return _place(unet, teacher.unet)
    raise BenchError(f"{folder / STUDENT_FILE}: unknown student kind {kind!r}")


# ------------------------------------------------------------------------------------------------
# Train or load
# ------------------------------------------------------------------------------------------------


def train_student(method: Method, teacher: Any, data: TrainingData, schedule: TrainSchedule, folder: Path,
                  fp: str, steps: int | None = None, progress: bool = True) -> Path:
    """Train ``method`` (resuming from checkpoints in the work folder beside ``folder``) and save
    the student atomically into ``folder``."""
    work = folder.parent / f".{folder.name}.work"
    device = next(teacher.unet.parameters()).device
    trainer = Trainer(schedule, work / "checkpoints", device=device, progress=progress,
                      description=f"train {method.name}")
    log.info("training %s on %s (%d steps, batch %d, lr %g) into %s", method.name, teacher.name,
             schedule.max_train_steps, schedule.train_batch_size, schedule.learning_rate, folder)
    student = method.train(teacher, data, trainer, steps=steps if method.student_per_step_count else None)
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
        "metadata": student.metadata,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if trainer.is_main_process:
        save_student(student, folder, info)
        shutil.rmtree(work, ignore_errors=True)
    trainer.wait_for_everyone()
    return folder


def load_student(method: Method, teacher: Any, steps: int, batching: str = "exact", progress: bool = True, *,
                 max_train_steps: int | None = None, data: TrainingData | None = None) -> LoadedStudent:
    """The denoiser ``method`` samples with at ``steps`` steps: the teacher for teacher solvers;
    for distilled methods the cached student, trained first when the cache has none.

    ``max_train_steps`` overrides the schedule (``bench train --max-train-steps``); ``data``
    overrides the training source (default: ``bench.train_data.training_data_for(teacher)``)."""
    images_per_call = 1 if batching == "exact" else None
    if not method.trains:
        denoiser = Denoiser(teacher.unet, teacher.schedule, images_per_call=images_per_call,
                            scheduler_config=teacher.scheduler_config)
        return LoadedStudent(denoiser, "teacher")
    train_method, schedule = training_plan(method, teacher, max_train_steps, steps)
    if data is None:
        data = training_data_for(teacher, seed=schedule.seed)
    fp = student_fingerprint(train_method, teacher, schedule, data, steps)
    folder = students_dir() / f"{method.name}-{fp}"
    if not student_complete(folder, fp):
        for stale in folder.parent.glob(f".{folder.name}.*.tmp") if folder.parent.is_dir() else ():
            shutil.rmtree(stale, ignore_errors=True)     # a save that a kill interrupted
        train_student(train_method, teacher, data, schedule, folder, fp, steps, progress)
    unet = load_student_unet(folder, teacher)
    denoiser = Denoiser(unet, teacher.schedule, images_per_call=images_per_call,
                        scheduler_config=teacher.scheduler_config)
    return LoadedStudent(denoiser, fp, folder, read_student_info(folder) or {}, sampler=train_method)


def export_student(student: LoadedStudent, out: str | os.PathLike) -> Path:
    """Copy a trained student's folder to ``out`` (``bench train --out DIR``), atomically. An
    existing ``out`` holding the same student is left alone; anything else there is an error."""
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
        shutil.copytree(student.path, tmp, dirs_exist_ok=True)
        tmp.chmod(0o755)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = ["LoadedStudent", "load_student", "train_student", "save_student", "load_student_unet", "export_student",
           "student_fingerprint", "training_plan", "students_dir", "is_toy_teacher", "read_student_info",
           "save_lora_weights"]
