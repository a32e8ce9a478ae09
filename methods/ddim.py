"""DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", arXiv:2010.02502).

The teacher's own first-order solver, as a baseline with no training. Each step goes between two
explicit consecutive timesteps of the schedule (never ``t - T // n`` as ``DDIMScheduler.step``
does, which is wrong whenever the spacing is not uniform; diffusers issue #12633):

    x_0, eps = D(x_t, t)                                          (CFG, diffusers convention)
    x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s - std^2) eps + std z                      (Eq. 12)
    std = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s)                  (Eq. 16)

eta = 0 is the deterministic DDIM ODE solver, eta = 1 the DDPM ancestral sampler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.base import (
    Denoiser,
    DiffusersScheduler,
    SampleRequest,
    TeacherModel,
    TeacherSolver,
    per_sample_randn,
    scheduler_from_teacher_config,
)
from methods.diffusion_math import ddim_step
from methods.registry import register_method
from methods.timesteps import SPACINGS, step_pairs


@dataclass(frozen=True)
class DDIMConfig:
    # Song et al. 2021, Eq. 16: 0 = deterministic DDIM (the paper's main setting, Table 1).
    eta: float = 0.0
    # Lin et al. 2024 (arXiv:2305.08891) Table 2 / diffusers timestep_spacing="trailing": the
    # first step is at t = T - 1. "leading" is SD-1.5's original PNDM/DDIM default.
    spacing: str = "trailing"
    # Added to "leading" timesteps only (diffusers semantics); 1 in SD-1.5's scheduler_config.json.
    steps_offset: int = 1

    def __post_init__(self):
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {self.spacing!r}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if self.eta > 1:   # Song et al. 2021 (arXiv:2010.02502) Eq. 16: eta = 0 is DDIM, 1 is DDPM's variance
            raise ValueError(f"eta must be <= 1 (1 is DDPM's posterior variance, Eq. 16), got {self.eta}")


@register_method("ddim")
class DDIM(TeacherSolver):
    paper: ClassVar[str] = "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models, arXiv:2010.02502"
    summary: ClassVar[str] = "teacher DDIM solver (eta=0 deterministic; eta>0 stochastic), no training"
    config_class: ClassVar[type] = DDIMConfig

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, request: SampleRequest) -> torch.Tensor:
        eta, schedule = self.config.eta, denoiser.schedule
        x = request.noise                                      # x_T ~ N(0, I) for a VP schedule
        for t, s in step_pairs(self.timesteps(denoiser, request.steps)):   # s = None: final abar
            x0, eps = denoiser.guided_x0_eps(x, t, request.cond, request.uncond, request.guidance_scale)
            z = per_sample_randn(request.generators, x) if eta > 0 else None
            x = ddim_step(x0, eps, schedule.abar(t), schedule.abar(s), eta=eta, noise=z)  # Eq. 12
        return x

    def diffusers_scheduler(self, teacher: TeacherModel, steps: int) -> DiffusersScheduler:
        """diffusers' ``DDIMScheduler`` with the same spacing and eta (tests/test_baselines.py)."""
        from diffusers import DDIMScheduler

        c = self.config
        scheduler = scheduler_from_teacher_config(DDIMScheduler, teacher.scheduler_config, timestep_spacing=c.spacing,
                                                  steps_offset=c.steps_offset)
        return DiffusersScheduler(scheduler, {"eta": c.eta})
