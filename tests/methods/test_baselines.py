"""Teacher-solver baselines (ddim, dpmpp, er-sde) against diffusers' schedulers, closed forms and
the per-image determinism invariant, on a tiny random-weight U-Net (CPU, offline)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from methods import Denoiser, SampleRequest, get_method_class, per_sample_randn
from methods.base import TrainingMethod
from methods.ddim import DDIM, DDIMConfig
from methods.diffusion_math import SD15_SCHEDULER_CONFIG, NoiseSchedule
from methods.dpmpp import DPMSolverPP, DPMSolverPPConfig
from methods.er_sde import ERSDE, ERSDEConfig
from methods.timesteps import inference_timesteps

TINY_UNET = Path(__file__).resolve().parents[2] / "bench" / "configs" / "tiny" / "unet.json"
GUIDANCE = 7.5
TOL = 1e-5


def assert_same(ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    """max |ours - ref| <= tol * max(1, max |ref|). The random U-Net's latents reach |x| ~ 50
    (x0 = (x - sigma eps)/alpha with an untrained eps), where one float32 ulp is 3.8e-6 and a
    1e-7 relative change of the initial noise moves the 50-step result by 5e-5; an absolute 1e-5
    would demand bit-identical arithmetic (ours takes alpha, sigma from float64 sqrt, diffusers
    from float32), so the tolerance is 1e-5 relative to the output's scale."""
    assert ours.shape == ref.shape
    scale = max(1.0, ref.abs().max().item())
    diff = (ours.double() - ref.double()).abs().max().item()
    assert diff <= tol * scale, f"max abs diff {diff:.3g} > {tol:g} * {scale:.3g}"


@pytest.fixture(scope="module")
def denoiser() -> Denoiser:
    """Tiny random-weight SD-style U-Net (latents 4x8x8, cross_attention_dim 32) + SD-1.5 schedule."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(json.loads(TINY_UNET.read_text())).eval().requires_grad_(False)
    return Denoiser(unet=unet, schedule=NoiseSchedule.sd15())


def make_request(steps: int, batch: int = 2, seed: int = 0, guidance: float = GUIDANCE) -> SampleRequest:
    g = torch.Generator().manual_seed(1000 + seed)
    noise = torch.randn(batch, 4, 8, 8, generator=g)
    cond = torch.randn(batch, 77, 32, generator=g)
    uncond = torch.randn(batch, 77, 32, generator=g)
    generators = [torch.Generator().manual_seed(seed * 100 + i) for i in range(batch)]
    return SampleRequest(noise=noise, cond=cond, uncond=uncond, generators=generators,
                         steps=steps, guidance_scale=guidance)


def fresh_generators(request: SampleRequest) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(g.initial_seed()) for g in request.generators]


@torch.no_grad()
def guided_eps(unet, x, t, request: SampleRequest) -> torch.Tensor:
    """The diffusers pipeline's CFG, ``uncond + g (cond - uncond)`` from one forward over the
    [uncond, cond] pair, image by image (the Denoiser's default exact batching, so that the
    network outputs are the same bits and the tests compare the solvers)."""
    eps = []
    for i in range(x.shape[0]):
        pair = unet(torch.cat([x[i:i + 1], x[i:i + 1]]), t,
                    encoder_hidden_states=torch.cat([request.uncond[i:i + 1], request.cond[i:i + 1]])).sample
        eps.append(pair[0] + request.guidance_scale * (pair[1] - pair[0]))
    return torch.stack(eps)


# ------------------------------------------------------------------------------------------------
# Registry and declared facts
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,cls", [("ddim", DDIM), ("dpmpp", DPMSolverPP), ("er-sde", ERSDE)])
def test_registered_without_training(name, cls):
    assert get_method_class(name) is cls
    method = cls()
    assert cls.trains is False and cls.supported_steps is None
    assert method.unsupported_steps_reason(1) is None and method.unsupported_steps_reason(50) is None
    assert method.config_dict()["spacing"] == "trailing"
    assert cls.paper and cls.summary
    assert not isinstance(method, TrainingMethod) and not hasattr(method, "train")      # no training half


def test_config_validation():
    with pytest.raises(ValueError):
        DDIMConfig(spacing="uniform")
    with pytest.raises(ValueError):
        DDIMConfig(eta=-1.0)
    with pytest.raises(ValueError):
        ERSDEConfig(noise_scale="sde_9")
    with pytest.raises(ValueError):
        DPMSolverPPConfig(algorithm_type="dpmsolver")


# ------------------------------------------------------------------------------------------------
# Timestep schedules
# ------------------------------------------------------------------------------------------------


def test_trailing_timesteps_documented_values():
    assert inference_timesteps(1000, 1) == [999]
    assert inference_timesteps(1000, 2) == [999, 499]
    assert inference_timesteps(1000, 4) == [999, 749, 499, 249]
    assert inference_timesteps(1000, 4, "leading", steps_offset=1) == [751, 501, 251, 1]
    assert inference_timesteps(1000, 4, "linspace") == [999, 666, 333, 0]


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_timesteps_match_ddim_scheduler(spacing):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG, timestep_spacing=spacing)
    for n in [*range(1, 65), 100, 103, 250, 999]:
        scheduler.set_timesteps(n)
        ref = scheduler.timesteps.tolist()
        ours = inference_timesteps(1000, n, spacing, SD15_SCHEDULER_CONFIG["steps_offset"])
        assert ours == ref[:n], (spacing, n)
        # diffusers' float arange can add a stray -1 (trailing, n = 61, 103): we drop it
        assert ref[n:] in ([], [-1]), (spacing, n)


# ------------------------------------------------------------------------------------------------
# DDIM == diffusers DDIMScheduler
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def diffusers_ddim(denoiser, request, eta=0.0, spacing="trailing"):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG, timestep_spacing=spacing)
    scheduler.set_timesteps(request.steps)
    generators = fresh_generators(request)
    x = request.noise
    for t in scheduler.timesteps:
        eps = guided_eps(denoiser.unet, x, t, request)
        z = per_sample_randn(generators, x) if eta > 0 else None
        x = scheduler.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
    return x


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 50])
def test_ddim_matches_diffusers(denoiser, steps):
    request = make_request(steps)
    ours = DDIM().sample(denoiser, request)
    ref = diffusers_ddim(denoiser, request)
    assert ours.shape == request.noise.shape
    assert_same(ours, ref)
    if steps == 4:  # the tolerance can fail: another spacing is far outside it
        other = DDIM(DDIMConfig(spacing="linspace")).sample(denoiser, request)
        assert (other - ref).abs().max().item() > 100 * TOL * ref.abs().max().item()


@pytest.mark.parametrize("steps,eta", [(2, 1.0), (4, 0.5), (8, 1.0)])
def test_ddim_eta_matches_diffusers(denoiser, steps, eta):
    request = make_request(steps, seed=1)
    ours = DDIM(DDIMConfig(eta=eta)).sample(denoiser, request)
    ref = diffusers_ddim(denoiser, request, eta=eta)
    assert_same(ours, ref)
    # the noise really enters: eta=0 differs by much more than the tolerance
    assert (ours - DDIM().sample(denoiser, make_request(steps, seed=1))).abs().max().item() > 1e-2


def test_ddim_leading_matches_diffusers(denoiser):
    """'leading' (SD's original spacing, steps_offset=1) at a uniform stride: same as DDIMScheduler."""
    request = make_request(4)
    ours = DDIM(DDIMConfig(spacing="leading")).sample(denoiser, request)
    ref = diffusers_ddim(denoiser, request, spacing="leading")
    assert_same(ours, ref)


def test_ddim_one_step_lands_on_final_abar(denoiser):
    """1 step: x = sqrt(abar_0) x0 + sqrt(1 - abar_0) eps at t = 999 (set_alpha_to_one=False)."""
    request = make_request(1)
    x0, eps = denoiser.guided_x0_eps(request.noise, 999, request.cond, request.uncond, GUIDANCE)
    abar0 = denoiser.schedule.final_alphas_cumprod
    expected = abar0**0.5 * x0 + (1 - abar0) ** 0.5 * eps
    assert_same(DDIM().sample(denoiser, request), expected)


# ------------------------------------------------------------------------------------------------
# DPM-Solver++(2M) == diffusers DPMSolverMultistepScheduler, and == the paper's update
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def diffusers_dpmpp(denoiser, request):
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler.from_config(
        SD15_SCHEDULER_CONFIG, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing")
    scheduler.set_timesteps(request.steps)
    x = request.noise
    for t in scheduler.timesteps:
        x = scheduler.step(guided_eps(denoiser.unet, x, t, request), t, x).prev_sample
    return x


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 25])
def test_dpmpp_matches_diffusers(denoiser, steps):
    request = make_request(steps)
    method = DPMSolverPP()
    ours = method.sample(denoiser, request)
    ref = diffusers_dpmpp(denoiser, request)
    assert_same(ours, ref)
    # a second call starts from a fresh scheduler (no leaked multistep state)
    assert (method.sample(denoiser, request) - ours).abs().max().item() == 0.0
    assert method.timesteps(denoiser, steps) == inference_timesteps(1000, steps)


@torch.no_grad()
def test_dpmpp_2m_equals_paper_update(denoiser):
    """Lu et al. 2022 Alg. 2 written out (log-SNR lambda, r = h_prev/h); first-order first step and,
    below 15 steps with final sigma 0, a last step that returns x0."""
    request = make_request(8)
    sched = denoiser.schedule
    timesteps = inference_timesteps(1000, 8)
    x, prev_x0, h_prev = request.noise.double(), None, None
    for i, t in enumerate(timesteps):
        x0, _ = denoiser.guided_x0_eps(x.float(), t, request.cond, request.uncond, GUIDANCE)
        x0 = x0.double()
        if i == len(timesteps) - 1:
            x = x0                                             # sigma_s = 0: x_s = x0
            break
        a_t, s_t = sched.alpha_sigma(t)
        a_s, s_s = sched.alpha_sigma(timesteps[i + 1])
        h = torch.log(a_s / s_s) - torch.log(a_t / s_t)
        d = x0 if prev_x0 is None else (1 + 1 / (2 * h_prev / h)) * x0 - 1 / (2 * h_prev / h) * prev_x0
        x = (s_s / s_t) * x - a_s * (torch.exp(-h) - 1) * d
        prev_x0, h_prev = x0, h
    assert_same(DPMSolverPP().sample(denoiser, request), x)


def test_dpmpp_rejects_mismatched_schedule(denoiser):
    linear = {**SD15_SCHEDULER_CONFIG, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    other = Denoiser(unet=denoiser.unet, schedule=NoiseSchedule.from_scheduler_config(linear))
    with pytest.raises(ValueError, match="scheduler_config"):
        DPMSolverPP().sample(other, make_request(2))
    other.scheduler_config = linear                             # the teacher's own config: accepted
    assert DPMSolverPP().timesteps(other, 2) == [999, 499]


# ------------------------------------------------------------------------------------------------
# ER-SDE
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_er_sde_ode_is_ddim_sampler(denoiser, steps):
    request = make_request(steps, seed=2)
    ours = ERSDE(ERSDEConfig(noise_scale="ode")).sample(denoiser, request)
    ref = DDIM().sample(denoiser, make_request(steps, seed=2))
    assert_same(ours, ref)


@torch.no_grad()
def test_er_sde_5_sampler_follows_reference_loop(denoiser):
    """The reference ``vp_1_order`` loop, written out with per-image noise, at 4 steps."""
    request = make_request(4, seed=3)
    sched = denoiser.schedule
    generators = fresh_generators(request)
    phi = lambda v: v * (torch.exp(v**0.3) + 10)  # noqa: E731  (SDE_5)
    times = inference_timesteps(1000, 4)
    abars = [sched.abar(t) for t in times] + [sched.abar(None)]
    alphas = torch.stack(abars).sqrt()
    lambdas = (1 - torch.stack(abars)).sqrt() / alphas
    x = request.noise.double()
    for i, t in enumerate(times):
        x0, _ = denoiser.guided_x0_eps(x.float(), t, request.cond, request.uncond, GUIDANCE)
        r = phi(lambdas[i + 1]) / phi(lambdas[i])
        z = per_sample_randn(generators, x0).double()
        x = (alphas[i + 1] / alphas[i]) * r * x + alphas[i + 1] * (1 - r) * x0.double() \
            + alphas[i + 1] * (lambdas[i + 1] ** 2 - lambdas[i] ** 2 * r**2).sqrt() * z
    ours = ERSDE().sample(denoiser, request)
    assert_same(ours, x)
    # and it is really stochastic: differs from DDIM
    assert (ours - DDIM().sample(denoiser, make_request(4, seed=3))).abs().max().item() > 1e-2


# ------------------------------------------------------------------------------------------------
# Determinism: row i depends only on (noise_i, generator_i), whatever the batch
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [DDIM(DDIMConfig(eta=0.5)), ERSDE(),
                                    DPMSolverPP(DPMSolverPPConfig(algorithm_type="sde-dpmsolver++"))],
                         ids=["ddim-eta0.5", "er-sde-5", "sde-dpmpp"])
def test_stochastic_samplers_batch_invariant(denoiser, method):
    batch = make_request(4, batch=4, seed=4)
    together = method.sample(denoiser, batch)
    for i in range(4):
        alone = SampleRequest(noise=batch.noise[i:i + 1], cond=batch.cond[i:i + 1],
                              uncond=batch.uncond[i:i + 1],
                              generators=[torch.Generator().manual_seed(batch.generators[i].initial_seed())],
                              steps=4, guidance_scale=GUIDANCE)
        assert (method.sample(denoiser, alone)[0] - together[i]).abs().max().item() <= TOL, i
    # and the generators matter: other seeds give another image
    other = make_request(4, batch=4, seed=4)
    other.generators = [torch.Generator().manual_seed(9999 + i) for i in range(4)]
    assert (method.sample(denoiser, other) - together).abs().max().item() > 1e-3
