"""Multistep Consistency Models on the tiny random-weight teacher (CPU, offline): aDDIM and inverse
DDIM against DDIM, the segment time grid, the sampler against DDIM and diffusers' DDIMScheduler,
the loss in closed form and a measured loss reduction, student folders, exact resume, and one
student per step count."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import Killed, KilledAt, assert_close, make_request, with_toy

from bench.assets.train_data import SyntheticPairs
from bench.engine.training import Trainer, TrainSchedule
from methods import get_method_class
from methods.base import Denoiser, TrainingContext
from methods.ddim import DDIM, DDIMConfig
from methods.diffusion_math import (
    NoiseSchedule,
    addim_analytic_x_var,
    addim_step,
    cfg_imagen,
    ddim_step,
    ddim_step_from_x_t,
    inverse_ddim,
)
from methods.mcm import (
    MCMConfig,
    MultistepCM,
    grid_timestep,
    mcm_training_step,
    sample_segment_times,
    segment_boundaries,
    steps_per_segment,
    teacher_steps_at,
)
from methods.timesteps import inference_timesteps

pytestmark = pytest.mark.usefixtures("one_thread")



def _trainer(steps: int = 30, batch: int = 8, lr: float = 3e-5, checkpoint_dir=None, **kw) -> Trainer:
    schedule = TrainSchedule(max_train_steps=steps, train_batch_size=batch, learning_rate=lr,
                             checkpointing_steps=kw.pop("checkpointing_steps", 0), **kw)
    return Trainer(schedule, checkpoint_dir, device="cpu", progress=False)


# ------------------------------------------------------------------------------------------------
# Declared facts and config
# ------------------------------------------------------------------------------------------------


def test_registered_with_the_paper_defaults():
    assert get_method_class("mcm") is MultistepCM
    assert MultistepCM.student_per_step_count and MultistepCM.default_guidance_scale == 1.0
    cfg = MultistepCM().config
    assert (cfg.teacher_steps, cfg.anneal_teacher_steps, cfg.xvar_frac) == (256, False, 0.75)
    assert (cfg.x_var_estimate, cfg.huber_epsilon, cfg.loss_weighting) == ("data", 1.0, "snr+1")
    assert (cfg.train_batch_size, cfg.max_train_steps) == (2048, 30_000)
    assert MultistepCM().nfe(4, 1.0) == 4 and MultistepCM().nfe(4, 3.0) == 8
    assert MultistepCM().unsupported_steps_reason(1) is None and MultistepCM().unsupported_steps_reason(16) is None
    with pytest.raises(ValueError):
        MCMConfig(x_var_estimate="exact")

    from bench.core.spec import load_method

    imagenet = load_method("mcm", "anneal_teacher_steps=true,huber_epsilon=1e-4,max_train_steps=200000").config
    assert (imagenet.anneal_teacher_steps, imagenet.huber_epsilon, imagenet.max_train_steps) == (True, 1e-4, 200_000)


# ------------------------------------------------------------------------------------------------
# aDDIM and inverse DDIM (diffusion_math)
# ------------------------------------------------------------------------------------------------


def _pair(seed: int = 0, batch: int = 3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(batch, 4, 8, 8, generator=g, dtype=torch.float64)
    return x0, eps


def test_addim_with_zero_variance_is_ddim():
    schedule = NoiseSchedule.sd15()
    x0, eps = _pair()
    t, s = torch.tensor([999, 500, 40]), torch.tensor([749, 260, -1])
    abar_t, abar_s = schedule.abar(t), schedule.abar(s)
    x_t = abar_t.sqrt()[:, None, None, None] * x0 + (1 - abar_t).sqrt()[:, None, None, None] * eps
    ours = addim_step(x0, x_t, abar_t, abar_s, x_var=0.0)
    assert torch.allclose(ours, ddim_step(x0, eps, abar_t, abar_s), rtol=0, atol=1e-12)
    assert torch.allclose(ours, ddim_step_from_x_t(x_t, x0, abar_t, abar_s), rtol=0, atol=1e-12)


def test_addim_inflates_the_noise_by_the_conditional_variance_and_tends_to_ddim():
    """Eq. 14: ||x_s - alpha_s x0||^2 = sigma_s^2 ||eps^||^2 + d (alpha_s - alpha_t sigma_s/sigma_t)^2 x_var
    exactly; the adjustment is second order in the step, so it vanishes as s -> t (and s = t
    returns x_t)."""
    x0, eps = _pair(1, batch=2)
    x_var = torch.tensor([0.3, 0.05], dtype=torch.float64)
    abar_t = torch.tensor(0.3, dtype=torch.float64)
    x_t = abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * eps
    d = x0[0].numel()

    def gap(abar_s):
        return abar_s.sqrt() - abar_t.sqrt() * (1 - abar_s).sqrt() / (1 - abar_t).sqrt()

    abar_s = torch.tensor(0.6, dtype=torch.float64)
    x_s = addim_step(x0, x_t, abar_t, abar_s, x_var)
    lhs = (x_s - abar_s.sqrt() * x0).flatten(1).pow(2).sum(1)
    rhs = (1 - abar_s) * eps.flatten(1).pow(2).sum(1) + d * gap(abar_s) ** 2 * x_var
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=0)
    assert torch.allclose(addim_step(x0, x_t, abar_t, abar_t, x_var), x_t, rtol=0, atol=1e-12)

    def adjustment(h):
        s = abar_t + h
        return (addim_step(x0, x_t, abar_t, s, x_var) - ddim_step(x0, eps, abar_t, s)).abs().max().item()

    diffs = [adjustment(0.1 / 2**k) for k in range(5)]
    assert all(a > b for a, b in zip(diffs, diffs[1:])) and diffs[-1] < 1e-4
    ratios = [a / b for a, b in zip(diffs, diffs[1:])]
    assert 3.5 < ratios[-1] < 4.5, ratios                     # O(h^2): halving the step quarters it


def test_addim_analytic_variance():
    abar = torch.tensor([0.5, 0.2], dtype=torch.float64)       # SNR 1 and 0.25
    assert torch.allclose(addim_analytic_x_var(abar), torch.tensor([0.1 / 3, 0.1 / 2.25], dtype=torch.float64))


def test_inverse_ddim_inverts_ddim():
    schedule = NoiseSchedule.sd15()
    x0, eps = _pair(2)
    t, s = torch.tensor([999, 503, 7]), torch.tensor([749, 499, -1])
    abar_t, abar_s = schedule.abar(t), schedule.abar(s)
    x_t = abar_t.sqrt()[:, None, None, None] * x0 + (1 - abar_t).sqrt()[:, None, None, None] * eps
    x_s = ddim_step_from_x_t(x_t, x0, abar_t, abar_s)
    assert torch.allclose(inverse_ddim(x_s, x_t, abar_t, abar_s), x0, rtol=0, atol=1e-9)
    z = torch.randn_like(x_s)
    assert torch.allclose(ddim_step_from_x_t(x_t, inverse_ddim(z, x_t, abar_t, abar_s), abar_t, abar_s), z,
                          rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Segments and the teacher grid
# ------------------------------------------------------------------------------------------------


def test_segment_boundaries_are_the_trailing_ddim_timesteps():
    assert segment_boundaries(1) == [999]
    assert segment_boundaries(2) == [999, 499]
    assert segment_boundaries(4) == [999, 749, 499, 249]
    assert segment_boundaries(8) == [999, 874, 749, 624, 499, 374, 249, 124]
    for S in range(1, 48):
        assert segment_boundaries(S) == inference_timesteps(1000, S, "trailing"), S
    # S = 48 (and 96, 112, ...): 45 * 1000 / 48 = 937.5 is a tie that the exact grid rounds to even
    # (938 - 1) and trailing's float arange (1000 - 3 * 20.833...) rounds down (937 - 1)
    assert segment_boundaries(48)[3] == 937 and inference_timesteps(1000, 48, "trailing")[3] == 936
    # integer round-half-even == numpy's float rounding of j * 1000 / T
    for points in (3, 16, 48, 256, 1000):
        j = np.arange(points + 1)
        expected = (np.round(j * 1000 / points) - 1).astype(int).tolist()
        assert grid_timestep(torch.from_numpy(j), points).tolist() == expected
    with pytest.raises(ValueError):
        segment_boundaries(0)


@pytest.mark.parametrize("S", [1, 2, 4, 8])
def test_segment_boundaries_match_diffusers_ddim_trailing(teacher, S):
    """diffusers' DDIMScheduler (trailing) visits the same timesteps and steps to the next
    boundary (its prev_t = t - 1000 // S), the last to the final abar."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(teacher.scheduler_config, timestep_spacing="trailing")
    scheduler.set_timesteps(S)
    assert scheduler.timesteps.tolist() == segment_boundaries(S)
    prev = [t - 1000 // S for t in segment_boundaries(S)]
    assert prev == segment_boundaries(S)[1:] + [-1]


@pytest.mark.parametrize("S", [1, 2, 4, 8])
@pytest.mark.parametrize("teacher_steps", [1, 64, 256, 5000])
def test_teacher_grid_lies_inside_the_segments(S, teacher_steps):
    """Every draw of Alg. 1 has t_step <= s < t <= the segment's upper boundary, s = t_step exactly
    when n = 1, and each segment holds N distinct sub-grid points."""
    N = steps_per_segment(teacher_steps, S)
    assert N == max(1, min(round(teacher_steps / S), 1000 // S))
    t, s, t_step = sample_segment_times(S, N, 4000, torch.Generator().manual_seed(0))
    lower = [-1] + segment_boundaries(S)[::-1]                   # boundaries, ascending, with the final point
    upper = dict(zip(lower, lower[1:]))
    assert set(t_step.tolist()) == set(lower[:-1])
    assert bool((t_step <= s).all() and (s < t).all())
    assert all(tt <= upper[ts] for tt, ts in zip(t.tolist(), t_step.tolist()))
    # the whole sub-grid: strictly increasing, the boundaries every N points, N points per segment
    points = grid_timestep(torch.arange(S * N + 1), S * N).tolist()
    assert points[::N] == lower and points == sorted(set(points))
    for k, ts in enumerate(lower[:-1]):
        segment = points[k * N + 1:(k + 1) * N + 1]
        assert len(segment) == N and ts < segment[0] and segment[-1] == upper[ts]
        drawn = t[t_step == ts]
        assert set(drawn.tolist()) <= set(segment)
        # s is the sub-grid point below t; s = t_step exactly for the segment's first point
        index = torch.tensor([points.index(v) for v in drawn.tolist()])
        assert s[t_step == ts].tolist() == [points[i - 1] for i in index.tolist()]
        assert bool(((s[t_step == ts] == ts) == (index == k * N + 1)).all())


def test_teacher_step_annealing():
    fixed = MCMConfig()
    assert teacher_steps_at(0, fixed) == teacher_steps_at(10**6, fixed) == 256
    anneal = MCMConfig(anneal_teacher_steps=True)
    assert math.isclose(teacher_steps_at(0, anneal), 64)
    assert math.isclose(teacher_steps_at(50_000, anneal), math.sqrt(64 * 1280))     # log-linear
    assert math.isclose(teacher_steps_at(100_000, anneal), 1280) and math.isclose(teacher_steps_at(10**6, anneal), 1280)
    assert steps_per_segment(1280, 1) == 1000 and steps_per_segment(64, 8) == 8 and steps_per_segment(256, 3) == 85


# ------------------------------------------------------------------------------------------------
# Sampler (Algorithm 2)
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def ddim_scheduler_reference(teacher, unet, request):
    """diffusers' DDIMScheduler (trailing, eta 0) driving the same network image by image."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(teacher.scheduler_config, timestep_spacing="trailing")
    scheduler.set_timesteps(request.steps)
    x, g = request.noise.clone(), request.guidance_scale
    for t in scheduler.timesteps:
        outs = []
        for i in range(x.shape[0]):
            cond = unet(x[i:i + 1], t, encoder_hidden_states=request.cond[i:i + 1]).sample
            if g != 1.0:
                uncond = unet(x[i:i + 1], t, encoder_hidden_states=request.uncond[i:i + 1]).sample
                cond = cfg_imagen(uncond, cond, g)
            outs.append(cond)
        x = scheduler.step(torch.cat(outs), t, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("S", [1, 2, 4, 8])
def test_sampler_with_the_teacher_is_ddim_on_the_segment_boundaries(teacher, S, guidance):
    """A student equal to its teacher: S deterministic DDIM steps between the boundaries, equal to
    our trailing DDIM baseline and to diffusers' DDIMScheduler on the same noise."""
    denoiser = Denoiser(teacher.unet, teacher.schedule, scheduler_config=teacher.scheduler_config)
    ours = MultistepCM().sample(denoiser, make_request(teacher, S, guidance))
    ddim = DDIM(DDIMConfig(spacing="trailing", eta=0.0)).sample(denoiser, make_request(teacher, S, guidance))
    assert torch.equal(ours, ddim)
    assert_close(ours, ddim_scheduler_reference(teacher, teacher.unet, make_request(teacher, S, guidance)))
    # no fresh noise: the generators are never drawn from
    request = make_request(teacher, S, guidance)
    MultistepCM().sample(denoiser, request)
    assert torch.equal(torch.randn(3, generator=request.generators[0]),
                       torch.randn(3, generator=make_request(teacher, S, guidance).generators[0]))


# ------------------------------------------------------------------------------------------------
# Training (Algorithm 1)
# ------------------------------------------------------------------------------------------------


def test_one_teacher_step_per_segment_targets_the_teacher_x0(teacher):
    """With N = 1 every draw has s = t_step, so the target is invDDIM_{t->s}(z_s, z_t) (Eq. 8):
    with a DDIM teacher (x_var = 0) exactly the teacher's guided x_0 prediction. The student starts
    as the teacher, so the loss is w_t d(target - x_cond) in closed form (0 without guidance); with
    aDDIM, x_var comes from the unguided prediction (App. A.1)."""
    data = SyntheticPairs(resolution=teacher.resolution)
    S = 4
    for guidance, x_var_estimate in ((1.0, "none"), (3.0, "none"), (3.0, "data")):
        method = MultistepCM(MCMConfig(teacher_steps=S, x_var_estimate=x_var_estimate, guidance_scale=guidance))
        trainer = _trainer()
        state = method.init_training_state(TrainingContext(teacher, trainer, None, S))
        batch = trainer.make_batch(teacher, data, 0, 0)
        with torch.no_grad():
            loss = float(mcm_training_step(state, batch))
        # the same draws, by hand
        g = trainer.make_batch(teacher, data, 0, 0).generator
        t, s, t_step = sample_segment_times(S, 1, batch.latents.shape[0], g)
        assert torch.equal(s, t_step)
        eps = torch.randn(batch.latents.shape, generator=g)
        abar = teacher.schedule.abar(t)[:, None, None, None].float()
        z_t = abar.sqrt() * batch.latents + (1 - abar).sqrt() * eps
        with torch.no_grad():
            e_c = teacher.unet(z_t, t, encoder_hidden_states=batch.cond).sample
            e_u = teacher.unet(z_t, t, encoder_hidden_states=batch.uncond).sample
        x_c = (z_t - (1 - abar).sqrt() * e_c) / abar.sqrt()
        x_g = (z_t - (1 - abar).sqrt() * cfg_imagen(e_u, e_c, guidance)) / abar.sqrt()
        target = x_g
        if x_var_estimate == "data":     # aDDIM step with x_var from the unguided prediction, then Eq. 8
            x_var = 0.75 * (x_c - batch.latents).flatten(1).pow(2).mean(1)
            abar_s = teacher.schedule.abar(s)
            target = inverse_ddim(addim_step(x_g, z_t, abar.flatten(), abar_s, x_var), z_t, abar.flatten(), abar_s)
            assert (target - x_g).abs().max() > 1e-3                   # the inflation moves the target
        r2 = (target - x_c).flatten(1).pow(2).mean(1).double()
        expected = ((r2 + 1).sqrt() - 1) / (1 - teacher.schedule.abar(t))   # w_t = SNR + 1 = 1/sigma^2, eps = 1
        if guidance == 1.0:
            assert loss < 1e-9
        else:
            assert loss > 1e-4 and math.isclose(loss, float(expected.mean()), rel_tol=1e-4)


def test_loss_follows_algorithm_1_within_a_segment(teacher):
    """N = 4 sub-steps per segment: the reference f(z_s, s) is carried by DDIM from s to the
    segment start and the target pulled back by inverse DDIM from the segment start to t (Eq. 6-7),
    written out by hand with the (separately tested) DDIM and inverse-DDIM functions."""
    data = SyntheticPairs(resolution=teacher.resolution)
    S, N, guidance = 4, 4, 3.0
    method = MultistepCM(MCMConfig(teacher_steps=S * N, x_var_estimate="none", guidance_scale=guidance))
    trainer = _trainer()
    state = method.init_training_state(TrainingContext(teacher, trainer, None, S))
    batch = trainer.make_batch(teacher, data, 0, 0)
    with torch.no_grad():
        loss = float(mcm_training_step(state, batch))

    g = trainer.make_batch(teacher, data, 0, 0).generator
    t, s, t_step = sample_segment_times(S, N, batch.latents.shape[0], g)
    assert bool((s == t_step).any() and (s != t_step).any())        # both cases in this batch
    eps = torch.randn(batch.latents.shape, generator=g)
    abar_t, abar_s, abar_0 = (teacher.schedule.abar(v) for v in (t, s, t_step))
    col = lambda v: v[:, None, None, None].float()                   # noqa: E731
    z_t = col(abar_t).sqrt() * batch.latents + col(1 - abar_t).sqrt() * eps

    def x0(z, timestep, abar, text):
        with torch.no_grad():
            out = teacher.unet(z, timestep.clamp(min=0), encoder_hidden_states=text).sample
        return (z - col(1 - abar).sqrt() * out) / col(abar).sqrt()

    x_c, x_u = x0(z_t, t, abar_t, batch.cond), x0(z_t, t, abar_t, batch.uncond)
    z_s = ddim_step_from_x_t(z_t, cfg_imagen(x_u, x_c, guidance), abar_t, abar_s)      # DDIM teacher
    z_ref = ddim_step_from_x_t(z_s, x0(z_s, s, abar_s, batch.cond), abar_s, abar_0)
    z_ref = torch.where(col(s == t_step).bool(), z_s, z_ref)
    x_diff = inverse_ddim(z_ref, z_t, abar_t, abar_0) - x_c
    expected = ((x_diff.flatten(1).pow(2).mean(1).double() + 1).sqrt() - 1) / (1 - abar_t)
    assert math.isclose(loss, float(expected.mean()), rel_tol=1e-4)


def test_a_zero_length_pull_back_targets_the_teacher_x0(teacher, monkeypatch):
    """Once the teacher grid reaches every timestep (annealing to 1280 teacher steps, S * N >= 667
    of 1000) some draws have t = 0 in the first segment, whose start is the final point, abar_0 for
    SD-1.5 (set_alpha_to_one=False): Eq. 5 pulls back over a zero span, 0/0. The target is its
    s -> t limit, the teacher's guided x_0, and the loss is the closed form of the N = 1 test
    (it was NaN, and stopped training, before)."""
    schedule = teacher.schedule
    assert schedule.final_alphas_cumprod == float(schedule.abar(0))
    data = SyntheticPairs(resolution=teacher.resolution)
    S, guidance = 4, 3.0
    # aDDIM with x_var from data; Huber epsilon 1e-3: at t = 0, where r2 ~ 1e-5, epsilon = 1 leaves
    # the float32 loss sqrt(r2 + 1) - 1 only 3 significant digits
    method = MultistepCM(MCMConfig(teacher_steps=1000, guidance_scale=guidance, huber_epsilon=1e-3))
    trainer = _trainer()
    state = method.init_training_state(TrainingContext(teacher, trainer, None, S))
    batch = trainer.make_batch(teacher, data, 0, 0)
    B = batch.latents.shape[0]
    zeros = torch.zeros(B, dtype=torch.long)
    monkeypatch.setattr("methods.mcm.sample_segment_times", lambda *args: (zeros, zeros - 1, zeros - 1))
    with torch.no_grad():
        loss = float(mcm_training_step(state, batch))

    eps = torch.randn(batch.latents.shape, generator=trainer.make_batch(teacher, data, 0, 0).generator)
    abar = float(schedule.abar(0))
    z_t = math.sqrt(abar) * batch.latents + math.sqrt(1 - abar) * eps
    with torch.no_grad():
        e_c = teacher.unet(z_t, zeros, encoder_hidden_states=batch.cond).sample
        e_u = teacher.unet(z_t, zeros, encoder_hidden_states=batch.uncond).sample
    x_c, x_u = ((z_t - math.sqrt(1 - abar) * e) / math.sqrt(abar) for e in (e_c, e_u))
    r2 = (cfg_imagen(x_u, x_c, guidance) - x_c).flatten(1).pow(2).mean(1).double()
    expected = float((((r2 + 1e-6).sqrt() - 1e-3) / (1 - abar)).mean())
    assert expected > 1e-4 and math.isclose(loss, expected, rel_tol=1e-4)


def _held_out_loss(state, trainer, teacher, data, batches: int = 8) -> float:
    """The MCM loss on fixed held-out batches with fixed draws (segments, sub-steps, noise)."""
    with torch.no_grad():
        return sum(float(mcm_training_step(state, trainer.make_batch(teacher, data, 100_000 + i, 0)))
                   for i in range(batches)) / batches


@pytest.mark.parametrize("S", [1, 4])
def test_a_few_steps_reduce_the_loss(teacher, S):
    """30 steps (batch 8, lr 3e-5, 16 teacher steps, aDDIM with guidance 3) lower the held-out
    loss with fixed draws by more than 25% (measured: 38% at S = 1, 41% at S = 4)."""
    method = MultistepCM(MCMConfig(teacher_steps=16))
    trainer = _trainer()
    data = SyntheticPairs(resolution=teacher.resolution)
    state = method.init_training_state(TrainingContext(teacher, trainer, None, S))
    before = _held_out_loss(state, trainer, teacher, data)
    report = trainer.fit(state, method.training_step, data, teacher)
    after = _held_out_loss(state, trainer, teacher, data)
    assert report.steps == 30 and all(map(math.isfinite, report.losses))
    assert after < 0.75 * before, f"held-out MCM loss {before:.4f} -> {after:.4f}"


def test_training_requires_the_segment_count(teacher):
    with pytest.raises(ValueError, match="needs steps=S"):
        MultistepCM().train(TrainingContext(teacher, _trainer(steps=1), SyntheticPairs(resolution=teacher.resolution)))


# ------------------------------------------------------------------------------------------------
# Student folders
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_student_round_trip_and_stock_pipeline(teacher, tmp_path):
    """A trained student saved as a diffusers UNet folder: the harness's loaded copy samples
    identically, and a stock StableDiffusionPipeline with DDIMScheduler(trailing) and g = 1 gives
    our samples."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from bench.engine.students import load_student_unet, save_student

    method = MultistepCM(MCMConfig(teacher_steps=8))
    trainer = _trainer(steps=2, batch=2, lr=1e-3)
    with torch.enable_grad():
        student = method.train(TrainingContext(teacher, trainer, SyntheticPairs(resolution=teacher.resolution), 2))
    assert student.kind == "unet" and student.metadata["segments"] == 2
    assert student.metadata["timesteps"] == [999, 499] and student.metadata["guidance_scale"] == 3.0
    assert any(not torch.equal(a, b) for a, b in zip(student.unet.parameters(), teacher.unet.parameters()))

    folder = save_student(student, tmp_path / "mcm", {"fingerprint": "test", "kind": "unet"})
    loaded = load_student_unet(folder, teacher)
    for (name, a), b in zip(student.unet.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    a = method.sample(Denoiser(student.unet, teacher.schedule), make_request(teacher, 2, 1.0))
    b = method.sample(Denoiser(loaded, teacher.schedule), make_request(teacher, 2, 1.0))
    assert_close(a, b)      # same weights; the copied and the loaded module differ in the last bits only

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    scheduler = DDIMScheduler.from_config(teacher.scheduler_config, timestep_spacing="trailing")
    pipe = StableDiffusionPipeline(vae=teacher.codec.vae, text_encoder=teacher.text_encoder,
                                   tokenizer=teacher.tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    request = make_request(teacher, 2, 1.0)
    ref = pipe(prompt_embeds=request.cond, num_inference_steps=2, guidance_scale=1.0,
               generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="latent").images
    assert_close(a, ref)


# ------------------------------------------------------------------------------------------------
# Kill and resume
# ------------------------------------------------------------------------------------------------


def test_resume_after_interruption_reproduces_the_uninterrupted_run(teacher, tmp_path):
    """4 optimizer steps x 2 accumulated micro-batches, checkpoint every 2 steps, teacher steps
    annealed (so the step index matters). Run A goes straight through; run B is killed during
    step 3 and resumed by a fresh Trainer and state: same parameters and losses, bit for bit."""
    data = SyntheticPairs(resolution=teacher.resolution)
    method = MultistepCM(MCMConfig(anneal_teacher_steps=True, teacher_steps_min=8, teacher_steps_max=64,
                                   anneal_iterations=4, lr_scheduler="constant_with_warmup", lr_warmup_steps=3))
    kw = dict(steps=4, batch=2, lr=1e-4, gradient_accumulation_steps=2, checkpointing_steps=2)

    straight = _trainer(checkpoint_dir=tmp_path / "a", **kw)
    state_a = method.init_training_state(TrainingContext(teacher, straight, None, 2))
    straight.fit(state_a, method.training_step, data, teacher)
    student_a = method.student_from_state(state_a, TrainingContext(teacher, straight, None))

    with pytest.raises(Killed):
        method.train(TrainingContext(teacher, _trainer(checkpoint_dir=tmp_path / "b", **kw), KilledAt(data, 5), 2))
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["step-00000002"]

    resumed = _trainer(checkpoint_dir=tmp_path / "b", **kw)
    state_b = method.init_training_state(TrainingContext(teacher, resumed, None, 2))
    report = resumed.fit(state_b, method.training_step, data, teacher)
    student_b = method.student_from_state(state_b, TrainingContext(teacher, resumed, None))

    assert report.resumed_from == 2 and report.steps == 4
    assert report.losses == straight.report.losses
    a, b = student_a.unet.state_dict(), student_b.unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------
# One student per step count (the harness's cache)
# ------------------------------------------------------------------------------------------------


def test_one_student_per_step_count(teacher, tmp_path, monkeypatch):
    from bench.assets.train_data import training_data_for
    from bench.engine import students

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCH_TRAIN_DATA", raising=False)
    method = MultistepCM(with_toy(MCMConfig, dict(train_batch_size=2, checkpointing_steps=1)))
    train_method, schedule = students.training_plan(method, teacher, max_train_steps=1)
    assert train_method.config.teacher_steps == 64 and schedule.train_batch_size == 2   # toy schedule applied
    data = training_data_for(teacher)
    fps = {S: students.student_fingerprint(train_method, teacher, schedule, data, S) for S in (1, 2, 4, 8)}
    assert len(set(fps.values())) == 4
    assert students.student_fingerprint(train_method, teacher, schedule, data, 2) == fps[2]

    one = students.load_student(method, teacher, steps=1, max_train_steps=1, progress=False)
    two = students.load_student(method, teacher, steps=2, max_train_steps=1, progress=False)
    assert (one.fingerprint, two.fingerprint) == (fps[1], fps[2]) and one.path != two.path
    assert (one.info["steps"], two.info["steps"]) == (1, 2)
    assert one.info["metadata"]["timesteps"] == [999] and two.info["metadata"]["timesteps"] == [999, 499]
    # a cached student is loaded, not retrained
    monkeypatch.setattr(MultistepCM, "train", lambda *a, **k: pytest.fail("retrained a cached student"))
    assert students.load_student(method, teacher, steps=2, max_train_steps=1, progress=False).path == two.path


def test_toy_schedule_per_step_count(teacher):
    """S >= 8 trains on the short toy schedule (MCMConfig), S < 8 on the long one; the short one is
    the student an explicit --config of the same schedule names, and any explicit schedule wins."""
    import dataclasses

    from bench.assets.train_data import training_data_for
    from bench.core.errors import UsageError
    from bench.core.spec import apply_config_overrides
    from bench.engine import students

    data = training_data_for(teacher)
    teacher = dataclasses.replace(teacher, training_scale="toy")    # tiny's own is the plumbing schedule

    def plan(overrides, S):
        method = MultistepCM(apply_config_overrides(MCMConfig(), overrides))
        train_method, schedule = students.training_plan(method, teacher, steps=S)
        fp = students.student_fingerprint(train_method, teacher, schedule, data, S)
        return schedule.max_train_steps, train_method.config.lr_scheduler, fp

    assert [plan(None, S)[:2] for S in (1, 2, 4)] == [(4000, "cosine")] * 3
    assert plan(None, 8)[:2] == plan(None, 16)[:2] == (500, "constant")
    assert plan(None, 8) == plan("lr_scheduler=constant,toy_max_train_steps=500", 8)
    assert plan("lr_scheduler=cosine,toy_max_train_steps=1000", 8)[:2] == (1000, "cosine")
    assert plan("toy_max_train_steps=2000", 8)[:2] == (2000, "cosine")
    assert plan("toy_short_schedule=none", 8)[:2] == (4000, "cosine")
    assert plan("toy_short_schedule.from_segments=4", 4)[:2] == (500, "constant")
    assert plan("toy_short_schedule.max_train_steps=300", 8)[:2] == (300, "constant")
    with pytest.raises(UsageError, match="from_segments >= 1"):
        plan("toy_short_schedule.from_segments=0", 8)
    with pytest.raises(UsageError, match=r"'short_schedule.steps' is not a field or a toy schedule entry \(short_schedule.from_segments"):
        plan("toy_short_schedule.steps=300", 8)
    # without a step count (bench profile's training cost) the long toy schedule applies
    assert students.training_plan(MultistepCM(), teacher)[1].max_train_steps == 4000
