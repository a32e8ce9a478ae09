"""Helpers shared by the tests of the latent-consistency-distillation methods (SCott, SPLAM)."""
from __future__ import annotations

import contextlib
import types

from bench.training import Trainer, TrainSchedule
from methods.consistency import teacher_guided_x0_eps


def trainer(steps: int = 3, batch: int = 2, lr: float = 1e-4, folder=None, **kw) -> Trainer:
    """A CPU Trainer without progress bars or periodic checkpoints (unless ``kw`` asks for them)."""
    schedule = dict(max_train_steps=steps, train_batch_size=batch, learning_rate=lr, checkpointing_steps=0)
    schedule.update(kw)
    return Trainer(TrainSchedule(**schedule), folder, device="cpu", progress=False)


def guided_teacher(teacher, cond, uncond, w):
    """teacher_guided_x0_eps on a minimal state (the teacher network and its schedule)."""
    state = types.SimpleNamespace(teacher=teacher.unet, schedule=teacher.schedule, autocast=contextlib.nullcontext)
    return lambda x, t: teacher_guided_x0_eps(state, x, t, cond, uncond, w)
