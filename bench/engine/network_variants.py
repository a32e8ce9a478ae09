"""Network variants: what `bench profile --speedup` measures, and what `bench run` / `bench sample`
sample with (``--networks``).

A variant changes how the sampling networks run, never their weights:

``eager``           the networks as loaded: SDPA attention (diffusers' and transformers' default), the
                    U-Net and text encoder in the run's dtype, the SD-1.5 VAE upcast to fp32
``channels-last``   U-Net and VAE in ``torch.channels_last`` (study only: slower on the H100 at batch 1)
``half-vae``        the VAE decodes in the run's dtype instead of fp32. The SD-1.5 VAE overflows in
                    fp16 on some images with real weights (diffusers upcasts it for that reason), so a
                    run checks it: its first batch is decoded both ways and the run stops when the
                    two differ by more than one 8-bit level (:data:`HALF_VAE_TOLERANCE`)
``compile``         half-vae + ``torch.compile`` (mode ``default``) of the text encoder, the U-Net and
                    the VAE decoder
``cuda-graphs``     half-vae + mode ``reduce-overhead`` (inductor + CUDA graphs) for the U-Net and the
                    VAE decoder, whose outputs are copied out of the graph's memory (a sampler may keep
                    a model output across calls: DPM++'s history, a consistency step's x0); the text
                    encoder's cached empty-prompt embedding cannot live in a graph's memory, so it
                    stays on mode ``default``
``cuda-graphs-all`` cuda-graphs with the text encoder graphed too, its outputs copied out (study only)

A run's variant is part of its image fingerprint unless it is ``eager`` (so eager fingerprints are
those of every earlier run): compiled kernels are not bit-equal to eager ones.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from bench.assets.teachers.model import VaeCodec
from bench.core.errors import BenchError, UsageError

log = logging.getLogger(__name__)

#: largest |half-precision decode - fp32 decode| a run accepts, images in [-1, 1]: one 8-bit level
HALF_VAE_TOLERANCE = 2.0 / 255.0


@dataclass(frozen=True)
class Variant:
    name: str
    channels_last: bool = False
    half_vae: bool = False
    compile_mode: str | None = None          # torch.compile mode of text encoder, U-Net, VAE decoder
    graph_text_encoder: bool = False         # the text encoder in compile_mode too, its outputs copied out
    what: str = ""


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("eager", what="as bench run samples (SDPA attention; SD-1.5 VAE upcast to fp32)"),
    Variant("channels-last", channels_last=True, what="U-Net and VAE in channels-last memory format"),
    # channels-last was slower on the H100 (reports/perf): the variants below leave it out
    Variant("half-vae", half_vae=True, what="VAE decode in the run's dtype, not fp32"),
    Variant("compile", half_vae=True, compile_mode="default",
            what="half-vae + torch.compile (mode default) of text encoder, U-Net, VAE decoder"),
    Variant("cuda-graphs", half_vae=True, compile_mode="reduce-overhead",
            what="half-vae + torch.compile mode reduce-overhead (inductor + CUDA graphs) of U-Net and VAE "
                 "decoder; text encoder as in compile"),
    Variant("cuda-graphs-all", half_vae=True, compile_mode="reduce-overhead", graph_text_encoder=True,
            what="cuda-graphs + the text encoder graphed too (its outputs copied out of graph memory)"),
)}
#: the variants `bench run` / `bench sample --networks` take
RUN_VARIANTS = ("eager", "half-vae", "compile", "cuda-graphs")


def parse_run_variant(name: str, batching: str) -> str:
    if name not in RUN_VARIANTS:
        raise UsageError(f"--networks must be one of {', '.join(RUN_VARIANTS)}, got {name!r}")
    if name != "eager" and batching == "exact":
        raise UsageError(f"--networks {name} needs --batching fast (exact batching is the bit-exact eager path)")
    return name


def copied_out(output: Any) -> Any:
    """``output`` with every tensor in it cloned: a tensor, a tuple or list, or a dict-like model
    output (transformers' ``ModelOutput``, diffusers' ``BaseOutput``)."""
    if torch.is_tensor(output):
        return output.clone()
    if isinstance(output, dict):
        return type(output)(**{key: copied_out(value) for key, value in output.items()})
    if isinstance(output, (tuple, list)):
        return type(output)(copied_out(value) for value in output)
    return output


def outputs_copied(forward: Callable) -> Callable:
    """``forward`` (a CUDA-graph-compiled module's) with a new graph iteration marked before each
    call and every output tensor copied out of the graph's memory, so that a caller may keep it
    (the teacher caches the empty-prompt embedding, a sampler its model outputs) while later
    replays overwrite that memory."""
    def call(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return copied_out(forward(*args, **kwargs))

    return call


class CopiedOutputs(nn.Module):
    """``module`` (CUDA-graph-compiled) called through :func:`outputs_copied`; its attributes
    (``config``, ``dtype``, ...) read through."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module

    def forward(self, *args, **kwargs):
        return outputs_copied(self.inner)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(self.inner, name)


@dataclass
class SamplingNetworks:
    """The teacher and denoiser a run samples with under one variant, built without touching the
    loaded ones (compiled wrappers share their weights; a half-precision VAE is a copy), plus the
    half-precision VAE's check on the run's first batch."""

    teacher: Any
    denoiser: Any
    variant: Variant
    eager_teacher: Any
    checked: bool = False

    @classmethod
    def build(cls, teacher: Any, denoiser: Any, name: str) -> "SamplingNetworks":
        variant = VARIANTS[name]
        if name == "eager":
            return cls(teacher, denoiser, variant, teacher, checked=True)
        codec, text_encoder, unet = teacher.codec, teacher.text_encoder, denoiser.unet
        if isinstance(codec, VaeCodec):
            vae = copy.deepcopy(codec.vae)        # the VAE is small; the loaded one stays as it is
            if variant.half_vae:
                nn.Module.to(vae, dtype=next(unet.parameters()).dtype)
            if variant.compile_mode:
                vae.decoder = _compiled(vae.decoder, variant.compile_mode)
            codec = VaeCodec(vae, upcast=not variant.half_vae)
        if variant.compile_mode:
            text_encoder = torch.compile(text_encoder, mode="default")
            unet = _compiled(unet, variant.compile_mode)
        log.info("sampling networks: %s (%s)", variant.name, variant.what)
        return cls(dataclasses.replace(teacher, text_encoder=text_encoder, codec=codec),
                   dataclasses.replace(denoiser, unet=unet), variant, teacher,
                   checked=not (variant.half_vae and isinstance(teacher.codec, VaeCodec)))

    def check_decode(self, latents: torch.Tensor, decoded: torch.Tensor) -> None:
        """On the first batch of a half-precision VAE: its decode against the eager fp32 one."""
        if self.checked:
            return
        reference = self.eager_teacher.codec.decode(latents).float()
        worst = float((decoded.float() - reference).abs().max())
        if not worst <= HALF_VAE_TOLERANCE:
            raise BenchError(f"--networks {self.variant.name}: the half-precision VAE decode differs from the "
                             f"fp32 one by {worst:.3g} on the first batch (> {HALF_VAE_TOLERANCE:.3g}, one 8-bit "
                             "level); rerun with --networks eager")
        log.info("half-precision VAE checked against fp32 on %d images: max |diff| %.1e", len(latents), worst)
        self.checked = True


def _compiled(module: nn.Module, mode: str) -> nn.Module:
    compiled = torch.compile(module, mode=mode)
    return CopiedOutputs(compiled) if mode == "reduce-overhead" else compiled


__all__ = ["HALF_VAE_TOLERANCE", "RUN_VARIANTS", "VARIANTS", "CopiedOutputs", "SamplingNetworks", "Variant",
           "copied_out", "outputs_copied", "parse_run_variant"]
