"""The method contract.

A method is a recipe with two halves:

* ``train(teacher, data, trainer) -> Student``: produce a student from the teacher backbone. It
  may keep extra networks while training (EMA target, fake score, discriminator); only the
  student is returned. Teacher solvers (DDIM, DPM-Solver++, ER-SDE) have an empty train half.
* ``sample(denoiser, request) -> latents``: from prompt embeddings, per-image initial noise and
  per-image random generators, return latents.

The harness (``bench``) owns everything around those halves: files, devices, precision, seeds,
text encoding, VAE decoding, progress, resume. A method never opens a file, parses a CLI flag or
picks a device.
"""
from __future__ import annotations

import dataclasses
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Protocol, Sequence

import torch
from torch import nn

from methods.diffusion_math import NoiseSchedule, cfg_imagen, model_output_to_x0_eps
from methods.timesteps import inference_timesteps

Tensor = torch.Tensor


@dataclass
class Denoiser:
    """A diffusers-style conditional U-Net with its noise schedule.

    ``unet(x, t, encoder_hidden_states=..., timestep_cond=...)`` must return an object with
    ``.sample`` (UNet2DConditionModel does); its output is interpreted with
    ``schedule.prediction_type``.

    ``images_per_call=1`` (the harness's ``exact`` batching) evaluates the network one image at a
    time, so an image's result never depends on which other images share its batch (CPU/GPU
    kernels are not batch-invariant in the last bits); ``None`` evaluates the whole batch."""

    unet: nn.Module
    schedule: NoiseSchedule
    images_per_call: int | None = 1
    scheduler_config: dict | None = None

    def _call(self, x_t: Tensor, t: Tensor, text: Tensor, timestep_cond: Tensor | None) -> Tensor:
        kwargs = {"encoder_hidden_states": text}
        if timestep_cond is not None:
            kwargs["timestep_cond"] = timestep_cond
        return self.unet(x_t, t, **kwargs).sample

    def raw(self, x_t: Tensor, t: Tensor | int, text: Tensor, timestep_cond: Tensor | None = None,
            rows_per_image: int = 1) -> Tensor:
        """Raw network output; ``rows_per_image`` consecutive rows belong to one image."""
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if self.images_per_call is None:
            return self._call(x_t, t, text, timestep_cond)
        rows = self.images_per_call * rows_per_image
        return torch.cat([
            self._call(x_t[i:i + rows], t[i:i + rows], text[i:i + rows],
                       None if timestep_cond is None else timestep_cond[i:i + rows])
            for i in range(0, x_t.shape[0], rows)
        ])

    def _to_x0_eps(self, out: Tensor, x_t: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        alpha, sigma = self.schedule.alpha_sigma(torch.as_tensor(t).cpu())
        alpha, sigma = alpha.to(x_t.device, x_t.dtype), sigma.to(x_t.device, x_t.dtype)
        return model_output_to_x0_eps(out, x_t, alpha, sigma, self.schedule.prediction_type)

    def x0_eps(self, x_t: Tensor, t: Tensor | int, text: Tensor,
               timestep_cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(x_0, eps) predicted at (x_t, t) for the given text embeddings."""
        return self._to_x0_eps(self.raw(x_t, t, text, timestep_cond), x_t, t)

    def guided_output(self, x_t: Tensor, t: Tensor | int, cond: Tensor, uncond: Tensor,
                      guidance_scale: float) -> Tensor:
        """Raw output under classifier-free guidance in the diffusers convention (g = 1:
        conditional only). Uncond and cond rows of an image are evaluated in one call, as
        diffusers pipelines do, interleaved so that each image keeps its own pair of rows."""
        if guidance_scale == 1.0:
            return self.raw(x_t, t, cond)
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        pairs = self.raw(x_t.repeat_interleave(2, dim=0), t.repeat_interleave(2, dim=0),
                         torch.stack([uncond, cond], dim=1).flatten(0, 1), rows_per_image=2)
        pairs = pairs.unflatten(0, (x_t.shape[0], 2))
        return cfg_imagen(pairs[:, 0], pairs[:, 1], guidance_scale)

    def guided_x0_eps(self, x_t: Tensor, t: Tensor | int, cond: Tensor, uncond: Tensor,
                      guidance_scale: float) -> tuple[Tensor, Tensor]:
        """(x_0, eps) under classifier-free guidance (diffusers convention)."""
        return self._to_x0_eps(self.guided_output(x_t, t, cond, uncond, guidance_scale), x_t, t)


@dataclass
class SampleRequest:
    """Everything a sampler needs for one batch; image i of the batch owns row i of every tensor
    and ``generators[i]``, which must serve every stochastic draw of that image."""

    noise: Tensor                         # (B, C, h, w) initial latents
    cond: Tensor                          # (B, L, D) prompt embeddings
    uncond: Tensor                        # (B, L, D) empty-prompt embeddings
    generators: Sequence[torch.Generator]  # one CPU generator per image
    steps: int
    guidance_scale: float                 # diffusers convention: 1.0 = no guidance


def per_sample_randn(generators: Sequence[torch.Generator], like: Tensor) -> Tensor:
    """Fresh standard normal noise shaped like ``like``; row i is drawn from ``generators[i]``
    (on the CPU, so the numbers do not depend on the device or on the batch composition)."""
    rows = [torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=like.device, dtype=like.dtype)


@torch.no_grad()
def ema_update(target: Iterable[nn.Parameter], online: Iterable[nn.Parameter], decay: float) -> None:
    """theta- <- mu theta- + (1 - mu) theta (the reference's ``update_ema``)."""
    for t, s in zip(target, online):
        t.detach().mul_(decay).add_(s.detach(), alpha=1.0 - decay)


def prefixed_state_dict(module: nn.Module | None, prefix: str) -> dict[str, Tensor]:
    """``module``'s state dict with keys ``prefix.<key>`` (a training state's ``extra_state_dict``
    for an extra network such as an EMA copy); empty for None."""
    if module is None:
        return {}
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_prefixed_state_dict(module: nn.Module | None, state: dict[str, Tensor], prefix: str) -> None:
    """The inverse of ``prefixed_state_dict``: loads the ``prefix.`` entries of ``state``."""
    if module is not None:
        start = f"{prefix}."
        module.load_state_dict({k[len(start):]: v for k, v in state.items() if k.startswith(start)})


@dataclass
class Student:
    """What ``train`` returns and the harness saves: a U-Net for sampling (full or with an
    adapter), plus free-form metadata recorded beside the checkpoint."""

    unet: nn.Module
    kind: str = "unet"                     # "unet" (diffusers UNet folder) or "lora"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Update:
    """One optimizer of a method that trains several networks with their own optimizers (DMD: the
    generator and the fake score). ``training_step`` then returns ``{name: loss}`` and the training
    loop (bench.engine.training.Trainer.fit) applies, in the order of ``state.updates``, each loss present:
    backward into ``params`` only, clip, NaN check, optimizer and LR scheduler step. A missing name
    skips that update this step (DMD2's two time-scale rule)."""

    name: str
    optimizer: Any                       # prepared optimizer
    params: list[nn.Parameter]           # gradients flow into these only; clipped together
    lr_scheduler: Any = None             # prepared LR scheduler (stepped with its optimizer)


@dataclass
class TeacherOutputSpec:
    """A set of teacher outputs a method asks the harness to make once and cache (DMD's regression
    pairs, Yin et al. 2024, arXiv:2311.18828, §3.3 Eq. 9): ``count`` pairs (noise z_i, the
    registered teacher solver ``solver`` run from z_i at ``steps`` steps and ``guidance_scale``),
    made in chunks of ``chunk_size`` (each one batched solver call)."""

    solver: str              # a registered teacher-solver method, e.g. "pndm"
    steps: int
    guidance_scale: float    # diffusers convention
    num_pairs: int
    chunk_size: int


class TeacherOutputs(Protocol):
    """The harness's cached teacher outputs (``TrainerServices.teacher_outputs``)."""

    def __len__(self) -> int: ...

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(noise, teacher output, prompt embeddings) of the pairs at ``indices``, on the training device."""


class TeacherModel(Protocol):
    """What a method may use of the teacher (``bench.assets.teachers.Teacher`` provides it)."""

    unet: nn.Module                 # diffusers UNet2DConditionModel
    schedule: NoiseSchedule
    scheduler_config: dict          # a diffusers scheduler config
    default_guidance_scale: float   # diffusers convention
    codec: Any                      # encode(images) / decode(latents)

    @property
    def latent_shape(self) -> tuple[int, int, int]: ...

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor: ...


class TrainerServices(Protocol):
    """What a method may use of the training loop (``bench.engine.training.Trainer`` provides it): the
    device, seed and schedule, accelerate's prepare/unwrap/autocast, the loop itself, and two
    services a method asks for by name: cached teacher outputs and the LPIPS distance."""

    device: torch.device
    seed: int
    schedule: Any                   # max_train_steps, learning_rate, train_batch_size, ...
    num_processes: int

    def prepare(self, *objects: Any) -> Any: ...

    def unwrap(self, module: nn.Module) -> nn.Module: ...

    def autocast(self) -> Any: ...

    def fit(self, state: Any, step: Callable[[Any, Any], Any], data: Any, teacher: TeacherModel) -> Any: ...

    def teacher_outputs(self, teacher: TeacherModel, data: Any, spec: TeacherOutputSpec) -> TeacherOutputs: ...

    def lpips_distance(self, teacher: TeacherModel, vgg_path: str | None = None) -> nn.Module: ...


@dataclass
class TrainingContext:
    """Everything ``TrainingMethod.train`` is given: the teacher, the training loop's services, the
    data source (``data.batch(index, size) -> (images in [-1, 1], captions)``) and, for a method
    with one student per step count, the step count S of the student to train."""

    teacher: TeacherModel
    trainer: TrainerServices
    data: Any
    steps: int | None = None


@dataclass
class DiffusersScheduler:
    """The stock diffusers scheduler a method's sampler equals, and the extra pipeline call
    arguments it needs (``bench profile`` times a ``StableDiffusionPipeline`` with it)."""

    scheduler: Any
    call_kwargs: dict = field(default_factory=dict)


def scheduler_from_teacher_config(cls: type, scheduler_config: dict, **overrides: Any) -> Any:
    """``cls.from_config`` of a teacher's scheduler config, keeping only the keys ``cls`` takes (the
    teacher's may be PNDM's), so diffusers warns about nothing."""
    accepted = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in scheduler_config.items() if k in accepted}, **overrides)


class Method(ABC):
    """Base class of every registered method: a teacher solver (:class:`TeacherSolver`) or a method
    that trains a student (:class:`TrainingMethod`). Subclasses set the class attributes and
    implement ``sample``."""

    name: ClassVar[str]
    paper: ClassVar[str]                   # citation, e.g. "Song et al. 2021, arXiv:2010.02502"
    summary: ClassVar[str]                 # one line for `bench list`
    config_class: ClassVar[type]
    supported_steps: ClassVar[tuple[int, ...] | None] = None  # None: any step count
    trains: ClassVar[bool] = False         # True for TrainingMethod
    student_per_step_count: ClassVar[bool] = False  # Multistep CM: one student per S
    # Guidance the method samples with when the user gives none (diffusers convention); None: the
    # teacher's default. LCM-LoRA distils a fixed guidance and samples without CFG (g = 1).
    default_guidance_scale: ClassVar[float | None] = None
    # The names under which the papers report this method (bench/data/reported.json), so that
    # `bench profile` prints its measured latency beside theirs.
    reported_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any | None = None):
        self.config = config if config is not None else self.config_class()

    @abstractmethod
    def sample(self, denoiser: Denoiser, request: SampleRequest) -> Tensor:
        """Return latents of shape ``request.noise.shape``."""

    # -- declared facts -------------------------------------------------------------------------
    def unsupported_steps_reason(self, steps: int) -> str | None:
        """None if ``steps`` is supported, else a one-line reason (the harness skips the cell)."""
        if steps < 1:
            return f"{self.name}: step count must be >= 1, got {steps}"
        if self.supported_steps is not None and steps not in self.supported_steps:
            allowed = ", ".join(map(str, self.supported_steps))
            return f"{self.name} supports {allowed} step(s) only; {steps} skipped"
        return None

    def nfe(self, steps: int, guidance_scale: float) -> int:
        """Network evaluations per image: teacher solvers pay two per step under CFG
        (cond + uncond); students with distilled guidance override this."""
        return steps * (1 if guidance_scale == 1.0 else 2)

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def diffusers_scheduler(self, teacher: TeacherModel, steps: int) -> DiffusersScheduler | None:
        """The stock diffusers scheduler this sampler equals at ``steps`` (tests check the
        equality), for ``bench profile``'s pipeline comparison; None: there is none."""
        return None


class TrainingMethod(Method):
    """A method with a training half, written as three pieces (the algorithm box is
    ``training_step``) and one fixed ``train``::

        state = method.init_training_state(ctx)      # student, target, optimizers, ...
        loss  = method.training_step(state, batch)   # one micro-batch; {name: loss} with several optimizers
        student = method.student_from_state(state, ctx)

    The harness's loop (``ctx.trainer.fit``) owns batches, backward, clipping, the optimizer and
    scheduler steps, checkpoints and resume."""

    trains: ClassVar[bool] = True

    @property
    def needs_images(self) -> bool:
        """Whether training noises real images (``batch.latents``); False: captions are enough
        (the harness then accepts a captions-only source, whose batches have ``latents=None``)."""
        return True

    @abstractmethod
    def init_training_state(self, ctx: TrainingContext) -> Any:
        """The student (and any extra networks, optimizers prepared with ``ctx.trainer.prepare``)."""

    @abstractmethod
    def training_step(self, state: Any, batch: Any) -> Tensor | dict[str, Tensor]:
        """One micro-batch's loss (``{Update.name: loss}`` when ``state.updates`` lists several optimizers)."""

    @abstractmethod
    def student_from_state(self, state: Any, ctx: TrainingContext) -> Student:
        """The student to save (unwrapped, eval mode, no grad)."""

    def train(self, ctx: TrainingContext) -> Student:
        state = self.init_training_state(ctx)
        ctx.trainer.fit(state, self.training_step, ctx.data, ctx.teacher)
        return self.student_from_state(state, ctx)

    def training_identity(self) -> dict[str, Any]:
        """The config fields that change the trained student (its fingerprint); sampling-only
        fields are left out by methods that have them."""
        return self.config_dict()

    def toy_config_for_steps(self, config: Any, steps: int) -> Any:
        """The toy-scheduled ``config`` for the student of ``steps`` sampling steps; only methods
        with one student per step count override it."""
        return config

    def plumbing_config(self, config: Any) -> Any:
        """``config`` on a plumbing teacher (``tiny``), after the harness capped its schedule at a
        few steps: a method caps its own costly sizes here (DMD: its regression pairs)."""
        return config

    def for_step_timing(self) -> tuple["TrainingMethod", str]:
        """(method, note) that ``bench profile`` times one training step with: a method whose
        set-up makes something a step's cost does not depend on may shrink it here, and says so."""
        return self, ""


class TeacherSolver(Method):
    """A teacher solver: no training, any step count, timesteps from the config's ``spacing``
    (and ``steps_offset`` for "leading"), the last step landing on the schedule's final abar."""

    trains: ClassVar[bool] = False
    supported_steps: ClassVar[tuple[int, ...] | None] = None

    def timesteps(self, denoiser: Denoiser, steps: int) -> list[int]:
        return inference_timesteps(denoiser.schedule.num_train_timesteps, steps,
                                   self.config.spacing, self.config.steps_offset)
