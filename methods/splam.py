"""SPLAM: Sub-Path Linear Approximation Model (Xu et al., ECCV 2024, arXiv:2404.13903,
§4 and Algorithm 1). Released code: MCG-NJU/SPLAM ``splam/train_splam_distill_sd_wds.py`` (a fork
of the LCM script, incomplete: no Multiple Estimation).

Sub-Path Linear Approximation Distillation (Algorithm 1), on the shared LCD path
(methods/consistency.py)::

    t ~ U[k, T] (the 20-grid points >= k - 1; toy: every point, SPLAMConfig note (f));  gamma ~ U[0, 1]
    z_t = alpha(t) z + sigma(t) eps
    z^_{t-k}: k / k_phi DDIM steps of k_phi, each with CFG at a fixed w             (Multiple Estimation, Eq. 18)
    z_{gamma,t} = (1 - gamma) alpha(t)/alpha(t-k) z^_{t-k} + gamma z_t               (SL-ODE point, Eq. 12)
    sigma(gamma, t) = (1 - gamma) alpha(t)/alpha(t-k) sigma(t-k) + gamma sigma(t)     (§4.2, "empirically")
    f_theta = (z_{gamma,t} - sigma(gamma, t) eps_theta(z_{gamma,t}, c, gamma, t)) / alpha(t)    (Eq. 14)
    F_theta = c_skip(t) z_{gamma,t} + c_out(t) f_theta                                (Eq. 16)
    L = Huber(F_theta(z_{gamma,t}, c, gamma, t), F_theta-(z^_{t-k}, c, 1, t-k))       (Eq. 17; EMA target at gamma = 1)

gamma enters the student as a Fourier embedding added to its time embedding (LCM's w-embedding
slot, ``time_cond_proj_dim``). eps_theta sees z_{gamma,t} at timestep t (Algorithm 1); on the toy
world it sees the point as the variance-preserving sample it is, at the timestep of its noise
level (``gamma_preconditioning="noise-level"``, SPLAMConfig note (e)); the two agree at gamma = 1.
At gamma = 1 the step is LCM's online branch exactly (z_{1,t} = z_t, sigma(1, t) = sigma(t)).
The saved student has the gamma = 1 conditioning folded into the time embedding and no
``cond_proj`` (§4.2: "no additional parameters beyond the training phase"): a plain
``UNet2DConditionModel`` that stock diffusers pipelines load; it samples with LCM's multistep
consistency sampler at guidance 1 (the guidance is distilled; released README).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from methods.base import Student, TrainingContext
from methods.consistency import (
    ConsistencyDistillationConfig,
    LCDState,
    MultistepTeacherSolver,
    consistency_loss,
    lcd_draws,
    lcd_online,
    lcd_target,
    lcd_teacher_solve,
)
from methods.diffusion_math import _as_column, guidance_scale_embedding
from methods.lcm import _LCDMethod, build_w_conditioned_unet, check_cond_proj_init
from methods.registry import register_method
from methods.toy_schedule import toy_schedule_field

Tensor = torch.Tensor

SIGMA_GAMMAS: tuple[str, ...] = ("paper-linear", "code-sqrt")
GAMMA_EMBEDDINGS: tuple[str, ...] = ("paper-zero", "code")
#: Diagnosis switches (not in the paper): where the drawn gamma enters the online branch.
#: "none": Algorithm 1 (point, sigma and embedding); "gamma-one": gamma = 1 everywhere (LCM's
#: online branch with Multiple Estimation); "embedding-only": the embedding of gamma at the point
#: z_t with sigma(t); "point-only": the point and sigma(gamma, t) with the embedding of gamma = 1.
SL_ODE_ABLATIONS: tuple[str, ...] = ("none", "gamma-one", "embedding-only", "point-only")
#: How eps_theta(z_{gamma,t}, c, gamma, t) reads its input (Eq. 14). "algorithm-1": the network
#: sees z_{gamma,t} at timestep t (Algorithm 1, the released code). "noise-level": EDM-style
#: preconditioning inside eps_theta (c_in, c_noise of Karras et al. 2022, Table 1): the network sees
#: c_in z_{gamma,t} at the continuous timestep t' whose SNR is alpha(t)^2 / sigma(gamma, t)^2, with
#: c_in = 1 / sqrt(alpha(t)^2 + sigma(gamma, t)^2), i.e. the point as the variance-preserving
#: sample it is (same signal alpha(t) z, noise sigma(gamma, t)); see SPLAMConfig note (e).
GAMMA_PRECONDITIONINGS: tuple[str, ...] = ("algorithm-1", "noise-level")
#: Where the online point t is drawn (Eq. 17), see SPLAMConfig note (f). "paper": t ~ U[k, T], the
#: grid points >= k - 1, so a sub-path that ends at t - k in (0, k - 1) meets a target the student
#: never trains there. "all-grid": every grid point, t - k clamped at 0 (LCM's code, where c_skip = 1),
#: so every chain of targets ends at the boundary.
SUBPATH_STARTS: tuple[str, ...] = ("paper", "all-grid")


@dataclass(frozen=True)
class SPLAMConfig(ConsistencyDistillationConfig):
    """Paper values (SD-1.5, §5.1) by default; ``preset="official-code"`` is the released script.

    | field                 | paper (SD-1.5)                    | released code                  |
    |-----------------------|-----------------------------------|--------------------------------|
    | skip (k)              | 100 (§5.1)                        | 20 (one DDIM step)             |
    | w (fixed)             | g = 3 -> w = 2 (§5.1, Eq. 18) (a) | w_scale 8 (LCM conv., g = 9)   |
    | sigma_gamma           | linear mix (§4.2)                 | square-root form               |
    | gamma_embedding       | zero at gamma = 1 (§4.2)          | Fourier(10 - 10 gamma) (b)     |
    | gamma_embedding_scale | 0.01 (CHOICE, c)                  | 10                             |
    | loss                  | huber (§5.1)                      | huber, c = 0.001               |

    (a) Eq. 18 guides as w Phi(c) + (1 - w) Phi(empty), the diffusers/Imagen convention, so the
    paper's "guidance scale 3" is g = 3, w = g - 1 = 2 in the LCM convention these fields use.
    (b) non-zero at gamma = 1; folded into ``time_embedding.linear_1.bias`` at save time.
    (c) The embedding is LCM's Fourier embedding of s (1 - gamma), which multiplies its argument
    by 1000. The code's s = 10 makes every gamma < 1 a random-phase vector far from gamma = 1, the
    only value sampling uses (Eq. 19); the paper says only "Fourier embeddings", and s = 0.01 makes
    the embedding smooth in gamma, so training near gamma = 1 trains gamma = 1.
    (d) ``sl_ode_ablation`` (diagnosis only): a point z_{gamma,t} holds the signal of time t at the
    lower noise level sigma(gamma, t), the student is told t, and only the embedding says how much
    noise to remove, an error Eq. 14 divides by alpha(t); the toy U-Net does not learn it.
    (e) CHOICE for the toy world, ``gamma_preconditioning`` (its toy schedule's
    "noise-level"; the paper-scale default stays "algorithm-1"). The paper leaves open how (gamma, t)
    enter eps_theta; "noise-level" calls the U-Net on c_in z_{gamma,t} at the timestep t' of SNR
    alpha(t)^2 / sigma(gamma, t)^2, as EDM's preconditioning does (Karras et al. 2022, Table 1).
    Eq. 14 and 16 are unchanged, and at gamma = 1 (c_in = 1, t' = t) it is Algorithm 1 exactly.
    (f) CHOICE for the toy world, ``subpath_starts`` (its toy schedule's "all-grid"; the
    paper-scale default stays "paper"). Eq. 17 draws t ~ U[k, T] but reads targets at every t - k,
    so with k = 100 the ends 19 to 79 are never online points and chains of targets through them
    learn whatever is there; "all-grid" draws every grid point and clamps t - k at 0, as LCM's
    script does, so every chain ends at the boundary. With the released code's k = 20 the two agree.
    Measurements behind (c) to (f) and the toy schedule: docs/methods/splam.md.
    Not stated in the paper, taken from the released README (LCM's command): lr 8e-6, EMA 0.95,
    batch 12 per GPU. Training length: "2K to 6K iterations" for k = 100 (§5.2) -> 6000.
    CHOICE the student that is saved: the EMA target (Eq. 19 generates with F_theta-); the
    released (LCM) script's online ``unet/`` is ``student_weights="online"``.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": dict(w_min=2.0, w_max=2.0, loss_type="huber", learning_rate=8e-6, train_batch_size=12,
                      max_train_steps=6000, ema_decay=0.95, skip=100, sigma_gamma="paper-linear",
                      gamma_embedding="paper-zero", gamma_embedding_scale=0.01),
        "official-code": dict(w_min=8.0, w_max=8.0, loss_type="huber", learning_rate=8e-6, train_batch_size=12,
                              max_train_steps=1000, ema_decay=0.95, skip=20, sigma_gamma="code-sqrt",
                              gamma_embedding="code", gamma_embedding_scale=10.0),
    }

    ema_decay: float | None = None
    skip: int | None = None                  # k: t - k is the sub-path's far end
    skip_phi: int = 20                       # k_phi: the teacher's DDIM step (§5.1 "k_phi = 20")
    sigma_gamma: str | None = None           # "paper-linear" | "code-sqrt"
    gamma_embedding: str | None = None       # "paper-zero" | "code"
    gamma_embedding_scale: float | None = None   # s: the embedding is Fourier(s (1 - gamma)), see (c)
    time_cond_proj_dim: int = 256            # width of the gamma embedding (LCM's --unet_time_cond_proj_dim)
    student_weights: str = "target"          # "target" (Eq. 19) | "online"
    sl_ode_ablation: str = "none"            # SL_ODE_ABLATIONS: diagnosis only, see (d)
    gamma_preconditioning: str = "algorithm-1"   # GAMMA_PRECONDITIONINGS, see (e)
    cond_proj_init: str = "default"          # "default" (LCM's) | "zero" (see LCMConfig)
    subpath_starts: str = "paper"            # SUBPATH_STARTS, see (f)

    # The values used on toy teachers instead (methods/toy_schedule.py): methods/configs/splam/toy.toml.
    toy: dict[str, Any] = toy_schedule_field("splam")

    def __post_init__(self):
        super().__post_init__()
        if self.sigma_gamma is not None and self.sigma_gamma not in SIGMA_GAMMAS:
            raise ValueError(f"sigma_gamma must be one of {SIGMA_GAMMAS}, got {self.sigma_gamma!r}")
        if self.gamma_embedding is not None and self.gamma_embedding not in GAMMA_EMBEDDINGS:
            raise ValueError(f"gamma_embedding must be one of {GAMMA_EMBEDDINGS}, got {self.gamma_embedding!r}")
        if self.gamma_embedding_scale is not None and self.gamma_embedding_scale <= 0:
            raise ValueError(f"gamma_embedding_scale must be > 0, got {self.gamma_embedding_scale}")
        if self.skip is not None and (self.skip < self.skip_phi or self.skip % self.skip_phi):
            raise ValueError(f"skip {self.skip} must be a multiple of skip_phi {self.skip_phi}")
        if self.w_min is not None and self.w_max is not None and self.w_min != self.w_max:
            raise ValueError("SPLAM distils a fixed guidance scale: w_min must equal w_max")
        if self.sl_ode_ablation not in SL_ODE_ABLATIONS:
            raise ValueError(f"sl_ode_ablation must be one of {SL_ODE_ABLATIONS}, got {self.sl_ode_ablation!r}")
        for name, allowed in (("gamma_preconditioning", GAMMA_PRECONDITIONINGS), ("subpath_starts", SUBPATH_STARTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.student_weights not in ("online", "target"):
            raise ValueError(f"student_weights must be 'online' or 'target', got {self.student_weights!r}")
        check_cond_proj_init(self.cond_proj_init)


def splam_teacher_solver(config: SPLAMConfig, schedule: Any) -> MultistepTeacherSolver:
    """Multiple Estimation (Eq. 18): k / k_phi deterministic DDIM steps from t to t - k (clamped at
    0). t ~ U[k, T] on the grid ("paper": points >= k - 1 = 99), or every grid point ("all-grid")."""
    min_start = config.skip - 1 if config.subpath_starts == "paper" else 0
    return MultistepTeacherSolver(schedule, num_points=config.num_ddim_timesteps, span=config.skip,
                                  substeps=config.skip // config.skip_phi, kind="ddim", eta=0.0,
                                  min_start=min_start)


# ------------------------------------------------------------------------------------------------
# gamma: embedding, SL-ODE point, sigma(gamma, t)
# ------------------------------------------------------------------------------------------------


def gamma_embedding(gamma: Tensor, dim: int, kind: str, scale: float = 10.0) -> Tensor:
    """Fourier embedding of gamma: LCM's w embedding of scale (1 - gamma) (the released code:
    scale 10, i.e. 10 - 10 gamma). "paper-zero" subtracts its gamma = 1 value, so it is exactly 0
    at gamma = 1 (§4.2). At gamma = 1 the argument is 0 whatever the scale."""
    emb = guidance_scale_embedding(scale * (1.0 - gamma), dim)
    if kind == "paper-zero":
        emb = emb - guidance_scale_embedding(torch.zeros_like(gamma), dim)
    return emb


def sl_ode_point(x_t: Tensor, x_end: Tensor, gamma: Tensor, ratio: Tensor) -> Tensor:
    """z_{gamma,t} = (1 - gamma) alpha(t)/alpha(t-k) z^_{t-k} + gamma z_t (Eq. 12)."""
    g, r = _as_column(gamma, x_t), _as_column(ratio, x_t)
    return (1 - g) * r * x_end + g * x_t


def sigma_gamma(gamma: Tensor, sigma_t: Tensor, sigma_end: Tensor, ratio: Tensor, kind: str) -> Tensor:
    """sigma(gamma, t), float64 (B,). "paper-linear" (§4.2):
    (1 - gamma) alpha(t)/alpha(t-k) sigma(t-k) + gamma sigma(t); "code-sqrt" (released code):
    sqrt((sigma(t-k) alpha(t)/alpha(t-k))^2 + gamma^2 (1 - (alpha(t)/alpha(t-k))^2)). Both are
    sigma(t) at gamma = 1 and alpha(t)/alpha(t-k) sigma(t-k) at gamma = 0."""
    gamma = gamma.to(torch.float64)
    if kind == "paper-linear":
        return (1 - gamma) * ratio * sigma_end + gamma * sigma_t
    if kind == "code-sqrt":
        return ((sigma_end * ratio) ** 2 + gamma**2 * (1 - ratio**2)).sqrt()
    raise ValueError(f"unknown sigma_gamma {kind!r}; choose one of {SIGMA_GAMMAS}")


# ------------------------------------------------------------------------------------------------
# Training step
# ------------------------------------------------------------------------------------------------


def splam_online(state: LCDState, draws: Any, x_end: Tensor, gamma: Tensor, cond: Tensor,
                 embedded_gamma: Tensor | None = None) -> Tensor:
    """F_theta(z_{gamma,t}, c, gamma, t) (Eq. 12, 14, 16), with gradient; gamma (B,) CPU.
    ``embedded_gamma``: the gamma the student is told (default ``gamma``; ablations only)."""
    cfg, schedule = state.config, state.schedule
    alpha_t, sigma_t = schedule.alpha_sigma(draws.t_start)
    alpha_e, sigma_e = schedule.alpha_sigma(draws.t_end)
    ratio = alpha_t / alpha_e                                       # alpha(t)/alpha(t-k), float64
    device, dtype = draws.x_start.device, draws.x_start.dtype
    x_gamma = sl_ode_point(draws.x_start, x_end, gamma.to(device, dtype), ratio.to(device, dtype))   # Eq. 12
    sig = sigma_gamma(gamma, sigma_t, sigma_e, ratio, cfg.sigma_gamma)                                # §4.2
    told = gamma if embedded_gamma is None else embedded_gamma
    emb = gamma_embedding(told, cfg.time_cond_proj_dim, cfg.gamma_embedding, cfg.gamma_embedding_scale)
    emb = emb.to(device, dtype)
    net_input = net_timestep = None                                 # "algorithm-1": z_{gamma,t} at t
    if cfg.gamma_preconditioning == "noise-level":                  # (e): c_in z_{gamma,t} at t'
        scale, t_net = noise_level_preconditioning(schedule, alpha_t, sig, draws.t_start)
        net_input = x_gamma * _as_column(scale.to(device, dtype), x_gamma)
        net_timestep = t_net.to(device, torch.float32)
    return lcd_online(state, x_gamma, draws.t_start, cond, emb, sigma=sig,                           # Eq. 14, 16
                      net_input=net_input, net_timestep=net_timestep)


def noise_level_preconditioning(schedule: Any, alpha_t: Tensor, sigma: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(c_in, t') for a point with signal alpha(t) z and noise sigma (float64, (B,)): the point
    times c_in = 1 / sqrt(alpha(t)^2 + sigma^2) is a variance-preserving sample at the continuous
    timestep t' whose SNR is alpha(t)^2 / sigma^2. Where sigma = sigma(t) (gamma = 1) it is (1, t)
    exactly; at gamma = 0 with the paper's sigma(gamma, t) it is (alpha(t-k) / alpha(t), t - k)."""
    alpha_t, sigma = alpha_t.to(torch.float64), sigma.to(torch.float64)
    t_net = schedule.timestep_at_log_snr(2 * (alpha_t.log() - sigma.log()))
    scale = (alpha_t**2 + sigma**2).rsqrt()
    on_path = sigma == schedule.alpha_sigma(t)[1]                   # gamma = 1: the plain student
    return torch.where(on_path, torch.ones_like(scale), scale), torch.where(on_path, t.to(torch.float64), t_net)


def ablated_gammas(gamma: Tensor, ablation: str) -> tuple[Tensor, Tensor]:
    """(gamma of the point and sigma, gamma of the embedding) under ``SL_ODE_ABLATIONS``."""
    one = torch.ones_like(gamma)
    return {"none": (gamma, gamma), "gamma-one": (one, one), "embedding-only": (one, gamma),
            "point-only": (gamma, one)}[ablation]


def splam_training_step(state: LCDState, batch: Any, gamma: Tensor | None = None) -> Tensor:
    """Algorithm 1 on one micro-batch. ``gamma``: use these values instead of the draw (tests)."""
    cfg = state.config
    draws = lcd_draws(state, batch)                                 # t, t - k, z_t, w (fixed)
    drawn = torch.rand(draws.t_start.shape[0], generator=batch.generator, dtype=torch.float32)
    gamma = drawn if gamma is None else gamma                       # gamma ~ U[0, 1]
    x_end = lcd_teacher_solve(state, draws, batch)                  # Multiple Estimation, Eq. 18
    point_gamma, told_gamma = ablated_gammas(gamma, cfg.sl_ode_ablation)     # "none": both are gamma
    pred = splam_online(state, draws, x_end, point_gamma, batch.cond, told_gamma)  # F_theta(z_g,t, c, g, t)
    one = gamma_embedding(torch.ones_like(gamma), cfg.time_cond_proj_dim, cfg.gamma_embedding)
    target = lcd_target(state, x_end, draws.t_end, batch.cond, one.to(x_end.device, x_end.dtype))  # gamma = 1, t - k
    return consistency_loss(pred, target, cfg.loss_type, cfg.huber_c)                                # Eq. 17


# ------------------------------------------------------------------------------------------------
# Folding gamma = 1 into the time embedding
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def fold_gamma_embedding(unet: nn.Module, kind: str) -> nn.Module:
    """A plain ``UNet2DConditionModel`` (``time_cond_proj_dim=None``) equal to ``unet`` at
    gamma = 1. ``TimestepEmbedding`` computes linear_1(t_emb + W_c e), so the constant W_c e of
    gamma = 1 moves into linear_1's bias: b' = b + W_1 W_c e; with "paper-zero"
    e = 0 and nothing moves."""
    from diffusers import UNet2DConditionModel

    dim = unet.config.time_cond_proj_dim
    e = gamma_embedding(torch.ones(1, dtype=torch.float32), dim, kind).to(torch.float64)
    state = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    w_c = state.pop("time_embedding.cond_proj.weight")
    if kind != "paper-zero":
        bias, w_1 = state["time_embedding.linear_1.bias"], state["time_embedding.linear_1.weight"]
        shift = (w_1.to(torch.float64) @ (w_c.to(torch.float64) @ e[0]))
        state["time_embedding.linear_1.bias"] = (bias.to(torch.float64) + shift).to(bias.dtype)
    plain = UNet2DConditionModel.from_config(unet.config, time_cond_proj_dim=None)
    plain.load_state_dict(state, strict=True)
    param = next(unet.parameters())
    return nn.Module.to(plain, device=param.device, dtype=param.dtype)


# ------------------------------------------------------------------------------------------------
# Method
# ------------------------------------------------------------------------------------------------


@register_method("splam")
class SPLAM(_LCDMethod):
    paper: ClassVar[str] = ("Xu et al. 2024, Accelerating Image Generation with Sub-path Linear Approximation "
                            "Model, ECCV 2024, arXiv:2404.13903")
    summary: ClassVar[str] = ("sub-path linear approximation distillation (gamma-conditioned, k=100 multiple "
                              "estimation); plain U-Net student, LCMScheduler sampler")
    config_class: ClassVar[type] = SPLAMConfig
    reported_names: ClassVar[tuple[str, ...]] = ("SPLAM",)
    # The guidance (fixed w) is distilled; the released README samples with guidance_scale 1.
    default_guidance_scale: ClassVar[float | None] = 1.0

    def init_training_state(self, ctx: TrainingContext) -> LCDState:
        cfg, teacher, trainer = self.config, ctx.teacher, ctx.trainer
        if teacher.schedule.prediction_type != "epsilon":
            raise ValueError("splam: Eq. 14 is written for an epsilon-prediction teacher; this teacher predicts "
                             f"{teacher.schedule.prediction_type!r}")
        student = build_w_conditioned_unet(teacher.unet, cfg.time_cond_proj_dim, trainer.seed, cfg.cond_proj_init)
        target = copy.deepcopy(student).requires_grad_(False).to(trainer.device).train()
        # w_embedding_dim=None: w is fixed and not embedded; the embedding slot carries gamma
        state = self._state(ctx, student, target, None, cfg.ema_decay)
        state.solver = splam_teacher_solver(cfg, teacher.schedule)
        return state

    def training_step(self, state: LCDState, batch: Any) -> Tensor:
        return splam_training_step(state, batch)

    def student_from_state(self, state: LCDState, ctx: TrainingContext) -> Student:
        unet = ctx.trainer.unwrap(state.student) if self.config.student_weights == "online" else state.target
        plain = fold_gamma_embedding(unet, self.config.gamma_embedding).eval().requires_grad_(False)
        return Student(unet=plain, kind="unet", metadata={"weights": self.config.student_weights,
                                                          "gamma_embedding": self.config.gamma_embedding,
                                                          "folded": "gamma=1"})


__all__ = ["SPLAM", "SPLAMConfig", "SL_ODE_ABLATIONS", "ablated_gammas", "fold_gamma_embedding", "gamma_embedding",
           "sigma_gamma", "sl_ode_point", "splam_online", "noise_level_preconditioning", "GAMMA_PRECONDITIONINGS",
           "splam_teacher_solver", "splam_training_step"]
