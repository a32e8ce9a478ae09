"""DMD and DMD2: distribution matching distillation into a one-step (DMD) or few-step (DMD2)
generator (Yin et al. 2024, "One-step Diffusion with Distribution Matching Distillation",
arXiv:2311.18828; Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image
Synthesis", arXiv:2405.14867, code tianweiy/DMD2).

One training iteration (DMD Alg. 1 with DMD2's two time-scale update rule; r = 1 is DMD)::

    z ~ N(0, I);  x = G(z, T-1, c)                      generator: the teacher U-Net's x0 prediction
                                                        (DMD2 multi-step: from a backward-simulated x_t)
    every r-th iteration, update G with
        t ~ U{0.02 T .. 0.98 T};  x_t = alpha_t x + sigma_t eps                              (Eq. 3)
        mu_real = teacher(x_t, t) under CFG (no grad);  mu_fake = fake(x_t, t) (no CFG, no grad)
        grad = (mu_fake - mu_real) / mean_CHW |x - mu_real|                  (Eq. 7 with Eq. 8)
        L_KL = 0.5 ||x - stopgrad(x - grad)||^2 / numel                      (d L_KL / dx = grad / numel)
        L_reg = d(G(z_ref), y_ref),  (z_ref, y_ref) from the paired dataset        (Eq. 9; DMD only)
        L_G = L_KL + lambda_reg L_reg  [+ w_G softplus(-D(x))]                      (DMD2 GAN)
    every iteration, update the fake score (initialised from the teacher) with
        t ~ U{0 .. T-1};  L_denoise = ||fake(alpha_t sg(x) + sigma_t eps, t) - eps||^2      (Eq. 6)
        [+ w_D (softplus(D(sg(x))) + softplus(-D(real)))]                                   (DMD2 GAN)

Eq. 7 with the weight of Eq. 8 and the scores of Eqs. 4-5 is ``alpha_t (mu_fake - mu_real) /
mean|mu_real - x|``; the appendix's Algorithm 2 and the official code drop the factor alpha_t
(exact for the paper's EDM models, where alpha_t = 1). ``dm_gradient_form`` picks the form:
"algorithm-2" (default, the code's) or "eq-7".

Sampling: ``x = noise; for t_i in the step list: x0 = G(x, t_i, c); x = alpha x0 + sigma eps``
(fresh eps, none after the last step): DMD2's backward simulation and the LCMScheduler it samples
with (whose boundary scalings at t >= 249 differ from the identity by < 1e-7).

Step counts. A student is trained on one ``denoising_step_list`` and serves every count in
``step_counts`` by taking every (len / S)-th entry: DMD's list is [999] (1 step; on toy teachers
[399], its toy schedule's, and the sampler uses the list the student was trained with).
DMD2's multi-step list [999, 749, 499, 249] (preset sdxl-4step; [399, 299, 199, 99] with step counts
1 and 4 on toy teachers) serves S = 4 exactly and S = 1 exactly too (the first hop of backward
simulation starts from pure noise at 999, as one-step inference does). S = 2 ([999, 499]) can be
enabled (``step_counts=1:2:4``): the 499 hop is trained on inputs simulated through 749 rather than
straight from 999, the one mismatch. Other counts are skipped with a note.
One student per list, not per count: the counts share every trained timestep.

DMD2's recipes (``DMD2Config.preset``, values and sources in :data:`DMD2_PRESETS`; tianweiy/DMD2
``experiments/sdv1.5`` and ``experiments/sdxl``):

* ``sd15-stage1`` (default): SD-1.5, one step at t = 999, real guidance 1.75, r = 10 (dfake10),
  lr 1e-5 for both networks, no GAN, 39K iterations;
* ``sd15-stage2``: its GAN stage, resumed from a stage-1 student (``generator_init``, required;
  ``fake_score_init`` optional): lr 5e-7, GAN weights 1e-3 (generator) / 1e-2 (discriminator),
  2K iterations;
* ``sdxl-4step``: the SDXL 4-step recipe: [999, 749, 499, 249] with backward simulation, guidance 8,
  r = 5, lr 5e-7, GAN 5e-3 / 1e-2, 19K iterations.

LR schedule. DMD2's code steps both LR schedulers every iteration, the generator's also when the
generator is not updated, with a warm-up of 500 counted in scheduler steps; accelerate's prepared
scheduler takes num_processes of those per call, so the warm-up ends after 500 / num_processes
iterations (its comment: "it warms up from 0 to max_lr in 500 / num_gpu steps"). Our DMD2 does the
same (``lr_scheduler_stepping="every-iteration"``: the state steps both schedulers once per
iteration, ``DMDState.after_optimizer_step``); DMD steps each scheduler with its optimizer, the
warm-up counted in that optimizer's updates (``"with-optimizer"``; the toy DMD's r = 5 keeps it).

Paper values are the defaults (SD-1.5 recipes); the toy schedules (methods/configs/dmd*/toy.toml)
replace some on toy teachers.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import (
    Denoiser,
    SampleRequest,
    Student,
    TeacherOutputs,
    TeacherOutputSpec,
    TrainingContext,
    TrainingMethod,
    Update,
    ema_update,
    load_prefixed_state_dict,
    per_sample_randn,
    prefixed_state_dict,
)
from methods.diffusion_math import (
    NoiseSchedule,
    _as_column,
    add_noise,
    cfg_imagen,
    model_output_to_x0_eps,
    v_from_x0_eps,
)
from methods.dmd_networks import FakeScore, copy_unet, load_unet_weights, unet_weights_sha256
from methods.registry import register_method
from methods.toy_schedule import toy_schedule_field

Tensor = torch.Tensor

REGRESSION_DISTANCES: tuple[str, ...] = ("lpips", "l2", "pseudo-huber")
DM_GRADIENT_FORMS: tuple[str, ...] = ("algorithm-2", "eq-7")


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DMDConfig:
    """DMD (SD-1.5, LAION-Aesthetic 6.25+, FID model; DMD §4.3, App. B)."""

    # -- generator (§3.1): the teacher U-Net at t = T - 1 on pure noise (DMD2 code: t = 999)
    denoising_step_list: tuple[int, ...] = (999,)
    step_counts: tuple[int, ...] = (1,)
    backward_simulation: bool = True         # DMD2 multi-step inputs; no effect with one step

    # -- real score: frozen teacher under CFG (§3.4): 3 for the FID model, 8 for the g = 8 model
    real_guidance_scale: float = 3.0

    # -- distribution matching gradient (Eqs. 7-8): t ~ U{T_min .. T_max}, DreamFusion's 0.02 T, 0.98 T
    min_step_percent: float = 0.02
    max_step_percent: float = 0.98
    dm_gradient_form: str = "algorithm-2"

    # -- regression loss (§3.3, Eq. 9): lambda_reg 0.25, LPIPS, PNDM 50 steps at the training guidance
    regression_weight: float = 0.25
    regression_distance: str = "lpips"
    huber_c: float = 0.03                    # pseudo-Huber constant (latent-space distance only)
    lpips_vgg_path: str | None = None        # VGG16 weights for LPIPS (else env / torch hub cache)
    regression_solver: str = "pndm"
    regression_solver_steps: int = 50
    regression_guidance_scale: float | None = None   # None: real_guidance_scale ("the guided model")
    num_regression_pairs: int = 500_000      # App. B: the first 500K LAION prompts
    regression_batch_size: int = 16          # per GPU: 1152 over 72 GPUs
    regression_chunk_size: int = 64
    dm_on_regression_samples: bool = True    # Alg. 1 l.7: x = concat(x, x_ref) on LAION

    # -- GAN on the fake score's bottleneck (DMD2 §4.3; code cls_on_clean_image); off in DMD
    gan: bool = False
    gen_gan_weight: float = 1e-3             # code gen_cls_loss_weight
    disc_gan_weight: float = 1e-2            # code guidance_cls_loss_weight
    gan_max_timestep: int = 1000             # code diffusion_gan_max_timestep

    # -- schedule (App. B: AdamW lr 1e-5, wd 0.01, warmup 500, clip 10; DM batch 2304 = 32 x 72 GPUs;
    #    20K iterations)
    generator_update_ratio: int = 1          # DMD2's TTUR r; DMD updates both every iteration
    #                                          (the LR schedulers step with their optimizers: DMD2Config)
    learning_rate: float = 1e-5
    fake_learning_rate: float | None = None  # None: learning_rate (both 1e-5 in DMD and DMD2)
    # CHOICE, not in either paper's SD-1.5 recipe: an EMA copy of the generator, updated after each
    # generator update (theta_ema <- mu theta_ema + (1 - mu) theta), saved as the student. None:
    # the online generator is the student (the papers). Measured worse on the toy.
    generator_ema_decay: float | None = None
    train_batch_size: int = 32
    max_train_steps: int = 20_000
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 10.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.01
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 500
    checkpointing_steps: int = 500
    seed: int = 0

    # -- memory (DMD2 code): checkpointing on G and fake; real score in half precision on GPUs
    gradient_checkpointing: bool = True
    real_score_half_precision: bool = True   # bf16 autocast on CUDA when the teacher is fp32

    # The values used on toy teachers instead (methods/toy_schedule.py): methods/configs/dmd/toy.toml.
    toy: dict[str, Any] = toy_schedule_field("dmd")

    def __post_init__(self):
        # None: a DMD2 preset field not resolved yet (DMD2Config.resolved); checked once it is
        steps = self.denoising_step_list
        if steps is not None and (not steps or list(steps) != sorted(set(steps), reverse=True)):
            raise ValueError(f"denoising_step_list must be strictly decreasing, got {steps}")
        for s in self.step_counts if steps is not None and self.step_counts is not None else ():
            if s < 1 or len(steps) % s:
                raise ValueError(f"step count {s} does not divide the {len(steps)}-step denoising_step_list")
        if self.generator_ema_decay is not None and not 0.0 <= self.generator_ema_decay < 1.0:
            raise ValueError(f"generator_ema_decay must be in [0, 1), got {self.generator_ema_decay}")
        if self.regression_distance not in REGRESSION_DISTANCES:
            raise ValueError(f"regression_distance must be one of {REGRESSION_DISTANCES}, "
                             f"got {self.regression_distance!r}")
        if self.dm_gradient_form not in DM_GRADIENT_FORMS:
            raise ValueError(f"dm_gradient_form must be one of {DM_GRADIENT_FORMS}, got {self.dm_gradient_form!r}")
        if self.generator_update_ratio is not None and self.generator_update_ratio < 1:
            raise ValueError(f"generator_update_ratio must be >= 1, got {self.generator_update_ratio}")
        if not 0 <= self.min_step_percent < self.max_step_percent <= 1:
            raise ValueError("need 0 <= min_step_percent < max_step_percent <= 1")

    def pair_spec(self) -> TeacherOutputSpec:
        """The regression pairs (Eq. 9) as cached teacher outputs the harness makes once."""
        guidance = self.regression_guidance_scale
        guidance = self.real_guidance_scale if guidance is None else guidance
        return TeacherOutputSpec(self.regression_solver, self.regression_solver_steps, guidance,
                                  self.num_regression_pairs, self.regression_chunk_size)


#: DMD2's recipes, read from tianweiy/DMD2 (commit 8d8fa55, 2025-03-05): the values of DMD2Config's
#: None-default fields per preset. Flags not set by a script are main/train_sd.py's argparse
#: defaults. Common to all three (and DMDConfig's defaults): AdamW betas (0.9, 0.999), weight decay
#: 0.01, constant_with_warmup with --warmup_step 500, --max_grad_norm 10, --min_step_percent 0.02,
#: --max_step_percent 0.98, --diffusion_gan_max_timestep 1000 where the GAN is on, no regression loss.
DMD2_PRESETS: dict[str, dict[str, Any]] = {
    # experiments/sdv1.5/laion6.25_sd_baseline_8node_guidance1.75_lr1e-5_seed10_dfake10_from_scratch.sh:
    # one step at --conditioning_timestep 999 (the default; no --denoising), --real_guidance_scale 1.75,
    # --dfake_gen_update_ratio 10, --generator_lr / --guidance_lr 1e-5, --batch_size 32 per GPU (64
    # GPUs), no GAN flag (--cls_on_clean_image / --gen_cls_loss absent). 39K iterations:
    # experiments/sdv1.5/README.md (the released checkpoint_model_039000, FID 9.28).
    # gen/disc GAN weights: the sdv1.5 stage-2 script's, used only with gan=true.
    "sd15-stage1": dict(denoising_step_list=(999,), step_counts=(1,), real_guidance_scale=1.75,
                        generator_update_ratio=10, learning_rate=1e-5, gan=False, gen_gan_weight=1e-3,
                        disc_gan_weight=1e-2, train_batch_size=32, max_train_steps=39_000),
    # experiments/sdv1.5/laion6.25_sd_baseline_8node_guidance1.75_lr5e-7_seed10_dfake10_diffusion1000_
    # gan1e-3_noode_resume_fixdata.sh: stage 1's flags with --generator_lr / --guidance_lr 5e-7,
    # --cls_on_clean_image --gen_cls_loss --gen_cls_loss_weight 1e-3 --guidance_cls_loss_weight 1e-2
    # --diffusion_gan --diffusion_gan_max_timestep 1000, real images (--real_image_path), and
    # --ckpt_only_path the stage-1 checkpoint_model_039000 (generator and guidance model loaded;
    # generator_init / fake_score_init). 2K more iterations: experiments/sdv1.5/README.md (041000).
    "sd15-stage2": dict(denoising_step_list=(999,), step_counts=(1,), real_guidance_scale=1.75,
                        generator_update_ratio=10, learning_rate=5e-7, gan=True, gen_gan_weight=1e-3,
                        disc_gan_weight=1e-2, train_batch_size=32, max_train_steps=2_000),
    # experiments/sdxl/sdxl_cond999_8node_lr5e-7_denoising4step_diffusion1000_gan5e-3_guidance8_
    # noinit_noode_backsim_scratch.sh: --denoising --num_denoising_step 4 --denoising_timestep 1000
    # (main/sd_unified_model.py: range(999, 0, -250) = [999, 749, 499, 249]) --backward_simulation,
    # --real_guidance_scale 8, --dfake_gen_update_ratio 5, --generator_lr / --guidance_lr 5e-7,
    # --gen_cls_loss_weight 5e-3 --guidance_cls_loss_weight 1e-2 --diffusion_gan_max_timestep 1000,
    # --batch_size 2 per GPU (64 GPUs). 19K iterations: experiments/sdxl/README.md (FID 19.32).
    # Sampled at 4 steps (README: --num_step 4) and, as the first hop, at 1.
    "sdxl-4step": dict(denoising_step_list=(999, 749, 499, 249), step_counts=(1, 4), real_guidance_scale=8.0,
                       generator_update_ratio=5, learning_rate=5e-7, gan=True, gen_gan_weight=5e-3,
                       disc_gan_weight=1e-2, train_batch_size=2, max_train_steps=19_000),
}
#: presets that resume from a stage-1 student (DMD2: --ckpt_only_path): generator_init is required
DMD2_PRESETS_FROM_STAGE_1: tuple[str, ...] = ("sd15-stage2",)
#: how the LR schedulers step (DMD2Config.lr_scheduler_stepping)
LR_SCHEDULER_STEPPINGS: tuple[str, ...] = ("every-iteration", "with-optimizer")


@dataclass(frozen=True)
class DMD2Config(DMDConfig):
    """DMD2 (tianweiy/DMD2): no regression loss, the two time-scale rule, a recipe per ``preset``
    (:data:`DMD2_PRESETS`): "sd15-stage1" (default: SD-1.5, one step at t = 999, real guidance 1.75,
    r = 10, lr 1e-5, no GAN), "sd15-stage2" (its GAN stage: lr 5e-7, GAN 1e-3 / 1e-2, resumed from a
    stage-1 student, ``generator_init``) and "sdxl-4step" (the SDXL 4-step recipe: [999, 749, 499,
    249] with backward simulation, guidance 8, r = 5, lr 5e-7, GAN 5e-3 / 1e-2). The None-default
    fields take the preset's value (``resolved()``; DMD2 resolves its config on construction); set
    one to override the preset."""

    preset: str = "sd15-stage1"

    # -- differ between presets: None = the preset's value -------------------------------------
    denoising_step_list: tuple[int, ...] | None = None
    step_counts: tuple[int, ...] | None = None
    real_guidance_scale: float | None = None
    generator_update_ratio: int | None = None
    learning_rate: float | None = None
    gan: bool | None = None
    gen_gan_weight: float | None = None
    disc_gan_weight: float | None = None
    train_batch_size: int | None = None
    max_train_steps: int | None = None

    regression_weight: float = 0.0

    # -- the U-Nets a stage starts from (DMD2 --ckpt_only_path); None: copies of the teacher --------
    # A stage-1 student: a student folder saved by bench, or a U-Net .safetensors / torch state-dict
    # file (DMD2's pytorch_model.bin). Fingerprinted by the weights' sha256, not the path.
    generator_init: str | None = None
    # The fake score: a U-Net state dict or DMD2's guidance checkpoint (pytorch_model_1.bin, its
    # fake_unet.* entries). DMD2's stage 2 loads its stage-1 fake score; a bench student holds the
    # generator only, so None (the teacher, as in stage 1) is the fallback.
    fake_score_init: str | None = None

    # -- LR schedule stepping. "every-iteration" (DMD2 main/train_sd.py: scheduler_generator.step()
    # and scheduler_guidance.step() run every iteration, the generator's also on iterations without
    # a generator update; both prepared by accelerate, whose AcceleratedScheduler steps the wrapped
    # scheduler num_processes times per call, so the warm-up of --warmup_step 500 ends after
    # 500 / num_processes iterations). "with-optimizer": DMD's, each scheduler steps with its
    # optimizer and the warm-up counts that optimizer's updates on any number of processes.
    lr_scheduler_stepping: str = "every-iteration"

    toy: dict[str, Any] = toy_schedule_field("dmd2")     # methods/configs/dmd2/toy.toml

    #: {preset: {field: value}} for the None-default fields
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = DMD2_PRESETS

    def __post_init__(self):
        if self.preset not in self.PRESETS:
            raise ValueError(f"preset must be one of {tuple(self.PRESETS)}, got {self.preset!r}")
        if self.preset in DMD2_PRESETS_FROM_STAGE_1 and self.generator_init is None:
            raise ValueError(f"preset {self.preset} resumes from a stage-1 student (DMD2's --ckpt_only_path): set "
                             "generator_init to its path (a student folder saved by bench, or a U-Net .safetensors "
                             f"/ torch state dict file), e.g. --config preset={self.preset},generator_init=PATH")
        if self.lr_scheduler_stepping not in LR_SCHEDULER_STEPPINGS:
            raise ValueError(f"lr_scheduler_stepping must be one of {LR_SCHEDULER_STEPPINGS}, "
                             f"got {self.lr_scheduler_stepping!r}")
        super().__post_init__()

    def resolved(self) -> "DMD2Config":
        """This config with every None field of its preset filled from :data:`DMD2_PRESETS`."""
        fill = {k: v for k, v in self.PRESETS[self.preset].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill) if fill else self


def lr_steps_every_iteration(config: DMDConfig) -> bool:
    """True when both LR schedulers step every iteration (DMD2's code), False when each steps with
    its optimizer (DMD)."""
    return getattr(config, "lr_scheduler_stepping", "with-optimizer") == "every-iteration"


# ------------------------------------------------------------------------------------------------
# The arithmetic of one step (pure functions)
# ------------------------------------------------------------------------------------------------


def _x0(out: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    alpha, sigma = schedule.alpha_sigma(torch.as_tensor(t).cpu())
    return model_output_to_x0_eps(out.float(), x_t.float(), alpha.to(x_t.device, torch.float32),
                                  sigma.to(x_t.device, torch.float32), schedule.prediction_type)[0]


def dm_gradient(x: Tensor, x0_real: Tensor, x0_fake: Tensor, alpha: Tensor | None = None) -> Tensor:
    """The distribution matching gradient d L_KL / dx (up to 1/numel), DMD Alg. 2::

        grad = (p_real - p_fake) / mean_CHW |p_real|,   p = x - mu(x_t, t)

    = (mu_fake - mu_real) / mean|x - mu_real|. With ``alpha`` (the per-sample alpha_t) it is Eq. 7
    with Eq. 8's weight, which carries one more factor alpha_t (module docstring)."""
    p_real, p_fake = x - x0_real, x - x0_fake
    grad = (p_real - p_fake) / p_real.abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    if alpha is not None:
        grad = _as_column(alpha, grad) * grad
    return torch.nan_to_num(grad)


def dm_loss(x: Tensor, grad: Tensor) -> Tensor:
    """L_KL = 0.5 mse(x, sg(x - grad)): its gradient with respect to x is grad / numel."""
    return 0.5 * F.mse_loss(x.float(), (x - grad).detach().float(), reduction="mean")


def eq8_weight(x: Tensor, x0_real: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """w_t = sigma_t^2 / alpha_t * CS / ||mu_real(x_t, t) - x||_1  (Eq. 8), per sample."""
    cs = x[0].numel()
    l1 = (x0_real - x).abs().flatten(1).sum(dim=1)
    return sigma**2 / alpha * cs / l1


def score(x_t: Tensor, mu: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """s(x_t, t) = -(x_t - alpha_t mu(x_t, t)) / sigma_t^2  (Eqs. 4, 5)."""
    return -(x_t - _as_column(alpha, x_t) * mu) / _as_column(sigma, x_t) ** 2


def regression_distance(a: Tensor, b: Tensor, kind: str, huber_c: float = 0.03) -> Tensor:
    """Per-sample latent-space distance for Eq. 9 where LPIPS is unavailable: mean squared error
    or the pseudo-Huber mean(sqrt(d^2 + c^2) - c)."""
    d = (a.float() - b.float()).flatten(1)
    if kind == "l2":
        return d.pow(2).mean(dim=1)
    if kind == "pseudo-huber":
        return (torch.sqrt(d.pow(2) + huber_c**2) - huber_c).mean(dim=1)
    raise ValueError(f"unknown latent-space distance {kind!r}")


def is_generator_step(step: int, ratio: int) -> bool:
    """DMD2's two time-scale rule (code train_sd.py: ``step % dfake_gen_update_ratio == 0``)."""
    return step % ratio == 0


def sampling_timesteps(step_list: tuple[int, ...], steps: int) -> list[int]:
    """Every (len / S)-th entry of the trained list: 4-step [999, 749, 499, 249] -> S = 2: [999, 499]."""
    if steps < 1 or len(step_list) % steps:
        raise ValueError(f"{steps} steps do not divide the trained step list {list(step_list)} (DMD2: a multi-step "
                         "list is --config preset=sdxl-4step, or denoising_step_list with step_counts)")
    return list(step_list[::len(step_list) // steps])


# ------------------------------------------------------------------------------------------------
# Training state and step
# ------------------------------------------------------------------------------------------------


@dataclass
class DMDState:
    generator: nn.Module                     # prepared
    fake: nn.Module                          # prepared FakeScore
    real: nn.Module                          # the frozen teacher U-Net
    schedule: NoiseSchedule
    config: DMDConfig
    updates: list[Update]
    pairs: TeacherOutputs | None             # cached teacher outputs: the regression pairs (Eq. 9)
    distance: Callable[[Tensor, Tensor], Tensor] | None
    real_autocast: Callable[[], Any]
    unwrap: Callable[[nn.Module], nn.Module]
    optimizer: Any = None                    # (several optimizers: see updates)
    lr_scheduler: Any = None
    generator_ema: nn.Module | None = None   # generator_ema_decay's copy (unprepared)
    generator_updated: bool = False          # set by the training step: was G updated?
    # prepared LR schedulers stepped once per iteration, generator's first (DMD2's code; the
    # updates' own lr_scheduler is then None): lr_scheduler_stepping="every-iteration"
    iteration_lr_schedulers: list[Any] = field(default_factory=list)

    @property
    def models(self) -> list[nn.Module]:
        return [self.generator, self.fake]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for u in self.updates for p in u.params]

    def after_optimizer_step(self) -> None:
        """Once per iteration, after its optimizer steps: the generator's EMA (after a generator
        update) and the per-iteration LR schedulers (on every iteration, generator update or not)."""
        if self.generator_ema is not None and self.generator_updated:
            ema_update(self.generator_ema.parameters(), self.unwrap(self.generator).parameters(),
                       self.config.generator_ema_decay)
        for scheduler in self.iteration_lr_schedulers:
            scheduler.step()

    def extra_state_dict(self) -> dict[str, Tensor]:
        return prefixed_state_dict(self.generator_ema, "generator_ema")

    def load_extra_state_dict(self, state: dict[str, Tensor]) -> None:
        load_prefixed_state_dict(self.generator_ema, state, "generator_ema")


def _randn(shape, g: torch.Generator, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float32).to(like.device)


def _noised(x: Tensor, t: Tensor, schedule: NoiseSchedule, eps: Tensor) -> Tensor:
    alpha, sigma = schedule.alpha_sigma(t)
    return add_noise(x, eps, alpha.to(x.device, x.dtype), sigma.to(x.device, x.dtype))


def generate(state: DMDState, noise: Tensor, cond: Tensor, g: torch.Generator, with_grad: bool) -> Tensor:
    """x = G(x_t, t, c) at a training input that matches inference: pure noise at the list's first
    timestep, or (backward simulation, DMD2) the current generator run from pure noise for a random
    number of hops, each ``x0 = G(x, t_i); x = alpha_{i+1} x0 + sigma_{i+1} eps``, under no_grad."""
    steps, schedule = state.config.denoising_step_list, state.schedule
    hops = int(torch.randint(0, len(steps), (1,), generator=g)) if state.config.backward_simulation else 0
    x = noise
    with torch.no_grad():
        for t, t_next in zip(steps[:hops], steps[1:hops + 1]):
            tt = torch.full((x.shape[0],), t, dtype=torch.long)
            x0 = _x0(state.generator(x, tt.to(x.device), encoder_hidden_states=cond).sample, x, tt, schedule)
            x = _noised(x0, torch.full_like(tt, t_next), schedule, _randn(x.shape, g, x))
    t = torch.full((x.shape[0],), steps[hops], dtype=torch.long)
    with contextlib.nullcontext() if with_grad else torch.no_grad():
        return _x0(state.generator(x, t.to(x.device), encoder_hidden_states=cond).sample, x, t, schedule)


def distribution_matching_loss(state: DMDState, x: Tensor, cond: Tensor, uncond: Tensor,
                               g: torch.Generator) -> Tensor:
    """L_KL of Eq. 7 (DMD Alg. 2 / code compute_distribution_matching_loss)."""
    cfg, schedule, bsz = state.config, state.schedule, x.shape[0]
    T = schedule.num_train_timesteps
    min_step, max_step = int(cfg.min_step_percent * T), int(cfg.max_step_percent * T)
    t = torch.randint(min_step, min(max_step + 1, T), (bsz,), generator=g)
    x_t = _noised(x.detach(), t, schedule, _randn(x.shape, g, x))
    td = t.to(x.device)
    with torch.no_grad():
        x0_fake = _x0(state.fake(x_t, td, cond), x_t, t, schedule)                      # Eq. 5, no CFG
        real_dtype = next(state.real.parameters()).dtype
        with state.real_autocast():                                                      # Eq. 4 with CFG (§3.4)
            pair = state.real(torch.cat([x_t, x_t]).to(real_dtype), torch.cat([td, td]),
                              encoder_hidden_states=torch.cat([uncond, cond]).to(real_dtype)).sample.float()
        x0_real = _x0(cfg_imagen(pair[:bsz], pair[bsz:], cfg.real_guidance_scale), x_t, t, schedule)
        alpha = schedule.alpha_sigma(t)[0].to(x.device, torch.float32) if cfg.dm_gradient_form == "eq-7" else None
        grad = dm_gradient(x.detach().float(), x0_real, x0_fake, alpha)
    return dm_loss(x, grad)


def fake_score_loss(state: DMDState, x: Tensor, cond: Tensor, g: torch.Generator) -> Tensor:
    """L_denoise of Eq. 6 on sg(x), t ~ U{0..T-1}: the teacher's own objective (unweighted eps-MSE
    for an eps-prediction teacher, the code's compute_loss_fake; v / x0 targets likewise)."""
    schedule, x = state.schedule, x.detach()
    t = torch.randint(0, schedule.num_train_timesteps, (x.shape[0],), generator=g)
    eps = _randn(x.shape, g, x)
    x_t = _noised(x, t, schedule, eps)
    out = state.fake(x_t, t.to(x.device), cond).float()
    if schedule.prediction_type == "epsilon":
        target = eps
    elif schedule.prediction_type == "v_prediction":
        alpha, sigma = schedule.alpha_sigma(t)
        target = v_from_x0_eps(x, eps, alpha.to(x.device, x.dtype), sigma.to(x.device, x.dtype))
    else:
        target = x
    return F.mse_loss(out, target.float())


def _gan_logits(state: DMDState, x: Tensor, cond: Tensor, g: torch.Generator) -> Tensor:
    """D(x): x re-noised at t ~ U{0..gan_max_timestep-1} (the code's diffusion GAN), classified
    from the fake score's bottleneck."""
    t = torch.randint(0, state.config.gan_max_timestep, (x.shape[0],), generator=g)
    x_t = _noised(x, t, state.schedule, _randn(x.shape, g, x))
    return state.fake(x_t, t.to(x.device), cond, classify=True).float()


def dmd_training_step(state: DMDState, batch: Any) -> dict[str, Tensor]:
    """One iteration; returns {"generator": L_G (on generator steps only), "fake_score": L_fake}.
    Every random draw comes from ``batch.generator`` in a fixed order."""
    cfg, g = state.config, batch.generator
    cond, uncond = batch.cond, batch.uncond
    update_g = is_generator_step(batch.step, cfg.generator_update_ratio)
    state.generator_updated = update_g
    noise = _randn(batch.latent_shape, g, batch.cond)          # captions-only batches have no latents
    # 1. x = G(z): with grad only when G is updated (the code skips G's backward otherwise)
    x = generate(state, noise, cond, g, with_grad=update_g)
    losses = {}
    if update_g:
        loss_g, x_dm, cond_dm, uncond_dm = 0.0, x, cond, uncond
        # 2. regression loss on the paired dataset (Eq. 9)
        if state.pairs is not None and cfg.regression_weight > 0:
            index = torch.randint(0, len(state.pairs), (cfg.regression_batch_size,), generator=g)
            z_ref, y_ref, c_ref = state.pairs.batch(index)
            t_ref = torch.full((z_ref.shape[0],), cfg.denoising_step_list[0], dtype=torch.long)
            x_ref = _x0(state.generator(z_ref, t_ref.to(z_ref.device), encoder_hidden_states=c_ref).sample,
                        z_ref, t_ref, state.schedule)
            loss_g = loss_g + cfg.regression_weight * state.distance(x_ref, y_ref).mean()
            if cfg.dm_on_regression_samples:                                # Alg. 1 l.7
                x_dm, cond_dm = torch.cat([x, x_ref]), torch.cat([cond, c_ref])
                uncond_dm = torch.cat([uncond, uncond[:1].expand(x_ref.shape[0], -1, -1)])
        # 3. distribution matching (Eqs. 7-8)
        loss_g = loss_g + distribution_matching_loss(state, x_dm, cond_dm, uncond_dm, g)
        # 4. GAN generator loss (DMD2): non-saturating softplus(-D(x))
        if cfg.gan:
            loss_g = loss_g + cfg.gen_gan_weight * F.softplus(-_gan_logits(state, x, cond, g)).mean()
        losses["generator"] = loss_g
    # 5. fake score (every iteration): denoising loss on sg(x), + the discriminator loss
    loss_fake = fake_score_loss(state, x, cond, g)
    if cfg.gan:
        real = batch.latents
        loss_d = F.softplus(_gan_logits(state, x.detach(), cond, g)).mean() + \
            F.softplus(-_gan_logits(state, real, cond, g)).mean()
        loss_fake = loss_fake + cfg.disc_gan_weight * loss_d
    losses["fake_score"] = loss_fake
    return losses


def _make_optimizer(params: list[nn.Parameter], cfg: DMDConfig, lr: float, max_train_steps: int,
                    num_processes: int) -> tuple[Any, Any]:
    """AdamW + constant_with_warmup, as the code builds both of its optimizers. accelerate's prepared
    scheduler steps the wrapped one ``num_processes`` times per call (AcceleratedScheduler,
    split_batches False). "with-optimizer" (DMD): the warm-up is scaled by it, so it lasts
    ``lr_warmup_steps`` updates of this optimizer on any number of processes. "every-iteration"
    (DMD2's code, train_sd.py: num_warmup_steps=args.warmup_step unscaled): it ends after
    lr_warmup_steps / num_processes iterations; the decay horizon (``max_train_steps`` iterations;
    no effect under constant_with_warmup) is scaled in both."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    warmup = cfg.lr_warmup_steps * (1 if lr_steps_every_iteration(cfg) else num_processes)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup,
                              num_training_steps=max(1, max_train_steps) * num_processes)
    return optimizer, scheduler


# ------------------------------------------------------------------------------------------------
# Methods
# ------------------------------------------------------------------------------------------------


@register_method("dmd")
class DMD(TrainingMethod):
    paper: ClassVar[str] = ("Yin et al. 2024, One-step Diffusion with Distribution Matching Distillation, "
                            "arXiv:2311.18828")
    summary: ClassVar[str] = ("one-step generator: distribution matching gradient (real CFG teacher vs trained "
                              "fake score) + regression on teacher PNDM pairs")
    config_class: ClassVar[type] = DMDConfig
    reported_names: ClassVar[tuple[str, ...]] = ("DMD",)
    trains: ClassVar[bool] = True
    supported_steps: ClassVar[tuple[int, ...] | None] = (1,)     # the default config's step_counts
    # the generator is sampled without CFG (guidance is distilled from the real score)
    default_guidance_scale: ClassVar[float | None] = 1.0

    def unsupported_steps_reason(self, steps: int) -> str | None:
        """None for a count in ``step_counts`` or in the toy schedule's (the check does not know the
        teacher: DMD2's toy list serves 1 and 4 steps, its default one-step list 1 only; ``sample``
        refuses a count the list it trained does not serve)."""
        cfg = self.config
        toy_counts = tuple(cfg.toy.get("step_counts", cfg.step_counts))
        if steps in cfg.step_counts or steps in toy_counts:
            return None
        counts = ", ".join(map(str, cfg.step_counts))
        trained = str(list(cfg.denoising_step_list))
        toy = cfg.toy.get("denoising_step_list")
        if toy is not None and tuple(toy) != tuple(cfg.denoising_step_list):
            trained += f" (on toy teachers {list(toy)}" + (
                f", for {', '.join(map(str, toy_counts))} steps)" if toy_counts != tuple(cfg.step_counts) else ")")
        return f"{self.name} samples with the {counts}-step schedule(s) of its trained step list {trained}; " \
               f"{steps} steps skipped"

    # -- training --------------------------------------------------------------------------------
    @property
    def needs_images(self) -> bool:
        """Real images enter only the GAN's discriminator (DMD2); DMD's regression pairs and the
        distribution matching gradient come from the teacher, so captions suffice without it."""
        return bool(self.config.gan)

    def init_training_state(self, ctx: TrainingContext) -> DMDState:
        cfg, teacher, trainer = self.config, ctx.teacher, ctx.trainer
        distance, pairs = None, None
        if cfg.regression_weight > 0:
            if cfg.regression_distance == "lpips":
                distance = trainer.lpips_distance(teacher, cfg.lpips_vgg_path)     # fails early offline
            else:
                distance = lambda a, b: regression_distance(a, b, cfg.regression_distance, cfg.huber_c)  # noqa: E731
            pairs = trainer.teacher_outputs(teacher, ctx.data, cfg.pair_spec())     # made once, cached
        generator = copy_unet(teacher.unet, cfg.gradient_checkpointing)
        if getattr(cfg, "generator_init", None) is not None:          # DMD2 stage 2: a stage-1 student
            load_unet_weights(generator, cfg.generator_init, "generator_init")
        generator = generator.to(trainer.device)
        ema = None
        if cfg.generator_ema_decay is not None:
            ema = copy.deepcopy(generator).requires_grad_(False)
        fake_unet = copy_unet(teacher.unet, cfg.gradient_checkpointing)
        if getattr(cfg, "fake_score_init", None) is not None:
            load_unet_weights(fake_unet, cfg.fake_score_init, "fake_score_init")
        fake = FakeScore(fake_unet, cfg.gan, trainer.seed).to(trainer.device)
        steps, n = trainer.schedule.max_train_steps, trainer.num_processes
        every_iteration = lr_steps_every_iteration(cfg)
        g_opt, g_sched = _make_optimizer(list(generator.parameters()), cfg, trainer.schedule.learning_rate,
                                         steps if every_iteration else -(-steps // cfg.generator_update_ratio), n)
        fake_lr = cfg.fake_learning_rate if cfg.fake_learning_rate is not None else trainer.schedule.learning_rate
        f_opt, f_sched = _make_optimizer(list(fake.parameters()), cfg, fake_lr, steps, n)
        generator, fake, g_opt, f_opt, g_sched, f_sched = trainer.prepare(generator, fake, g_opt, f_opt,
                                                                          g_sched, f_sched)
        with_optimizer = (None, None) if every_iteration else (g_sched, f_sched)
        updates = [Update("generator", g_opt, list(trainer.unwrap(generator).parameters()), with_optimizer[0]),
                   Update("fake_score", f_opt, list(trainer.unwrap(fake).parameters()), with_optimizer[1])]
        real = teacher.unet.requires_grad_(False)
        return DMDState(generator=generator, fake=fake, real=real, schedule=teacher.schedule, config=cfg,
                        updates=updates, pairs=pairs, distance=distance,
                        real_autocast=lambda: _half_autocast(real, cfg.real_score_half_precision),
                        unwrap=trainer.unwrap, generator_ema=ema,
                        iteration_lr_schedulers=[g_sched, f_sched] if every_iteration else [])

    def training_step(self, state: DMDState, batch: Any) -> dict[str, Tensor]:
        return dmd_training_step(state, batch)

    def student_from_state(self, state: DMDState, ctx: TrainingContext) -> Student:
        online = ctx.trainer.unwrap(state.generator)
        unet = (state.generator_ema if state.generator_ema is not None else online).eval().requires_grad_(False)
        if getattr(unet, "is_gradient_checkpointing", False):
            unet.disable_gradient_checkpointing()
        return Student(unet=unet, kind="unet",
                       metadata={"denoising_step_list": list(self.config.denoising_step_list),
                                 "step_counts": list(self.config.step_counts)})

    def plumbing_config(self, config: DMDConfig) -> DMDConfig:
        """On the plumbing teacher: 8 regression pairs in batches of 4 (each pair is a 50-step solve)."""
        return dataclasses.replace(config, num_regression_pairs=min(config.num_regression_pairs, 8),
                                   regression_batch_size=min(config.regression_batch_size, 4))

    def for_step_timing(self) -> tuple["DMD", str]:
        """The regression pairs (Eq. 9) are made before training by a 50-step solver under CFG;
        a step draws its regression batch from them with replacement, so its cost does not depend
        on how many exist: cut to one regression batch (making the toy schedule's 512 at 512 px
        took the whole of a 150 s profile section on an H200)."""
        cfg = self.config
        pairs, batch = cfg.num_regression_pairs, cfg.regression_batch_size
        if not cfg.regression_weight or pairs <= batch:
            return self, ""
        note = f"{batch} regression pairs made for timing (the config's {pairs}: a step's cost does not depend on it)"
        return type(self)(dataclasses.replace(cfg, num_regression_pairs=batch)), note

    def training_identity(self) -> dict[str, Any]:
        """What changes the trained student: not ``step_counts`` (sampling only; one student per list)."""
        return {k: v for k, v in dataclasses.asdict(self.config).items() if k != "step_counts"}

    # -- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, denoiser: Denoiser, request: SampleRequest) -> Tensor:
        """x0 = G(x, t_i, c) at each timestep of the S-step sub-list, re-noised with fresh noise from
        each image's generator between steps (DMD2 inference; LCMScheduler with these timesteps)."""
        timesteps = sampling_timesteps(self.config.denoising_step_list, request.steps)
        schedule, x = denoiser.schedule, request.noise
        for i, t in enumerate(timesteps):
            x0, _ = denoiser.guided_x0_eps(x, t, request.cond, request.uncond, request.guidance_scale)
            if i == len(timesteps) - 1:
                return x0
            alpha, sigma = schedule.alpha_sigma(timesteps[i + 1])
            x = add_noise(x0, per_sample_randn(request.generators, x), alpha.to(x.device, x.dtype),
                          sigma.to(x.device, x.dtype))
        return x


@register_method("dmd2")
class DMD2(DMD):
    paper: ClassVar[str] = ("Yin et al. 2024, Improved Distribution Matching Distillation for Fast Image "
                            "Synthesis, arXiv:2405.14867")
    summary: ClassVar[str] = ("DMD without regression: two time-scale updates; presets sd15-stage1 (one step, "
                              "default), sd15-stage2 (GAN on the fake score's bottleneck), sdxl-4step (backward "
                              "simulation)")
    config_class: ClassVar[type] = DMD2Config
    reported_names: ClassVar[tuple[str, ...]] = ()        # not DMD's numbers
    # the default preset's step_counts (sd15-stage1: one step); the toy schedule adds 4
    # (unsupported_steps_reason), preset=sdxl-4step serves 1 and 4
    supported_steps: ClassVar[tuple[int, ...] | None] = (1,)

    def __init__(self, config: DMD2Config | None = None):
        super().__init__(config)
        self.config = self.config.resolved()

    def training_identity(self) -> dict[str, Any]:
        """DMD's, without ``preset`` (its resolved values are there) and with the sha256 of the
        ``generator_init`` / ``fake_score_init`` weights in place of their paths."""
        values = super().training_identity()
        values.pop("preset", None)
        for key in ("generator_init", "fake_score_init"):
            path = getattr(self.config, key)
            values[key] = unet_weights_sha256(path) if path is not None else None
        return values


def _half_autocast(real: nn.Module, enabled: bool):
    """bf16 autocast for the real score on CUDA when the teacher is fp32 (the code casts its real
    U-Net to bf16); a no-op on the CPU or for a teacher already in half precision."""
    param = next(real.parameters())
    if enabled and param.device.type == "cuda" and param.dtype == torch.float32:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = ["DMD", "DMD2", "DMDConfig", "DMD2Config", "DMDState", "FakeScore",
           "dm_gradient", "dm_loss", "eq8_weight", "score", "regression_distance", "is_generator_step",
           "sampling_timesteps", "dmd_training_step", "distribution_matching_loss", "fake_score_loss", "generate"]
