"""`bench profile --speedup`: what dominates batch-1 latency, and what the ecosystem's switches buy.

For one method at one step count (``--speedup-at METHOD:STEPS``, default the first method at its
first supported step count), in each precision of the run:

1. **Where the time goes** (the ``eager`` variant, the way `bench run` samples): the torch profiler
   over a few end-to-end runs; the operators with the most GPU time, and the GPU-busy fraction
   (total kernel time / end-to-end time: far below 1 means the CPU cannot launch kernels as fast as
   the GPU runs them, which is what CUDA graphs remove).
2. **Variants**, each on its own copies of the networks:

   ``eager``          as `bench run`: SDPA attention (diffusers' and transformers' default), the
                      U-Net and text encoder in the run's dtype, the SD-1.5 VAE upcast to fp32
   ``channels-last``  U-Net and VAE in ``torch.channels_last`` (cuDNN's preferred conv layout;
                      slower on the H100 at batch 1, so the variants below leave it out)
   ``half-vae``       the VAE decodes in the run's dtype instead of fp32. Safe only where the VAE
                      does not overflow: the report gives the largest difference to the fp32 decode
                      of the same latents and whether it is finite (the SD-1.5 VAE overflows in fp16
                      on some images with real weights: diffusers upcasts it for that reason)
   ``compile``        half-vae plus ``torch.compile`` (mode ``default``) of the text encoder, the U-Net
                      and the VAE decoder; the first call's time (compilation included) is reported
   ``cuda-graphs``    the same with mode ``reduce-overhead`` (inductor + CUDA graphs) for the U-Net
                      and the VAE decoder (the text encoder's cached empty-prompt output cannot live
                      in a graph's memory, so it stays on mode ``default``)
   ``cuda-graphs-all`` cuda-graphs with the text encoder graphed too: its outputs are copied out of
                      the graph's memory (one small copy), so the cached embedding outlives the
                      next replay (on the H100 the un-graphed text encoder was a quarter of the
                      cuda-graphs end-to-end time)

   For each: the end-to-end batch-1 latency and each component measured in isolation (text
   encoder, the denoiser evaluations of the sampler, VAE decode), median of ``--runs`` timed runs
   after ``--warmup``, by ``bench.scoring.metrics.latency.measure_latency``.
3. **The target**: 1-step end-to-end latency within 1.2x the sum of the components' own best times
   (each component's fastest variant, measured in isolation): ``ratio_to_best_components``.

The study says which switches pay on this GPU, and by how much; `bench run --networks` samples with
``half-vae``, ``compile`` or ``cuda-graphs`` (:mod:`bench.engine.network_variants`, where the
variants are defined).
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.assets.teachers.model import VaeCodec
from bench.core.errors import UsageError
from bench.core.spec import parse_name_list
from bench.engine.network_variants import VARIANTS, Variant, outputs_copied
from bench.scoring.metrics.latency import measure_latency
from bench.scoring.timing import latency_closures

log = logging.getLogger(__name__)

#: the target of issue #8: end to end <= this x the sum of the components' best isolated times
COMPONENT_SUM_TARGET = 1.2
PROFILED_RUNS = 5            # end-to-end runs under the torch profiler
TOP_OPERATORS = 12


DEFAULT_VARIANTS = tuple(VARIANTS)
CPU_VARIANTS = ("eager", "channels-last")     # compile and half-precision VAE say nothing on a CPU


@dataclass
class VariantRow:
    variant: str
    what: str
    dtype: str
    status: str = "measured"
    note: str = ""
    end_to_end_ms: float | None = None
    end_to_end_p90_ms: float | None = None
    text_encoder_ms: float | None = None
    denoiser_ms: float | None = None
    vae_decode_ms: float | None = None
    components_sum_ms: float | None = None
    first_call_s: float | None = None         # the first end-to-end call: compilation / graph capture included
    peak_memory_mb: float | None = None
    vae_max_abs_diff: float | None = None     # half-vae: largest |half decode - fp32 decode| on the same latents
    vae_reference_max_abs: float | None = None
    vae_finite: bool | None = None
    speedup_vs_eager: float | None = None
    ratio_to_best_components: float | None = None


@dataclass
class SpeedupStudy:
    method: str
    steps: int
    dtype: str
    guidance: float
    variants: list[VariantRow] = field(default_factory=list)
    top_operators: list[dict] = field(default_factory=list)
    kernel_ms_per_run: float | None = None     # GPU time of every kernel of one end-to-end run
    gpu_busy_fraction: float | None = None     # that / the eager end-to-end median
    profiled_end_to_end_ms: float | None = None
    best_components_ms: dict[str, float] = field(default_factory=dict)
    best_components_sum_ms: float | None = None
    target: float = COMPONENT_SUM_TARGET


def parse_variants(text: str | None, device: torch.device) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_VARIANTS if device.type == "cuda" else CPU_VARIANTS
    names = tuple(dict.fromkeys(parse_name_list(text, "--speedup-variants")))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UsageError(f"--speedup-variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return names


def parse_speedup_at(text: str | None, methods, steps: tuple[int, ...]) -> tuple[Any, int]:
    """``METHOD:STEPS`` (a method of --methods) or None: the first method at its first supported
    step count of --steps."""
    if text is None:
        for method in methods:
            for s in steps:
                if not method.unsupported_steps_reason(s):
                    return method, s
        raise UsageError("--speedup: no method of --methods supports a step count of --steps")
    name, sep, count = text.partition(":")
    chosen = [m for m in methods if m.name == name]
    if not sep or not chosen or not count.isdigit() or int(count) < 1:
        raise UsageError(f"--speedup-at takes METHOD:STEPS with METHOD one of --methods "
                         f"({', '.join(m.name for m in methods)}) and STEPS >= 1; got {text!r}")
    reason = chosen[0].unsupported_steps_reason(int(count))
    if reason:
        raise UsageError(f"--speedup-at {text}: {reason}")
    return chosen[0], int(count)


# ------------------------------------------------------------------------------------------------
# Variant networks
# ------------------------------------------------------------------------------------------------


def variant_networks(teacher, unet: nn.Module, variant: Variant):
    """Copies of the sampling networks with ``variant`` applied: (teacher with them, U-Net)."""
    unet = copy.deepcopy(unet)
    text_encoder = copy.deepcopy(teacher.text_encoder)
    vae = copy.deepcopy(teacher.codec.vae)
    if variant.channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if variant.half_vae:
        nn.Module.to(vae, dtype=next(unet.parameters()).dtype)   # as VaeCodec does (diffusers' .to warns)
    codec = VaeCodec(vae, upcast=not variant.half_vae)
    if variant.compile_mode:
        if variant.graph_text_encoder:
            text_encoder.forward = outputs_copied(torch.compile(text_encoder.forward, mode=variant.compile_mode))
        else:
            # the empty-prompt embedding is encoded once and kept across calls, which a CUDA-graph
            # output must not be (the next replay overwrites it): here the text encoder gets no graphs
            text_encoder.compile(mode="default")
        for module in (unet, vae.decoder):
            module.compile(mode=variant.compile_mode)
    return dataclasses.replace(teacher, unet=unet, text_encoder=text_encoder, codec=codec), unet


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable, spec, dtype: str):
    """``fn`` timed by ``measure_latency`` with the run's warm-up and runs (a LatencyResult)."""
    return measure_latency(fn, None, warmup=spec.warmup, runs=spec.runs, device=spec.device, dtype=dtype)


def measure_variant(spec, teacher, method, student, steps: int, guidance: float, dtype: str, variant: Variant,
                    latents: torch.Tensor, reference: torch.Tensor) -> VariantRow:
    """One variant: first call, end to end, each component in isolation; for a half-precision VAE,
    its decode of ``latents`` against ``reference`` (the fp32 decode of the same latents)."""
    row = VariantRow(variant.name, variant.what, dtype)
    device = spec.device
    if variant.half_vae and not isinstance(teacher.codec, VaeCodec):
        row.status, row.note = "skipped", f"teacher {teacher.name} has no VAE"
        return row
    v_teacher, v_unet = variant_networks(teacher, student.denoiser.unet, variant)
    v_student = dataclasses.replace(student, denoiser=dataclasses.replace(student.denoiser, unet=v_unet))
    ctx = types.SimpleNamespace(teacher=v_teacher)
    try:
        end_to_end, denoiser_only = latency_closures(ctx, method, v_student, spec.prompt, steps, guidance,
                                                     spec.seed, "fast")
        started = time.perf_counter()
        end_to_end()
        _sync(device)
        row.first_call_s = time.perf_counter() - started
        e2e = _timed(end_to_end, spec, dtype)
        row.end_to_end_ms, row.end_to_end_p90_ms, row.peak_memory_mb = e2e.median_ms, e2e.p90_ms, e2e.peak_memory_mb

        def text_encoder():
            with torch.inference_mode():
                return v_teacher.encode_prompts([spec.prompt])

        def vae_decode():
            with torch.inference_mode():
                return v_teacher.codec.decode(latents)

        row.text_encoder_ms = _timed(text_encoder, spec, dtype).median_ms
        row.denoiser_ms = _timed(denoiser_only, spec, dtype).median_ms
        row.vae_decode_ms = _timed(vae_decode, spec, dtype).median_ms
        row.components_sum_ms = row.text_encoder_ms + row.denoiser_ms + row.vae_decode_ms
        if variant.half_vae:
            decoded = vae_decode().float()
            row.vae_finite = bool(torch.isfinite(decoded).all())
            row.vae_max_abs_diff = float((decoded - reference).abs().max())
            row.vae_reference_max_abs = float(reference.abs().max())
    except Exception as err:  # noqa: BLE001 - a failing variant (e.g. a compiler error) is reported, not fatal
        log.warning("speedup variant %s failed: %s", variant.name, err)
        row.status, row.note = "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    finally:
        v_teacher = v_unet = v_student = None     # free the variant before the next one
        torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


# ------------------------------------------------------------------------------------------------
# Where the time goes
# ------------------------------------------------------------------------------------------------


def _device_time_us(event) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def profile_operators(end_to_end: Callable, device: torch.device, runs: int = PROFILED_RUNS,
                      top: int = TOP_OPERATORS) -> tuple[list[dict], float | None, float]:
    """The torch profiler over ``runs`` end-to-end calls: (top operators by self device time per
    run, total device (kernel) ms per run, wall ms per run under the profiler). On the CPU, by self
    CPU time, and no device time."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    end_to_end()
    _sync(device)
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(runs):
            end_to_end()
        _sync(device)
        wall_ms = (time.perf_counter() - started) * 1000.0 / runs
    # operators (events on the CPU side) only: a kernel's time is their self device time too, and
    # the kernels' own events would count it twice
    events = [e for e in prof.key_averages() if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU]
    key = _device_time_us if cuda else (lambda e: float(e.self_cpu_time_total))
    busy_us = sum(_device_time_us(e) for e in events) if cuda else None
    ranked = sorted(events, key=key, reverse=True)[:top]
    total = sum(key(e) for e in events) or 1.0
    operators = [{"name": e.key, "ms_per_run": key(e) / 1000.0 / runs, "share": key(e) / total,
                  "calls_per_run": e.count / runs} for e in ranked]
    return operators, (busy_us / 1000.0 / runs if cuda else None), wall_ms


# ------------------------------------------------------------------------------------------------
# The study
# ------------------------------------------------------------------------------------------------


def run_study(spec, teacher, method, student, steps: int, guidance: float, dtype: str,
              variant_names: tuple[str, ...], progress: bool = True,
              on_variant: Callable[[SpeedupStudy], None] | None = None) -> SpeedupStudy:
    """The study; ``on_variant`` is given the study so far after each variant (a GPU lease may end
    in the middle of a compilation: what was measured before it is kept)."""
    study = SpeedupStudy(method.name, steps, dtype, guidance)
    ctx = types.SimpleNamespace(teacher=teacher)
    end_to_end, denoiser_only = latency_closures(ctx, method, student, spec.prompt, steps, guidance, spec.seed,
                                                 "fast")
    study.top_operators, study.kernel_ms_per_run, study.profiled_end_to_end_ms = profile_operators(
        end_to_end, spec.device)
    with torch.inference_mode():                  # the half-VAE check decodes these latents both ways
        latents = denoiser_only()
        reference = teacher.codec.decode(latents).float()
    for name in variant_names:
        row = measure_variant(spec, teacher, method, student, steps, guidance, dtype, VARIANTS[name], latents,
                              reference)
        study.variants.append(row)
        _summarise(study)
        if progress:
            print(f"speedup {method.name} {steps} step(s) {dtype} {name}: "
                  + (f"{row.end_to_end_ms:.2f} ms end to end (first call {row.first_call_s:.1f} s); text encoder "
                     f"{row.text_encoder_ms:.2f} + denoiser {row.denoiser_ms:.2f} + VAE decode "
                     f"{row.vae_decode_ms:.2f} = {row.components_sum_ms:.2f} ms in isolation"
                     if row.status == "measured" else f"{row.status} ({row.note})"), flush=True)
        if on_variant:
            on_variant(study)
    return study


def _summarise(study: SpeedupStudy) -> None:
    measured = [r for r in study.variants if r.status == "measured"]
    if not measured:
        return
    for component in ("text_encoder_ms", "denoiser_ms", "vae_decode_ms"):
        study.best_components_ms[component] = min(getattr(r, component) for r in measured)
    study.best_components_sum_ms = sum(study.best_components_ms.values())
    eager = next((r for r in measured if r.variant == "eager"), None)
    for r in measured:
        r.ratio_to_best_components = r.end_to_end_ms / study.best_components_sum_ms
        if eager is not None:
            r.speedup_vs_eager = eager.end_to_end_ms / r.end_to_end_ms
    if eager is not None and study.kernel_ms_per_run is not None:
        study.gpu_busy_fraction = study.kernel_ms_per_run / eager.end_to_end_ms


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------


def _f(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def render_study(study: dict) -> str:
    lines = [f"### {study['method']}, {study['steps']} step(s), {study['dtype']} (guidance {study['guidance']:g})",
             "", "| variant | what | end to end ms | p90 ms | first call s | text encoder ms | denoiser ms | "
             "VAE decode ms | components sum ms | x eager | / best components | peak MiB | note |",
             "|" + "---|" * 13]
    for r in study["variants"]:
        note = r["note"]
        if r["vae_max_abs_diff"] is not None:
            note = (f"half decode vs fp32: max abs diff {r['vae_max_abs_diff']:.3g} (fp32 max abs "
                    f"{r['vae_reference_max_abs']:.3g}), finite: {'yes' if r['vae_finite'] else 'NO'}"
                    + (f"; {note}" if note else ""))
        lines.append("| " + " | ".join([
            r["variant"], r["what"], _f(r["end_to_end_ms"]), _f(r["end_to_end_p90_ms"]), _f(r["first_call_s"], ".1f"),
            _f(r["text_encoder_ms"]), _f(r["denoiser_ms"]), _f(r["vae_decode_ms"]), _f(r["components_sum_ms"]),
            _f(r["speedup_vs_eager"]), _f(r["ratio_to_best_components"], ".3f"), _f(r["peak_memory_mb"], ".0f"),
            note]) + " |")
    if study["best_components_sum_ms"] is not None:
        best = study["best_components_ms"]
        lines += ["", f"Best isolated components: text encoder {best['text_encoder_ms']:.2f} ms + denoiser "
                      f"{best['denoiser_ms']:.2f} ms + VAE decode {best['vae_decode_ms']:.2f} ms = "
                      f"{study['best_components_sum_ms']:.2f} ms; target: end to end <= {study['target']:g} x that "
                      f"= {study['target'] * study['best_components_sum_ms']:.2f} ms."]
    if study.get("profiler_note"):
        lines += ["", f"Where the time goes: {study['profiler_note']}."]
    if study["top_operators"]:
        busy = study["gpu_busy_fraction"]
        lines += ["", f"Where the time goes (eager, torch profiler over {PROFILED_RUNS} end-to-end runs, "
                      f"{study['profiled_end_to_end_ms']:.2f} ms per run under the profiler"
                      + (f"; kernels {study['kernel_ms_per_run']:.2f} ms per run, the GPU busy {busy:.0%} of "
                         "the eager end-to-end median" if busy is not None else "") + "):", "",
                  "| operator | ms per run | share | calls per run |", "|---|---|---|---|"]
        lines += [f"| `{o['name']}` | {o['ms_per_run']:.3f} | {o['share']:.1%} | {o['calls_per_run']:g} |"
                  for o in study["top_operators"]]
    return "\n".join(lines)


__all__ = ["VARIANTS", "DEFAULT_VARIANTS", "Variant", "VariantRow", "SpeedupStudy", "parse_variants",
           "parse_speedup_at", "run_study", "render_study", "profile_operators", "variant_networks"]
