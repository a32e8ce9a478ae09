"""What `bench run`, `bench profile` and the speed study time: closures that run one method's
sampling end to end (text encoding, every denoiser evaluation, VAE decode) at batch 1, the denoiser
alone, and a batch for throughput; ``bench.scoring.metrics.latency.measure_latency`` times them."""
from __future__ import annotations

from typing import Any, Callable

import torch

from bench.engine.sampling import generate_latents, initial_noise, make_generators
from methods.base import SampleRequest


def latency_closures(ctx, method, student, suite_prompt: str, steps: int, guidance: float,
                     seed: int, batching: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """Batch-1 end-to-end (text encoding + every denoiser evaluation + VAE decode) and
    denoiser-only closures for `measure_latency`."""
    teacher, method = ctx.teacher, student.sampling_method(method)
    uncond = teacher.encode_prompts([""])

    def end_to_end():
        with torch.inference_mode():
            latents = generate_latents(teacher, student.denoiser, method, [suite_prompt], [0], steps, guidance,
                                       seed, uncond, batching)
            return teacher.codec.decode(latents)

    cond = teacher.encode_prompts([suite_prompt])
    device, dtype = next(student.denoiser.unet.parameters()).device, next(student.denoiser.unet.parameters()).dtype

    def denoiser_only():
        with torch.inference_mode():
            generators = make_generators(seed, [0])
            noise = initial_noise(generators, teacher.latent_shape).to(device, dtype)
            request = SampleRequest(noise=noise, cond=cond, uncond=uncond, generators=generators, steps=steps,
                                    guidance_scale=guidance)
            return method.sample(student.denoiser, request)

    return end_to_end, denoiser_only


def throughput_closure(ctx, method, student, prompt: str, steps: int, guidance: float, seed: int, batch: int):
    uncond, method = ctx.teacher.encode_prompts([""]), student.sampling_method(method)

    def run_batch():
        with torch.inference_mode():
            latents = generate_latents(ctx.teacher, student.denoiser, method, [prompt] * batch, list(range(batch)),
                                       steps, guidance, seed, uncond, "fast")
            return ctx.teacher.codec.decode(latents)

    return run_batch


__all__ = ["latency_closures", "throughput_closure"]
