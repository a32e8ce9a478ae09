"""Unit tests of methods/diffusion_math.py: closed forms, tabled values (SD-1.5 schedule, computed
in float64) and equality with diffusers where it has the same function."""
from __future__ import annotations

import pytest
import torch

from methods import diffusion_math as dm
from methods.diffusion_math import SD15_SCHEDULER_CONFIG, NoiseSchedule


@pytest.fixture(scope="module")
def sd15() -> NoiseSchedule:
    return NoiseSchedule.sd15()


def _pairs(sd15, t):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(len(t), 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(len(t), 4, 8, 8, generator=g, dtype=torch.float64)
    alpha, sigma = sd15.alpha_sigma(torch.tensor(t))
    return x0, eps, alpha, sigma


# ------------------------------------------------------------------------------------------------
# Noise schedule (SD-1.5: ``scaled_linear`` betas of diffusers' ``DDPMScheduler``)
# ------------------------------------------------------------------------------------------------

# t: (abar, alpha, sigma, lambda = sigma/alpha), computed in float64 from SD-1.5's betas
# linspace(0.00085**0.5, 0.012**0.5, 1000)**2 and rounded.
SD15_TABLE = {
    0: (0.99915, 0.99957, 0.02915, 0.0292),
    19: (0.98224, 0.99108, 0.13325, 0.1345),
    259: (0.65898, 0.81177, 0.58397, 0.7194),
    499: (0.27767, 0.52694, 0.84990, 1.6129),
    759: (0.05221, 0.22850, 0.97354, 4.2606),
    999: (0.00466, 0.06826, 0.99767, 14.615),
}


@pytest.mark.parametrize("t", sorted(SD15_TABLE))
def test_sd15_schedule_table(sd15, t):
    abar, alpha, sigma, lam = SD15_TABLE[t]
    a, s = sd15.alpha_sigma(t)
    assert sd15.abar(t).item() == pytest.approx(abar, abs=6e-6)
    assert a.item() == pytest.approx(alpha, abs=6e-6)
    assert s.item() == pytest.approx(sigma, abs=6e-6)
    assert (s / a).item() == pytest.approx(lam, abs=6e-4 if t == 999 else 6e-5)


def test_sd15_schedule_final_and_diffusers(sd15):
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    assert sd15.num_train_timesteps == 1000
    # float32 values of diffusers, held in float64 exactly
    assert torch.equal(sd15.alphas_cumprod, ddim.alphas_cumprod.to(torch.float64))
    # set_alpha_to_one=False (SD-1.5's scheduler config): the last step lands on abar_0
    assert sd15.final_alphas_cumprod == pytest.approx(float(ddim.final_alpha_cumprod), abs=0)
    assert sd15.final_alphas_cumprod == sd15.alphas_cumprod[0].item()
    assert sd15.abar(None).item() == sd15.final_alphas_cumprod
    assert torch.equal(sd15.abar(torch.tensor([-1, 5])),
                       torch.stack([sd15.abar(None), sd15.alphas_cumprod[5]]))
    set_one = NoiseSchedule.from_scheduler_config({**SD15_SCHEDULER_CONFIG, "set_alpha_to_one": True})
    assert set_one.final_alphas_cumprod == 1.0


# ------------------------------------------------------------------------------------------------
# Parameterisations (as diffusers ``train_lcm_distill_sd_wds.py`` converts them)
# ------------------------------------------------------------------------------------------------


def test_x0_eps_v_round_trips(sd15):
    t = [0, 19, 259, 499, 759, 999]
    x0, eps, alpha, sigma = _pairs(sd15, t)
    x_t = dm.add_noise(x0, eps, alpha, sigma)
    v = dm.v_from_x0_eps(x0, eps, alpha, sigma)
    torch.testing.assert_close(dm.x0_from_eps(x_t, eps, alpha, sigma), x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(dm.eps_from_x0(x_t, x0, alpha, sigma), eps, rtol=0, atol=1e-10)
    torch.testing.assert_close(dm.x0_from_v(x_t, v, alpha, sigma), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(dm.eps_from_v(x_t, v, alpha, sigma), eps, rtol=0, atol=1e-12)
    for kind, out in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
        got_x0, got_eps = dm.model_output_to_x0_eps(out, x_t, alpha, sigma, kind)
        torch.testing.assert_close(got_x0, x0, rtol=0, atol=1e-10)
        torch.testing.assert_close(got_eps, eps, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="prediction_type"):
        dm.model_output_to_x0_eps(eps, x_t, alpha, sigma, "flow")


def test_add_noise_and_v_match_diffusers(sd15):
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    t = torch.tensor([0, 19, 259, 499, 759, 999])
    x0, eps, alpha, sigma = (z.float() for z in _pairs(sd15, t.tolist()))
    torch.testing.assert_close(dm.add_noise(x0, eps, alpha, sigma), ddpm.add_noise(x0, eps, t),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(dm.v_from_x0_eps(x0, eps, alpha, sigma), ddpm.get_velocity(x0, eps, t),
                               rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Guidance (both CFG conventions, w embedding) and consistency scalings (``LCMScheduler``)
# ------------------------------------------------------------------------------------------------


def test_cfg_conventions():
    g = torch.Generator().manual_seed(1)
    uncond, cond = torch.randn(2, 2, 3, 4, 4, generator=g, dtype=torch.float64)  # each (B=2, C, H, W)
    for w in (0.0, 1.0, 3.5, 7.5):
        torch.testing.assert_close(dm.cfg_lcm(uncond, cond, w), dm.cfg_imagen(uncond, cond, w + 1),
                                   rtol=0, atol=1e-12)
        assert dm.lcm_w_from_guidance_scale(w + 1) == w
    torch.testing.assert_close(dm.cfg_imagen(uncond, cond, 1.0), cond, rtol=0, atol=1e-15)
    torch.testing.assert_close(dm.cfg_lcm(uncond, cond, 0.0), cond, rtol=0, atol=0)
    # per-sample guidance, (B,) against (B, C, H, W)
    w = torch.tensor([2.0, 5.0], dtype=torch.float64)
    got = dm.cfg_lcm(uncond, cond, w)
    for i in range(2):
        torch.testing.assert_close(got[i], cond[i] + w[i] * (cond[i] - uncond[i]), rtol=0, atol=1e-12)


def test_consistency_boundary_scalings():
    from diffusers import LCMScheduler

    c_skip, c_out = dm.consistency_boundary_scalings(torch.tensor([0, 1, 19, 999]))
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    assert c_skip[1].item() == pytest.approx(2.49e-3, abs=5e-6)       # 0.25/100.25
    assert c_out[1].item() == pytest.approx(0.99875, abs=5e-6)        # 10/sqrt(100.25)
    assert c_skip[2].item() == pytest.approx(6.9e-6, abs=5e-8)
    lcm = LCMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    for i, t in enumerate([0, 1, 19, 999]):
        ref_skip, ref_out = lcm.get_scalings_for_boundary_condition_discrete(t)
        assert c_skip[i].item() == pytest.approx(float(ref_skip), rel=1e-12)
        assert c_out[i].item() == pytest.approx(float(ref_out), rel=1e-12)


@pytest.mark.parametrize("dim", [256, 512, 255])
def test_guidance_scale_embedding_matches_diffusers(dim):
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([0.0, 1.0, 3.5, 7.5, 14.0])
    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
    got = dm.guidance_scale_embedding(w, embedding_dim=dim)
    assert got.shape == (5, dim)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    # emb(0) = [0...0, 1...1]: not the zero vector
    half = dim // 2
    assert torch.all(got[0, :half] == 0) and torch.all(got[0, half:2 * half] == 1)


# ------------------------------------------------------------------------------------------------
# DDIM step (arXiv:2010.02502, Eq. 12 and 16) and its x_t form
# ------------------------------------------------------------------------------------------------

PAIRS = [(999, 749), (749, 499), (499, 259), (259, 19), (19, None), (999, None), (500, 499)]


def _posterior(abar_t, abar_s, x_t, x0):
    """DDPM posterior q(x_s | x_t, x_0) for s < t (Ho et al. 2020 Eq. 7, with abar_t/abar_s)."""
    a_ts = abar_t / abar_s
    mean = (abar_s.sqrt() * (1 - a_ts) / (1 - abar_t)) * x0 + (a_ts.sqrt() * (1 - abar_s) / (1 - abar_t)) * x_t
    var = (1 - abar_s) / (1 - abar_t) * (1 - a_ts)
    return mean, var


@pytest.mark.parametrize("t,s", PAIRS)
def test_ddim_step_closed_forms(sd15, t, s):
    x0, eps, _, _ = _pairs(sd15, [t, t])
    abar_t, abar_s = sd15.abar(t), sd15.abar(s)
    x_t = dm.add_noise(x0, eps, abar_t.sqrt(), (1 - abar_t).sqrt())
    # eta = 0: x_s = alpha_s x0 + sigma_s eps, also in the x_t form (Multistep CM Eq. 4)
    det = dm.ddim_step(x0, eps, abar_t, abar_s)
    torch.testing.assert_close(det, dm.add_noise(x0, eps, abar_s.sqrt(), (1 - abar_s).sqrt()), rtol=0, atol=1e-12)
    torch.testing.assert_close(dm.ddim_step_from_x_t(x_t, x0, abar_t, abar_s), det, rtol=0, atol=1e-12)
    # eta = 1: the DDPM posterior, mean and variance
    mean, var = _posterior(abar_t, abar_s, x_t, x0)
    z = torch.ones_like(x0)
    stoch = dm.ddim_step(x0, eps, abar_t, abar_s, eta=1.0, noise=z)
    no_noise = dm.ddim_step(x0, eps, abar_t, abar_s, eta=1.0, noise=torch.zeros_like(x0))
    torch.testing.assert_close(no_noise, mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(stoch - no_noise, var.sqrt() * z, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="noise"):
        dm.ddim_step(x0, eps, abar_t, abar_s, eta=0.5)


# ------------------------------------------------------------------------------------------------
# ER-SDE step (QinpengCui/ER-SDE-Solver ``vp_1_order``)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t,s", PAIRS)
def test_er_sde_ode_is_ddim(sd15, t, s):
    x0, eps, _, _ = _pairs(sd15, [t, t])
    abar_t, abar_s = sd15.abar(t), sd15.abar(s)
    x_t = dm.add_noise(x0, eps, abar_t.sqrt(), (1 - abar_t).sqrt())
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = dm.er_sde_step(x_t, x0, abar_t, abar_s, dm.ER_SDE_NOISE_SCALES["ode"], z)
    torch.testing.assert_close(got, dm.ddim_step(x0, eps, abar_t, abar_s), rtol=0, atol=1e-12)
    # with phi(x) = x the noise coefficient is exactly 0 (reference numerical_clip), so noise=None works
    assert torch.equal(got, dm.er_sde_step(x_t, x0, abar_t, abar_s, dm.ER_SDE_NOISE_SCALES["ode"], None))


@pytest.mark.parametrize("t,s", PAIRS)
def test_er_sde_square_is_ddpm_posterior(sd15, t, s):
    x0, eps, _, _ = _pairs(sd15, [t, t])
    abar_t, abar_s = sd15.abar(t), sd15.abar(s)
    x_t = dm.add_noise(x0, eps, abar_t.sqrt(), (1 - abar_t).sqrt())
    mean, var = _posterior(abar_t, abar_s, x_t, x0)
    phi = dm.ER_SDE_NOISE_SCALES["sde"]
    got_mean = dm.er_sde_step(x_t, x0, abar_t, abar_s, phi, torch.zeros_like(x0))
    got_std = dm.er_sde_step(x_t, x0, abar_t, abar_s, phi, torch.ones_like(x0)) - got_mean
    torch.testing.assert_close(got_mean, mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(got_std**2, var.expand_as(got_std), rtol=1e-9, atol=1e-12)
    assert var.item() > 0
    with pytest.raises(ValueError, match="noise"):
        dm.er_sde_step(x_t, x0, abar_t, abar_s, phi, None)


def test_er_sde_5_ratio_999_to_975(sd15):
    """For SDE_5 (the reference ``customized_func`` type 7), t=999 -> 975 gives r ~ 0.829."""
    lam = lambda t: ((1 - sd15.abar(t)) / sd15.abar(t)).sqrt()  # noqa: E731
    phi = dm.ER_SDE_NOISE_SCALES["sde_5"]
    r = (phi(lam(975)) / phi(lam(999))).item()
    assert r == pytest.approx(0.8290, abs=5e-5)
    # the step applies it: x_t = 1, x0 = 0, z = 0 gives x_s = (alpha_s/alpha_t) r
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    x_s = dm.er_sde_step(one, 0 * one, sd15.abar(999), sd15.abar(975), phi, 0 * one)
    assert (x_s.item() * (sd15.abar(999) / sd15.abar(975)).sqrt().item()) == pytest.approx(r, rel=1e-12)


def test_er_sde_noise_scales_reference_forms():
    """The reference customized_func forms; sde_1 is func_type 3 at its default eta=0,
    x (exp(x^(eta-1)/(eta-1)) + 10) = x (exp(-1/x) + 10)."""
    x = torch.tensor([0.03, 0.5, 1.0, 4.0, 14.6], dtype=torch.float64)
    f = dm.ER_SDE_NOISE_SCALES
    expected = {
        "ode": x, "sde": x**2, "sde_1": x * (torch.exp(-1 / x) + 10), "sde_2": x**1.5, "sde_3": x**2.5,
        "sde_4": x**0.9 * torch.log10(1 + 100 * x**1.5), "sde_5": x * (torch.exp(x**0.3) + 10),
    }
    assert set(f) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(f[name](x), value, rtol=1e-14, atol=0)
    eta = 0.0
    torch.testing.assert_close(f["sde_1"](x), x * (torch.exp(x ** (eta - 1) / (eta - 1)) + 10), rtol=1e-14, atol=0)
    # every phi must give a valid step: r in (0, 1] and lambda_s^2 >= lambda_t^2 r^2 on SD-1.5's grid
    lam = torch.tensor([14.6146, 12.6648, 4.2606, 1.6129, 0.7194, 0.1345, 0.0292], dtype=torch.float64)
    for name, phi in f.items():
        r = phi(lam[1:]) / phi(lam[:-1])
        assert torch.all((r > 0) & (r <= 1)), name
        assert torch.all(lam[1:] ** 2 - lam[:-1] ** 2 * r**2 >= -1e-12), name
