"""DMD and DMD2 on the tiny random-weight teacher (CPU, offline): the distribution matching
gradient (zero when the scores agree, Eq. 7-8 on hand-made tensors), the regression pairs
(deterministic, resumable, equal to the teacher solver), the PNDM solver against diffusers'
pipeline, the two time-scale schedule, a measured fake-score improvement, exact resume, the
sampler against LCMScheduler, and the skip reasons."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import Killed, KilledAt, assert_close, with_toy

from bench.assets.train_data import SyntheticPairs
from bench.core.errors import MissingResourceError, UsageError
from bench.core.spec import apply_config_overrides, apply_toy_schedule
from bench.engine.training import Trainer, TrainSchedule
from methods import SampleRequest, get_method_class
from methods.base import Denoiser, TrainingContext
from methods.dmd import (
    DMD,
    DMD2,
    DMD2Config,
    DMDConfig,
    TeacherOutputSpec,
    distribution_matching_loss,
    dm_gradient,
    dm_loss,
    eq8_weight,
    fake_score_loss,
    generate,
    regression_distance,
    sampling_timesteps,
    score,
)
from methods.pndm import PNDM

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCH_TRAIN_DATA", raising=False)
    monkeypatch.delenv("BENCH_LPIPS_VGG_PATH", raising=False)


@pytest.fixture(scope="module")
def data(tiny_teacher):
    return SyntheticPairs(resolution=tiny_teacher.resolution)


#: small regression settings for the tiny teacher: 12 pairs of 5-step PNDM in chunks of 4
SMALL_REG = dict(regression_distance="l2", num_regression_pairs=12, regression_chunk_size=4,
                 regression_batch_size=2, regression_solver_steps=5, gradient_checkpointing=False)


def small_dmd(**kw) -> DMD:
    return DMD(DMDConfig(**{**SMALL_REG, **kw}))


def small_dmd2(**kw) -> DMD2:
    return DMD2(DMD2Config(**{"gradient_checkpointing": False, **kw}))


def trainer(tmp=None, **kw) -> Trainer:
    values = dict(max_train_steps=4, train_batch_size=2, learning_rate=1e-4, checkpointing_steps=0)
    values.update(kw)
    return Trainer(TrainSchedule(**values), tmp, device="cpu", progress=False)


def make_request(teacher, steps: int, guidance: float = 1.0, batch: int = 2) -> SampleRequest:
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    noise = torch.stack([torch.randn(teacher.latent_shape, generator=g) for g in gens])
    prompts = ["a red cube", "a blue sphere on a table"][:batch]
    return SampleRequest(noise=noise, cond=teacher.encode_prompts(prompts), uncond=teacher.encode_prompts([""] * batch),
                         generators=gens, steps=steps, guidance_scale=guidance)


# ------------------------------------------------------------------------------------------------
# Declared facts, configs, skip reasons
# ------------------------------------------------------------------------------------------------


def test_registered_with_the_papers_values():
    assert get_method_class("dmd") is DMD and get_method_class("dmd2") is DMD2 and get_method_class("pndm") is PNDM
    dmd, dmd2 = DMD().config, DMD2().config
    assert (dmd.regression_weight, dmd.real_guidance_scale, dmd.generator_update_ratio) == (0.25, 3.0, 1)
    assert (dmd.min_step_percent, dmd.max_step_percent, dmd.denoising_step_list) == (0.02, 0.98, (999,))
    assert dmd.pair_spec() == TeacherOutputSpec("pndm", 50, 3.0, 500_000, 64)
    # "at the training guidance"
    assert DMD(DMDConfig(real_guidance_scale=8.0)).config.pair_spec().guidance_scale == 8.0
    assert (dmd2.regression_weight, dmd2.real_guidance_scale, dmd2.generator_update_ratio) == (0.0, 1.75, 10)
    assert (dmd2.denoising_step_list, dmd2.step_counts, dmd2.gan) == ((999,), (1,), False)    # SD-1.5 stage 1
    assert DMD().nfe(1, 1.0) == 1 and DMD().default_guidance_scale == 1.0
    # the toy schedule: only what it sets changes (tests/methods/test_dmd2_recipe.py: every value)
    toy = apply_toy_schedule(DMD2().config)
    assert (toy.generator_update_ratio, toy.gan, toy.max_train_steps, toy.real_guidance_scale) == (5, True, 2400, 1.75)
    assert (toy.denoising_step_list, toy.step_counts, toy.fake_learning_rate) == ((399, 299, 199, 99), (1, 4), None)
    toy = apply_toy_schedule(DMDConfig())
    assert (toy.regression_distance, toy.denoising_step_list, toy.fake_learning_rate) == ("l2", (399,), 2e-4)
    assert (toy.generator_update_ratio, toy.max_train_steps) == (5, 4000)    # DMD2's two time-scale rule
    with pytest.raises(UsageError, match="denoising_step_list must be strictly decreasing"):
        apply_config_overrides(DMDConfig(), "toy_denoising_step_list=249:999")
    with pytest.raises(UsageError, match="does not divide the 1-step denoising_step_list"):
        apply_config_overrides(DMD2Config(), "toy_denoising_step_list=399")
    assert dmd.generator_ema_decay is None and dmd2.generator_ema_decay is None     # the papers: no EMA
    with pytest.raises(ValueError, match=r"generator_ema_decay must be in \[0, 1\), got 1.0"):
        DMDConfig(generator_ema_decay=1.0)


def test_unsupported_steps_give_a_clear_reason():
    dmd, dmd2 = DMD(), DMD2()
    assert dmd.unsupported_steps_reason(1) is None
    for steps in (2, 4, 8):
        reason = dmd.unsupported_steps_reason(steps)
        assert reason.startswith("dmd ") and f"{steps} steps skipped" in reason and "[999]" in reason
    assert "[999] (on toy teachers [399])" in dmd.unsupported_steps_reason(2)
    # the default one-step recipe serves 1; the toy schedule's 4-step list 1 and 4 (the check does
    # not know the teacher)
    assert DMD2.supported_steps == dmd2.config.step_counts == (1,)
    assert dmd2.unsupported_steps_reason(1) is None and dmd2.unsupported_steps_reason(4) is None
    assert "2 steps skipped" in dmd2.unsupported_steps_reason(2)
    assert "8 steps skipped" in dmd2.unsupported_steps_reason(8)
    assert "[999] (on toy teachers [399, 299, 199, 99], for 1, 4 steps)" in dmd2.unsupported_steps_reason(2)
    with_two = DMD2(DMD2Config(preset="sdxl-4step", step_counts=(1, 2, 4)))
    assert with_two.unsupported_steps_reason(2) is None
    assert sampling_timesteps((999, 749, 499, 249), 2) == [999, 499]
    assert sampling_timesteps((999, 749, 499, 249), 1) == [999]
    with pytest.raises(ValueError, match="does not divide"):
        DMD2Config(denoising_step_list=(999, 749, 499, 249), step_counts=(3,))
    with pytest.raises(ValueError, match="step count 4 does not divide the 1-step"):
        DMD2(DMD2Config(step_counts=(1, 4)))                     # the default preset's list is [999]
    with pytest.raises(ValueError, match="preset=sdxl-4step"):
        sampling_timesteps((999,), 4)
    from bench.core.spec import load_method

    assert load_method("dmd2", "preset=sdxl-4step,step_counts=1:2:4").config.step_counts == (1, 2, 4)


# ------------------------------------------------------------------------------------------------
# The distribution matching gradient (Eqs. 4-8, Alg. 2)
# ------------------------------------------------------------------------------------------------


def test_eq8_weight_closed_form():
    """x = 0, mu_real = (1, -3): ||mu - x||_1 = 4, CS = 2; alpha 0.5, sigma^2 0.75:
    w = 0.75 / 0.5 * 2 / 4 = 0.75."""
    x = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    mu = torch.tensor([1.0, -3.0], dtype=torch.float64).reshape(1, 2, 1, 1)
    w = eq8_weight(x, mu, torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.75], dtype=torch.float64).sqrt())
    assert w.item() == pytest.approx(0.75, abs=1e-12)


def test_dm_gradient_matches_eq7_with_eq8_weight():
    """On hand-made tensors: w_t alpha_t (s_fake - s_real) from the scores of Eqs. 4-5 and the weight
    of Eq. 8 equals dm_gradient(..., alpha) ("eq-7"), and Alg. 2's form is that divided by alpha_t."""
    g = torch.Generator().manual_seed(0)
    shape = (3, 4, 5, 5)
    x, mu_real, mu_fake, eps = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4))
    alpha = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    x_t = alpha.view(-1, 1, 1, 1) * x + sigma.view(-1, 1, 1, 1) * eps
    literal = (eq8_weight(x, mu_real, alpha, sigma) * alpha).view(-1, 1, 1, 1) * (
        score(x_t, mu_fake, alpha, sigma) - score(x_t, mu_real, alpha, sigma))
    assert torch.allclose(dm_gradient(x, mu_real, mu_fake, alpha), literal, rtol=1e-10, atol=1e-12)
    assert torch.allclose(dm_gradient(x, mu_real, mu_fake) * alpha.view(-1, 1, 1, 1), literal, rtol=1e-10, atol=1e-12)
    # and the surrogate loss has exactly this gradient (divided by numel)
    xg = x.clone().requires_grad_(True)
    grad = dm_gradient(x, mu_real, mu_fake)
    dm_loss(xg, grad).backward()
    assert torch.allclose(xg.grad.double(), grad / x.numel(), rtol=1e-5, atol=1e-9)   # float32 loss
    # the step moves x towards the real mean: <-grad, mu_real - mu_fake> > 0
    assert (-(grad) * (mu_real - mu_fake)).sum() > 0


def test_dm_gradient_is_zero_when_fake_and_real_scores_agree(teacher, data):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    mu = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(dm_gradient(x, mu, mu.clone()), torch.zeros_like(x))
    # end to end: the fake score starts as the teacher, so without CFG (real g = 1) the scores agree
    # and the generator's DM gradient vanishes; with the real score's CFG (g = 3) it does not
    tr = trainer()
    grads = {}
    for g_real in (1.0, 3.0):
        method = small_dmd2(real_guidance_scale=g_real)
        state = method.init_training_state(TrainingContext(teacher, tr, None))
        batch = tr.make_batch(teacher, data, 0, 0)
        x = generate(state, torch.randn(2, 4, 8, 8), batch.cond, torch.Generator().manual_seed(0), with_grad=True)
        x = x.detach().requires_grad_(True)
        distribution_matching_loss(state, x, batch.cond, batch.uncond, torch.Generator().manual_seed(3)).backward()
        grads[g_real] = x.grad.abs().max().item()
    assert grads[3.0] > 1e-6
    assert grads[1.0] <= 1e-4 * grads[3.0], grads


# ------------------------------------------------------------------------------------------------
# The regression dataset (Eq. 9) and its solver
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_pndm_equals_stable_diffusion_pipeline(teacher):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=teacher.codec.vae, text_encoder=teacher.text_encoder,
                                   tokenizer=teacher.tokenizer, unet=teacher.unet,
                                   scheduler=PNDMScheduler.from_config(teacher.scheduler_config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    request = make_request(teacher, 10, guidance=3.0)
    ours = PNDM().sample(Denoiser(teacher.unet, teacher.schedule, scheduler_config=teacher.scheduler_config), request)
    ref = pipe(prompt_embeds=request.cond, negative_prompt_embeds=request.uncond, num_inference_steps=10,
               guidance_scale=3.0, generator=[torch.Generator().manual_seed(i) for i in range(2)],
               output_type="latent").images
    assert_close(ours, ref)
    assert PNDM().nfe(50, 3.0) == 102 and PNDM().nfe(50, 1.0) == 51


def test_regression_pairs_are_deterministic_resumable_and_the_solvers_output(teacher, data, tmp_path, monkeypatch):
    from bench.engine.teacher_outputs import CachedTeacherOutputs, build_teacher_outputs

    spec = TeacherOutputSpec("pndm", 4, 3.0, num_pairs=7, chunk_size=3)          # chunks of 3, 3, 1
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "a"))
    straight = build_teacher_outputs(teacher, data, spec, seed=0, progress=False)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "b"))
    with pytest.raises(Killed):
        build_teacher_outputs(teacher, KilledAt(data, 2), spec, seed=0, progress=False)
    files = sorted(p.name for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files == ["chunk-00000.safetensors", "chunk-00001.safetensors"]       # no half-written chunk
    first_bytes = (next((tmp_path / "b").rglob("chunk-00000.safetensors"))).read_bytes()
    resumed = build_teacher_outputs(teacher, data, spec, seed=0, progress=False)
    assert resumed.name == straight.name                                          # same fingerprint
    names = sorted(p.name for p in straight.iterdir())
    assert names == sorted(p.name for p in resumed.iterdir()) and len(names) == 3
    for name in names:
        assert (straight / name).read_bytes() == (resumed / name).read_bytes(), name
    assert (resumed / "chunk-00000.safetensors").read_bytes() == first_bytes          # kept, not redone

    # the pairs are the teacher solver's outputs from their noise, for their captions
    pairs = CachedTeacherOutputs(straight, spec, torch.device("cpu"), teacher.encode_prompts)
    noise, target, cond = pairs.batch(torch.tensor([4, 6]))
    _, captions = data.batch(1, 3)
    assert torch.equal(cond, teacher.encode_prompts([captions[1]] + [data.batch(2, 3)[1][0]]))
    request = SampleRequest(noise=noise, cond=cond, uncond=teacher.encode_prompts([""] * 2),
                            generators=[torch.Generator() for _ in range(2)], steps=4, guidance_scale=3.0)
    ref = PNDM().sample(Denoiser(teacher.unet, teacher.schedule, scheduler_config=teacher.scheduler_config), request)
    assert_close(target, ref)
    assert not torch.equal(noise[0], noise[1])


def test_lpips_without_weights_fails_before_any_work(teacher, data, tmp_path):
    method = DMD(DMDConfig(num_regression_pairs=4, regression_chunk_size=2, lpips_vgg_path=str(tmp_path / "no.pth")))
    with pytest.raises(MissingResourceError) as info:
        method.init_training_state(TrainingContext(teacher, trainer(), data))
    message = str(info.value)
    assert "lpips" in message and "BENCH_LPIPS_VGG_PATH" in message and str(tmp_path / "no.pth") in message
    assert "regression_distance=l2" in message
    assert not (tmp_path / "cache").exists()                                       # no pair was made


def test_latent_space_distances():
    a, b = torch.zeros(2, 1, 1, 2), torch.tensor([[0.0, 2.0], [1.0, 1.0]]).reshape(2, 1, 1, 2)
    assert torch.equal(regression_distance(a, b, "l2"), torch.tensor([2.0, 1.0]))
    c = 0.03
    expected = torch.tensor([(math.sqrt(4 + c * c) - c + 0.0) / 2, math.sqrt(1 + c * c) - c])
    assert torch.allclose(regression_distance(a, b, "pseudo-huber", c), expected)


# ------------------------------------------------------------------------------------------------
# Training: schedule, improvement, resume
# ------------------------------------------------------------------------------------------------


def test_generator_and_fake_updates_follow_the_ratio(teacher, data):
    """r = 3 over 7 iterations: the generator is updated at steps 0, 3, 6 (and its forward runs
    without autograd on the others); the fake score is updated every step; the generator's EMA
    (mu = 0.5) moves after generator updates only, to mu ema + (1 - mu) G, and is the student."""
    method = small_dmd2(generator_update_ratio=3, gan=True, lr_warmup_steps=0, generator_ema_decay=0.5)
    tr = trainer(max_train_steps=7)
    state = method.init_training_state(TrainingContext(teacher, tr, None))
    snapshots, grad_modes, keys = [], {}, []
    gen, fake, ema = tr.unwrap(state.generator), tr.unwrap(state.fake), state.generator_ema
    flat = lambda net: torch.cat([p.detach().flatten() for p in net.parameters()]).clone()  # noqa: E731
    gen.register_forward_hook(lambda *a: grad_modes.setdefault(current[0], set()).add(torch.is_grad_enabled()))
    current = [0]

    def step(state, batch):
        current[0] = batch.step
        snapshots.append((flat(gen), flat(fake), flat(ema)))
        losses = method.training_step(state, batch)
        keys.append(sorted(losses))
        return losses

    tr.fit(state, step, data, teacher)
    snapshots.append((flat(gen), flat(fake), flat(ema)))
    assert [("generator" in k) for k in keys] == [True, False, False, True, False, False, True]
    assert all("fake_score" in k for k in keys)
    for s in range(7):
        g_moved = not torch.equal(snapshots[s][0], snapshots[s + 1][0])
        f_moved = not torch.equal(snapshots[s][1], snapshots[s + 1][1])
        assert g_moved == (s % 3 == 0), s
        assert f_moved, s
        assert (True in grad_modes[s]) == (s % 3 == 0), (s, grad_modes[s])
        expected_ema = 0.5 * snapshots[s][2] + 0.5 * snapshots[s + 1][0] if s % 3 == 0 else snapshots[s][2]
        assert_close(snapshots[s + 1][2], expected_ema, tol=1e-6)
    assert not torch.equal(snapshots[-1][2], snapshots[-1][0])
    student = method.student_from_state(state, TrainingContext(teacher, tr, None))
    assert torch.equal(flat(student.unet), snapshots[-1][2])


def _held_out_fake_loss(state, tr, teacher, data, batches: int = 4) -> float:
    """The fake-score loss on fixed generator samples with fixed draws."""
    total = 0.0
    with torch.no_grad():
        for i in range(batches):
            batch = tr.make_batch(teacher, data, 50_000 + i, 0)
            g = torch.Generator().manual_seed(i)
            x = generate(state, torch.randn(batch.latents.shape, generator=g), batch.cond, g, with_grad=False)
            total += float(fake_score_loss(state, x, batch.cond, g))
    return total / batches


def test_a_few_steps_reduce_the_fake_score_loss(teacher, data):
    """20 iterations (generator at step 0 only): mu_fake learns the generator's outputs, so its
    denoising loss on held-out generator samples with fixed draws drops."""
    method = small_dmd2(generator_update_ratio=1000, lr_warmup_steps=0)
    tr = trainer(max_train_steps=20, train_batch_size=8, learning_rate=1e-3)
    state = method.init_training_state(TrainingContext(teacher, tr, None))
    before = _held_out_fake_loss(state, tr, teacher, data)
    tr.fit(state, method.training_step, data, teacher)
    after = _held_out_fake_loss(state, tr, teacher, data)
    assert after < 0.9 * before, f"held-out fake-score loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("name", ["dmd", "dmd2"])
def test_resume_reproduces_the_uninterrupted_run(teacher, data, tmp_path, name):
    """4 iterations, checkpoint every 2; killed in iteration 3 and resumed by a fresh trainer and
    state: the generator, the fake score (with its GAN head for dmd2), the generator's EMA and the
    loss history are bit-identical to an uninterrupted run. dmd: regression pairs; dmd2: r = 2,
    GAN, 4-step list, EMA, LR schedulers stepped every iteration."""
    method = small_dmd() if name == "dmd" else small_dmd2(generator_update_ratio=2, gan=True, lr_warmup_steps=3,
                                                          generator_ema_decay=0.9, preset="sdxl-4step")
    straight = trainer(tmp_path / "a", checkpointing_steps=2)
    state_a = method.init_training_state(TrainingContext(teacher, straight, data))
    straight.fit(state_a, method.training_step, data, teacher)

    with pytest.raises(Killed):
        method.train(TrainingContext(teacher, trainer(tmp_path / "b", checkpointing_steps=2), KilledAt(data, 2)))
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["step-00000002"]
    resumed = trainer(tmp_path / "b", checkpointing_steps=2)
    state_b = method.init_training_state(TrainingContext(teacher, resumed, data))
    report = resumed.fit(state_b, method.training_step, data, teacher)

    assert report.resumed_from == 2 and report.losses == straight.report.losses
    for net in ("generator", "fake"):
        a = straight.unwrap(getattr(state_a, net)).state_dict()
        b = resumed.unwrap(getattr(state_b, net)).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (net, key)
    assert (state_a.generator_ema is None) == (name == "dmd")
    if state_a.generator_ema is not None:
        a, b = state_a.generator_ema.state_dict(), state_b.generator_ema.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(a["conv_in.weight"], teacher.unet.conv_in.weight)
    assert not torch.equal(straight.unwrap(state_a.generator).conv_in.weight, teacher.unet.conv_in.weight)


# ------------------------------------------------------------------------------------------------
# Sampling and the student cache
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 4])
@torch.no_grad()
def test_sampler_equals_lcm_scheduler_on_the_step_list(teacher, steps):
    """DMD2 inference (the code samples with LCMScheduler at timesteps [999, 749, 499, 249]):
    same network, same per-image generators for the fresh noise."""
    from diffusers import LCMScheduler

    method = DMD2(DMD2Config(preset="sdxl-4step", step_counts=(1, 2, 4)))
    request = make_request(teacher, steps)
    ours = method.sample(Denoiser(teacher.unet, teacher.schedule), request)
    scheduler = LCMScheduler.from_config(teacher.scheduler_config)
    scheduler.set_timesteps(timesteps=sampling_timesteps((999, 749, 499, 249), steps))
    x, gens = request.noise.clone(), [torch.Generator().manual_seed(i) for i in range(2)]
    for g in gens:
        torch.randn(teacher.latent_shape, generator=g)            # the initial noise was drawn from it
    for t in scheduler.timesteps:
        out = torch.cat([teacher.unet(x[i:i + 1], t, encoder_hidden_states=request.cond[i:i + 1]).sample
                         for i in range(2)])
        x, denoised = scheduler.step(out, t, x, generator=gens, return_dict=False)
    assert_close(ours, denoised, tol=1e-4)


def test_load_student_trains_saves_and_samples(teacher, tmp_path):
    from bench.engine import students

    method = DMD(with_toy(DMDConfig, dict(num_regression_pairs=4, train_batch_size=2, regression_batch_size=2,
                                          checkpointing_steps=1), regression_solver_steps=3, regression_chunk_size=2))
    loaded = students.load_student(method, teacher, steps=1, max_train_steps=2, progress=False)
    assert loaded.info["trained_steps"] == 2 and loaded.info["kind"] == "unet"
    assert loaded.info["schedule"]["max_grad_norm"] == 10.0
    assert (students.students_dir().parent / "teacher-outputs").is_dir()      # pairs cached beside
    out = method.sample(loaded.denoiser, make_request(teacher, 1))
    assert out.shape == (2, *teacher.latent_shape) and torch.isfinite(out).all()
    # a second load finds it in the cache; enabling another step count reuses the same student
    again = students.load_student(method, teacher, steps=1, max_train_steps=2, progress=False)
    assert again.path == loaded.path
    dmd2 = DMD2(DMD2Config(preset="sdxl-4step", step_counts=(1, 2, 4)))
    assert "step_counts" not in dmd2.training_identity() and "denoising_step_list" in dmd2.training_identity()


def test_the_student_samples_at_the_timestep_it_was_trained_at(teacher, monkeypatch, tmp_path):
    """On a toy (here: random-weight) teacher dmd trains its generator at the toy step list [399];
    `bench sample` must sample it there too (load_student's sampler), not at the paper's [999],
    while the sampling fingerprint keeps the config the user asked for."""
    import methods.dmd as dmd_module
    from bench.assets.suites import load_suite
    from bench.engine import students
    from bench.engine.cells import SamplingContext, sample_one

    method = DMD(with_toy(DMDConfig, dict(num_regression_pairs=4, train_batch_size=2, regression_batch_size=2,
                                          max_train_steps=1), regression_solver_steps=3, regression_chunk_size=2))
    loaded = students.load_student(method, teacher, steps=1, progress=False)
    assert method.config.denoising_step_list == (999,)
    assert loaded.sampling_method(method).config.denoising_step_list == (399,)
    assert loaded.sampling_method(method) is loaded.sampler and students.LoadedStudent(None, "x").sampling_method(
        method) is method
    lists = []
    real = dmd_module.sampling_timesteps
    monkeypatch.setattr(dmd_module, "sampling_timesteps", lambda step_list, steps: lists.append(step_list) or
                        real(step_list, steps))
    ctx = SamplingContext(teacher, "tiny", torch.device("cpu"), "fp32")
    suite = load_suite("smoke").subset(2)
    summary = sample_one(ctx, method, suite, 1, 1.0, 0, tmp_path / "samples", 2, "fast", progress=False)
    assert summary.written == 2 and lists == [(399,)]
    spec = json.loads((tmp_path / "samples" / "metadata.json").read_text())["spec"]
    assert spec["method_config"]["denoising_step_list"] == [999] and spec["student"] == loaded.identity
