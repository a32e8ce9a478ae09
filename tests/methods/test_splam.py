"""SPLAM on the tiny random-weight teacher (CPU, offline): Multiple Estimation against Eq. 18
written with diffusers' DDIMScheduler, gamma = 1 is LCM's online branch, the folded gamma = 1
embedding, a plain-UNet student that stock diffusers pipelines sample, loss reduction, resume."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import (
    guided_teacher,
    straight_and_resumed,
    trainer,
    with_toy,
)

from bench.assets.train_data import SyntheticPairs
from bench.core.errors import UsageError
from bench.core.spec import apply_config_overrides, apply_toy_schedule
from methods import SampleRequest, get_method_class
from methods.base import Denoiser, TrainingContext
from methods.consistency import (
    SkippingStepDDIM,
    consistency_loss,
    lcd_draws,
    lcd_online,
    lcd_target,
    lcd_teacher_solve,
)
from methods.diffusion_math import NoiseSchedule
from methods.lcm import build_w_conditioned_unet
from methods.splam import (
    SPLAM,
    SPLAMConfig,
    fold_gamma_embedding,
    gamma_embedding,
    noise_level_preconditioning,
    sigma_gamma,
    sl_ode_point,
    splam_online,
    splam_teacher_solver,
    splam_training_step,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


def test_registered_with_paper_and_code_presets():
    assert get_method_class("splam") is SPLAM
    paper, code = SPLAM().config, SPLAM(SPLAMConfig(preset="official-code")).config
    assert (paper.skip, paper.skip_phi, paper.w_min, paper.w_max, paper.loss_type) == (100, 20, 2.0, 2.0, "huber")
    assert (paper.sigma_gamma, paper.gamma_embedding, paper.gamma_embedding_scale) == ("paper-linear", "paper-zero",
                                                                                         0.01)
    assert (code.skip, code.w_min, code.sigma_gamma, code.gamma_embedding, code.gamma_embedding_scale) == (
        20, 8.0, "code-sqrt", "code", 10.0)
    assert SPLAM.default_guidance_scale == 1.0 and SPLAM().nfe(4, 1.0) == 4
    # the paper's Algorithm 1 reading everywhere but on the toy world (SPLAMConfig note (e))
    assert paper.gamma_preconditioning == code.gamma_preconditioning == "algorithm-1"
    assert apply_toy_schedule(SPLAMConfig()).gamma_preconditioning == "noise-level"
    assert apply_toy_schedule(apply_config_overrides(SPLAMConfig(), "toy_gamma_preconditioning=none")) \
        .gamma_preconditioning == "algorithm-1"
    # t ~ U[k, T] (Eq. 17) except on the toy world, which starts a sub-path at every grid point (note (f))
    assert paper.subpath_starts == code.subpath_starts == "paper"
    assert apply_toy_schedule(SPLAMConfig()).subpath_starts == "all-grid"
    with pytest.raises(UsageError, match="gamma_preconditioning must be one of"):
        apply_config_overrides(SPLAMConfig(), "toy_gamma_preconditioning=bogus")
    with pytest.raises(ValueError):
        SPLAMConfig(skip=90)
    with pytest.raises(ValueError):
        SPLAMConfig(w_min=2.0, w_max=3.0)


# ------------------------------------------------------------------------------------------------
# Multiple Estimation (Eq. 18)
# ------------------------------------------------------------------------------------------------


def test_timesteps_are_drawn_in_k_to_T():
    solver = splam_teacher_solver(SPLAM().config, NoiseSchedule.sd15())
    t_start, t_end = solver.draw(4000, torch.Generator().manual_seed(0))
    assert set(t_start.tolist()) == set(range(99, 1000, 20))               # t ~ U[k, T] on the 20-grid
    assert torch.equal(t_end, (t_start - 100).clamp(min=0))


@pytest.mark.parametrize("t", [999, 99])
@torch.no_grad()
def test_multiple_estimation_is_eq_18(teacher, t):
    """k / k_phi = 5 DDIM steps of 20, each z + w Phi(z, c) + (1 - w) Phi(z, empty) (Eq. 18, Imagen
    convention: the paper's w is g), Phi = a DDIMScheduler step minus z. Config w = g - 1 (LCM)."""
    cfg = SPLAM().config
    g_imagen = cfg.w_min + 1.0
    x = torch.randn(2, *teacher.latent_shape, generator=torch.Generator().manual_seed(0)) * 2
    cond, uncond = teacher.encode_prompts(["a red cube", "a blue sphere"]), teacher.encode_prompts(["", ""])
    solver = splam_teacher_solver(cfg, teacher.schedule)
    tt = torch.full((2,), t)
    ours = solver.solve(guided_teacher(teacher, cond, uncond, torch.full((2,), cfg.w_min)), x, tt,
                        (tt - 100).clamp(min=0))
    z = eq_18_by_ddim_scheduler(teacher, x, cond, uncond, g_imagen, [t - 20 * i for i in range(5)])
    torch.testing.assert_close(ours, z, rtol=1e-5, atol=1e-5)


def eq_18_by_ddim_scheduler(teacher, x, cond, uncond, g_imagen, timesteps):
    """Eq. 18 from each of ``timesteps``: z + g Phi(z, c) + (1 - g) Phi(z, empty) (Imagen
    convention), Phi = a 50-step DDIMScheduler step (prev_t = t - 20; from 19: abar_0) minus z."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(teacher.scheduler_config, set_alpha_to_one=False)
    sched.set_timesteps(50)
    z = x
    for t in timesteps:
        s = torch.full((x.shape[0],), t)
        phi_c = sched.step(teacher.unet(z, s, encoder_hidden_states=cond).sample, t, z).prev_sample - z
        phi_u = sched.step(teacher.unet(z, s, encoder_hidden_states=uncond).sample, t, z).prev_sample - z
        z = z + g_imagen * phi_c + (1 - g_imagen) * phi_u
    return z


def test_released_code_setting_is_lcms_teacher(teacher):
    """k = 20 (official-code): the same draws and the same single DDIM step as LCM's solver."""
    cfg = SPLAM(SPLAMConfig(preset="official-code")).config
    ours, lcm = splam_teacher_solver(cfg, teacher.schedule), SkippingStepDDIM(teacher.schedule)
    a, b = ours.draw(16, torch.Generator().manual_seed(3)), lcm.draw(16, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x = torch.randn(16, *teacher.latent_shape, generator=torch.Generator().manual_seed(1))
    cond, uncond = teacher.encode_prompts(["a cube"] * 16), teacher.encode_prompts([""] * 16)
    guided = guided_teacher(teacher, cond, uncond, torch.full((16,), 8.0))
    assert torch.equal(ours.solve(guided, x, *a), lcm.solve(guided, x, *b))


@torch.no_grad()
def test_all_grid_subpaths_below_k_end_at_the_boundary(teacher):
    """t ~ U[k, T] leaves the targets at t - k in (0, k - 1) where the student never trains
    (159 -> 59); "all-grid" trains every grid point, each target's point is a start point or the
    boundary 0, and a sub-path from 59 is the 3-step DDIM to 0 (the clamped steps 0 -> 0 are identities)."""
    def starts_and_ends(cfg):
        t_start, t_end = splam_teacher_solver(cfg, NoiseSchedule.sd15()).draw(4000, torch.Generator().manual_seed(0))
        return set(t_start.tolist()), set(t_end.tolist())

    starts, ends = starts_and_ends(SPLAM().config)
    assert ends - starts - {0} == set(range(19, 80, 20))                  # untrained targets: 19, 39, 59, 79
    cfg = SPLAM(SPLAMConfig(subpath_starts="all-grid")).config
    starts, ends = starts_and_ends(cfg)
    assert starts == set(range(19, 1000, 20)) and ends - starts == {0}

    x = torch.randn(2, *teacher.latent_shape, generator=torch.Generator().manual_seed(0))
    cond, uncond = teacher.encode_prompts(["a red cube", "a blue sphere"]), teacher.encode_prompts(["", ""])
    guided = guided_teacher(teacher, cond, uncond, torch.full((2,), cfg.w_min))
    t_start, t_end = torch.full((2,), 59), torch.zeros(2, dtype=torch.long)
    ours = splam_teacher_solver(cfg, teacher.schedule).solve(guided, x, t_start, t_end)
    z = eq_18_by_ddim_scheduler(teacher, x, cond, uncond, cfg.w_min + 1.0, [59, 39, 19])
    torch.testing.assert_close(ours, z, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="subpath_starts"):
        SPLAMConfig(subpath_starts="all")


# ------------------------------------------------------------------------------------------------
# gamma
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["paper", "official-code"])
def test_gamma_one_is_the_lcm_online_branch(teacher, preset):
    """F_theta(z_{1,t}, c, 1, t) == LCM's f_theta(z_t, c, t) with the gamma = 1 embedding: bit for
    bit with the paper's sigma(gamma, t); to rounding with the code's square-root form."""
    method = SPLAM(SPLAMConfig(preset=preset))
    tr = trainer()
    state = method.init_training_state(TrainingContext(teacher, tr, None))
    batch = tr.make_batch(teacher, SyntheticPairs(resolution=teacher.resolution), 0, 0)
    draws = lcd_draws(state, batch)
    x_end = lcd_teacher_solve(state, draws, batch)
    ones = torch.ones(2)
    with torch.no_grad():
        ours = splam_online(state, draws, x_end, ones, batch.cond)
        lcm = lcd_online(state, draws.x_start, draws.t_start, batch.cond,
                         gamma_embedding(ones, 256, method.config.gamma_embedding))
    if preset == "paper":
        assert torch.equal(ours, lcm)
    else:
        torch.testing.assert_close(ours, lcm, rtol=1e-5, atol=1e-5)


def test_interior_gamma_is_eq_12_14_16_with_the_configured_embedding(teacher):
    """F_theta(z_{gamma,t}, c, gamma, t) at gamma = 0.5 from its parts (Eq. 12, sigma(gamma, t),
    the gamma embedding at the config's scale, Eq. 14/16); the code's scale gives another output."""
    method = SPLAM()
    cfg, tr = method.config, trainer()
    state = method.init_training_state(TrainingContext(teacher, tr, None))
    batch = tr.make_batch(teacher, SyntheticPairs(resolution=teacher.resolution), 0, 0)
    draws = lcd_draws(state, batch)
    x_end = lcd_teacher_solve(state, draws, batch)
    half = torch.full((2,), 0.5)
    alpha_t, sigma_t = state.schedule.alpha_sigma(draws.t_start)
    alpha_e, sigma_e = state.schedule.alpha_sigma(draws.t_end)
    ratio = alpha_t / alpha_e
    x_half = sl_ode_point(draws.x_start, x_end, half, ratio.float())
    sig = sigma_gamma(half, sigma_t, sigma_e, ratio, "paper-linear")
    with torch.no_grad():
        ours = splam_online(state, draws, x_end, half, batch.cond)
        by_hand = {scale: lcd_online(state, x_half, draws.t_start, batch.cond,
                                     gamma_embedding(half, 256, "paper-zero", scale), sigma=sig)
                   for scale in (cfg.gamma_embedding_scale, 10.0)}
    torch.testing.assert_close(ours, by_hand[0.01], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(ours, by_hand[10.0], atol=1e-4)


def test_sigma_gamma_end_points():
    """Both forms: sigma(t) at gamma = 1, alpha(t)/alpha(t-k) sigma(t-k) at gamma = 0 (§4.2)."""
    sigma_t = torch.tensor([0.9, 0.5], dtype=torch.float64)
    sigma_e = torch.tensor([0.8, 0.3], dtype=torch.float64)
    alpha_t, alpha_e = (1 - sigma_t**2).sqrt(), (1 - sigma_e**2).sqrt()
    ratio = alpha_t / alpha_e
    for kind in ("paper-linear", "code-sqrt"):
        torch.testing.assert_close(sigma_gamma(torch.ones(2), sigma_t, sigma_e, ratio, kind), sigma_t)
        torch.testing.assert_close(sigma_gamma(torch.zeros(2), sigma_t, sigma_e, ratio, kind), ratio * sigma_e)
    half = sigma_gamma(torch.full((2,), 0.5), sigma_t, sigma_e, ratio, "paper-linear")
    torch.testing.assert_close(half, 0.5 * ratio * sigma_e + 0.5 * sigma_t)
    assert torch.equal(gamma_embedding(torch.ones(3), 256, "paper-zero"), torch.zeros(3, 256))


@torch.no_grad()
def test_paper_sigma_gamma_is_the_noise_level_of_the_sl_ode_point_after_one_ddim_step(teacher):
    """With one DDIM teacher step (k = k_phi, the released code's setting) the teacher's own
    (x0^, eps^) give z_t = alpha(t) x0^ + sigma(t) eps^ and z^_{t-k} = alpha(t-k) x0^ +
    sigma(t-k) eps^, so the SL-ODE point (Eq. 12) is alpha(t) x0^ + sigma(gamma, t) eps^ with the
    paper's linear sigma(gamma, t) exactly: the student sees the signal of time t at a lower noise
    level that only gamma tells it. The code's square-root form is not that level inside (0, 1)."""
    method = SPLAM(SPLAMConfig(skip=20))
    tr = trainer(batch=4)
    state = method.init_training_state(TrainingContext(teacher, tr, None))
    batch = tr.make_batch(teacher, SyntheticPairs(resolution=teacher.resolution), 0, 0)
    draws = lcd_draws(state, batch)
    x_end = lcd_teacher_solve(state, draws, batch)
    x0, eps = guided_teacher(teacher, batch.cond, batch.uncond, draws.w)(draws.x_start, draws.t_start)
    alpha_t, sigma_t = state.schedule.alpha_sigma(draws.t_start)
    alpha_e, sigma_e = state.schedule.alpha_sigma(draws.t_end)
    ratio = alpha_t / alpha_e
    gamma = torch.tensor([0.0, 0.25, 0.5, 0.75])
    x_gamma = sl_ode_point(draws.x_start, x_end, gamma, ratio.float())
    for kind, exact in (("paper-linear", True), ("code-sqrt", False)):
        level = sigma_gamma(gamma, sigma_t, sigma_e, ratio, kind).float().reshape(-1, 1, 1, 1)
        forward = alpha_t.float().reshape(-1, 1, 1, 1) * x0 + level * eps
        inside = slice(1, None)                    # gamma = 0: both forms are ratio * sigma(t-k)
        torch.testing.assert_close(x_gamma[:1], forward[:1], rtol=1e-5, atol=1e-5)
        assert torch.allclose(x_gamma[inside], forward[inside], rtol=1e-5, atol=1e-5) == exact
    assert (sigma_gamma(gamma, sigma_t, sigma_e, ratio, "paper-linear") < sigma_t).all()


def test_continuous_timestep_at_log_snr_inverts_the_schedule():
    """At a discrete timestep's own log SNR: that timestep exactly; between two: linear in log SNR;
    outside the table: clamped to [0, T - 1]."""
    schedule = NoiseSchedule.sd15()
    table = (schedule.alphas_cumprod / (1 - schedule.alphas_cumprod)).log()
    t = torch.tensor([0, 1, 139, 500, 998, 999])
    assert torch.equal(schedule.timestep_at_log_snr(table[t]), t.to(torch.float64))
    quarter = 0.75 * table[139] + 0.25 * table[140]
    torch.testing.assert_close(schedule.timestep_at_log_snr(quarter), torch.tensor(139.25, dtype=torch.float64))
    beyond = schedule.timestep_at_log_snr(torch.tensor([table[0] + 1, table[-1] - 1]))
    assert beyond.tolist() == [0.0, 999.0]


def test_noise_level_preconditioning_end_points():
    """gamma = 1 (sigma = sigma(t)): the plain student, (1, t) exactly. gamma = 0 with the paper's
    sigma(gamma, t): c_in z_{0,t} = z^_{t-k} at t' = t - k, the target network's own input."""
    schedule = NoiseSchedule.sd15()
    t, k = torch.tensor([999, 499, 139]), 100
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    alpha_e, sigma_e = schedule.alpha_sigma(t - k)
    ratio = alpha_t / alpha_e
    scale, t_net = noise_level_preconditioning(schedule, alpha_t, sigma_t, t)
    assert torch.equal(scale, torch.ones(3, dtype=torch.float64)) and torch.equal(t_net, t.to(torch.float64))
    sigma_zero = sigma_gamma(torch.zeros(3), sigma_t, sigma_e, ratio, "paper-linear")
    scale, t_net = noise_level_preconditioning(schedule, alpha_t, sigma_zero, t)
    torch.testing.assert_close(t_net, (t - k).to(torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(scale * ratio, torch.ones(3, dtype=torch.float64))    # c_in (ratio z^) = z^
    half = sigma_gamma(torch.full((3,), 0.5), sigma_t, sigma_e, ratio, "paper-linear")
    _, t_half = noise_level_preconditioning(schedule, alpha_t, half, t)
    assert ((t_half > t - k) & (t_half < t)).all()


@torch.no_grad()
def test_noise_level_preconditioning_feeds_the_network_the_point_as_a_vp_sample(teacher):
    """"noise-level": at gamma = 1 the same output as "algorithm-1" (LCM's online branch), bit for
    bit; inside (0, 1) the network is given c_in z_{gamma,t} at t' and Eq. 14 still reads
    z_{gamma,t} with sigma(gamma, t) at t."""
    method = SPLAM(SPLAMConfig(gamma_preconditioning="noise-level"))
    tr = trainer()
    state = method.init_training_state(TrainingContext(teacher, tr, None))
    batch = tr.make_batch(teacher, SyntheticPairs(resolution=teacher.resolution), 0, 0)
    draws = lcd_draws(state, batch)
    x_end = lcd_teacher_solve(state, draws, batch)
    ones, half = torch.ones(2), torch.full((2,), 0.5)
    plain = SPLAM()
    state.config, preconditioned_config = plain.config, state.config
    algorithm_1 = {"one": splam_online(state, draws, x_end, ones, batch.cond),
                   "half": splam_online(state, draws, x_end, half, batch.cond)}
    state.config = preconditioned_config
    assert torch.equal(splam_online(state, draws, x_end, ones, batch.cond), algorithm_1["one"])
    ours = splam_online(state, draws, x_end, half, batch.cond)
    alpha_t, sigma_t = state.schedule.alpha_sigma(draws.t_start)
    alpha_e, sigma_e = state.schedule.alpha_sigma(draws.t_end)
    ratio = alpha_t / alpha_e
    x_half = sl_ode_point(draws.x_start, x_end, half, ratio.float())
    sig = sigma_gamma(half, sigma_t, sigma_e, ratio, "paper-linear")
    scale, t_net = noise_level_preconditioning(state.schedule, alpha_t, sig, draws.t_start)
    by_hand = lcd_online(state, x_half, draws.t_start, batch.cond, gamma_embedding(half, 256, "paper-zero", 0.01),
                         sigma=sig, net_input=x_half * scale.float().reshape(-1, 1, 1, 1), net_timestep=t_net.float())
    torch.testing.assert_close(ours, by_hand, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(ours, algorithm_1["half"], atol=1e-4)
    with pytest.raises(ValueError, match="gamma_preconditioning"):
        SPLAMConfig(gamma_preconditioning="edm")


@pytest.mark.parametrize("ablation", ["none", "gamma-one", "embedding-only", "point-only"])
def test_sl_ode_ablations_move_gamma_out_of_the_point_or_the_embedding(teacher, ablation):
    """The diagnosis switches: the loss equals Algorithm 1's with gamma = 1 put back in the point
    and sigma ("embedding-only", "gamma-one") or in the embedding ("point-only", "gamma-one")."""
    method = SPLAM(SPLAMConfig(sl_ode_ablation=ablation))
    tr = trainer()
    state = method.init_training_state(TrainingContext(teacher, tr, None))
    gamma, ones = torch.tensor([0.3, 0.6]), torch.ones(2)
    point = ones if ablation in ("gamma-one", "embedding-only") else gamma
    told = ones if ablation in ("gamma-one", "point-only") else gamma
    with torch.no_grad():
        ours = splam_training_step(state, tr.make_batch(teacher, SyntheticPairs(resolution=teacher.resolution), 0, 0),
                                   gamma=gamma)
        batch = tr.make_batch(teacher, SyntheticPairs(resolution=teacher.resolution), 0, 0)
        draws = lcd_draws(state, batch)
        torch.rand(2, generator=batch.generator)                      # the gamma draw
        x_end = lcd_teacher_solve(state, draws, batch)
        pred = splam_online(state, draws, x_end, point, batch.cond, told)
        target = lcd_target(state, x_end, draws.t_end, batch.cond, torch.zeros(2, 256))
    assert torch.equal(ours, consistency_loss(pred, target, "huber", method.config.huber_c))
    if ablation != "none":
        with torch.no_grad():
            full = splam_online(state, draws, x_end, gamma, batch.cond)
        assert not torch.allclose(pred, full, atol=1e-4)
    with pytest.raises(ValueError, match="sl_ode_ablation"):
        SPLAMConfig(sl_ode_ablation="gamma-zero")


def test_paper_gamma_embedding_is_smooth_at_gamma_one_and_the_codes_is_not():
    """Sampling uses gamma = 1 only (Eq. 19), training draws gamma ~ U[0, 1): gamma = 1 is learnt
    only if the embedding of gamma -> 1 tends to that of gamma = 1 at the scale of its spread."""
    paper, code = SPLAM().config, SPLAM(SPLAMConfig(preset="official-code")).config
    gammas = torch.tensor([0.0, 0.5, 0.999])

    def distances(cfg):
        emb = gamma_embedding(gammas, 256, cfg.gamma_embedding, cfg.gamma_embedding_scale)
        one = gamma_embedding(torch.ones(1), 256, cfg.gamma_embedding, cfg.gamma_embedding_scale)
        return (emb - one).norm(dim=1)

    near, spread = distances(paper)[2].item(), distances(paper)[:2].max().item()
    assert near < 0.01 * spread                        # 0.027 against 8.1
    near, spread = distances(code)[2].item(), distances(code)[:2].max().item()
    assert near > 0.5 * spread                         # 9.1 against 16.1: gamma = 1 is out of reach


@pytest.mark.parametrize("kind", ["paper-zero", "code"])
@torch.no_grad()
def test_folded_gamma_embedding_gives_the_unfolded_students_outputs(teacher, kind):
    unet = build_w_conditioned_unet(teacher.unet, 256, seed=0).eval()
    folded = fold_gamma_embedding(unet, kind)
    assert folded.config.time_cond_proj_dim is None
    assert not any("cond_proj" in name for name, _ in folded.named_parameters())
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 2
    t, text = torch.tensor([999, 499, 19]), teacher.encode_prompts(["a", "b", "c"])
    ours = folded(x, t, encoder_hidden_states=text).sample
    ref = unet(x, t, encoder_hidden_states=text, timestep_cond=gamma_embedding(torch.ones(3), 256, kind)).sample
    if kind == "paper-zero":
        assert torch.equal(ours, ref)                 # e(1) = 0: nothing to fold
    else:
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        plain = unet(x, t, encoder_hidden_states=text, timestep_cond=torch.zeros(3, 256)).sample
        assert not torch.allclose(plain, ref, atol=1e-4)   # the code's e(1) is not zero: folding matters


def test_saved_student_samples_with_a_stock_pipeline(teacher, tmp_path):
    """train 2 steps -> save -> UNet2DConditionModel.from_pretrained + StableDiffusionPipeline with
    LCMScheduler gives the method's samples."""
    from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from bench.engine.students import save_student

    method = SPLAM(SPLAMConfig(preset="official-code"))
    student = method.train(TrainingContext(teacher, trainer(steps=2), SyntheticPairs(resolution=teacher.resolution)))
    folder = save_student(student, tmp_path / "splam", {"fingerprint": "test", "kind": "unet"})
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    assert unet.config.time_cond_proj_dim is None
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    noise = torch.stack([torch.randn(teacher.latent_shape, generator=g) for g in gens])
    with torch.no_grad():
        cond = teacher.encode_prompts(["a red cube", "a blue sphere"])
    request = SampleRequest(noise, cond, teacher.encode_prompts(["", ""]), gens, 4, 1.0)
    ours = method.sample(Denoiser(student.unet, teacher.schedule, scheduler_config=teacher.scheduler_config), request)
    pipe = StableDiffusionPipeline(vae=teacher.codec.vae, text_encoder=teacher.text_encoder,
                                   tokenizer=teacher.tokenizer, unet=unet,
                                   scheduler=LCMScheduler.from_config(teacher.scheduler_config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(prompt_embeds=cond, num_inference_steps=4, guidance_scale=1.0,
                   generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="latent").images
    # float32 roundoff only: each of the 4 steps divides by alpha, 0.068 at t = 999 (measured 1.2e-5)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def test_a_few_steps_reduce_the_loss(teacher):
    """30 steps lower the SPLAD loss on held-out batches with fixed draws (t, noise, gamma); EMA
    0.999943 keeps the target in place (see tests/methods/test_lcm.py)."""
    method = SPLAM(SPLAMConfig(ema_decay=0.999943, loss_type="l2"))
    tr = trainer(steps=30, batch=8, lr=3e-5)
    data = SyntheticPairs(resolution=teacher.resolution)
    state = method.init_training_state(TrainingContext(teacher, tr, None))

    def held_out():
        with torch.no_grad():
            return sum(float(splam_training_step(state, tr.make_batch(teacher, data, 100_000 + i, 0)))
                       for i in range(8)) / 8

    before = held_out()
    report = tr.fit(state, method.training_step, data, teacher)
    after = held_out()
    assert report.steps == 30
    assert after < 0.8 * before, f"held-out SPLAD loss {before:.4f} -> {after:.4f}"


def test_resume_after_interruption_reproduces_the_uninterrupted_run(teacher, tmp_path):
    method = SPLAM(SPLAMConfig(ema_decay=0.9))
    data = SyntheticPairs(resolution=teacher.resolution)
    state_a, straight, state_b, resumed, report = straight_and_resumed(
        method, teacher, data, tmp_path, steps=4, batch=2, gradient_accumulation_steps=2, checkpointing_steps=2)
    assert report.resumed_from == 2 and report.losses == straight.report.losses
    for a, b in [(state_a.student, state_b.student), (state_a.target, state_b.target)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    student_a = method.student_from_state(state_a, TrainingContext(teacher, straight, None)).unet.state_dict()
    student_b = method.student_from_state(state_b, TrainingContext(teacher, resumed, None)).unet.state_dict()
    assert all(torch.equal(student_a[k], student_b[k]) for k in student_a)


def test_student_cache_trains_once_and_samples(teacher, tmp_path, monkeypatch):
    """bench.engine.students: the toy schedule, train, save (folded plain U-Net), load, sample."""
    from bench.engine import students

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCH_TRAIN_DATA", raising=False)
    method = SPLAM(with_toy(SPLAMConfig, dict(train_batch_size=2, checkpointing_steps=1)))
    assert students.training_plan(method, dataclasses.replace(teacher, training_scale="toy"))[1].max_train_steps == 6000
    assert students.training_plan(method, teacher)[1].max_train_steps == 10          # tiny: plumbing
    first = students.load_student(method, teacher, steps=2, max_train_steps=2, progress=False)
    assert first.info["trained_steps"] == 2 and first.denoiser.unet.config.time_cond_proj_dim is None
    monkeypatch.setattr(SPLAM, "train", lambda *a, **k: pytest.fail("retrained a cached student"))
    assert students.load_student(method, teacher, steps=4, max_train_steps=2, progress=False).path == first.path
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    request = SampleRequest(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9)),
                            teacher.encode_prompts(["a", "b"]), teacher.encode_prompts(["", ""]), gens, 2, 1.0)
    latents = method.sample(first.denoiser, request)
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()
