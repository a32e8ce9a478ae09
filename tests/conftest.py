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
from methods import SampleRequest
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


def assert_close(ours: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5) -> None:
    """max |ours - ref| <= tol * max(1, max |ref|): the random U-Net's latents are large, so the
    tolerance scales with the reference (method-vs-reference equality tests)."""
    assert ours.shape == ref.shape
    scale = max(1.0, ref.abs().max().item())
    diff = (ours.double() - ref.double()).abs().max().item()
    assert diff <= tol * scale, f"max abs diff {diff:.3g} > {tol:g} * {scale:.3g}"


def make_request(teacher, steps: int, guidance: float, batch: int = 2, seed: int = 0) -> SampleRequest:
    """A SampleRequest of ``batch`` fixed prompts with per-image generators seeded from ``seed``."""
    gens = [torch.Generator().manual_seed(seed * 100 + i) for i in range(batch)]
    noise = torch.stack([torch.randn(teacher.latent_shape, generator=g) for g in gens])
    prompts = ["a red cube", "an astronaut riding a horse on the moon, digital art"][:batch]
    return SampleRequest(noise=noise, cond=teacher.encode_prompts(prompts),
                         uncond=teacher.encode_prompts([""] * batch), generators=gens, steps=steps,
                         guidance_scale=guidance)


def straight_and_resumed(method, teacher, data, tmp_path, kill_at: int = 5, **schedule):
    """Train ``method`` straight, and again killed at batch ``kill_at`` then resumed from its last
    checkpoint: (straight state, its trainer, resumed state, its trainer, the resumed report)."""
    from methods.base import TrainingContext

    straight = trainer(folder=tmp_path / "a", **schedule)
    state_a = method.init_training_state(TrainingContext(teacher, straight, None))
    straight.fit(state_a, method.training_step, data, teacher)
    with pytest.raises(Killed):
        method.train(TrainingContext(teacher, trainer(folder=tmp_path / "b", **schedule), KilledAt(data, kill_at)))
    resumed = trainer(folder=tmp_path / "b", **schedule)
    state_b = method.init_training_state(TrainingContext(teacher, resumed, None))
    return state_a, straight, state_b, resumed, resumed.fit(state_b, method.training_step, data, teacher)


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


def random_lora_unet(teacher, rank: int = 8):
    """A LoRA student of ``teacher`` whose adapter is not the identity (lora_B is zero at init)."""
    from methods.lcm import LCMLoRAConfig, build_lora_unet

    unet = build_lora_unet(teacher.unet, LCMLoRAConfig(lora_rank=rank, lora_alpha=float(rank)), seed=0)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return unet.eval().requires_grad_(False)
