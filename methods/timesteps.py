"""Inference timestep schedules for the teacher solvers (DDIM, ER-SDE).

The three spacings of Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
Flawed" (arXiv:2305.08891, Table 2), with the exact integer arithmetic of diffusers'
``DDIMScheduler.set_timesteps`` so that our samplers visit the same timesteps:

* ``trailing``: ``round(arange(T, 0, -T/n)) - 1``            n=4 -> [999, 749, 499, 249]
* ``leading``:  ``arange(n) * (T // n)`` reversed, ``+ steps_offset``  n=4, offset 1 -> [751, 501, 251, 1]
* ``linspace``: ``round(linspace(0, T - 1, n))`` reversed        n=4 -> [999, 666, 333, 0]

``trailing`` is our default: it starts at t = T - 1, the only spacing whose first step sees pure
noise at the model's last training timestep (Lin et al. 2024, §3.3). ``steps_offset`` only
affects ``leading`` (as in diffusers); SD-1.5's scheduler config sets it to 1.

Note: ``DPMSolverMultistepScheduler`` defines ``leading`` and ``linspace`` differently (with
n + 1 points and the last one dropped); the DPM-Solver++ baseline uses diffusers' own schedule.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

Spacing = Literal["trailing", "leading", "linspace"]
SPACINGS: tuple[str, ...] = ("trailing", "leading", "linspace")


def inference_timesteps(num_train_timesteps: int, steps: int, spacing: str = "trailing",
                        steps_offset: int = 0) -> list[int]:
    """Decreasing integer timesteps ``[t_1 > t_2 > ... > t_n]`` visited by an ``steps``-step sampler
    (diffusers ``DDIMScheduler.set_timesteps`` definitions)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    T = num_train_timesteps
    if spacing == "trailing":
        # [:steps]: the float end point of diffusers' arange can add an (n+1)-th timestep of -1
        # (n = 61, 103, ... for T = 1000); the first n values are diffusers' own.
        timesteps = np.round(np.arange(T, 0, -T / steps)[:steps]).astype(np.int64) - 1
    elif spacing == "leading":
        timesteps = (np.arange(0, steps) * (T // steps)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "linspace":
        timesteps = np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    timesteps = [int(t) for t in timesteps]
    if len(set(timesteps)) != steps or min(timesteps) < 0 or max(timesteps) > T - 1:
        raise ValueError(f"{spacing} spacing with {steps} steps (steps_offset={steps_offset}) gives "
                         f"timesteps outside [0, {T - 1}] or repeated: {timesteps}")
    return timesteps


def step_pairs(timesteps: list[int]) -> list[tuple[int, int | None]]:
    """Consecutive ``(t, s)`` pairs a solver steps between; the last ``s`` is ``None``, meaning the
    schedule's final target (``NoiseSchedule.final_alphas_cumprod``: abar_0 for SD-1.5, whose
    scheduler config has ``set_alpha_to_one=False``)."""
    return list(zip(timesteps, [*timesteps[1:], None]))
