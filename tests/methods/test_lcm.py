"""LCM and LCM-LoRA on the tiny random-weight teacher (CPU, offline): the boundary condition, the
sampler against diffusers' LCMScheduler and pipelines, a measured loss reduction, and student
folders that stock diffusers pipelines load."""
from __future__ import annotations

import pytest
import torch
from conftest import assert_close, make_request, random_lora_unet

from bench.assets.train_data import SyntheticPairs
from bench.core.spec import apply_toy_schedule
from bench.engine.training import Trainer, TrainSchedule
from methods import get_method_class
from methods.base import Denoiser, TrainingContext
from methods.consistency import (
    consistency_function,
    consistency_loss,
    lcd_training_step,
    lcm_grid,
    lcm_timesteps,
)
from methods.diffusion_math import (
    consistency_boundary_scalings,
    guidance_scale_embedding,
)
from methods.lcm import (
    COND_PROJ_INITS,
    LCM,
    LCMConfig,
    LCMLoRA,
    LCMLoRAConfig,
    build_w_conditioned_unet,
)

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def lcm_unet(teacher):
    return build_w_conditioned_unet(teacher.unet, 256, seed=0).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def lora_unet(teacher):
    return random_lora_unet(teacher)


def generators(batch: int, seed: int = 0) -> list[torch.Generator]:
    gens = [torch.Generator().manual_seed(seed * 100 + i) for i in range(batch)]
    for g in gens:                           # the harness has drawn the initial noise from each
        torch.randn((4, 8, 8), generator=g)
    return gens


# ------------------------------------------------------------------------------------------------
# Declared facts and config
# ------------------------------------------------------------------------------------------------


def test_registered_and_presets():
    assert get_method_class("lcm") is LCM and get_method_class("lcm-lora") is LCMLoRA
    paper, code = LCM().config, LCM(LCMConfig(preset="official-code")).config
    assert (paper.w_min, paper.w_max, paper.loss_type, paper.ema_decay, paper.learning_rate) == (2.0, 14.0, "l2", 0.999943, 8e-6)
    assert (code.w_min, code.w_max, code.loss_type, code.ema_decay, code.learning_rate) == (5.0, 15.0, "huber", 0.95, 1e-6)
    # one field overridden on top of a preset
    assert LCM(LCMConfig(preset="official-code", ema_decay=0.99)).config.ema_decay == 0.99
    lora = LCMLoRA().config
    assert (lora.w_min, lora.w_max, lora.lora_rank, lora.learning_rate) == (7.5, 7.5, 64, 1e-4)
    assert LCMLoRA(LCMLoRAConfig(preset="official-code")).config.w_max == 15.0
    assert LCM().nfe(4, 8.0) == 4 and LCMLoRA().nfe(4, 1.0) == 4 and LCMLoRA().nfe(4, 1.5) == 8
    assert LCM().unsupported_steps_reason(51) is not None and LCM().unsupported_steps_reason(8) is None


def test_config_overrides_from_the_command_line():
    from bench.core.errors import UsageError
    from bench.core.spec import load_method

    method = load_method("lcm", "preset=official-code,w_min=3,toy_w_max=15,timestep_spacing=original")
    assert (method.config.w_min, method.config.w_max, method.config.ema_decay) == (3.0, 15.0, 0.95)
    assert method.config.timestep_spacing == "original"
    # the sampling-only fields are not part of what changes the student
    assert "timestep_spacing" not in method.training_identity()
    assert "w_min" in method.training_identity()
    # an explicit w_min leaves the toy schedule; its toy w_max = 2 would then clash on toy teachers
    with pytest.raises(UsageError, match=r"on toy teachers, with the toy schedule's values \(.*w_max=2.0.*\): "
                                         r"w_min 3.0 > w_max 2.0; set the clashing toy_<field> too"):
        load_method("lcm", "w_min=3")
    for name in ("loss_type", "toy_loss_type"):                     # one clear error for each
        with pytest.raises(UsageError, match="loss_type must be one of"):
            load_method("lcm", f"{name}=l1")


def test_timestep_schedules_match_the_notes():
    """The grid and the timesteps of diffusers ``LCMScheduler`` (since PR #5836) and of the original
    spacing (luosiallen/latent-consistency-model, diffusers before that PR)."""
    assert lcm_grid()[:3] == [19, 39, 59] and lcm_grid()[-1] == 999
    assert lcm_timesteps(1) == [999]
    assert lcm_timesteps(2) == [999, 499]
    assert lcm_timesteps(4) == [999, 759, 499, 259]
    assert lcm_timesteps(8) == [999, 879, 759, 639, 499, 379, 259, 139]
    assert lcm_timesteps(4, spacing="original") == [999, 759, 519, 279]
    assert lcm_timesteps(8, spacing="original") == [999, 879, 759, 639, 519, 399, 279, 159]


def test_zero_cond_proj_starts_the_student_as_the_teacher(teacher):
    """cond_proj_init="zero": the w-conditioned student equals the teacher for every w at step 0;
    the reference's default init shifts the time embedding instead (the toy schedule's reason)."""
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 259])
    text = teacher.encode_prompts(["a red cube", ""])
    w_emb = guidance_scale_embedding(torch.tensor([2.0, 13.0]), 256)
    with torch.no_grad():
        ref = teacher.unet(x, t, encoder_hidden_states=text).sample
        outs = {init: build_w_conditioned_unet(teacher.unet, 256, seed=0, cond_proj_init=init)(
                    x, t, encoder_hidden_states=text, timestep_cond=w_emb).sample
                for init in COND_PROJ_INITS}
    assert torch.equal(outs["zero"], ref)
    assert (outs["default"] - ref).abs().max() > 1e-3
    with pytest.raises(ValueError, match="cond_proj_init"):
        LCMConfig(cond_proj_init="ones")
    assert apply_toy_schedule(LCMConfig()).cond_proj_init == "zero" and LCMConfig().cond_proj_init == "default"


# ------------------------------------------------------------------------------------------------
# The consistency function
# ------------------------------------------------------------------------------------------------


def test_boundary_condition_is_exact(teacher, lcm_unet):
    """f(x, 0) = x bit for bit: c_skip(0) = 1 and c_out(0) = 0 (LCM Eq. 7)."""
    c_skip, c_out = consistency_boundary_scalings(torch.tensor([0]))
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    text = teacher.encode_prompts(["a red cube"] * 3)
    w_emb = guidance_scale_embedding(torch.tensor([2.0, 5.0, 8.0]), 256)
    t = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        out = lcm_unet(x, t, encoder_hidden_states=text, timestep_cond=w_emb).sample
    f = consistency_function(out, x, t, teacher.schedule)
    assert torch.equal(f, x)
    # and away from the boundary f is (almost) the x0 prediction (c_skip(1) = 2.5e-3)
    f1 = consistency_function(out, x, torch.ones(3, dtype=torch.long), teacher.schedule)
    assert not torch.equal(f1, x)


def test_pseudo_huber_loss():
    pred, target = torch.tensor([0.0, 1.0]), torch.tensor([0.0, -1.0])
    c = 0.001
    expected = ((torch.tensor([0.0, 4.0]) + c * c).sqrt() - c).mean()
    assert torch.allclose(consistency_loss(pred, target, "huber", c), expected)
    assert consistency_loss(pred, target, "l2").item() == 2.0


# ------------------------------------------------------------------------------------------------
# Sampler == diffusers
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def lcm_scheduler_reference(teacher, unet, request, timesteps, spacing: str, timestep_cond=None):
    """diffusers' LCMScheduler driving the same network, image by image (the Denoiser's exact
    batching), with the same per-image generators for its fresh noise."""
    from diffusers import LCMScheduler

    scheduler = LCMScheduler.from_config(teacher.scheduler_config)
    if spacing == "diffusers-2023-11":
        scheduler.set_timesteps(request.steps, original_inference_steps=50)
        assert scheduler.timesteps.tolist() == timesteps
    else:  # the pre-2023-11 spacing is not in diffusers any more: pass it as custom timesteps
        scheduler.set_timesteps(timesteps=timesteps, original_inference_steps=50)
    x, gens = request.noise.clone(), generators(request.noise.shape[0])
    for t in scheduler.timesteps:
        out = torch.cat([unet(x[i:i + 1], t, encoder_hidden_states=request.cond[i:i + 1],
                              timestep_cond=None if timestep_cond is None else timestep_cond[i:i + 1]).sample
                         for i in range(x.shape[0])])
        x, denoised = scheduler.step(out, t, x, generator=gens, return_dict=False)
    return denoised


@pytest.mark.parametrize("spacing", ["diffusers-2023-11", "original"])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_sampler_equals_lcm_scheduler(teacher, lcm_unet, spacing, steps):
    method = LCM(LCMConfig(timestep_spacing=spacing))
    denoiser = Denoiser(lcm_unet, teacher.schedule, scheduler_config=teacher.scheduler_config)
    request = make_request(teacher, steps, guidance=8.0)
    ours = method.sample(denoiser, request)
    timesteps = method.timesteps(denoiser, steps)
    w_emb = guidance_scale_embedding(torch.full((2,), 7.0), 256)        # w = g - 1
    ref = lcm_scheduler_reference(teacher, lcm_unet, make_request(teacher, steps, 8.0), timesteps, spacing, w_emb)
    assert_close(ours, ref)


def _pipeline_parts(teacher, unet):
    from diffusers import LCMScheduler

    return dict(vae=teacher.codec.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer, unet=unet,
                scheduler=LCMScheduler.from_config(teacher.scheduler_config), safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)


@torch.no_grad()
def test_lcm_sampler_equals_latent_consistency_pipeline(teacher, lcm_unet):
    """End to end against LatentConsistencyModelPipeline: initial noise, w = g - 1 embedding,
    timesteps and fresh noise all drawn the same way."""
    from diffusers import LatentConsistencyModelPipeline

    pipe = LatentConsistencyModelPipeline(**_pipeline_parts(teacher, lcm_unet))
    pipe.set_progress_bar_config(disable=True)
    request = make_request(teacher, 4, guidance=8.0)
    ours = LCM().sample(Denoiser(lcm_unet, teacher.schedule, scheduler_config=teacher.scheduler_config), request)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    ref = pipe(prompt_embeds=request.cond, num_inference_steps=4, original_inference_steps=50, guidance_scale=8.0,
               generator=gens, output_type="latent").images
    assert_close(ours, ref)


@pytest.mark.parametrize("guidance", [1.0, 1.5])
@torch.no_grad()
def test_lcm_lora_sampler_equals_stable_diffusion_pipeline(teacher, lora_unet, guidance):
    """LCM-LoRA sampling == StableDiffusionPipeline + LCMScheduler (CFG in the diffusers
    convention when g != 1)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**_pipeline_parts(teacher, lora_unet))
    pipe.set_progress_bar_config(disable=True)
    request = make_request(teacher, 4, guidance=guidance)
    ours = LCMLoRA().sample(Denoiser(lora_unet, teacher.schedule, scheduler_config=teacher.scheduler_config), request)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    ref = pipe(prompt_embeds=request.cond, negative_prompt_embeds=request.uncond, num_inference_steps=4,
               guidance_scale=guidance, generator=gens, output_type="latent").images
    assert_close(ours, ref)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def _held_out_loss(state, trainer, teacher, data, batches: int = 8) -> float:
    """The LCD loss on fixed held-out batches with fixed draws (timesteps, noise, w)."""
    with torch.no_grad():
        return sum(float(lcd_training_step(state, trainer.make_batch(teacher, data, 100_000 + i, 0)))
                   for i in range(batches)) / batches


def test_a_few_steps_reduce_the_consistency_loss(teacher):
    """30 LCD steps on synthetic pairs lower the loss on held-out batches with fixed draws.

    Why held-out batches and not the first vs last training losses: the per-step loss is
    dominated by which timestep index each sample drew (x0 = (x - sigma eps)/alpha is ~15x
    larger at t = 999 than at t = 19), so two 5-step means differ by a factor of several from
    the draws alone. The same batches and draws before and after training measure the model.
    Paper EMA (0.999943): over 30 steps the target stays put, so this is a plain regression."""
    method = LCM(LCMConfig(ema_decay=0.999943))
    trainer = Trainer(TrainSchedule(max_train_steps=30, train_batch_size=8, learning_rate=3e-5,
                                    checkpointing_steps=0), device="cpu", progress=False)
    data = SyntheticPairs(resolution=teacher.resolution)
    state = method.init_training_state(TrainingContext(teacher, trainer, None))
    before = _held_out_loss(state, trainer, teacher, data)
    report = trainer.fit(state, method.training_step, data, teacher)
    after = _held_out_loss(state, trainer, teacher, data)
    assert report.steps == 30 and len(report.losses) == 30
    assert after < 0.8 * before, f"held-out LCD loss {before:.4f} -> {after:.4f}"


def test_lcm_lora_training_moves_only_the_adapter(teacher):
    method = LCMLoRA(LCMLoRAConfig(lora_rank=4, lora_alpha=4.0))
    trainer = Trainer(TrainSchedule(max_train_steps=3, train_batch_size=2, learning_rate=1e-3,
                                    checkpointing_steps=0), device="cpu", progress=False)
    student = method.train(TrainingContext(teacher, trainer, SyntheticPairs(resolution=teacher.resolution)))
    assert student.kind == "lora"
    base = {k.replace(".base_layer", ""): v for k, v in student.unet.state_dict().items() if "lora_" not in k}
    for name, value in teacher.unet.state_dict().items():
        assert torch.equal(base[name], value), name
    lora_b = [v for k, v in student.unet.state_dict().items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)   # lora_B left zero init


# ------------------------------------------------------------------------------------------------
# Student folders that stock diffusers loads
# ------------------------------------------------------------------------------------------------


def _student_info(kind: str) -> dict:
    return {"fingerprint": "test", "kind": kind}


@torch.no_grad()
def test_lcm_student_round_trip(teacher, lcm_unet, tmp_path):
    from diffusers import LatentConsistencyModelPipeline, UNet2DConditionModel

    from bench.engine.students import load_student_unet, save_student
    from methods.base import Student

    folder = save_student(Student(lcm_unet, "unet"), tmp_path / "lcm", _student_info("unet"))
    loaded = load_student_unet(folder, teacher)                       # what the harness samples with
    direct = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")   # what a user does
    assert direct.config.time_cond_proj_dim == 256
    method = LCM()
    a = method.sample(Denoiser(lcm_unet, teacher.schedule), make_request(teacher, 2, guidance=8.0))
    b = method.sample(Denoiser(loaded, teacher.schedule), make_request(teacher, 2, guidance=8.0))
    assert torch.equal(a, b)
    # a stock LatentConsistencyModelPipeline with the saved U-Net gives our samples
    pipe = LatentConsistencyModelPipeline(**_pipeline_parts(teacher, direct))
    pipe.set_progress_bar_config(disable=True)
    request = make_request(teacher, 2, guidance=8.0)
    ref = pipe(prompt_embeds=request.cond, num_inference_steps=2, guidance_scale=8.0,
               generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="latent").images
    assert_close(a, ref)


@torch.no_grad()
def test_lcm_lora_weights_load_into_stable_diffusion_pipeline(teacher, lora_unet, tmp_path):
    """Saved LoRA -> stock StableDiffusionPipeline.load_lora_weights -> the same U-Net output as
    the in-memory student; the harness's fused copy agrees to rounding."""
    import copy

    from diffusers import StableDiffusionPipeline

    from bench.engine.students import load_student_unet, save_student
    from methods.base import Student

    folder = save_student(Student(lora_unet, "lora"), tmp_path / "lora", _student_info("lora"))
    pipe = StableDiffusionPipeline(**_pipeline_parts(teacher, copy.deepcopy(teacher.unet)))
    pipe.load_lora_weights(folder)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    text = teacher.encode_prompts(["a red cube", "a blue sphere"])
    t = torch.tensor([999, 259])
    ours = lora_unet(x, t, encoder_hidden_states=text).sample
    theirs = pipe.unet(x, t, encoder_hidden_states=text).sample
    plain = teacher.unet(x, t, encoder_hidden_states=text).sample
    assert not torch.allclose(ours, plain, atol=1e-3)          # the adapter does something
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6)
    fused = load_student_unet(folder, teacher)
    assert not any("lora" in name for name, _ in fused.named_parameters())
    assert_close(fused(x, t, encoder_hidden_states=text).sample, ours)
