"""Multistep Consistency Models (Heek, Hoogeboom & Salimans 2024, arXiv:2403.06807): consistency
distillation within S segments of the time axis, one student per segment count S, sampled with S
deterministic DDIM steps. No official code exists; this follows the paper.

Continuous time tau in [0, 1] maps onto the teacher's discrete timesteps as
``timestep(j / T) = round(j * 1000 / T) - 1`` (round half to even), tau = 0 being the schedule's
final abar (SD-1.5: abar_0). The S segment boundaries tau = k / S are then the "trailing" DDIM
timesteps, S = 4 -> [999, 749, 499, 249] -> final (Alg. 2's sampler), so a student equal to its
teacher samples exactly as the teacher's trailing DDIM at S steps.

Training step (Algorithm 1, distillation), on data x with prompt c::

    N = round(N_teacher(i) / S);  T = N S                    (N_teacher: 256, or annealed 64 -> 1280)
    step ~ U{0..S-1};  n ~ U{1..N};  t_step = step / S;  t = t_step + n / T;  s = t - 1 / T
    z_t = alpha_t x + sigma_t eps
    x_teacher = teacher CFG prediction at (z_t, t);  x_var = eta ||x_cond - x||^2 / d   (App. A.1: unguided)
    z_s = aDDIM_{t->s}(x_teacher, z_t, x_var)                                           (Eq. 14, Alg. 3)
    x_ref = nograd f(z_s, s);  z_ref = DDIM_{s->t_step}(x_ref, z_s)    (= z_s when s = t_step, Eq. 8)
    x_diff = invDDIM_{t->t_step}(z_ref, z_t) - f(z_t, t)                                    (Eq. 5, 7)
    L = w_t d(x_diff),  w_t = SNR(t) + 1 = 1 / sigma_t^2,  d = Huber with epsilon

where f(z, t) is the network's x_0 prediction: the student is a plain copy of the teacher U-Net (no
extra inputs, no c_skip/c_out, §3.1 "What about training in continuous time?"), initialised from
it (§5.1), conditioned on the prompt only: the guidance is distilled, so it samples with one call
per step. The target is the student itself under stop-gradient (no EMA; Alg. 1 "nograd").

Sampling (Algorithm 2): ``z_s = DDIM_{t->s}(f(z_t, t), z_t)`` from boundary to boundary, no noise.

Step counts: any S from 1 to the teacher's T_train (1000), one student per S ("this trade-off
requires training a new Multistep CM for each of the desired student steps", §3.1): the harness
fingerprints and trains a separate student for every requested step count
(``student_per_step_count``), and sampling at S must use the S student.

Constants (every one a config field; the paper has two settings and no code):

| field                 | text-to-image (default)   | ImageNet                       | source         |
|-----------------------|---------------------------|--------------------------------|----------------|
| teacher_steps         | 256 fixed                 | annealed 64 -> 1280 over 100K  | App. A.1       |
| anneal_teacher_steps  | False                     | True                           | App. A.1, Tab. 2 |
| xvar_frac (eta)       | 0.75, unguided cond output | 0.75                          | App. A.1, §3.2 |
| huber_epsilon         | 1                         | 1e-4                           | App. A.1       |
| loss weighting        | SNR + 1                   | SNR + 1                        | Alg. 1, §3.1   |
| batch, iterations     | 2048, 30K                 | 2048, 200K                     | App. A.1, §5.1 |

The ImageNet setting is ``--config anneal_teacher_steps=true,huber_epsilon=1e-4,max_train_steps=200000``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from methods.base import (
    Denoiser,
    SampleRequest,
    Student,
    TrainingContext,
    TrainingMethod,
)
from methods.consistency import make_optimizer
from methods.diffusion_math import (
    NoiseSchedule,
    add_noise,
    addim_analytic_x_var,
    addim_step,
    cfg_imagen,
    ddim_step,
    ddim_step_from_x_t,
    inverse_ddim,
    model_output_to_x0_eps,
)
from methods.registry import register_method
from methods.timesteps import step_pairs
from methods.toy_schedule import toy_schedule_field

Tensor = torch.Tensor

LOSS_WEIGHTINGS: tuple[str, ...] = ("snr+1", "uniform")
#: "data": eta ||x_cond - x||^2 / d (Alg. 1/3, App. A.1); "analytic": 0.1 / (2 + SNR) (§3.2);
#: "none": x_var = 0, a plain DDIM teacher (Table 4's DDIM column)
X_VAR_ESTIMATES: tuple[str, ...] = ("data", "analytic", "none")


@dataclass(frozen=True)
class MCMConfig:
    # -- Algorithm 1: segments and the teacher step ----------------------------------------------
    # N_teacher, teacher steps over the whole time axis; each of the S segments gets
    # round(N_teacher / S) of them (at most T_train / S, one per discrete timestep).
    # Text-to-image: "we kept the teacher steps fixed at 256" (App. A.1).
    teacher_steps: int = 256
    # Teacher-step annealing (App. A.1, ImageNet; Table 2: it matters most for S <= 4):
    # N_teacher(i) = exp(log 64 + clip(i / 100000, 0, 1) (log 1280 - log 64)).
    anneal_teacher_steps: bool = False
    teacher_steps_min: int = 64
    teacher_steps_max: int = 1280
    anneal_iterations: int = 100_000
    # aDDIM teacher (§3.2, Alg. 3): x_var = xvar_frac ||x_cond - x||^2 / d with x_cond the
    # teacher's unguided conditional prediction ("computed on the conditional output, not the
    # guided output", App. A.1); xvar_frac = 0.75 in both settings.
    x_var_estimate: str = "data"
    xvar_frac: float = 0.75
    # Teacher classifier-free guidance, diffusers convention (1 = none); the student distils it.
    # None: the teacher's default guidance (the scale the benchmark's DDIM baseline samples with).
    # The paper's text-to-image teachers: "g=0.5" and "g=3" in its convention (0 = conditional),
    # i.e. 1.5 and 4.0 here (Table 6).
    guidance_scale: float | None = None

    # -- loss (Alg. 1, Eq. 7) --------------------------------------------------------------------
    # w_t = SNR(t) + 1 ("v-loss", §3.1); "uniform": w_t = 1.
    loss_weighting: str = "snr+1"
    # d(x_diff) = sqrt(||x_diff||^2 / d + eps^2) - eps: l2 (not squared) for small eps, following
    # iCT; text-to-image eps = 1, "essentially a scalar-scaled l2 squared loss for the normalized
    # [-1, 1] domain" (App. A.1), which fixes the norm as per element (/ d); ImageNet eps = 1e-4.
    huber_epsilon: float = 1.0

    # -- optimisation --------------------------------------------------------------------------
    train_batch_size: int = 2048            # App. A.1 (both settings)
    max_train_steps: int = 30_000           # App. A.1, text-to-image (ImageNet: 200K)
    # Not stated in the paper: the LCM paper's full-U-Net SD-1.5 value (arXiv:2310.04378), Adam(W).
    learning_rate: float = 8e-6
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0              # not stated; the LCM code's --max_grad_norm
    adam_beta1: float = 0.9                 # not stated; torch defaults
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    checkpointing_steps: int = 500
    seed: int = 0

    # The values used on toy teachers instead, and the short schedule of the S = 8 student
    # (methods/toy_schedule.py, MultistepCM.toy_config_for_steps): methods/configs/mcm/toy.toml.
    toy: dict[str, Any] = toy_schedule_field("mcm")

    def __post_init__(self):
        if self.x_var_estimate not in X_VAR_ESTIMATES:
            raise ValueError(f"x_var_estimate must be one of {X_VAR_ESTIMATES}, got {self.x_var_estimate!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        if min(self.teacher_steps, self.teacher_steps_min, self.teacher_steps_max) < 1:
            raise ValueError("teacher step counts must be >= 1")
        if self.xvar_frac < 0 or self.huber_epsilon < 0:
            raise ValueError("xvar_frac and huber_epsilon must be >= 0")
        short = self.toy.get("short_schedule")
        if short is not None and (set(short) != {"from_segments", "max_train_steps", "lr_scheduler"}
                                  or min(short["from_segments"], short["max_train_steps"]) < 1):
            raise ValueError("the toy short_schedule takes from_segments >= 1, max_train_steps >= 1 and lr_scheduler, "
                             f"got {short}")


# ------------------------------------------------------------------------------------------------
# Time grid: segments, their boundaries and the teacher sub-grid
# ------------------------------------------------------------------------------------------------


def grid_timestep(j: Tensor | int, points: int, num_train_timesteps: int = 1000) -> Tensor:
    """Discrete timestep of continuous time tau = j / points: ``round(j * T_train / points) - 1``,
    rounded half to even (as numpy, so the boundaries are the "trailing" DDIM timesteps) in exact
    integer arithmetic; j = 0 gives -1, the final point (``NoiseSchedule.abar(-1)``)."""
    j = torch.as_tensor(j, dtype=torch.long)
    q, r = torch.div(j * num_train_timesteps, points, rounding_mode="floor"), (j * num_train_timesteps) % points
    up = (2 * r > points) | ((2 * r == points) & (q % 2 == 1))
    return q + up.long() - 1


def segment_boundaries(segments: int, num_train_timesteps: int = 1000) -> list[int]:
    """The timesteps the S-step sampler visits, decreasing: the upper boundaries tau = k / S,
    k = S..1 (then the final point). S = 4 -> [999, 749, 499, 249]."""
    if not 1 <= segments <= num_train_timesteps:
        raise ValueError(f"the segment count must be in [1, {num_train_timesteps}], got {segments}")
    return grid_timestep(torch.arange(segments, 0, -1), segments, num_train_timesteps).tolist()


def teacher_steps_at(iteration: int, config: MCMConfig) -> float:
    """N_teacher(i): fixed, or annealed log-linearly from min to max over ``anneal_iterations``
    (App. A.1)."""
    if not config.anneal_teacher_steps:
        return float(config.teacher_steps)
    frac = min(max(iteration / max(1, config.anneal_iterations), 0.0), 1.0)
    lo, hi = math.log(config.teacher_steps_min), math.log(config.teacher_steps_max)
    return math.exp(lo + frac * (hi - lo))


def steps_per_segment(teacher_steps: float, segments: int, num_train_timesteps: int = 1000) -> int:
    """N_per_segment = round(N_teacher / S) (Alg. 1), kept in [1, T_train // S] so that every
    teacher sub-step spans at least one discrete timestep."""
    return max(1, min(round(teacher_steps / segments), num_train_timesteps // segments))


def sample_segment_times(segments: int, per_segment: int, batch: int, generator: torch.Generator,
                         num_train_timesteps: int = 1000) -> tuple[Tensor, Tensor, Tensor]:
    """(t, s, t_step) timesteps of Alg. 1 for ``batch`` samples (CPU long tensors): a segment
    ``step ~ U{0..S-1}``, ``n ~ U{1..N}``, t = (step N + n) / T, s = t - 1 / T, t_step = step / S."""
    step = torch.randint(0, segments, (batch,), generator=generator)
    n_rel = torch.randint(1, per_segment + 1, (batch,), generator=generator)
    points = per_segment * segments
    j = step * per_segment + n_rel
    return (grid_timestep(j, points, num_train_timesteps), grid_timestep(j - 1, points, num_train_timesteps),
            grid_timestep(step * per_segment, points, num_train_timesteps))


# ------------------------------------------------------------------------------------------------
# Training state and step
# ------------------------------------------------------------------------------------------------


@dataclass
class MCMState:
    """One MCM run: the student (prepared by accelerate) is also its own stop-gradient target."""

    student: nn.Module
    teacher: nn.Module
    schedule: NoiseSchedule
    optimizer: Any
    lr_scheduler: Any
    params: list[nn.Parameter]
    config: MCMConfig
    segments: int                            # S, the student's sampling steps
    guidance_scale: float                    # teacher CFG, diffusers convention
    autocast: Callable[[], Any]
    unwrap: Callable[[nn.Module], nn.Module]

    @property
    def models(self) -> list[nn.Module]:
        return [self.student]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.params

    def after_optimizer_step(self) -> None:
        pass                                 # no EMA network

    def extra_state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_extra_state_dict(self, state: dict[str, Tensor]) -> None:
        pass


def _x0(out: Tensor, z: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    alpha, sigma = schedule.alpha_sigma(t.cpu())
    return model_output_to_x0_eps(out, z, alpha.to(z.device, z.dtype), sigma.to(z.device, z.dtype),
                                  schedule.prediction_type)[0]


def huber_distance(x_diff: Tensor, epsilon: float) -> Tensor:
    """Per-sample sqrt(||x_diff||^2 / d + eps^2) - eps (App. A.1 "huber epsilon")."""
    mean_sq = x_diff.float().flatten(1).pow(2).mean(dim=1)
    return (mean_sq + epsilon**2).sqrt() - epsilon


def mcm_training_step(state: MCMState, batch: Any) -> Tensor:
    """Algorithm 1 on ``batch`` (bench.engine.training.TrainingBatch). Every random draw comes from
    ``batch.generator`` in a fixed order: segments, sub-steps, noise."""
    cfg, schedule, g = state.config, state.schedule, batch.generator
    x, cond, uncond = batch.latents, batch.cond, batch.uncond
    device, bsz, T_train = x.device, x.shape[0], schedule.num_train_timesteps

    # 1. segment, teacher sub-step and noise: t = t_step + n / T, s = t - 1 / T
    per_segment = steps_per_segment(teacher_steps_at(batch.step, cfg), state.segments, T_train)
    t, s, t_step = sample_segment_times(state.segments, per_segment, bsz, g, T_train)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float32).to(device, x.dtype)
    abar_t, abar_s, abar_step = schedule.abar(t), schedule.abar(s), schedule.abar(t_step)
    z_t = add_noise(x, eps, abar_t.sqrt(), (1 - abar_t).sqrt())
    t_d, s_d = t.to(device), s.clamp(min=0).to(device)   # s = -1 (final) only when s = t_step: unused

    with torch.no_grad():
        # 2. teacher step z_t -> z_s by aDDIM: guided direction, x_var from the conditional output
        t_dtype = next(state.teacher.parameters()).dtype
        with state.autocast():
            out_c = state.teacher(z_t.to(t_dtype), t_d, encoder_hidden_states=cond.to(t_dtype)).sample
            out_u = (state.teacher(z_t.to(t_dtype), t_d, encoder_hidden_states=uncond.to(t_dtype)).sample
                     if state.guidance_scale != 1.0 else None)
        x_cond = _x0(out_c.float(), z_t, t, schedule)
        x_teacher = x_cond if out_u is None else cfg_imagen(_x0(out_u.float(), z_t, t, schedule), x_cond,
                                                             state.guidance_scale)
        if cfg.x_var_estimate == "data":
            x_var = cfg.xvar_frac * (x_cond - x).flatten(1).pow(2).mean(dim=1)         # Alg. 1, App. A.1
        elif cfg.x_var_estimate == "analytic":
            x_var = addim_analytic_x_var(abar_t).to(device, x.dtype)                   # §3.2
        else:
            x_var = 0.0
        z_s = addim_step(x_teacher, z_t, abar_t, abar_s, x_var)                        # Eq. 14

        # 3. reference: nograd f(z_s, s), DDIM to the segment start; z_s itself when s = t_step (Eq. 8)
        with state.autocast():
            out_ref = state.student(z_s, s_d, encoder_hidden_states=cond).sample
        x_ref = _x0(out_ref.float(), z_s, s, schedule)
        z_ref = ddim_step_from_x_t(z_s, x_ref, abar_s, abar_step)                       # Eq. 4
        at_start = (s == t_step).to(device).reshape(-1, *[1] * (z_s.ndim - 1))
        z_ref = torch.where(at_start, z_s, z_ref)
        # Eq. 5; it is 0/0 where the span from the segment start to t has zero length: t = 0 in the
        # first segment when the final point is abar_0 (SD-1.5's set_alpha_to_one=False), drawn once
        # the teacher grid reaches every timestep (annealing to 1280). There the target is its limit
        # s -> t, the teacher's x_0 (aDDIM -> DDIM).
        zero_span = (abar_t == abar_step).to(device).reshape(at_start.shape)
        x_target = torch.where(zero_span, x_teacher, inverse_ddim(z_ref, z_t, abar_t, abar_step))

    # 4. student f(z_t, t) and the x-space loss (Eq. 7) with w_t = SNR(t) + 1 = 1 / sigma_t^2
    out = state.student(z_t, t_d, encoder_hidden_states=cond).sample
    x_diff = x_target - _x0(out.float(), z_t, t, schedule)
    weight = 1.0 / (1.0 - abar_t) if cfg.loss_weighting == "snr+1" else torch.ones_like(abar_t)
    return (weight.to(device, torch.float32) * huber_distance(x_diff, cfg.huber_epsilon)).mean()


# ------------------------------------------------------------------------------------------------
# Method
# ------------------------------------------------------------------------------------------------


@register_method("mcm")
class MultistepCM(TrainingMethod):
    paper: ClassVar[str] = "Heek, Hoogeboom & Salimans 2024, Multistep Consistency Models, arXiv:2403.06807"
    summary: ClassVar[str] = ("multistep consistency distillation, one student per step count S (aDDIM teacher, "
                              "x-space loss); deterministic DDIM segment sampler, 1 call per step")
    config_class: ClassVar[type] = MCMConfig
    supported_steps: ClassVar[tuple[int, ...] | None] = None   # any S >= 1 (S <= T_train)
    student_per_step_count: ClassVar[bool] = True
    # The guidance is distilled (fixed teacher CFG); the student samples without CFG.
    default_guidance_scale: ClassVar[float | None] = 1.0

    # -- training ------------------------------------------------------------------------------
    def init_training_state(self, ctx: TrainingContext) -> MCMState:
        """The state for the S = ``ctx.steps`` student (one student per segment count)."""
        if ctx.steps is None:
            raise ValueError("mcm trains one student per segment count S: the training context needs steps=S")
        cfg, teacher, trainer, steps = self.config, ctx.teacher, ctx.trainer, ctx.steps
        schedule = teacher.schedule
        segment_boundaries(steps, schedule.num_train_timesteps)          # validates S
        # the student starts as the teacher (§5.1): a fp32 copy (master weights), all of it trained
        student = nn.Module.to(copy.deepcopy(teacher.unet), device="cpu", dtype=torch.float32)
        student = student.requires_grad_(True).to(trainer.device).train()
        params = [p for p in student.parameters() if p.requires_grad]
        optimizer, lr_scheduler = make_optimizer(params, cfg, trainer.schedule.learning_rate,
                                                 trainer.schedule.max_train_steps, trainer.num_processes)
        student, optimizer, lr_scheduler = trainer.prepare(student, optimizer, lr_scheduler)
        guidance = cfg.guidance_scale if cfg.guidance_scale is not None else float(teacher.default_guidance_scale)
        return MCMState(student=student, teacher=teacher.unet, schedule=schedule, optimizer=optimizer,
                        lr_scheduler=lr_scheduler, params=params, config=cfg, segments=steps,
                        guidance_scale=guidance, autocast=trainer.autocast, unwrap=trainer.unwrap)

    def training_step(self, state: MCMState, batch: Any) -> Tensor:
        return mcm_training_step(state, batch)

    def student_from_state(self, state: MCMState, ctx: TrainingContext) -> Student:
        unet = ctx.trainer.unwrap(state.student).eval().requires_grad_(False)
        return Student(unet=unet, kind="unet", metadata={
            "segments": state.segments, "guidance_scale": state.guidance_scale,
            "timesteps": segment_boundaries(state.segments, state.schedule.num_train_timesteps)})

    def toy_config_for_steps(self, config: MCMConfig, steps: int) -> MCMConfig:
        """The toy schedule of the S = ``steps`` student: the toy schedule's ``short_schedule`` from
        S = its ``from_segments`` on, unless this method's config changed the schedule (``--config``
        max_train_steps, lr_scheduler or their toy_ values)."""
        own, default = self.config, type(self.config)()
        short = config.toy.get("short_schedule")
        schedule_fields = ("max_train_steps", "lr_scheduler")
        if (short is None or steps < short["from_segments"]
                or any(getattr(own, f) != getattr(default, f) or own.toy.get(f) != default.toy.get(f)
                       for f in schedule_fields)):
            return config
        return replace(config, max_train_steps=short["max_train_steps"], lr_scheduler=short["lr_scheduler"])

    # -- sampling ------------------------------------------------------------------------------
    def timesteps(self, denoiser: Denoiser, steps: int) -> list[int]:
        return segment_boundaries(steps, denoiser.schedule.num_train_timesteps)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, request: SampleRequest) -> Tensor:
        """Algorithm 2: z_s = DDIM_{t->s}(f(z_t, t), z_t) between consecutive segment boundaries,
        the last to the final abar; no fresh noise. ``request.steps`` must be the student's S."""
        schedule, x = denoiser.schedule, request.noise
        for t, s in step_pairs(self.timesteps(denoiser, request.steps)):
            x0, eps = denoiser.guided_x0_eps(x, t, request.cond, request.uncond, request.guidance_scale)
            # Eq. 4 = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps with eps = (z_t - alpha_t x0) / sigma_t
            x = ddim_step(x0, eps, schedule.abar(t), schedule.abar(s))
        return x


__all__ = ["MultistepCM", "MCMConfig", "MCMState", "grid_timestep", "segment_boundaries", "teacher_steps_at",
           "steps_per_segment", "sample_segment_times", "huber_distance", "mcm_training_step"]
