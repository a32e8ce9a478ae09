"""Published students in the harness (``--student`` on ``sample``, ``run`` and ``profile``).

A published student replaces the student a distilled method would train: the method's sampler runs
it unchanged (``LCM``'s for LCM and LCM-LoRA releases, ``DMD2``'s for DMD2's generator), so image i
is what the stock diffusers pipeline makes with ``torch.Generator("cpu").manual_seed(seed_i)``,
seed_i being the per-image seed recorded in ``metadata.json`` (README, "Published students").

Its U-Net, by format (:mod:`bench.assets.published`):

- ``unet-folder`` / ``pipeline``: ``UNet2DConditionModel.from_pretrained``;
- ``lora``: the teacher U-Net with the LoRA loaded by diffusers' ``lora_state_dict`` /
  ``load_lora_into_unet`` (diffusers, peft and kohya keys, as ``load_lora_weights``) and fused;
- ``state-dict``: the teacher's U-Net architecture with the state dict loaded ``strict=True``, as
  tianweiy/DMD2 ``main/test_folder_sd.py::create_generator`` loads its SD-1.5 generators.

A ``pipeline`` student brings its own VAE, text encoder, tokenizer and scheduler config: unless
``--teacher``/``--teacher-path`` says otherwise, the harness loads them from the student's folder
(what its stock pipeline uses), and the student's U-Net is that folder's ``unet/``.

Samples are fingerprinted with the student's file hashes (``LoadedStudent.identity``); result rows
say ``published`` in their student column and carry the student's label as method name.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.assets.published import LocatedStudent, locate_student, read_state_dict
from bench.assets.teachers import load_teacher
from bench.assets.teachers.model import TEACHER_SPECS
from bench.assets.zoo import StudentRef, parse_student_ref
from bench.core.errors import UsageError
from bench.core.spec import apply_config_overrides, load_method
from bench.engine.students import LoadedStudent, _lora_unet, _place
from methods.base import Denoiser, Method

log = logging.getLogger(__name__)

#: teacher identity key that marks a teacher loaded from a pipeline student's own folder
OWN_TEACHER_KEY = "published_pipeline"
#: `bench profile --teacher` value (and default) for the networks a pipeline student brings
OWN_TEACHER = "own"


@dataclass
class PublishedStudent:
    """A ``--student`` reference resolved to its files, the method that samples it and the preset."""

    ref: StudentRef
    located: LocatedStudent
    method: Method                   # the sampler: the zoo preset's config, then the user's --config
    guidance_scale: float | None     # the released preset's guidance (None: the method's default)

    @property
    def label(self) -> str:
        return self.ref.label

    @property
    def own_teacher(self) -> bool:
        """A pipeline student brings the networks around its U-Net (they are the teacher it samples with)."""
        return self.located.format == "pipeline"

    @property
    def teacher_name(self) -> str | None:
        """The `bench list` teacher it fits, when the zoo says so (a pipeline student: None, its own)."""
        entry = self.ref.entry
        if entry is None or self.own_teacher:
            return None
        return entry.teacher if entry.teacher in TEACHER_SPECS else None


def resolve_published(text: str, method_name: str | None = None, config: str | None = None) -> PublishedStudent:
    """``--student text`` (with ``--method`` / ``--config``): the files found or fetched, and the
    sampling method. Fails before any model is loaded."""
    ref = parse_student_ref(text)
    entry = ref.entry
    if entry is not None and method_name is not None and method_name != entry.method:
        raise UsageError(f"--student {entry.name} is sampled by {entry.method}, not --method {method_name}; drop "
                         "--method (or pass the student's files as --student PATH to sample them another way)")
    name = method_name or (entry.method if entry is not None else None)
    if name is None:
        raise UsageError(f"--student {text}: name the method whose sampler runs it with --method (e.g. lcm, "
                         "lcm-lora, dmd2); only zoo entries (`bench list`) carry their own")
    base = load_method(name)
    if not base.trains:
        raise UsageError(f"--student gives a distilled method its student; {name} is a teacher solver, it samples "
                         "with the teacher")
    method = type(base)(apply_config_overrides(apply_config_overrides(base.config, entry.config if entry else None),
                                               config))
    located = locate_student(ref)
    guidance = entry.guidance_scale if entry is not None else None
    return PublishedStudent(ref, located, method, guidance)


def published_unet(student: PublishedStudent, teacher: Any) -> nn.Module:
    """The student's U-Net on the teacher's device and dtype (LoRA fused into a copy of the teacher's)."""
    located = student.located
    if located.format in ("unet-folder", "pipeline"):
        if student.own_teacher and teacher.identity.get(OWN_TEACHER_KEY) == located.weights:
            return teacher.unet                        # the teacher was loaded from this pipeline
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(str(located.root), subfolder=located.unet_subfolder or None,
                                                    local_files_only=True)
        _check_fits(unet.config, teacher, located)
        return _place(unet, teacher.unet)
    if located.format == "lora":
        return _lora_unet(teacher, located.root.parent, located.root.name, fuse=True)
    if located.format == "state-dict":
        return _state_dict_unet(read_state_dict(located.root), teacher, located)
    raise UsageError(f"{located.root}: unknown student format {located.format!r}")


def _state_dict_unet(state: dict[str, torch.Tensor], teacher: Any, located: LocatedStudent) -> nn.Module:
    """The teacher's U-Net architecture with ``state`` loaded strictly (every key, nothing else)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(teacher.unet.config)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UsageError(
            f"{located.root} is not a state dict of teacher {teacher.name}'s U-Net: {len(missing)} of its weights "
            f"missing (e.g. {missing[:2]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:2]}); pass the "
            "teacher it was distilled from with --teacher / --teacher-path")
    return _place(unet, teacher.unet)


def _check_fits(config: Any, teacher: Any, located: LocatedStudent) -> None:
    theirs = teacher.unet.config
    for key in ("in_channels", "out_channels", "cross_attention_dim"):
        if config.get(key) != theirs.get(key):
            raise UsageError(f"student {located.label}'s U-Net ({key} {config.get(key)}) does not fit teacher "
                             f"{teacher.name} ({key} {theirs.get(key)}); pass the teacher it was distilled from with "
                             "--teacher / --teacher-path")


def load_own_teacher(student: PublishedStudent, device: Any, dtype: torch.dtype) -> Any:
    """The networks a pipeline student brings (VAE, text encoder, tokenizer, scheduler config; its
    U-Net is the student), loaded as a teacher from its folder."""
    teacher = load_teacher(None, path=student.located.root, device=device, dtype=dtype)
    teacher.identity[OWN_TEACHER_KEY] = student.located.weights
    return teacher


def load_published(student: PublishedStudent, teacher: Any, batching: str = "exact") -> LoadedStudent:
    """A :class:`LoadedStudent` for ``student`` on ``teacher`` (``source="published"``)."""
    unet = published_unet(student, teacher)
    denoiser = Denoiser(unet, teacher.schedule, images_per_call=1 if batching == "exact" else None,
                        scheduler_config=teacher.scheduler_config)
    log.info("published student %s (%s, %s)", student.label, student.located.format, student.located.root)
    return LoadedStudent(denoiser, f"published:{student.label}", student.located.root, student.located.identity,
                         sampler=student.method, source="published", weights=student.located.weights)


def rebatched(student: LoadedStudent, batching: str) -> LoadedStudent:
    """The same student with a denoiser for ``batching`` (latency and throughput time "fast")."""
    old = student.denoiser
    denoiser = Denoiser(old.unet, old.schedule, images_per_call=1 if batching == "exact" else None,
                        scheduler_config=old.scheduler_config)
    return LoadedStudent(denoiser, student.fingerprint, student.path, student.info, student.sampler, student.source,
                         student.weights)


__all__ = ["OWN_TEACHER", "PublishedStudent", "resolve_published", "published_unet", "load_own_teacher",
           "load_published", "rebatched"]
