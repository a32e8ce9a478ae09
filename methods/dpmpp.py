"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", arXiv:2211.01095), run through diffusers' ``DPMSolverMultistepScheduler``.

The multistep second-order data-prediction solver (the paper's Alg. 2), with h_i = lambda_{t_i} -
lambda_{t_{i-1}} in log-SNR lambda = log(alpha/sigma) and r_i = h_{i-1}/h_i:

    D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2}
    x_{t_i} = (sigma_{t_i}/sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i

(first order, i.e. DDIM, on the first step). diffusers implements exactly this, plus the
teacher-independent details recorded in the config: the timestep spacing, ``lower_order_final``
(first-order last step below 15 steps) and ``final_sigmas_type`` ("zero": the last step goes to
sigma = 0 and returns the predicted x0, unlike DDIM's last step to abar_0).

diffusers schedulers are stateful (step index, past model outputs), so every ``sample`` call
builds a fresh one from the teacher's scheduler config.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.base import (
    Denoiser,
    DiffusersScheduler,
    Method,
    SampleRequest,
    TeacherModel,
    per_sample_randn,
)
from methods.diffusion_math import SD15_SCHEDULER_CONFIG
from methods.registry import register_method
from methods.timesteps import SPACINGS


@dataclass(frozen=True)
class DPMSolverPPConfig:
    # DPM-Solver++(2M): Lu et al. 2022 Alg. 2 (the paper's recommended guided-sampling solver).
    solver_order: int = 2
    # "dpmsolver++" (deterministic) or "sde-dpmsolver++" (its SDE variant, Lu et al. 2022 App.;
    # noise drawn per image from the request's generators).
    algorithm_type: str = "dpmsolver++"
    # Lin et al. 2024 "trailing" (diffusers' own definitions of the spacings for this scheduler,
    # which differ from DDIMScheduler's for "leading" and "linspace").
    spacing: str = "trailing"
    steps_offset: int = 1              # "leading" only; SD-1.5 scheduler_config.json
    # The remaining fields are DPMSolverMultistepScheduler's defaults (checked in diffusers 0.42.1).
    solver_type: str = "midpoint"
    lower_order_final: bool = True     # first-order final step(s) when fewer than 15 steps
    euler_at_final: bool = False
    use_karras_sigmas: bool = False
    use_lu_lambdas: bool = False
    final_sigmas_type: str = "zero"    # "zero": the last step returns x0; "sigma_min": stops at abar_0

    def __post_init__(self):
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {self.spacing!r}")
        if self.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++"):
            raise ValueError(f"algorithm_type must be 'dpmsolver++' or 'sde-dpmsolver++', "
                             f"got {self.algorithm_type!r}")
        if self.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {self.final_sigmas_type!r}")


@register_method("dpmpp")
class DPMSolverPP(Method):
    paper: ClassVar[str] = ("Lu et al. 2022, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion "
                            "Probabilistic Models, arXiv:2211.01095")
    summary: ClassVar[str] = "teacher DPM-Solver++(2M) via diffusers DPMSolverMultistepScheduler, no training"
    config_class: ClassVar[type] = DPMSolverPPConfig
    reported_names: ClassVar[tuple[str, ...]] = ("DPM++",)
    supported_steps: ClassVar[tuple[int, ...] | None] = None
    trains: ClassVar[bool] = False

    def make_scheduler(self, denoiser: Denoiser):
        """A fresh diffusers scheduler for the teacher, checked against ``denoiser.schedule``."""
        from diffusers import DPMSolverMultistepScheduler

        c = self.config
        teacher_config = denoiser.scheduler_config if denoiser.scheduler_config is not None \
            else SD15_SCHEDULER_CONFIG
        # keep the keys this scheduler takes (the teacher's may be PNDM's: skip_prk_steps, ...),
        # so diffusers does not warn about ignored attributes on every call
        accepted = inspect.signature(DPMSolverMultistepScheduler.__init__).parameters
        teacher_config = {k: v for k, v in teacher_config.items() if k in accepted}
        scheduler = DPMSolverMultistepScheduler.from_config(
            teacher_config, algorithm_type=c.algorithm_type, solver_order=c.solver_order,
            solver_type=c.solver_type, timestep_spacing=c.spacing, steps_offset=c.steps_offset,
            lower_order_final=c.lower_order_final, euler_at_final=c.euler_at_final,
            use_karras_sigmas=c.use_karras_sigmas, use_lu_lambdas=c.use_lu_lambdas,
            final_sigmas_type=c.final_sigmas_type,
            prediction_type="epsilon",  # we hand it the guided eps, whatever the teacher predicts
        )
        ours = denoiser.schedule.alphas_cumprod
        theirs = scheduler.alphas_cumprod.to(torch.float64)
        if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-5, atol=1e-8):
            source = "denoiser.scheduler_config" if denoiser.scheduler_config is not None \
                else "SD-1.5's scheduler config (Denoiser.scheduler_config is None)"
            raise ValueError(f"dpmpp: the noise schedule built from {source} does not match the "
                             "teacher's NoiseSchedule; set Denoiser.scheduler_config to the "
                             "teacher's scheduler config")
        return scheduler

    def diffusers_scheduler(self, teacher: TeacherModel, steps: int) -> DiffusersScheduler:
        """diffusers' ``DPMSolverMultistepScheduler`` with this config; a pipeline hands it the raw
        U-Net output, so it takes the teacher's own prediction type."""
        from diffusers import DPMSolverMultistepScheduler

        ours = self.make_scheduler(Denoiser(teacher.unet, teacher.schedule, scheduler_config=teacher.scheduler_config))
        return DiffusersScheduler(DPMSolverMultistepScheduler.from_config(
            ours.config, prediction_type=teacher.schedule.prediction_type))

    def timesteps(self, denoiser: Denoiser, steps: int) -> list[int]:
        scheduler = self.make_scheduler(denoiser)
        scheduler.set_timesteps(steps)
        return [int(t) for t in scheduler.timesteps]

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, request: SampleRequest) -> torch.Tensor:
        scheduler = self.make_scheduler(denoiser)                  # fresh state per call
        scheduler.set_timesteps(request.steps, device=request.noise.device)
        stochastic = self.config.algorithm_type == "sde-dpmsolver++"
        x = request.noise * scheduler.init_noise_sigma            # = 1 for a VP schedule
        for t in scheduler.timesteps:
            _, eps = denoiser.guided_x0_eps(x, t, request.cond, request.uncond, request.guidance_scale)
            z = per_sample_randn(request.generators, x) if stochastic else None
            x = scheduler.step(eps, t, x, variance_noise=z).prev_sample   # Alg. 2 update
        return x
