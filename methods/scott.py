"""SCott: Stochastic Consistency Distillation (Liu, Xie et al., AAAI 2025, arXiv:2403.01505).
No code was released: the paper is the specification, and every choice it leaves open is a
config field (see ``SCottConfig``).

SCott is latent consistency distillation (methods/consistency.py, shared with LCM) with two
changes: a stronger, stochastic teacher step and an adversarial term. One training step::

    n ~ U{0..N-1};  t_n = grid[n];  t_m = max(t_n - 24, 0)                     (LCM grid, "Multi-step Sampling")
    z_{t_n} = alpha z + sigma eps;  w ~ U[w_min, w_max], embedded into the student (LCM)
    pred   = f_theta(z_{t_n}, w, c, t_n)                                       (Eq. 1, online student)
    z^_{t_m} = Phi_SDE(eps_phi, z_{t_n}, t_n, t_m, h)                          (h = 3 sub-steps of 8, Fig. 3)
             each sub-step: teacher CFG (LCM convention), then one ER-SDE step with the
             noise-scale function "ER-SDE 5" (Table 5) or one DDIM(eta) step (Eq. 2, 5; ablation)
    target = f_theta-(z^_{t_m}, w, c, t_m)                                     (EMA target)
    L_CD   = ||pred - target||^2                                               (Eq. 1)
    L_D    = E[max(0, 1 - D(z_0, c, t))] + E[max(0, 1 + D(sg pred, c, t))]     (Eq. 6, hinge)
    L_G    = -E[D(pred, c, t)]                                                 (hinge generator loss)
    student: L_CD + 0.4 L_G (lr 8e-6);  discriminator: 0.4 L_D (lr 2e-5)        (Eq. 7, "Implementation Details")

The discriminator D is a copy of the teacher U-Net with a frozen encoder and LoRA on the decoder
(``up_blocks``) only ("LoRA Discriminator"), conditioned on the timestep and the text through the
U-Net's own time embedding and cross-attention ("Conditional Discriminator"). Sampling is LCM's
multistep consistency sampler with the w embedding (the student is an LCM student).

Ablation switches (paper tables): ``use_gan=False`` (Table 7 "without GAN"), ``disc_params="full"``
(Table 7 "full discriminator"), ``disc_conditioning="none"`` (Table 7 "without condition"),
``teacher_solver="ddim"`` with ``ddim_eta`` in {0, 0.1, 0.2, 0.3, 0.6} (Table 5),
``teacher_substeps`` in {1, 2, 3} (Table 6).
"""
from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import TrainingContext, Update
from methods.consistency import (
    LCDState,
    MultistepTeacherSolver,
    consistency_loss,
    lcd_draws,
    lcd_online,
    lcd_target,
    lcd_teacher_solve,
    make_optimizer,
)
from methods.diffusion_math import ER_SDE_NOISE_SCALES, add_noise
from methods.lcm import (
    LCM,
    LCM_LORA_TARGET_MODULES,
    LCMConfig,
    build_w_conditioned_unet,
)
from methods.registry import register_method
from methods.toy_schedule import toy_schedule_field

log = logging.getLogger(__name__)
Tensor = torch.Tensor

TEACHER_SOLVERS: tuple[str, ...] = ("er-sde", "ddim")
DISC_PARAMS: tuple[str, ...] = ("lora-decoder", "full")
DISC_CONDITIONINGS: tuple[str, ...] = ("time-text", "none")
DISC_REAL_TIMESTEPS: tuple[str, ...] = ("paired", "zero")
DISC_INPUTS: tuple[str, ...] = ("clean", "noised")
DISC_HEADS: tuple[str, ...] = ("patch", "mean")

#: The discriminator's LoRA modules: LCM-LoRA's list (diffusers ``train_lcm_distill_lora_sd_wds.py``)
#: restricted to the decoder, so ``downsamplers`` (encoder only) is left out.
SCOTT_DISC_LORA_MODULES: tuple[str, ...] = tuple(m for m in LCM_LORA_TARGET_MODULES if not m.startswith("down"))


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SCottConfig(LCMConfig):
    """SCott's values; the paper's where it gives them, the rest chosen here (marked CHOICE):

    * loss: squared L2 (Eq. 1: "we confine the distance measure ... to the squared l2").
    * lr 8e-6 (student), 2e-5 (discriminator), batch 40 (4 A100 x 10), 40K iterations
      ("Implementation Details").
    * CHOICE w range: the paper embeds w in the student but does not give its range; LCM paper's
      U[2, 14] (LCM convention), which covers the CFG scale 3 (w = 2) SCott samples with for the
      COCO-30K table (Table 3, "use a CFG scale of 3 following DMD").
    * CHOICE EMA rate 0.95: not in the paper; the LCM code's value.
    * CHOICE teacher sub-step: first-order ER-SDE (the repo's ``er_sde_step``). The ablation text
      mentions a "2-order ER-SDE 5"; the second-order Taylor step is not implemented.
    * CHOICE discriminator head (unspecified): ``disc_head="patch"``: the LoRA decoder's output map
      averaged over channels is a map of per-location logits, the hinge is applied per location
      and averaged (PatchGAN-style; no parameters besides the LoRA, so "only the LoRA parameters
      of the decoder are trained" holds literally). ``"mean"``: one logit per image, the mean of
      the output map (the "mean of intermediate features as the score" of a secondary summary).
    * CHOICE discriminator LoRA: LCM-LoRA's modules inside ``up_blocks`` at rank 50: 31.2M of
      SD-1.5's 859.5M U-Net parameters = 3.63%, the paper's "3.6%" (rank 64, a secondary summary's
      value, would be 4.65%). alpha = rank (scale 1).
    * CHOICE real-image timestep: Eq. 6 scores real z_0 at t = 0 and the fake at t_n; taken
      literally a time-conditioned D separates them by the timestep alone. Default ``"paired"``:
      the real z_0 is scored at the fake's t_n; ``"zero"`` is Eq. 6 as printed.
    * CHOICE D input: Eq. 6 feeds clean latents (``"clean"``); ``"noised"`` re-noises both to t_n
      with one shared noise draw (diffusion-GAN style, as PCM/DMD2 do).
    * CHOICE generator loss: -E[D(f_theta)] (the hinge generator loss of StyleGAN-T, Sauer et al.
      2023a, whom the paper follows for Eq. 6); lambda_adv = 0.4 scales both L_G and L_D (Eq. 7).
    * Optimisers: one AdamW per network (bench.engine.training.Update), gradients clipped per network.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": dict(w_min=2.0, w_max=14.0, loss_type="l2", ema_decay=0.95, learning_rate=8e-6,
                      train_batch_size=40, max_train_steps=40_000),
        # No SCott code was released ("code and checkpoints are coming soon"): same as the paper.
        "official-code": dict(w_min=2.0, w_max=14.0, loss_type="l2", ema_decay=0.95, learning_rate=8e-6,
                              train_batch_size=40, max_train_steps=40_000),
    }

    # -- the multi-step SDE teacher ("Multi-step Sampling"; Tables 5, 6) -------------------------
    teacher_span: int = 24                 # t_m = t_n - 24
    teacher_substeps: int = 3              # h
    teacher_solver: str = "er-sde"         # "er-sde" (Table 5 best) | "ddim" (DDIM(eta) ablation)
    er_sde_noise_scale: str = "sde_5"      # "ER-SDE 5": phi(x) = x (e^{x^0.3} + 10)
    er_sde_variance_floor: float = 1e-6    # ER-SDE reference numerical_clip
    ddim_eta: float = 0.2                  # teacher_solver="ddim": Table 5's best DDIM eta

    # -- the adversarial term (Eq. 6, 7; "LoRA Discriminator", "Conditional Discriminator") ------
    use_gan: bool = True
    adv_weight: float = 0.4                # lambda_adv
    disc_learning_rate: float = 2e-5
    disc_params: str = "lora-decoder"      # "lora-decoder" | "full" (Table 7 ablation)
    disc_conditioning: str = "time-text"   # "time-text" | "none" (Table 7: empty prompt, t = 0)
    disc_real_timestep: str = "paired"     # "paired" | "zero" (Eq. 6 literal)
    disc_input: str = "clean"              # "clean" (Eq. 6) | "noised"
    disc_head: str = "patch"               # "patch" | "mean"
    disc_lora_rank: int = 50
    disc_lora_alpha: float = 50.0
    disc_lora_target_modules: tuple[str, ...] = SCOTT_DISC_LORA_MODULES

    # The values used on toy teachers instead (methods/toy_schedule.py): methods/configs/scott/toy.toml.
    toy: dict[str, Any] = toy_schedule_field("scott")

    def __post_init__(self):
        super().__post_init__()
        for name, allowed in (("teacher_solver", TEACHER_SOLVERS), ("disc_params", DISC_PARAMS),
                              ("disc_conditioning", DISC_CONDITIONINGS), ("disc_real_timestep", DISC_REAL_TIMESTEPS),
                              ("disc_input", DISC_INPUTS), ("disc_head", DISC_HEADS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.er_sde_noise_scale not in ER_SDE_NOISE_SCALES:
            raise ValueError(f"er_sde_noise_scale must be one of {sorted(ER_SDE_NOISE_SCALES)}, "
                             f"got {self.er_sde_noise_scale!r}")
        if self.teacher_substeps < 1 or self.teacher_span % self.teacher_substeps:
            raise ValueError(f"teacher_span {self.teacher_span} must be a multiple of teacher_substeps "
                             f"{self.teacher_substeps}")
        if self.ddim_eta < 0 or self.adv_weight < 0:
            raise ValueError("ddim_eta and adv_weight must be >= 0")


def scott_teacher_solver(config: SCottConfig, schedule: Any) -> MultistepTeacherSolver:
    """Phi_SDE(eps_phi, z_{t_n}, t_n, t_m, h) on the LCM grid."""
    return MultistepTeacherSolver(schedule, num_points=config.num_ddim_timesteps, span=config.teacher_span,
                                  substeps=config.teacher_substeps, kind=config.teacher_solver,
                                  eta=config.ddim_eta, noise_scale=config.er_sde_noise_scale,
                                  variance_floor=config.er_sde_variance_floor)


# ------------------------------------------------------------------------------------------------
# The LoRA discriminator
# ------------------------------------------------------------------------------------------------


class UNetDiscriminator(nn.Module):
    """D_phi(z, c, t): the (LoRA-adapted) teacher U-Net; its output map is read as logits
    (``head``: "patch" = per-location logits, channel mean; "mean" = one logit per image)."""

    def __init__(self, unet: nn.Module, head: str = "patch"):
        super().__init__()
        self.unet = unet
        self.head = head

    def forward(self, x: Tensor, t: Tensor, text: Tensor) -> Tensor:
        out = self.unet(x, t, encoder_hidden_states=text).sample
        return out.mean(dim=1) if self.head == "patch" else out.mean(dim=(1, 2, 3))


def decoder_lora_regex(modules: tuple[str, ...]) -> str:
    """peft ``target_modules`` regex (full match) for ``modules`` inside ``up_blocks`` only."""
    return r"up_blocks\..*\.(" + "|".join(re.escape(m) for m in modules) + ")"


def build_discriminator(teacher_unet: nn.Module, config: SCottConfig, seed: int) -> UNetDiscriminator:
    """A fp32 copy of the teacher U-Net ("initialized by the pre-trained U-Net"); with
    ``disc_params="lora-decoder"`` every base weight is frozen and peft LoRA on the decoder is the
    only trainable part (lora_B = 0: D starts as the teacher); ``"full"`` trains every weight."""
    unet = nn.Module.to(copy.deepcopy(teacher_unet), device="cpu", dtype=torch.float32)
    if config.disc_params == "full":
        unet.requires_grad_(True)
    else:
        add_decoder_lora(unet, config, seed)
    return UNetDiscriminator(unet, config.disc_head)


def add_decoder_lora(unet: nn.Module, config: SCottConfig, seed: int) -> nn.Module:
    """Freeze ``unet`` and add peft LoRA (rank ``disc_lora_rank``) to its decoder modules, in place."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    lora = LoraConfig(r=config.disc_lora_rank, lora_alpha=config.disc_lora_alpha, lora_dropout=0.0,
                      target_modules=decoder_lora_regex(config.disc_lora_target_modules))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(lora)
    return unet


def trainable_fraction(disc: nn.Module) -> tuple[int, int, float]:
    """(trainable parameters, U-Net parameters without the adapter, their ratio) of a
    discriminator or of a bare U-Net."""
    params = dict(getattr(disc, "unet", disc).named_parameters())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    base = sum(p.numel() for name, p in params.items() if "lora_" not in name)
    return trainable, base, trainable / base


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Eq. 6: E[max(0, 1 - D(real))] + E[max(0, 1 + D(fake))]."""
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    """-E[D(fake)] (StyleGAN-T / Sauer et al. 2023a)."""
    return -fake_logits.float().mean()


# ------------------------------------------------------------------------------------------------
# Training state and step
# ------------------------------------------------------------------------------------------------


@dataclass
class SCottState(LCDState):
    """LCD state plus the discriminator; with it, two optimizers (bench.engine.training.Update)."""

    discriminator: nn.Module | None = None         # prepared
    disc_params: list[nn.Parameter] = field(default_factory=list)
    updates: list[Any] = field(default_factory=list)

    @property
    def models(self) -> list[nn.Module]:
        return [self.student] + ([self.discriminator] if self.discriminator is not None else [])

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.params + self.disc_params


def scott_losses(state: SCottState, batch: Any) -> dict[str, Tensor]:
    """{"cd": L_CD, "g": L_G, "d": L_D} of one micro-batch (L_G, L_D only with the GAN)."""
    cfg = state.config
    draws = lcd_draws(state, batch)
    pred = lcd_online(state, draws.x_start, draws.t_start, batch.cond, draws.w_emb)    # f_theta(z_{t_n})
    x_end = lcd_teacher_solve(state, draws, batch)                                     # Phi_SDE, h sub-steps
    target = lcd_target(state, x_end, draws.t_end, batch.cond, draws.w_emb)            # f_theta-(z^_{t_m})
    losses = {"cd": consistency_loss(pred, target, cfg.loss_type, cfg.huber_c)}        # Eq. 1
    if state.discriminator is None:
        return losses

    # Eq. 6: D on real z_0 and on the student's output, conditioned on (t, c)
    real, device = batch.latents, batch.latents.device
    t_fake = draws.t_start
    t_real = t_fake if cfg.disc_real_timestep == "paired" else torch.zeros_like(t_fake)
    text = batch.cond
    if cfg.disc_conditioning == "none":
        t_fake = t_real = torch.zeros_like(t_fake)
        text = batch.uncond
    z = None
    if cfg.disc_input == "noised":   # one shared draw for real and fake, after the solver's draws
        z = torch.randn(real.shape, generator=batch.generator, dtype=torch.float32).to(device, real.dtype)

    def noised(x: Tensor, t: Tensor) -> Tensor:
        if z is None:
            return x
        alpha, sigma = state.schedule.alpha_sigma(t)
        return add_noise(x, z, alpha.to(device, x.dtype), sigma.to(device, x.dtype))
    disc = state.discriminator
    t_fake_d, t_real_d = t_fake.to(device), t_real.to(device)
    # generator: gradient through D into the student only (the Update's backward(inputs=...))
    losses["g"] = cfg.adv_weight * hinge_generator_loss(disc(noised(pred, t_fake), t_fake_d, text))
    # discriminator: the detached fake and the real in one batched pass (per-sample networks)
    fake_logits, real_logits = disc(torch.cat([noised(pred.detach(), t_fake), noised(real, t_real)]),
                                    torch.cat([t_fake_d, t_real_d]), torch.cat([text, text])).chunk(2)
    losses["d"] = cfg.adv_weight * hinge_discriminator_loss(real_logits, fake_logits)
    return losses


def scott_training_step(state: SCottState, batch: Any) -> Tensor | dict[str, Tensor]:
    """Without the GAN: L_CD (one optimizer). With it: {"student": L_CD + lambda L_G,
    "discriminator": lambda L_D}, one optimizer each (Eq. 7)."""
    losses = scott_losses(state, batch)
    if state.discriminator is None:
        return losses["cd"]
    return {"student": losses["cd"] + losses["g"], "discriminator": losses["d"]}


# ------------------------------------------------------------------------------------------------
# Method
# ------------------------------------------------------------------------------------------------


@register_method("scott")
class SCott(LCM):
    """An LCM student (w embedding, EMA target, LCM sampler) distilled from SCott's multi-step SDE
    teacher, with the LoRA discriminator. ``student_from_state`` and ``sample`` are LCM's."""

    paper: ClassVar[str] = ("Liu, Xie et al. 2025, SCott: Accelerating Diffusion Models with Stochastic "
                            "Consistency Distillation, AAAI 2025, arXiv:2403.01505")
    summary: ClassVar[str] = ("consistency distillation from a 3-sub-step ER-SDE teacher plus a LoRA-decoder "
                              "U-Net discriminator (hinge); LCM sampler with the w embedding, 1 call per step")
    config_class: ClassVar[type] = SCottConfig
    reported_names: ClassVar[tuple[str, ...]] = ("SCott",)

    def init_training_state(self, ctx: TrainingContext) -> SCottState:
        cfg, teacher, trainer = self.config, ctx.teacher, ctx.trainer
        student = build_w_conditioned_unet(teacher.unet, cfg.time_cond_proj_dim, trainer.seed,
                                           cfg.cond_proj_init).to(trainer.device)
        student.train()
        target = copy.deepcopy(student).requires_grad_(False).train()
        params = [p for p in student.parameters() if p.requires_grad]
        schedule = trainer.schedule
        optimizer, lr_scheduler = make_optimizer(params, cfg, schedule.learning_rate, schedule.max_train_steps,
                                                 trainer.num_processes)
        disc, disc_params, updates = None, [], []
        if cfg.use_gan:
            disc = build_discriminator(teacher.unet, cfg, trainer.seed + 1).to(trainer.device).train()
            disc_params = [p for p in disc.parameters() if p.requires_grad]
            n_train, n_base, fraction = trainable_fraction(disc)
            log.info("scott discriminator (%s): %d of %d U-Net parameters trainable (%.2f%%)",
                     cfg.disc_params, n_train, n_base, 100 * fraction)
            d_optimizer, d_lr_scheduler = make_optimizer(disc_params, cfg, cfg.disc_learning_rate,
                                                         schedule.max_train_steps, trainer.num_processes)
            student, disc, optimizer, d_optimizer, lr_scheduler, d_lr_scheduler = trainer.prepare(
                student, disc, optimizer, d_optimizer, lr_scheduler, d_lr_scheduler)
            updates = [Update("student", optimizer, params, lr_scheduler),
                       Update("discriminator", d_optimizer, disc_params, d_lr_scheduler)]
        else:
            student, optimizer, lr_scheduler = trainer.prepare(student, optimizer, lr_scheduler)
        return SCottState(student=student, target=target, teacher=teacher.unet, schedule=teacher.schedule,
                          solver=scott_teacher_solver(cfg, teacher.schedule), optimizer=optimizer,
                          lr_scheduler=lr_scheduler, params=params, config=cfg,
                          w_embedding_dim=cfg.time_cond_proj_dim, ema_decay=cfg.ema_decay,
                          autocast=trainer.autocast, unwrap=trainer.unwrap, discriminator=disc,
                          disc_params=disc_params, updates=updates)

    def training_step(self, state: SCottState, batch: Any) -> Tensor | dict[str, Tensor]:
        return scott_training_step(state, batch)


__all__ = ["SCott", "SCottConfig", "SCottState", "UNetDiscriminator", "add_decoder_lora", "build_discriminator",
           "decoder_lora_regex", "hinge_discriminator_loss", "hinge_generator_loss", "scott_losses",
           "scott_teacher_solver", "scott_training_step", "trainable_fraction"]
