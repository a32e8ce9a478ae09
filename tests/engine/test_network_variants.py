"""`--networks`: sampling with a half-precision VAE, torch.compile or CUDA graphs
(bench/engine/network_variants.py), recorded in the image fingerprint unless eager."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from bench.cli import main
from bench.core.errors import BenchError, UsageError
from bench.core.fingerprint import fingerprint
from bench.engine.network_variants import (
    HALF_VAE_TOLERANCE,
    CopiedOutputs,
    SamplingNetworks,
    copied_out,
    parse_run_variant,
)
from bench.engine.sampling import SamplingSpec
from methods.base import Denoiser


def _spec(**changes) -> SamplingSpec:
    spec = SamplingSpec(method="ddim", method_config={}, student="teacher", teacher={"id": "tiny"}, resolution=16,
                        steps=2, guidance_scale=1.0, seed=0, batching="fast", versions={"torch": "x"})
    return dataclasses.replace(spec, **changes)


def test_eager_keeps_the_fingerprint_of_earlier_runs_and_a_variant_changes_it():
    eager = _spec()
    before = {k: v for k, v in dataclasses.asdict(eager).items() if k != "networks"}   # the spec before --networks
    assert eager.fingerprint == fingerprint(before)
    variants = {name: _spec(networks=name).fingerprint for name in ("half-vae", "compile", "cuda-graphs")}
    assert len(set(variants.values()) | {eager.fingerprint}) == 4


def test_a_variant_needs_fast_batching_and_a_known_name(tmp_path, capsys):
    assert parse_run_variant("compile", "fast") == "compile"
    with pytest.raises(UsageError, match="needs --batching fast"):
        parse_run_variant("cuda-graphs", "exact")
    with pytest.raises(UsageError, match="must be one of"):
        parse_run_variant("channels-last", "fast")       # a study-only variant
    code = main(["sample", "--method", "ddim", "--steps", "2", "--teacher", "tiny", "--suite", "smoke",
                 "--num-images", "2", "--out", str(tmp_path / "out"), "--batching", "exact", "--networks", "compile"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--networks compile needs --batching fast" in lines[0]
    assert not (tmp_path / "out").exists()


def test_copied_out_clones_every_tensor_of_a_model_output():
    memory = torch.arange(6.0).reshape(2, 3)
    outputs = [memory, (memory, 3), [memory], UNet2DConditionOutput(sample=memory),
               BaseModelOutputWithPooling(last_hidden_state=memory, pooler_output=memory[0])]
    copies = [copied_out(o) for o in outputs]
    memory.zero_()                                        # the next replay overwrites the graph's memory
    expected = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(copies[0], expected) and torch.equal(copies[1][0], expected) and copies[1][1] == 3
    assert torch.equal(copies[2][0], expected) and torch.equal(copies[3].sample, expected)
    assert isinstance(copies[3], UNet2DConditionOutput) and isinstance(copies[4], BaseModelOutputWithPooling)
    assert torch.equal(copies[4].last_hidden_state, expected) and torch.equal(copies[4][1], expected[0])


def test_copied_outputs_module_reads_attributes_through(tiny_teacher):
    wrapped = CopiedOutputs(tiny_teacher.unet)
    assert wrapped.config is tiny_teacher.unet.config
    assert [p.data_ptr() for p in wrapped.parameters()] == [p.data_ptr() for p in tiny_teacher.unet.parameters()]


def test_half_vae_is_a_copy_checked_on_the_first_batch(tiny_teacher):
    denoiser = Denoiser(tiny_teacher.unet, tiny_teacher.schedule)
    vae_before = {k: v.clone() for k, v in tiny_teacher.codec.vae.state_dict().items()}
    networks = SamplingNetworks.build(tiny_teacher, denoiser, "half-vae")
    assert networks.teacher.codec.vae is not tiny_teacher.codec.vae and networks.teacher.codec.upcast is False
    assert networks.denoiser.unet is tiny_teacher.unet and not networks.checked
    latents = torch.randn(2, *tiny_teacher.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        decoded = networks.teacher.codec.decode(latents)
        with pytest.raises(BenchError, match="rerun with --networks eager"):
            networks.check_decode(latents, decoded + 2 * HALF_VAE_TOLERANCE)
        networks.check_decode(latents, decoded)          # the CPU runs fp32: the same decode
    assert networks.checked
    assert all(torch.equal(v, tiny_teacher.codec.vae.state_dict()[k]) for k, v in vae_before.items())
    eager = SamplingNetworks.build(tiny_teacher, denoiser, "eager")
    assert eager.teacher is tiny_teacher and eager.denoiser is denoiser and eager.checked


def _pixels(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.glob("*.png"))])


def test_compiled_and_graphed_networks_sample_the_eager_images(tmp_path):
    """dpmpp keeps earlier model outputs across calls (its multistep history): under cuda-graphs
    (inductor on this CPU; CUDA graphs on a GPU) the outputs are copies, and the images are the eager
    ones up to the compiled kernels' rounding (at most one 8-bit level here)."""
    def sample(out: Path, networks: str) -> dict:
        assert main(["sample", "--method", "dpmpp", "--steps", "3", "--teacher", "tiny", "--suite", "smoke",
                     "--num-images", "3", "--out", str(out), "--batching", "fast", "--networks", networks,
                     "--quiet"]) == 0
        return json.loads((out / "metadata.json").read_text())

    try:
        eager = sample(tmp_path / "eager", "eager")
        graphed = sample(tmp_path / "graphs", "cuda-graphs")
    finally:
        torch._dynamo.reset()
    assert graphed["spec"]["networks"] == "cuda-graphs" and eager["spec"]["networks"] == "eager"
    assert graphed["image_fingerprint"] != eager["image_fingerprint"]
    difference = np.abs(_pixels(tmp_path / "graphs") - _pixels(tmp_path / "eager"))
    assert difference.shape == (3, 16, 16, 3) and difference.max() <= 1
