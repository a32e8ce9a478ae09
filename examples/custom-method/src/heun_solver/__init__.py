"""Heun's method on the teacher's probability-flow ODE (Karras et al. 2022, arXiv:2206.00364,
Algorithm 1 without churn), written against distill-bench's method contract (methods.base).

In the variance-exploding variables x~ = x_t / alpha_t and sigma_t = sqrt(1 - abar_t) / sqrt(abar_t)
the ODE is dx~/dsigma = eps(x_t, t). One step from t to s:

    d   = eps(x_t, t)                                   Euler slope (alone: exactly DDIM, eta = 0)
    x~' = x~_t + (sigma_s - sigma_t) d
    d'  = eps(alpha_s x~', s)                           second evaluation, skipped on the last step
    x~_s = x~_t + (sigma_s - sigma_t) (d + d') / 2      (Alg. 1, lines 7-8)

Two network calls per step except the last, so 2K - 1 per image at K steps (times 2 under CFG).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.base import Denoiser, SampleRequest, TeacherSolver
from methods.timesteps import step_pairs


@dataclass(frozen=True)
class HeunConfig:
    spacing: str = "trailing"        # as the built-in solvers: 1 step = [999], 2 = [999, 499]
    steps_offset: int = 0
    second_order: bool = True        # False: Euler, which is DDIM with eta = 0


class Heun(TeacherSolver):
    # `name` is the entry point's name ("heun"); the registry sets it.
    paper: ClassVar[str] = ("Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models, "
                            "arXiv:2206.00364")
    summary: ClassVar[str] = "teacher Heun solver of the probability-flow ODE (2nd order), no training; a plugin example"
    config_class: ClassVar[type] = HeunConfig

    def nfe(self, steps: int, guidance_scale: float) -> int:
        calls = 2 * steps - 1 if self.config.second_order else steps
        return calls * (1 if guidance_scale == 1.0 else 2)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, request: SampleRequest) -> torch.Tensor:
        schedule, x = denoiser.schedule, request.noise

        def eps(x_t: torch.Tensor, t: int) -> torch.Tensor:
            return denoiser.guided_x0_eps(x_t, t, request.cond, request.uncond, request.guidance_scale)[1]

        for t, s in step_pairs(self.timesteps(denoiser, request.steps)):
            abar_t, abar_s = schedule.abar(t).item(), schedule.abar(s).item()
            sigma_t, sigma_s = ((1 - abar_t) / abar_t) ** 0.5, ((1 - abar_s) / abar_s) ** 0.5
            x_tilde = x / abar_t ** 0.5
            d = eps(x, t)
            x_next = x_tilde + (sigma_s - sigma_t) * d
            if self.config.second_order and s is not None:
                d_next = eps(x_next * abar_s ** 0.5, s)
                x_next = x_tilde + (sigma_s - sigma_t) * (d + d_next) / 2
            x = x_next * abar_s ** 0.5
        return x
