"""`bench profile`, sampling: batch-1 latency, throughput and peak memory of a method's sampler in
the harness and in a stock diffusers ``StableDiffusionPipeline`` with the equivalent scheduler
(``Method.diffusers_scheduler``); see ``bench.perf.profile``."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import statistics
import types
from typing import Any, Callable, Iterator

import torch
from torch import nn

from bench.assets.teachers.model import VaeCodec
from bench.engine.cells import guidance_for
from bench.engine.published import load_published
from bench.engine.sampling import make_generators
from bench.engine.students import (
    LoadedStudent,
    _place,
    load_student,
    strict_steps_reason,
    training_plan,
    unsupported_steps_on,
)
from bench.perf.profile_spec import (
    THROUGHPUT_WARMUP,
    ProfileSpec,
    SpeedRow,
    free_memory,
    read_peak,
    reset_peak,
)
from bench.perf.training_speed import new_trainer, training_context, training_source
from bench.scoring.metrics.latency import _time_runs, measure_latency
from bench.scoring.timing import latency_closures, throughput_closure
from methods.base import Denoiser, DiffusersScheduler

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Latency: ours and diffusers'
# ------------------------------------------------------------------------------------------------


def profile_method_latency(spec: ProfileSpec, teacher, method, dtype: str, progress: bool = True) -> list[SpeedRow]:
    """The ours + diffusers rows of ``method`` at every step count of ``spec``."""
    guidance = guidance_for(spec.guidance, method, teacher, spec.student)
    rows: list[SpeedRow] = []
    supported = []
    for steps in spec.steps:
        reason = strict_steps_reason(method, steps) if spec.student is not None else \
            unsupported_steps_on(method, teacher, steps)
        if reason:
            log.warning("skipped: %s", reason)
            rows += [SpeedRow(method.name, steps, dtype, p, status="skipped", note=reason, guidance=guidance)
                     for p in ("ours", "diffusers")]
        else:
            supported.append(steps)
    if not supported:
        return rows
    student = load_published(spec.student, teacher, "fast") if spec.student is not None else \
        profile_student(method, teacher)
    with sampling_teacher(teacher, student.denoiser.unet) as sampler_teacher:
        for steps in supported:
            ours = measure_ours(spec, sampler_teacher, method, student, steps, guidance, dtype)
            theirs = measure_diffusers(spec, sampler_teacher, method, student.denoiser.unet, steps, guidance, dtype)
            if ours.median_ms and theirs.median_ms:
                ours.ratio_vs_diffusers = ours.median_ms / theirs.median_ms
            rows += [ours, theirs]
            if progress:
                print(f"profile {method.name} {steps} step(s) {dtype}: ours {ours.median_ms:.2f} ms, diffusers "
                      + (f"{theirs.median_ms:.2f} ms" if theirs.median_ms else f"skipped ({theirs.note})"), flush=True)
    del student
    free_memory(spec.device)
    return rows


def profile_student(method, teacher):
    """What ``method`` samples with, for timing: the teacher for teacher solvers
    (``load_student``), else an untrained student of the exact architecture."""
    if not method.trains:
        return load_student(method, teacher, 1, batching="fast", progress=False)
    unet = untrained_student_unet(method, teacher)
    denoiser = Denoiser(unet, teacher.schedule, images_per_call=None, scheduler_config=teacher.scheduler_config)
    return LoadedStudent(denoiser, f"untrained:{method.name}", sampler=training_plan(method, teacher)[0])


def untrained_student_unet(method, teacher) -> nn.Module:
    """The student U-Net ``method.train`` would start from (``init_training_state`` then
    ``student_from_state``, no optimizer step), on the teacher's device and dtype, LoRA fused."""
    train_method, schedule = training_plan(method, teacher)
    schedule = dataclasses.replace(schedule, max_train_steps=0, checkpointing_steps=0)
    trainer = new_trainer(schedule, next(teacher.unet.parameters()).device, f"profile {method.name}")
    ctx = training_context(train_method, teacher, trainer, training_source(teacher, schedule.seed)[0])
    state = train_method.init_training_state(ctx)
    student = train_method.student_from_state(state, ctx)
    unet = student.unet
    if student.kind == "lora":          # sample with a plain U-Net, as load_student_unet(fuse=True) does
        unet.fuse_lora(lora_scale=1.0)
        unet.unload_lora()
    trainer.accelerator.free_memory()
    del state, trainer, student
    unet = _place(unet, teacher.unet)
    free_memory(next(unet.parameters()).device)
    return unet


@contextlib.contextmanager
def sampling_teacher(teacher, unet: nn.Module) -> Iterator[Any]:
    """The teacher with ``unet`` in place of its own (text encoder and VAE shared). On a GPU the
    teacher's own U-Net waits on the CPU meanwhile, so peak memory holds what samples."""
    if unet is teacher.unet:
        yield teacher
        return
    device = next(teacher.unet.parameters()).device
    offload = device.type == "cuda"
    if offload:
        nn.Module.to(teacher.unet, "cpu")
        free_memory(device)
    try:
        yield dataclasses.replace(teacher, unet=unet)
    finally:
        if offload:
            nn.Module.to(teacher.unet, device)


def measure_ours(spec: ProfileSpec, teacher, method, student, steps: int, guidance: float, dtype: str) -> SpeedRow:
    """Our harness: the closures `bench run` times."""
    ctx = types.SimpleNamespace(teacher=teacher)
    end_to_end, denoiser_only = latency_closures(ctx, method, student, spec.prompt, steps, guidance, spec.seed, "fast")
    batch_fns = {b: throughput_closure(ctx, method, student, spec.prompt, steps, guidance, spec.seed, b)
                 for b in spec.batches}
    row = SpeedRow(method.name, steps, dtype, "ours", nfe=method.nfe(steps, guidance), guidance=guidance)
    return _measure_into(row, spec, end_to_end, denoiser_only, batch_fns)


def _measure_into(row: SpeedRow, spec: ProfileSpec, end_to_end: Callable, denoiser_only: Callable,
                  batch_fns: dict[int, Callable]) -> SpeedRow:
    """Batch 1 (end to end + denoiser only), then each batch size on its own, all by measure_latency."""
    result = measure_latency(end_to_end, denoiser_only, warmup=spec.warmup, runs=spec.runs, device=spec.device,
                             dtype=row.dtype)
    row.median_ms, row.p90_ms, row.mean_ms = result.median_ms, result.p90_ms, result.mean_ms
    row.denoiser_median_ms, row.denoiser_share = result.denoiser_median_ms, result.denoiser_share
    row.peak_memory_mb, row.peak_memory_kind = result.peak_memory_mb, result.peak_memory_kind
    row.latency = result.as_dict()
    for batch, fn in batch_fns.items():       # a rate over whole batches: fewer, longer runs than batch 1
        _time_runs(fn, THROUGHPUT_WARMUP, 0, spec.device)
        reset_ok = reset_peak(spec.device)   # after the warm-up, as in measure_latency
        timings = _time_runs(fn, 0, spec.throughput_runs, spec.device)
        median_ms = statistics.median(timings)
        row.batch_median_ms[str(batch)] = median_ms
        row.throughput[str(batch)] = batch / (median_ms / 1000.0)
        peak, _ = read_peak(spec.device, reset_ok)
        if peak is not None:
            row.batch_peak_memory_mb[str(batch)] = peak
    return row


# -- the stock diffusers pipeline ----------------------------------------------------------------


def diffusers_plan(method, teacher, steps: int) -> tuple[DiffusersScheduler | None, str]:
    """(the method's stock diffusers scheduler, "") or (None, why there is no pipeline comparison)."""
    if not isinstance(teacher.codec, VaeCodec):
        return None, (f"teacher {teacher.name} is pixel-space (no VAE): StableDiffusionPipeline needs one, so "
                      "there is no pipeline comparison")
    plan = method.diffusers_scheduler(teacher, steps)
    if plan is None:
        return None, f"no stock diffusers scheduler runs {method.name}'s sampler"
    return plan, ""


def diffusers_pipeline(teacher, unet: nn.Module, scheduler):
    """A stock StableDiffusionPipeline from the teacher's own components (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=teacher.codec.vae, text_encoder=teacher.text_encoder,
                                   tokenizer=teacher.tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_closures(pipe, plan: DiffusersScheduler, teacher, prompt: str, steps: int, guidance: float, seed: int,
                       batches=()) -> tuple[Callable, Callable, dict[int, Callable]]:
    """End-to-end, denoiser-only and batch-B closures of the pipeline, doing what ours do (module
    docstring): decoded images (B, 3, H, W) from the end-to-end and batch closures."""
    uncond = teacher.encode_prompts([""])
    cond = teacher.encode_prompts([prompt])
    vae = pipe.vae
    vae_param = next(vae.parameters())
    common = dict(height=teacher.resolution, width=teacher.resolution, num_inference_steps=steps,
                  guidance_scale=guidance, output_type="latent", **plan.call_kwargs)

    def decode(latents):      # the pipeline's own decode call, in the VAE's dtype (fp32 when upcast)
        z = latents.to(vae_param.dtype) / vae.config.scaling_factor
        return vae.decode(z, return_dict=False)[0]

    def batch_fn(batch: int) -> Callable:
        def run():
            with torch.inference_mode():
                latents = pipe(prompt=[prompt] * batch, negative_prompt_embeds=uncond.expand(batch, -1, -1),
                               generator=make_generators(seed, list(range(batch))), **common).images
                return decode(latents)
        return run

    def denoiser_only():
        with torch.inference_mode():
            return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, generator=make_generators(seed, [0]),
                        **common).images

    return batch_fn(1), denoiser_only, {b: batch_fn(b) for b in batches}


def measure_diffusers(spec: ProfileSpec, teacher, method, unet: nn.Module, steps: int, guidance: float,
                      dtype: str) -> SpeedRow:
    plan, reason = diffusers_plan(method, teacher, steps)
    row = SpeedRow(method.name, steps, dtype, "diffusers", nfe=method.nfe(steps, guidance), guidance=guidance)
    if plan is None:
        row.status, row.note = "skipped", reason
        return row
    row.scheduler = type(plan.scheduler).__name__
    pipe = diffusers_pipeline(teacher, unet, plan.scheduler)
    end_to_end, denoiser_only, batch_fns = diffusers_closures(pipe, plan, teacher, spec.prompt, steps, guidance,
                                                              spec.seed, spec.batches)
    return _measure_into(row, spec, end_to_end, denoiser_only, batch_fns)


