"""What the tests share: fixtures (one torch thread, the tiny teacher, an isolated cache) and the
training helpers (a quiet CPU Trainer, the guided teacher of the LCD methods, training data that
dies at a chosen micro-batch: a stand-in for a kill, for resume tests). Test modules import the
helpers with ``from conftest import ...`` (``tests`` is on the pytest path)."""
from __future__ import annotations

import contextlib
import dataclasses
import types
from typing import Any

import pytest
import torch

from bench.engine.training import Trainer, TrainSchedule
from methods.consistency import teacher_guided_x0_eps


@pytest.fixture
def one_thread():
    """The machine is shared: one intra-op thread is faster here and keeps results bit-stable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_teacher():
    from bench.assets.teachers import load_teacher

    return load_teacher("tiny")


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    """The teacher most tests train and sample with: ``tiny`` (random weights, 16 px, plumbing schedule)."""
    return tiny_teacher


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh cache folder and no training-data folder from the environment."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCH_TRAIN_DATA", raising=False)
    return tmp_path / "cache"


# ------------------------------------------------------------------------------------------------
# Training helpers
# ------------------------------------------------------------------------------------------------


def trainer(steps: int = 3, batch: int = 2, lr: float = 1e-4, folder=None, **kw) -> Trainer:
    """A CPU Trainer without progress bars or periodic checkpoints (unless ``kw`` asks for them)."""
    schedule = dict(max_train_steps=steps, train_batch_size=batch, learning_rate=lr, checkpointing_steps=0)
    schedule.update(kw)
    return Trainer(TrainSchedule(**schedule), folder, device="cpu", progress=False)


def with_toy(config_cls: type, toy: dict[str, Any], **fields: Any) -> Any:
    """``config_cls(**fields)`` with ``toy`` merged into its toy schedule (tests shrink the toy
    schedule: a smaller batch, a checkpoint every step)."""
    config = config_cls(**fields)
    return dataclasses.replace(config, toy={**config.toy, **toy})


def guided_teacher(teacher, cond, uncond, w):
    """teacher_guided_x0_eps on a minimal state (the teacher network and its schedule)."""
    state = types.SimpleNamespace(teacher=teacher.unet, schedule=teacher.schedule, autocast=contextlib.nullcontext)
    return lambda x, t: teacher_guided_x0_eps(state, x, t, cond, uncond, w)


class Killed(Exception):
    """Stands in for a kill: raised from inside the loop."""


@dataclasses.dataclass(frozen=True)
class KilledAt:
    """Training data that dies when asked for micro-batch ``index`` (after the checkpoint)."""

    data: Any
    index: int

    @property
    def identity(self):
        return self.data.identity

    def batch(self, index, batch_size):
        if index == self.index:
            raise Killed(f"killed at micro-batch {index}")
        return self.data.batch(index, batch_size)
