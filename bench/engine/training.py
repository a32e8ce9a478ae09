"""The training loop of distilled students: the harness half of ``Method.train``.

A training method is written as three pieces (methods/consistency.py is the model)::

    state = method.init_training_state(teacher, trainer)   # student, target, optimizer, ...
    loss  = method.training_step(state, batch)              # one micro-batch: the algorithm box
    student = method.student_from_state(state, trainer)

and ``Method.train`` is ``init_training_state`` + ``trainer.fit(...)`` + ``student_from_state``.
The :class:`Trainer` owns everything around the step: the accelerate ``Accelerator`` (devices,
DDP, mixed precision, gradient accumulation), batches (data, VAE encoding, text encoding), the
optimizer step with gradient clipping, the NaN/Inf guard, checkpoints, resume and the progress bar.

Determinism and resume (invariants):

* Micro-batch ``i = (step * accumulation + micro) * processes + rank`` gets its images and
  captions from ``data.batch(i, batch_size)`` and every random draw of the method and of the VAE
  posterior from CPU generators seeded by ``(seed, i)``: the data order and the randomness are
  pure functions of (seed, step), not of how often the run was interrupted.
* A checkpoint (every ``checkpointing_steps`` optimizer steps) is ``accelerator.save_state`` plus
  the method's extra tensors (EMA target) and the loss history in ``extra_state.safetensors`` plus
  ``trainer_state.json``, written into a hidden temp folder and renamed into place, so a kill
  never leaves half a checkpoint. ``fit`` resumes from the newest one. On the CPU a resumed run
  ends with parameters bit-identical to an uninterrupted one (tests/test_training.py).

What accelerate 1.15 writes (``save_state(safe_serialization=True)``): the prepared models as
``model.safetensors`` (``model_1.safetensors``, ...); the optimizer and LR scheduler state dicts as
``optimizer.bin`` / ``scheduler.bin`` and the RNG states as ``random_states_<rank>.pkl``. Those
three are ``torch.save`` files (safetensors cannot hold an optimizer state dict: nested dicts,
ints, step counters); accelerate 1.15 loads them with ``torch.load(weights_only=True)``
(``accelerate.utils.other.load``), which unpickles tensors and plain containers only, never
arbitrary objects. Everything the harness adds is safetensors or JSON.

A non-finite loss or gradient norm stops training with a :class:`BenchError` naming the step and
the last good checkpoint; nothing of the bad step is saved, so rerunning resumes from there. The one
exception is fp16 mixed precision, whose dynamic loss scaling (``torch.amp.GradScaler``, through
accelerate) overflows by design: it starts at a scale of 2**16, and a step whose scaled gradients
are Inf/NaN is skipped while the scale is halved (the diffusers training scripts rely on the same
thing). Such steps are counted (``TrainReport.skipped_steps``); only ``MAX_SKIPPED_IN_A_ROW``
skipped steps in a row, when the scale has fallen far below 1 and the gradients themselves are
non-finite, stop training.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bench.assets.teachers.model import VaeCodec
from bench.assets.train_data import TrainingData, batch_seed
from bench.core.errors import BenchError
from bench.core.fingerprint import sha256_file
from bench.core.progress import progress_bar
from bench.engine.lpips import lpips_distance
from bench.engine.teacher_outputs import CachedTeacherOutputs, build_teacher_outputs
from methods.base import TeacherOutputSpec, Update

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})$")
EXTRA_STATE_FILE = "extra_state.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
MIXED_PRECISIONS = ("no", "fp16", "bf16")
#: fp16 loss scaling: this many skipped (overflowing) optimizer steps in a row stop training; from
#: GradScaler's initial 2**16 the scale is then 2**-16, so the unscaled gradients are non-finite
MAX_SKIPPED_IN_A_ROW = 32


class NonFiniteLossError(BenchError):
    """The loss or the gradient norm became NaN/Inf; the message names the step and the last good
    checkpoint."""


# ------------------------------------------------------------------------------------------------
# Schedule
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSchedule:
    """How long and how hard to train: the harness's view of a method config's schedule fields
    (same names), plus the harness's own settings."""

    max_train_steps: int                 # optimizer steps
    train_batch_size: int                # per process and micro-batch
    learning_rate: float
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0           # 0 or less: no clipping
    checkpointing_steps: int = 500       # 0: no checkpoints
    checkpoints_total_limit: int = 2     # newest checkpoints kept
    seed: int = 0
    mixed_precision: str = "no"          # accelerate: no | fp16 | bf16

    def __post_init__(self):
        if self.max_train_steps < 0 or self.train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError(f"invalid training schedule {self}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}")

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "TrainSchedule":
        """Take every field of this class that ``config`` (a method config dataclass) has, then
        ``overrides`` (e.g. ``max_train_steps`` from ``bench train --max-train-steps``)."""
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


#: The plumbing schedule: on a teacher that exists to test the code (``tiny``: random weights, no
#: images worth distilling) every method trains for a handful of steps, seconds on a CPU. Caps on
#: the schedule fields, applied over the toy schedule (a method caps its own sizes too:
#: ``TrainingMethod.plumbing_config``); ``--max-train-steps`` still wins.
PLUMBING_CAPS: Mapping[str, int] = {
    "max_train_steps": 10,         # optimizer steps
    "train_batch_size": 4,
}


def apply_plumbing_schedule(method: Any, config: Any) -> Any:
    """``config`` with its schedule fields capped at :data:`PLUMBING_CAPS`, then the method's own caps."""
    config = dataclasses.replace(config, **{name: min(getattr(config, name), cap) for name, cap in PLUMBING_CAPS.items()
                                            if getattr(config, name, None) is not None})
    return method.plumbing_config(config)


# ------------------------------------------------------------------------------------------------
# What the method sees, and what it gives the loop
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainingBatch:
    """One micro-batch, encoded by the harness. ``generator`` (CPU) must serve every random draw
    the method makes for this micro-batch (timesteps, noise, guidance scales)."""

    latents: torch.Tensor | None         # (B, C, h, w) float32, on the training device; None: captions only
    #                                      (a source without images, for methods that do not need them)
    cond: torch.Tensor                   # (B, L, D) prompt embeddings
    uncond: torch.Tensor                 # (B, L, D) empty-prompt embeddings
    captions: list[str]
    generator: torch.Generator
    step: int                            # 0-based optimizer step this micro-batch belongs to
    index: int                           # micro-batch index (the data index)
    latent_shape: tuple[int, ...] = ()   # (B, C, h, w): the latents' shape, also when there are none


class TrainingState(Protocol):
    """What ``init_training_state`` returns, as far as the loop is concerned. A state with several
    optimizers has ``updates: list[Update]`` instead of ``optimizer`` / ``lr_scheduler``."""

    models: list[nn.Module]              # the prepared trainable models (checkpointed by accelerate)
    optimizer: Any                       # prepared optimizer
    lr_scheduler: Any                    # prepared LR scheduler (or None)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters whose gradient norm is clipped."""

    def after_optimizer_step(self) -> None:
        """Called once after each optimizer step (EMA updates)."""

    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint besides the prepared models (e.g. an EMA target network)."""

    def load_extra_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        ...


@dataclass
class TrainReport:
    steps: int                           # optimizer steps done in total
    losses: list[float]                  # mean loss of every optimizer step, the resumed ones included
    seconds: float                       # training time, summed over resumes
    resumed_from: int | None             # step of the checkpoint this run started from
    skipped_steps: int = 0               # fp16 loss scaling: steps skipped on overflow (this run, not resumed ones)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------


class Trainer:
    """An accelerate ``Accelerator`` with the harness's loop, checkpoints and guards.

    ``checkpoint_dir=None`` trains without checkpoints (and without resume). ``device``: the
    teacher's device (the CPU forces ``mixed_precision="no"``). ``description`` labels the progress
    bar and error messages."""

    def __init__(self, schedule: TrainSchedule, checkpoint_dir: str | os.PathLike | None = None, *,
                 device: str | torch.device | None = None, progress: bool = True, description: str = "train"):
        from accelerate import Accelerator

        device = torch.device(device) if device is not None else None
        cpu = device is not None and device.type == "cpu"
        mixed = "no" if cpu else schedule.mixed_precision
        if mixed != schedule.mixed_precision:
            schedule = dataclasses.replace(schedule, mixed_precision=mixed)
        self.schedule = schedule
        self.accelerator = Accelerator(cpu=cpu, mixed_precision=mixed,
                                       gradient_accumulation_steps=schedule.gradient_accumulation_steps)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = progress
        self.description = description
        self.report: TrainReport | None = None
        self._step = 0                       # optimizer steps done
        self._losses: list[float] = []
        self._seconds_before = 0.0
        self._last_checkpoint: Path | None = None
        self._uncond: torch.Tensor | None = None
        self.skipped_steps = 0               # fp16 loss scaling: optimizer steps skipped on overflow
        self._skipped_in_a_row: dict[str, int] = {}

    # -- accelerate pass-throughs -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def seed(self) -> int:
        return self.schedule.seed

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def wait_for_everyone(self) -> None:
        self.accelerator.wait_for_everyone()

    def prepare(self, *objects: Any) -> Any:
        """``accelerator.prepare``: models (DDP, device, autocast), optimizers, LR schedulers."""
        return self.accelerator.prepare(*objects)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for the forward passes of unprepared networks (teacher, target)."""
        return self.accelerator.autocast()

    def generator(self, index: int, stream: str = "step") -> torch.Generator:
        """A CPU generator seeded by (seed, stream, micro-batch index)."""
        return torch.Generator("cpu").manual_seed(batch_seed(self.seed, index, f"train-{stream}"))

    # -- services a method asks the harness for (methods.base.TrainerServices) ------------------
    def teacher_outputs(self, teacher: Any, data: TrainingData, spec: TeacherOutputSpec) -> CachedTeacherOutputs:
        """Pairs (noise, teacher solver output) as ``spec`` asks (DMD's regression pairs, Eq. 9),
        made on first use, split over the processes, and cached (bench.engine.teacher_outputs)."""
        folder = build_teacher_outputs(teacher, data, spec, self.seed, rank=self.accelerator.process_index,
                                       world=self.num_processes, progress=self.progress)
        self.wait_for_everyone()
        return CachedTeacherOutputs(folder, spec, self.device, teacher.encode_prompts)

    def lpips_distance(self, teacher: Any, vgg_path: str | None = None) -> nn.Module:
        """LPIPS-VGG on decoded latents; MissingResourceError first when its weights are absent."""
        return lpips_distance(teacher, vgg_path)

    # -- one optimizer (micro-)step -------------------------------------------------------------
    def step(self, loss: torch.Tensor, optimizer: Any, params: Iterable[nn.Parameter],
             lr_scheduler: Any = None, *, only_params: bool = False, what: str = "") -> bool:
        """Backward (scaled for accumulation), and on the last micro-batch of an accumulation
        window: clip the gradient norm to ``max_grad_norm``, check it is finite, step the optimizer
        and the LR scheduler, zero the gradients. Returns True when the optimizer stepped.
        ``only_params``: accumulate gradients into ``params`` only (``backward(inputs=...)``), so a
        loss that also flows through another optimizer's network leaves that network's gradients
        alone; ``what`` names the update in error messages."""
        params = list(params)
        if only_params:
            self.accelerator.backward(loss, inputs=params)
        else:
            self.accelerator.backward(loss)
        synced = self.accelerator.sync_gradients
        if synced and self.schedule.max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(params, self.schedule.max_grad_norm)   # unscales first
            if norm is not None and not math.isfinite(float(norm)):
                self._overflowed(optimizer, what, float(norm))
            else:
                self._skipped_in_a_row[what] = 0
        optimizer.step()          # under fp16 loss scaling: skipped when the gradients overflowed
        if lr_scheduler is not None:
            lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return synced

    def should_checkpoint(self, step: int) -> bool:
        """True after optimizer step ``step`` (1-based) when a checkpoint is due."""
        every = self.schedule.checkpointing_steps
        return self.checkpoint_dir is not None and every > 0 and step % every == 0

    def _overflowed(self, optimizer: Any, what: str, norm: float) -> None:
        """A non-finite gradient norm: fatal, except under fp16 loss scaling, where GradScaler skips
        the step and halves the scale (module docstring) up to ``MAX_SKIPPED_IN_A_ROW`` times in a row."""
        in_a_row = self._skipped_in_a_row.get(what, 0) + 1
        if self.accelerator.scaler is None or in_a_row > MAX_SKIPPED_IN_A_ROW:
            optimizer.zero_grad(set_to_none=True)
            suffix = f" after {in_a_row - 1} skipped fp16 steps in a row" if self.accelerator.scaler else ""
            self._non_finite(f"{what} gradient norm".strip() + suffix, norm)
        self._skipped_in_a_row[what] = in_a_row
        self.skipped_steps += 1
        log.info("%s: fp16 gradients overflowed at step %d (%s); GradScaler skips the step and lowers the scale",
                 self.description, self._step + 1, what or "update")

    def _non_finite(self, what: str, value: float) -> None:
        total = self.schedule.max_train_steps
        if self._last_checkpoint is not None:
            where = (f"Last good checkpoint: {self._last_checkpoint} (step {self._step_of(self._last_checkpoint)}); "
                     "rerunning the same command resumes from it")
        elif self.checkpoint_dir is None:
            where = "No checkpoint: this trainer was started without a checkpoint folder"
        else:
            where = (f"No checkpoint was written yet (one every {self.schedule.checkpointing_steps} steps, "
                     f"in {self.checkpoint_dir})")
        raise NonFiniteLossError(
            f"{self.description}: the {what} is {value} at training step {self._step + 1} of {total}; training "
            f"stopped and nothing from this step was saved. {where}. Try a lower learning rate, fp32 "
            "(--precision fp32) or the pseudo-Huber loss.")

    # -- batches ----------------------------------------------------------------------------------
    @torch.no_grad()
    def make_batch(self, teacher: Any, data: TrainingData, index: int, step: int) -> TrainingBatch:
        """Images and captions of micro-batch ``index`` -> latents and prompt embeddings. With a
        VAE codec the latents are a posterior sample (as the reference scripts encode), drawn from
        the batch's own generator."""
        images, captions = data.batch(index, self.schedule.train_batch_size)
        if images is None:                                  # a captions-only source
            latents = None
        elif isinstance(teacher.codec, VaeCodec):
            latents = teacher.codec.encode(images.to(self.device), generator=self.generator(index, "vae"))
        else:
            latents = teacher.codec.encode(images.to(self.device))
        cond = teacher.encode_prompts(list(captions)).to(self.device, torch.float32)
        if self._uncond is None:
            self._uncond = teacher.encode_prompts([""]).to(self.device, torch.float32)
        uncond = self._uncond.expand(len(captions), -1, -1)
        return TrainingBatch(latents=None if latents is None else latents.to(self.device, torch.float32), cond=cond,
                             uncond=uncond, captions=list(captions), generator=self.generator(index), step=step,
                             index=index, latent_shape=(len(captions), *teacher.latent_shape))

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, state: TrainingState, training_step: Callable[[Any, TrainingBatch], torch.Tensor],
            data: TrainingData, teacher: Any) -> TrainReport:
        """Run optimizer steps from the newest checkpoint (or 0) to ``max_train_steps``."""
        schedule = self.schedule
        resumed = self.restore(state)
        start = self._step
        accum = schedule.gradient_accumulation_steps
        self.accelerator.step = start * accum       # align accelerate's accumulation counter
        world, rank = self.num_processes, self.accelerator.process_index
        began = time.perf_counter()
        bar = progress_bar(total=schedule.max_train_steps, initial=start, unit="step", desc=self.description,
                           disable=not self.progress or not self.is_main_process)
        try:
            for step in range(start, schedule.max_train_steps):
                micro_losses = []
                for micro in range(accum):
                    index = (step * accum + micro) * world + rank
                    batch = self.make_batch(teacher, data, index, step)
                    with self.accelerator.accumulate(*state.models):
                        loss = training_step(state, batch)
                        if isinstance(loss, Mapping):      # several optimizers (see Update)
                            loss = self.step_updates(loss, state.updates)
                        else:
                            self._check_loss(loss)
                            self.step(loss, state.optimizer, state.trainable_parameters(), state.lr_scheduler)
                    micro_losses.append(loss.detach().float().reshape(1))
                state.after_optimizer_step()
                step_loss = float(self.accelerator.gather(torch.cat(micro_losses)).mean())
                self._losses.append(step_loss)
                self._step = step + 1
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4g}", refresh=False)
                if self.should_checkpoint(self._step) and self._step < schedule.max_train_steps:
                    self.save_state(state, seconds=self._seconds_before + time.perf_counter() - began)
        finally:
            bar.close()
        self.report = TrainReport(self._step, list(self._losses),
                                  self._seconds_before + time.perf_counter() - began, resumed, self.skipped_steps)
        return self.report

    def step_updates(self, losses: Mapping[str, torch.Tensor], updates: Sequence[Update]) -> torch.Tensor:
        """Apply each loss of ``losses`` to its :class:`Update`, in the order of ``updates``; returns
        their sum (what the loss history records)."""
        unknown = set(losses) - {u.name for u in updates}
        if unknown:
            raise ValueError(f"training_step returned losses {sorted(unknown)} with no Update")
        for update in updates:
            if update.name in losses:
                self._check_loss(losses[update.name], f"{update.name} loss")
                self.step(losses[update.name], update.optimizer, update.params, update.lr_scheduler,
                          only_params=True, what=update.name)
        return sum(loss.detach().float() for loss in losses.values())

    def _check_loss(self, loss: torch.Tensor, what: str = "loss") -> None:
        value = loss.detach().float().reshape(1)
        if self.num_processes > 1:
            value = self.accelerator.gather(value)
        if not bool(torch.isfinite(value).all()):
            bad = value[~torch.isfinite(value)][0].item()
            self._non_finite(what, bad)

    # -- checkpoints ------------------------------------------------------------------------------
    @staticmethod
    def _step_of(path: Path) -> int:
        match = CHECKPOINT_PATTERN.match(path.name)
        return int(match.group(1)) if match else -1

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return []
        found = [p for p in self.checkpoint_dir.iterdir()
                 if CHECKPOINT_PATTERN.match(p.name) and (p / TRAINER_STATE_FILE).is_file()]
        return sorted(found, key=self._step_of)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def latest_good_checkpoint(self) -> Path | None:
        """The newest checkpoint whose files match the sha256 recorded when it was written; a
        damaged one is moved aside (``.step-N.damaged``), with one warning naming the file, and
        the one before it is taken (or none: training starts over)."""
        for checkpoint in reversed(self.checkpoints()):
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                return checkpoint
            aside = checkpoint.with_name(f".{checkpoint.name}.damaged")
            if self.is_main_process:
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(checkpoint, aside)
            earlier = [c for c in self.checkpoints() if self._step_of(c) < self._step_of(checkpoint)]
            log.warning("%s: training checkpoint %s is damaged (%s), moved to %s; resuming from %s", self.description,
                        checkpoint, problem, aside.name, earlier[-1].name if earlier else "step 0")
            self.wait_for_everyone()
        return None

    def save_state(self, state: TrainingState, seconds: float = 0.0) -> Path:
        """Checkpoint after optimizer step ``self._step``: temp folder, then rename."""
        assert self.checkpoint_dir is not None
        name = f"step-{self._step:08d}"
        final = self.checkpoint_dir / name
        tmp = self.checkpoint_dir / f".{name}.tmp"
        if self.is_main_process:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        self.wait_for_everyone()
        self.accelerator.save_state(str(tmp), safe_serialization=True)
        if self.is_main_process:
            extra = {k: v.detach().contiguous().cpu() for k, v in state.extra_state_dict().items()}
            extra["__trainer__.losses"] = torch.tensor(self._losses, dtype=torch.float64)
            save_file(extra, str(tmp / EXTRA_STATE_FILE))
            trainer_state = {"step": self._step, "seconds": seconds,
                             "schedule": dataclasses.asdict(self.schedule), "written": time.time(),
                             "sha256": checkpoint_hashes(tmp)}
            (tmp / TRAINER_STATE_FILE).write_text(json.dumps(trainer_state, indent=2, sort_keys=True) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.checkpoints()[:-max(1, self.schedule.checkpoints_total_limit)]:
                shutil.rmtree(old, ignore_errors=True)
        self.wait_for_everyone()
        self._last_checkpoint = final
        log.info("%s: checkpoint %s", self.description, final)
        return final

    def restore(self, state: TrainingState) -> int | None:
        """Load the newest checkpoint into ``state`` (models, optimizer, LR scheduler, RNG, extra
        tensors, loss history). Returns its step, or None when there is none."""
        if self.checkpoint_dir is not None and self.checkpoint_dir.is_dir() and self.is_main_process:
            for stale in self.checkpoint_dir.glob(".step-*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)   # a checkpoint a kill interrupted
        self.wait_for_everyone()
        latest = self.latest_good_checkpoint()
        if latest is None:
            return None
        meta = json.loads((latest / TRAINER_STATE_FILE).read_text())
        try:
            self.accelerator.load_state(str(latest))
        except Exception as err:   # a checkpoint written before hashes were recorded, damaged
            raise BenchError(f"training checkpoint {latest} cannot be loaded ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); delete that folder to resume from "
                             "the one before it (or from scratch)") from None
        extra = load_file(str(latest / EXTRA_STATE_FILE))
        losses = extra.pop("__trainer__.losses", torch.zeros(0, dtype=torch.float64))
        state.load_extra_state_dict(extra)
        self._step = int(meta["step"])
        self._losses = [float(v) for v in losses.tolist()]
        self._seconds_before = float(meta.get("seconds", 0.0))
        self._last_checkpoint = latest
        log.info("%s: resumed from %s (step %d of %d)", self.description, latest, self._step,
                 self.schedule.max_train_steps)
        return self._step


def checkpoint_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint folder but its trainer_state.json, by relative path."""
    return {path.relative_to(folder).as_posix(): sha256_file(path)
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != TRAINER_STATE_FILE}


def checkpoint_problem(folder: Path) -> str | None:
    """What is wrong with a checkpoint folder (unreadable state, a missing or changed file),
    or None. Checkpoints written before hashes were recorded are taken as they are."""
    try:
        recorded = json.loads((folder / TRAINER_STATE_FILE).read_text()).get("sha256")
    except (OSError, ValueError) as err:
        return f"{TRAINER_STATE_FILE} unreadable: {type(err).__name__}"
    if recorded is None:
        return None
    actual = checkpoint_hashes(folder)
    for name, digest in recorded.items():
        if name not in actual:
            return f"{name} missing"
        if actual[name] != digest:
            return f"{name} does not hash to the sha256 recorded when it was written"
    return None


__all__ = ["TrainSchedule", "Trainer", "TrainingBatch", "TrainingState", "TrainReport", "NonFiniteLossError", "Update"]
