"""Benchmarks that print figures (not timed tests): `python -m bench benchmark NAME`.

overhead     harness overhead: `bench sample` (tiny teacher, DDIM) vs a bare diffusers loop doing the
             same U-Net / VAE work and writing the same PNGs; prints the time ratio (target <= 1.05)
prdc         our chunked PRDC vs prdc.compute_prdc on 5,000 x 2,048 features (target >= 5x faster)
prdc-large   our PRDC on 30,000 x 2,048 features: time and peak memory (target < 2 GB)
features     feature-extraction throughput (images/s) on CPU with the stand-in extractor
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.assets.suites import load_suite
from bench.assets.teachers import load_teacher
from bench.engine.sampling import SamplingSpec, image_seed, sample_to_folder
from bench.engine.students import load_student
from methods import get_method_class

BENCHMARKS = ("overhead", "prdc", "prdc-large", "features")


def _bare_diffusers_loop(teacher, prompts: list[str], steps: int, guidance: float, seed: int, out: Path,
                         batch_size: int, per_image: bool) -> None:
    """What a user would write with diffusers alone: DDIMScheduler, CFG, VAE decode, PNG save."""
    from diffusers import DDIMScheduler
    from diffusers.image_processor import VaeImageProcessor


    scheduler = DDIMScheduler.from_config(teacher.scheduler_config, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    processor = VaeImageProcessor(do_normalize=True)
    uncond = teacher.encode_prompts([""])
    unet, vae = teacher.unet, teacher.codec
    with torch.inference_mode():
        for first in range(0, len(prompts), batch_size):
            chunk = list(range(first, min(first + batch_size, len(prompts))))
            groups = [[i] for i in chunk] if per_image else [chunk]
            for group in groups:
                gens = [torch.Generator().manual_seed(image_seed(seed, i)) for i in group]
                latents = torch.stack([torch.randn(teacher.latent_shape, generator=g) for g in gens])
                cond = teacher.encode_prompts([prompts[i] for i in group])
                text = torch.cat([uncond.expand(len(group), -1, -1), cond])
                for t in scheduler.timesteps:
                    out_u, out_c = unet(torch.cat([latents, latents]), t, encoder_hidden_states=text).sample.chunk(2)
                    latents = scheduler.step(out_u + guidance * (out_c - out_u), t, latents).prev_sample
                for i, image in zip(group, processor.postprocess(vae.decode(latents), output_type="pil")):
                    image.save(out / f"{i:05d}.png")


def measure_overhead(num_images: int = 32, steps: int = 4, batch_size: int = 8, repeats: int = 3,
                     batching: str = "exact") -> dict:
    teacher = load_teacher("tiny")
    prompts = [p for _, p in zip(range(num_images), _cycle(load_suite("smoke").prompts))]
    method = get_method_class("ddim")()
    student = load_student(method, teacher, steps, batching=batching)
    guidance = teacher.default_guidance_scale
    harness, bare = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            spec = SamplingSpec("ddim", method.config_dict(), student.fingerprint, teacher.identity,
                                teacher.resolution, steps, guidance, 0, batching=batching)
            start = time.perf_counter()
            sample_to_folder(teacher, student.denoiser, method, prompts, spec, Path(tmp), batch_size, progress=False)
            harness.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            _bare_diffusers_loop(teacher, prompts, steps, guidance, 0, Path(tmp), batch_size,
                                 per_image=batching == "exact")
            bare.append(time.perf_counter() - start)
    h, b = statistics.median(harness), statistics.median(bare)
    return {"batching": batching, "num_images": num_images, "steps": steps, "batch_size": batch_size,
            "harness_s": h, "bare_s": b, "ratio": h / b, "threads": torch.get_num_threads()}


def format_overhead(r: dict) -> str:
    return (f"overhead [{r['batching']}] {r['num_images']} images x {r['steps']} DDIM steps, batch {r['batch_size']}, "
            f"tiny teacher, {r['threads']} threads: bench sample {r['harness_s']:.3f} s, bare diffusers loop "
            f"{r['bare_s']:.3f} s, ratio {r['ratio']:.3f} (target <= 1.05)")


def _cycle(items):
    while True:
        yield from items
