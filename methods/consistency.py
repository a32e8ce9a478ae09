"""Latent Consistency Distillation (LCD): the training step and the multistep consistency sampler
that LCM, LCM-LoRA, SCott and SPLAM share (Luo et al. 2023, arXiv:2310.04378, Alg. 1 and Eq. 7-9;
code: diffusers ``examples/consistency_distillation/train_lcm_distill_sd_wds.py`` and
``LCMScheduler``).

One training step on a batch of latents z with prompts c (the algorithm box)::

    n ~ U{0..N-1};  t_{n+k} = solver.timesteps[n];  t_n = max(t_{n+k} - k, 0)      (k = T / N = 20)
    x_{t_{n+k}} = alpha z + sigma eps                                              (forward process)
    w ~ U[w_min, w_max]                                                            (LCM convention)
    pred   = f_theta(x_{t_{n+k}}, w, c, t_{n+k})                                   (online student)
    x0^, eps^ = cond + w (cond - uncond), in x0 and eps space                      (teacher CFG, Eq. 9)
    x_{t_n} = sqrt(abar_{t_n}) x0^ + sqrt(1 - abar_{t_n}) eps^                      (DDIM, k skipped)
    target = f_theta-(x_{t_n}, w, c, t_n)                                          (EMA target, no grad)
    loss   = d(pred, target)            d: squared L2 (paper) or pseudo-Huber (code)

with the consistency parameterisation f(x, t) = c_skip(t) x + c_out(t) x0(x, t) (Eq. 7; scalings
in ``diffusion_math.consistency_boundary_scalings``), so f(x, 0) = x exactly.

The step is written as pieces that SCott and SPLAM recombine: ``lcd_draws`` (1-3), ``lcd_online``
(4; SPLAM passes its own point and sigma), ``lcd_teacher_solve`` (5: ``state.solver.draw/solve``;
LCM's ``SkippingStepDDIM``, or ``MultistepTeacherSolver`` for SCott's h SDE sub-steps and SPLAM's
k / k_phi DDIM sub-steps) and ``lcd_target`` (6).

Sampling (LCM's multistep consistency sampler, Alg. 3; diffusers ``LCMScheduler``)::

    for t_i in timesteps:  x0^ = f(x, t_i);  x = sqrt(abar_{t_{i+1}}) x0^ + sqrt(1 - abar_{t_{i+1}}) z,  z fresh
    return the last x0^ (no noise after the last step)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.base import (
    Denoiser,
    SampleRequest,
    ema_update,
    load_prefixed_state_dict,
    per_sample_randn,
    prefixed_state_dict,
)
from methods.diffusion_math import (
    ER_SDE_NOISE_SCALES,
    NoiseSchedule,
    _as_column,
    add_noise,
    cfg_lcm,
    consistency_boundary_scalings,
    ddim_step,
    er_sde_step,
    guidance_scale_embedding,
    model_output_to_x0_eps,
)

Tensor = torch.Tensor

#: LCMScheduler timestep spacings. "diffusers-2023-11": evenly spaced indices into the
#: 50-point grid (diffusers PR #5836, 2023-11-20, the current LCMScheduler); "original": every
#: (50 // n)-th grid point (luosiallen/latent-consistency-model and diffusers before that PR).
LCM_TIMESTEP_SPACINGS: tuple[str, ...] = ("diffusers-2023-11", "original")
LOSS_TYPES: tuple[str, ...] = ("l2", "huber")
PRESETS: tuple[str, ...] = ("paper", "official-code")


# ------------------------------------------------------------------------------------------------
# Config: shared fields and the paper / official-code presets
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsistencyDistillationConfig:
    """Fields every LCD-based method has. Fields whose paper and official-code values differ
    default to None and take their value from ``preset`` (``resolved()``; the method resolves its
    config on construction); set a field to override the preset. Subclasses define ``PRESETS``."""

    preset: str = "paper"   # "paper" | "official-code"

    # -- LCD solver and parameterisation (paper and code agree) --------------------------------
    # Grid points N: skipping step k = T / N = 20 on T = 1000 (LCM paper: k = 20; code
    # --num_ddim_timesteps=50).
    num_ddim_timesteps: int = 50
    # c_skip/c_out constants (code: get_scalings_for_boundary_condition_discrete, sigma_data=0.5,
    # --timestep_scaling_factor=10; must equal the sampler's, luosiallen#30).
    sigma_data: float = 0.5
    timestep_scaling: float = 10.0
    # pseudo-Huber constant (code --huber_c=0.001), used when loss_type == "huber".
    huber_c: float = 0.001

    # -- differ between paper and code: None = take the preset's value --------------------------
    w_min: float | None = None              # guidance range, LCM convention (g = w + 1)
    w_max: float | None = None
    loss_type: str | None = None            # "l2" | "huber"
    learning_rate: float | None = None
    train_batch_size: int | None = None     # per process and micro-batch
    max_train_steps: int | None = None

    # -- optimisation (code defaults; the papers do not state them) ----------------------------
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0              # code --max_grad_norm=1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0          # code README --adam_weight_decay=0.0
    adam_epsilon: float = 1e-8
    # code --lr_scheduler=constant; its --lr_warmup_steps=500 has no effect under "constant"
    # (diffusers get_scheduler ignores warmup for it); "constant_with_warmup" makes it count.
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 500
    checkpointing_steps: int = 500          # code --checkpointing_steps=500
    seed: int = 0

    # -- sampling --------------------------------------------------------------------------------
    # LCM_TIMESTEP_SPACINGS; the two measured alike on the toy (same students, 4 and 8 steps).
    timestep_spacing: str = "diffusers-2023-11"
    original_inference_steps: int = 50      # LCMScheduler default; LCM-Dreamshaper uses 50 (diffusers docs)

    #: {preset name: {field: value}} for the None-default fields; set by each subclass
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    #: fields that only change sampling, not the trained student (kept out of the student fingerprint)
    SAMPLING_FIELDS: ClassVar[tuple[str, ...]] = ("timestep_spacing", "original_inference_steps")

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.timestep_spacing not in LCM_TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {LCM_TIMESTEP_SPACINGS}, got {self.timestep_spacing!r}")
        if self.loss_type is not None and self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.w_min is not None and self.w_max is not None and self.w_min > self.w_max:
            raise ValueError(f"w_min {self.w_min} > w_max {self.w_max}")

    def preset_values(self) -> dict[str, Any]:
        return dict(type(self).PRESETS[self.preset])

    def resolved(self) -> "ConsistencyDistillationConfig":
        """This config with every None field filled from its preset."""
        fill = {name: value for name, value in self.preset_values().items() if getattr(self, name) is None}
        resolved = dataclasses.replace(self, **fill) if fill else self
        missing = [f.name for f in dataclasses.fields(resolved)
                   if getattr(resolved, f.name) is None]
        if missing:
            raise ValueError(f"{type(self).__name__}: no value for {missing} in preset {self.preset!r}")
        return resolved

    def training_fields(self) -> dict[str, Any]:
        """The fields that change the trained student (everything but the sampling fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in self.SAMPLING_FIELDS}


# ------------------------------------------------------------------------------------------------
# Timesteps: the skipping-step DDIM solver grid and the LCM inference schedule
# ------------------------------------------------------------------------------------------------


def lcm_grid(num_train_timesteps: int = 1000, num_points: int = 50) -> list[int]:
    """The distillation grid, ascending: ``arange(1, N + 1) * (T // N) - 1`` = [19, 39, ..., 999]."""
    k = num_train_timesteps // num_points
    return [i * k - 1 for i in range(1, num_points + 1)]


def lcm_timesteps(steps: int, num_train_timesteps: int = 1000, original_inference_steps: int = 50,
                  spacing: str = "diffusers-2023-11") -> list[int]:
    """Decreasing inference timesteps of an ``steps``-step LCM sampler:

    * "diffusers-2023-11": ``origin[floor(linspace(0, N, steps, endpoint=False))]``,
      4 steps -> [999, 759, 499, 259] (``LCMScheduler.set_timesteps``)
    * "original": ``origin[::N // steps][:steps]``, 4 steps -> [999, 759, 519, 279]
    with ``origin`` the grid in decreasing order."""
    origin = lcm_grid(num_train_timesteps, original_inference_steps)[::-1]
    if not 1 <= steps <= len(origin):
        raise ValueError(f"LCM sampling takes 1..{len(origin)} steps (original_inference_steps="
                         f"{original_inference_steps}), got {steps}")
    if spacing == "diffusers-2023-11":
        indices = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
        return [origin[i] for i in indices]
    if spacing == "original":
        return origin[::len(origin) // steps][:steps]
    raise ValueError(f"unknown LCM timestep spacing {spacing!r}; choose one of {', '.join(LCM_TIMESTEP_SPACINGS)}")


@dataclass(frozen=True)
class SkippingStepDDIM:
    """LCM's teacher ODE solver (``DDIMSolver`` of the LCD script): DDIM from t_{n+k} = grid[n] to
    t_n = grid[n] - k in one step, k = T / N. At n = 0 the end point is t = 0 (abar_0, where f is the
    identity)."""

    schedule: NoiseSchedule
    num_points: int = 50

    @property
    def skip(self) -> int:
        return self.schedule.num_train_timesteps // self.num_points

    @property
    def grid(self) -> Tensor:
        return torch.tensor(lcm_grid(self.schedule.num_train_timesteps, self.num_points), dtype=torch.long)

    def timesteps(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """(t_{n+k}, t_n) for grid indices ``index`` (CPU long tensors)."""
        start = self.grid[index]
        return start, (start - self.skip).clamp(min=0)

    def step(self, x0: Tensor, eps: Tensor, t_start: Tensor, t_end: Tensor) -> Tensor:
        """Deterministic DDIM (Song et al. 2021, Eq. 12 with eta = 0) from t_start to t_end."""
        return ddim_step(x0, eps, self.schedule.abar(t_start), self.schedule.abar(t_end), eta=0.0)

    # -- the teacher-solver interface of lcd_training_step (SCott and SPLAM bring their own) ------
    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n ~ U{0..N-1} -> (t_{n+k}, t_n)."""
        return self.timesteps(torch.randint(0, self.num_points, (batch_size,), generator=generator))

    def solve(self, teacher: "GuidedTeacher", x_start: Tensor, t_start: Tensor, t_end: Tensor,
              generator: torch.Generator | None = None) -> Tensor:
        """x_{t_n} from x_{t_{n+k}}: one guided teacher call, one DDIM step."""
        x0, eps = teacher(x_start, t_start)
        return self.step(x0, eps, t_start, t_end)


#: ``teacher(x_t, t) -> (x0^, eps^)``: the guided teacher prediction at (B,) CPU timesteps t.
GuidedTeacher = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def substep_timesteps(t_start: Tensor, span: int, substeps: int) -> list[Tensor]:
    """The h + 1 timesteps of a teacher that goes from t_start to t_end = max(t_start - span, 0)
    in h = ``substeps`` steps of span / h (SCott "Multi-step Sampling", Fig. 3; SPLAM Multiple
    Estimation, Eq. 18, t_{phi,i} = t - i k_phi). The last one is t_end exactly; points below 0
    are clamped to 0 (a step from 0 to 0 is the identity)."""
    if span % substeps:
        raise ValueError(f"span {span} is not a multiple of the {substeps} sub-steps")
    stride = span // substeps
    return [(t_start - j * stride).clamp(min=0) for j in range(substeps + 1)]


#: Sub-step kinds of MultistepTeacherSolver: DDIM with eta (Song et al. 2021, Eq. 12/16) or the
#: first-order VP ER-SDE step (Cui et al. 2023) with a noise-scale function phi.
TEACHER_STEP_KINDS: tuple[str, ...] = ("ddim", "er-sde")


@dataclass(frozen=True)
class MultistepTeacherSolver:
    """A teacher that goes from t_{n+k} to t_n = max(t_{n+k} - span, 0) in ``substeps`` guided
    steps of span / substeps each, a fresh teacher call per sub-step (``substep_timesteps``).

    * SCott ("Multi-step Sampling", Fig. 3): span 24, h = 3 ER-SDE 5 (or DDIM-eta) sub-steps.
    * SPLAM (Multiple Estimation, Eq. 18): span k = 100, k / k_phi = 5 deterministic DDIM steps.
    * span 20, one DDIM step with eta 0: LCM's ``SkippingStepDDIM``.

    t_{n+k} is drawn uniformly from the ``lcm_grid`` points >= ``min_start`` (SPLAM: t ~ U[k, T]).
    Stochastic sub-steps draw z ~ N(0, I) from the step's generator, one per sub-step."""

    schedule: NoiseSchedule
    num_points: int = 50
    span: int = 20
    substeps: int = 1
    kind: str = "ddim"
    eta: float = 0.0                    # kind "ddim"
    noise_scale: str = "sde_5"          # kind "er-sde": a key of ER_SDE_NOISE_SCALES
    variance_floor: float = 1e-6        # kind "er-sde": the reference's numerical_clip
    min_start: int = 0

    def __post_init__(self):
        if self.kind not in TEACHER_STEP_KINDS:
            raise ValueError(f"teacher step kind must be one of {TEACHER_STEP_KINDS}, got {self.kind!r}")
        if self.kind == "er-sde" and self.noise_scale not in ER_SDE_NOISE_SCALES:
            raise ValueError(f"noise_scale must be one of {sorted(ER_SDE_NOISE_SCALES)}, got {self.noise_scale!r}")
        if self.substeps < 1 or self.span < 1 or self.span % self.substeps:
            raise ValueError(f"span {self.span} must be a positive multiple of substeps {self.substeps}")
        if not self.grid.numel():
            raise ValueError(f"no grid point >= min_start {self.min_start}")

    @property
    def grid(self) -> Tensor:
        grid = torch.tensor(lcm_grid(self.schedule.num_train_timesteps, self.num_points), dtype=torch.long)
        return grid[grid >= self.min_start]

    @property
    def stochastic(self) -> bool:
        return self.kind == "er-sde" or self.eta > 0

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        grid = self.grid
        t_start = grid[torch.randint(0, grid.numel(), (batch_size,), generator=generator)]
        return t_start, (t_start - self.span).clamp(min=0)

    def step(self, x_t: Tensor, x0: Tensor, eps: Tensor, t: Tensor, s: Tensor, noise: Tensor | None) -> Tensor:
        """One sub-step from t to s < t."""
        abar_t, abar_s = self.schedule.abar(t), self.schedule.abar(s)
        if self.kind == "er-sde":
            return er_sde_step(x_t, x0, abar_t, abar_s, ER_SDE_NOISE_SCALES[self.noise_scale], noise,
                               variance_floor=self.variance_floor)
        return ddim_step(x0, eps, abar_t, abar_s, eta=self.eta, noise=noise)

    def solve(self, teacher: GuidedTeacher, x_start: Tensor, t_start: Tensor, t_end: Tensor,
              generator: torch.Generator | None = None) -> Tensor:
        points = substep_timesteps(t_start, self.span, self.substeps)
        if not torch.equal(points[-1], t_end):
            raise ValueError(f"t_end {t_end.tolist()} is not t_start - {self.span} (clamped at 0)")
        x = x_start
        for t, s in zip(points[:-1], points[1:]):
            x0, eps = teacher(x, t)
            noise = None
            if self.stochastic:
                noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
            x = self.step(x, x0, eps, t, s, noise)
        return x


# ------------------------------------------------------------------------------------------------
# The consistency function and the loss
# ------------------------------------------------------------------------------------------------


def consistency_function(model_output: Tensor, x_t: Tensor, t: Tensor | int, schedule: NoiseSchedule,
                         sigma_data: float = 0.5, timestep_scaling: float = 10.0,
                         clip_x0: float | None = None, sigma: Tensor | None = None) -> Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0(x_t, t) (LCM Eq. 7; LCMScheduler.step "denoised").
    ``clip_x0``: clamp x0 to [-clip_x0, clip_x0] first (the scheduler's ``clip_sample``).
    ``sigma``: (B,) noise level to read x0 with in place of sigma_t (SPLAM's sigma(gamma, t),
    Eq. 14; None: the schedule's sigma_t, i.e. LCM)."""
    t_cpu = torch.as_tensor(t).cpu()
    alpha, sigma_t = schedule.alpha_sigma(t_cpu)
    sigma = sigma_t if sigma is None else sigma.cpu()
    x0, _ = model_output_to_x0_eps(model_output, x_t, alpha.to(x_t.device, x_t.dtype),
                                   sigma.to(x_t.device, x_t.dtype), schedule.prediction_type)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    c_skip, c_out = consistency_boundary_scalings(t_cpu, sigma_data, timestep_scaling)
    c_skip = _as_column(c_skip.to(x_t.device), x_t)
    c_out = _as_column(c_out.to(x_t.device), x_t)
    return c_skip * x_t + c_out * x0


def consistency_loss(pred: Tensor, target: Tensor, loss_type: str = "l2", huber_c: float = 0.001) -> Tensor:
    """d(pred, target): mean squared error (paper), or the elementwise pseudo-Huber
    mean(sqrt((pred - target)^2 + c^2) - c) of the code's --loss_type=huber."""
    pred, target = pred.float(), target.float()
    if loss_type == "l2":
        return F.mse_loss(pred, target, reduction="mean")
    if loss_type == "huber":
        return torch.mean(torch.sqrt((pred - target) ** 2 + huber_c**2) - huber_c)
    raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")


# ------------------------------------------------------------------------------------------------
# Training state and step
# ------------------------------------------------------------------------------------------------


@dataclass
class LCDState:
    """Everything one LCD run holds. ``target=None``: the target is the online student itself
    under no_grad (stop-gradient; LCM-LoRA), otherwise an EMA copy updated after every optimizer
    step with ``ema_decay``."""

    student: nn.Module                       # prepared (accelerate) online network
    target: nn.Module | None
    teacher: nn.Module
    schedule: NoiseSchedule
    solver: SkippingStepDDIM
    optimizer: Any
    lr_scheduler: Any
    params: list[nn.Parameter]
    config: ConsistencyDistillationConfig
    w_embedding_dim: int | None              # time_cond_proj_dim; None: no w embedding
    ema_decay: float | None
    autocast: Callable[[], Any]
    unwrap: Callable[[nn.Module], nn.Module]

    @property
    def models(self) -> list[nn.Module]:
        return [self.student]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.params

    def after_optimizer_step(self) -> None:
        if self.target is not None:
            ema_update(self.target.parameters(), self.unwrap(self.student).parameters(), self.ema_decay)

    def extra_state_dict(self) -> dict[str, Tensor]:
        return prefixed_state_dict(self.target, "target")

    def load_extra_state_dict(self, state: dict[str, Tensor]) -> None:
        load_prefixed_state_dict(self.target, state, "target")


def _x0_eps(out: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> tuple[Tensor, Tensor]:
    alpha, sigma = schedule.alpha_sigma(t.cpu())
    return model_output_to_x0_eps(out, x_t, alpha.to(x_t.device, x_t.dtype), sigma.to(x_t.device, x_t.dtype),
                                  schedule.prediction_type)


@dataclass
class LCDDraws:
    """The random draws of one LCD step, taken from ``batch.generator`` in this order: the
    timesteps (the solver's ``draw``), the forward-process noise, w."""

    t_start: Tensor                  # (B,) CPU long: t_{n+k}
    t_end: Tensor                    # (B,) CPU long: t_n
    x_start: Tensor                  # x_{t_{n+k}} ~ q(x_t | z)
    w: Tensor                        # (B,) CPU float32, LCM convention
    w_emb: Tensor | None             # its Fourier embedding (None: the student has no w embedding)


def lcd_draws(state: LCDState, batch: Any) -> LCDDraws:
    """Steps 1-3 of the algorithm box: t_{n+k}, t_n, x_{t_{n+k}}, w and its embedding."""
    cfg, schedule, g = state.config, state.schedule, batch.generator
    latents = batch.latents
    device, bsz = latents.device, latents.shape[0]
    # 1. timesteps t_{n+k} (start) and t_n (end), e.g. on the skipping-step grid
    t_start, t_end = state.solver.draw(bsz, g)
    # 2. x_{t_{n+k}} ~ q(x_t | z)
    noise = torch.randn(latents.shape, generator=g, dtype=torch.float32).to(device, latents.dtype)
    alpha, sigma = schedule.alpha_sigma(t_start)
    x_start = add_noise(latents, noise, alpha.to(device, latents.dtype), sigma.to(device, latents.dtype))
    # 3. w ~ U[w_min, w_max] (LCM convention) and its Fourier embedding (``guidance_scale_embedding``)
    w = (cfg.w_max - cfg.w_min) * torch.rand(bsz, generator=g, dtype=torch.float32) + cfg.w_min
    w_emb = (guidance_scale_embedding(w, state.w_embedding_dim).to(device, latents.dtype)
             if state.w_embedding_dim else None)
    return LCDDraws(t_start, t_end, x_start, w, w_emb)


@torch.no_grad()
def teacher_guided_x0_eps(state: LCDState, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor,
                          w: Tensor) -> tuple[Tensor, Tensor]:
    """The teacher's CFG prediction in x0 and eps space (LCM convention, Eq. 9), float32."""
    schedule, device = state.schedule, x_t.device
    t_dtype, t_d = next(state.teacher.parameters()).dtype, t.to(device)
    with state.autocast():
        out_c = state.teacher(x_t.to(t_dtype), t_d, encoder_hidden_states=cond.to(t_dtype)).sample
        out_u = state.teacher(x_t.to(t_dtype), t_d, encoder_hidden_states=uncond.to(t_dtype)).sample
    x0_c, eps_c = _x0_eps(out_c.float(), x_t, t, schedule)
    x0_u, eps_u = _x0_eps(out_u.float(), x_t, t, schedule)
    w_col = w.to(device)
    return cfg_lcm(x0_u, x0_c, w_col), cfg_lcm(eps_u, eps_c, w_col)


@torch.no_grad()
def lcd_teacher_solve(state: LCDState, draws: LCDDraws, batch: Any) -> Tensor:
    """Step 5: x^_{t_n} from x_{t_{n+k}} with the guided teacher and ``state.solver`` (LCM: one
    DDIM step; SCott: h SDE sub-steps; SPLAM: k / k_phi DDIM sub-steps). The solver's random
    draws come from ``batch.generator`` after ``lcd_draws``'."""
    def teacher(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return teacher_guided_x0_eps(state, x_t, t, batch.cond, batch.uncond, draws.w)

    x_end = state.solver.solve(teacher, draws.x_start, draws.t_start, draws.t_end, batch.generator)
    return x_end.to(batch.latents.dtype)


def lcd_online(state: LCDState, x_t: Tensor, t: Tensor, cond: Tensor, timestep_cond: Tensor | None,
               sigma: Tensor | None = None, net_input: Tensor | None = None,
               net_timestep: Tensor | None = None) -> Tensor:
    """Step 4: the online student f_theta(x_t, cond, t) (Eq. 7), with gradient. ``net_input`` /
    ``net_timestep``: what the network itself is given, when a method preconditions its input
    (SPLAM's "noise-level"); the consistency function still reads x_t at t."""
    cfg = state.config
    x_in = x_t if net_input is None else net_input
    t_in = t if net_timestep is None else net_timestep
    out = state.student(x_in, t_in.to(x_t.device), encoder_hidden_states=cond, timestep_cond=timestep_cond).sample
    return consistency_function(out, x_t, t, state.schedule, cfg.sigma_data, cfg.timestep_scaling, sigma=sigma)


@torch.no_grad()
def lcd_target(state: LCDState, x_end: Tensor, t_end: Tensor, cond: Tensor, timestep_cond: Tensor | None) -> Tensor:
    """Step 6: f_theta-(x_{t_n}, cond, t_n); the EMA network, or the student under stop-grad."""
    cfg = state.config
    target_net = state.target if state.target is not None else state.student
    with state.autocast():
        out_t = target_net(x_end, t_end.to(x_end.device), encoder_hidden_states=cond,
                           timestep_cond=timestep_cond).sample
    return consistency_function(out_t.float(), x_end, t_end, state.schedule, cfg.sigma_data, cfg.timestep_scaling)


def lcd_training_step(state: LCDState, batch: Any) -> Tensor:
    """One LCD loss evaluation on ``batch`` (bench.engine.training.TrainingBatch: latents, cond, uncond,
    generator). Every random draw comes from ``batch.generator`` (CPU), in a fixed order."""
    cfg = state.config
    draws = lcd_draws(state, batch)                                                  # 1-3
    pred = lcd_online(state, draws.x_start, draws.t_start, batch.cond, draws.w_emb)  # 4
    x_end = lcd_teacher_solve(state, draws, batch)                                   # 5
    target = lcd_target(state, x_end, draws.t_end, batch.cond, draws.w_emb)          # 6
    return consistency_loss(pred, target, cfg.loss_type, cfg.huber_c)                # 7. d(pred, target)


def make_optimizer(params: Sequence[nn.Parameter], config: ConsistencyDistillationConfig, learning_rate: float,
                   max_train_steps: int, num_processes: int = 1) -> tuple[Any, Any]:
    """AdamW and the LR schedule as in the reference script (warmup and length scaled by the
    number of processes, because accelerate steps a prepared scheduler once per process)."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(params, lr=learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer,
                                 num_warmup_steps=config.lr_warmup_steps * num_processes,
                                 num_training_steps=max(1, max_train_steps) * num_processes)
    return optimizer, lr_scheduler


# ------------------------------------------------------------------------------------------------
# Sampler
# ------------------------------------------------------------------------------------------------


def _scheduler_clip(denoiser: Denoiser) -> float | None:
    config = denoiser.scheduler_config or {}
    if config.get("thresholding"):
        raise NotImplementedError("LCM sampler: dynamic thresholding (scheduler thresholding=True) is not implemented")
    return float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample") else None


@torch.no_grad()
def lcm_multistep_sample(denoiser: Denoiser, request: SampleRequest, timesteps: Sequence[int], *,
                         sigma_data: float = 0.5, timestep_scaling: float = 10.0,
                         timestep_cond: Tensor | None = None) -> Tensor:
    """LCM's multistep consistency sampler (LCM Alg. 3; diffusers ``LCMScheduler.step``).

    With ``timestep_cond`` (a w embedding, full LCM) each step is one network call on the
    conditional prompt: the guidance is distilled. Without it (LCM-LoRA) the network output is
    guided in the diffusers convention, ``uncond + g (cond - uncond)``, as StableDiffusionPipeline
    does (g = 1: one call). Fresh noise for image i comes from ``request.generators[i]``."""
    schedule, clip = denoiser.schedule, _scheduler_clip(denoiser)
    x = request.noise
    for i, t in enumerate(timesteps):
        if timestep_cond is not None:
            out = denoiser.raw(x, t, request.cond, timestep_cond=timestep_cond)
        else:
            out = denoiser.guided_output(x, t, request.cond, request.uncond, request.guidance_scale)
        denoised = consistency_function(out, x, t, schedule, sigma_data, timestep_scaling, clip_x0=clip)
        if i == len(timesteps) - 1:
            return denoised                                        # no noise after the last step
        z = per_sample_randn(request.generators, x)
        alpha, sigma = schedule.alpha_sigma(timesteps[i + 1])
        x = add_noise(denoised, z, alpha.to(x.device, x.dtype), sigma.to(x.device, x.dtype))
    return x


__all__ = ["ConsistencyDistillationConfig", "LCDState", "SkippingStepDDIM", "LCM_TIMESTEP_SPACINGS",
           "consistency_function", "consistency_loss", "ema_update", "lcd_training_step", "lcm_grid",
           "lcm_multistep_sample", "lcm_timesteps", "make_optimizer", "GuidedTeacher", "LCDDraws",
           "lcd_draws", "lcd_online", "lcd_target", "lcd_teacher_solve", "substep_timesteps",
           "teacher_guided_x0_eps", "MultistepTeacherSolver", "TEACHER_STEP_KINDS"]
