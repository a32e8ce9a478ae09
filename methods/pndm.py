"""PNDM / PLMS (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds",
arXiv:2202.09778), run through diffusers' ``PNDMScheduler``: Stable Diffusion v1.5's own default
sampler, and the deterministic solver DMD builds its regression pairs with ("For the LAION
experiments, we use the PNDM solver with 50 sampling steps", DMD arXiv:2311.18828 §3.3).

With ``skip_prk_steps=True`` (SD-1.5's scheduler config) it is the linear multistep method PLMS
(Liu et al. 2022, Eq. 12 with the fourth-order Adams-Bashforth combination of the last four eps):

    eps' = (55 e_t - 59 e_{t-1} + 37 e_{t-2} - 9 e_{t-3}) / 24,   x_{t-d} = phi(x_t, eps', t, t-d)

with lower-order combinations while the history fills up; diffusers' timestep list repeats one
timestep at the start (the second-order warm-up), so ``steps`` steps cost ``steps + 1`` network
evaluations. ``PNDMScheduler`` is stateful, so every ``sample`` call builds a fresh one.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.base import Denoiser, Method, SampleRequest
from methods.diffusion_math import SD15_SCHEDULER_CONFIG, NoiseSchedule
from methods.registry import register_method
from methods.timesteps import SPACINGS


@dataclass(frozen=True)
class PNDMConfig:
    # SD-1.5 scheduler_config.json: "leading" spacing with steps_offset 1 and skip_prk_steps=True
    # (PLMS); the StableDiffusionPipeline default that DMD's 50-step pairs come from.
    spacing: str = "leading"
    steps_offset: int = 1
    # None: the teacher's scheduler config decides (True for SD-1.5); False adds the Runge-Kutta
    # warm-up steps of the paper's full PNDM (3 x 4 extra evaluations).
    skip_prk_steps: bool | None = None

    def __post_init__(self):
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {self.spacing!r}")


@register_method("pndm")
class PNDM(Method):
    paper: ClassVar[str] = ("Liu et al. 2022, Pseudo Numerical Methods for Diffusion Models on Manifolds, "
                            "arXiv:2202.09778")
    summary: ClassVar[str] = "teacher PNDM/PLMS via diffusers PNDMScheduler (SD-1.5's default sampler), no training"
    config_class: ClassVar[type] = PNDMConfig
    supported_steps: ClassVar[tuple[int, ...] | None] = None
    trains: ClassVar[bool] = False

    def make_scheduler(self, denoiser: Denoiser):
        from diffusers import PNDMScheduler

        c = self.config
        teacher_config = denoiser.scheduler_config if denoiser.scheduler_config is not None else SD15_SCHEDULER_CONFIG
        accepted = inspect.signature(PNDMScheduler.__init__).parameters
        kwargs = {k: v for k, v in teacher_config.items() if k in accepted}
        kwargs.update(timestep_spacing=c.spacing, steps_offset=c.steps_offset, prediction_type="epsilon")
        if c.skip_prk_steps is not None:
            kwargs["skip_prk_steps"] = c.skip_prk_steps
        scheduler = PNDMScheduler.from_config(kwargs)
        theirs = scheduler.alphas_cumprod.to(torch.float64)
        if not torch.allclose(denoiser.schedule.alphas_cumprod, theirs, rtol=1e-5, atol=1e-8):
            raise ValueError("pndm: the scheduler config does not match the teacher's NoiseSchedule; set "
                             "Denoiser.scheduler_config to the teacher's scheduler config")
        return scheduler

    def timesteps(self, denoiser: Denoiser, steps: int) -> list[int]:
        scheduler = self.make_scheduler(denoiser)
        scheduler.set_timesteps(steps)
        return [int(t) for t in scheduler.timesteps]

    def nfe(self, steps: int, guidance_scale: float) -> int:
        # PLMS repeats one timestep at the start (diffusers' second-order warm-up): steps + 1 calls.

        calls = len(self.timesteps(Denoiser(torch.nn.Identity(), NoiseSchedule.sd15()), steps))
        return calls * (1 if guidance_scale == 1.0 else 2)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, request: SampleRequest) -> torch.Tensor:
        scheduler = self.make_scheduler(denoiser)                      # fresh multistep state
        scheduler.set_timesteps(request.steps, device=request.noise.device)
        x = request.noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            # guided eps (diffusers convention), whatever the teacher predicts
            _, eps = denoiser.guided_x0_eps(x, t, request.cond, request.uncond, request.guidance_scale)
            x = scheduler.step(eps, t, x).prev_sample
        return x


__all__ = ["PNDM", "PNDMConfig"]
