"""LCM and LCM-LoRA: latent consistency distillation of a full U-Net with a guidance embedding
(Luo et al. 2023, "Latent Consistency Models", arXiv:2310.04378) and of a LoRA adapter with a
fixed guidance scale (Luo et al. 2023, "LCM-LoRA: A Universal Stable-Diffusion Acceleration
Module", arXiv:2311.05556). The training step and the sampler are in methods/consistency.py.

Values: the paper's are the defaults (``preset="paper"``); ``preset="official-code"`` switches
every value that differs to the official code's (diffusers ``examples/consistency_distillation``
README and scripts, identical in luosiallen/latent-consistency-model); any single field can be set
with ``--config field=value``. Where they differ:

| field             | lcm paper      | lcm code      | lcm-lora report | lcm-lora code |
|-------------------|----------------|---------------|-----------------|---------------|
| w_min, w_max      | 2, 14          | 5, 15         | 7.5 fixed       | 5, 15         |
| loss_type         | l2             | huber (0.001) | l2 (a)          | huber         |
| ema_decay         | 0.999943       | 0.95          | - (stop-grad)   | -             |
| learning_rate     | 8e-6           | 1e-6          | 1e-4 (a)        | 1e-4          |
| train_batch_size  | 72             | 12 per GPU    | 12 (a)          | 12 per GPU    |
| max_train_steps   | 100_000        | 1000 (b)      | 1000 (a)        | 1000 (b)      |

(a) not found in the report: the code's value (loss: LCM's). (b) the README's illustrative
command. The LCM paper numbers are from a third-party summary of its §4 (users quote the same
values in luosiallen/latent-consistency-model#31); check them against the PDF before quoting them.

Full ``lcm`` students are a diffusers ``UNet2DConditionModel`` with ``time_cond_proj_dim=256``
(the teacher's weights, a new ``time_embedding.cond_proj`` at its default init, or zero with
``cond_proj_init="zero"``, the toy schedule's choice), saved as a
``unet/`` folder that ``LatentConsistencyModelPipeline`` loads; sampling embeds w = g - 1 and
makes one network call per step. ``lcm-lora`` students are the teacher plus a peft LoRA, saved
as a diffusers LoRA file that ``StableDiffusionPipeline.load_lora_weights`` loads; sampling
uses ordinary CFG (2 calls per step unless g = 1; the LCM-LoRA model card recommends g in [1, 2]).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from methods.base import (
    Denoiser,
    DiffusersScheduler,
    SampleRequest,
    Student,
    TeacherModel,
    TrainingContext,
    TrainingMethod,
    scheduler_from_teacher_config,
)
from methods.consistency import (
    ConsistencyDistillationConfig,
    LCDState,
    SkippingStepDDIM,
    lcd_training_step,
    lcm_multistep_sample,
    lcm_timesteps,
    make_optimizer,
)
from methods.diffusion_math import guidance_scale_embedding, lcm_w_from_guidance_scale
from methods.registry import register_method
from methods.toy_schedule import toy_schedule_field

#: LoRA target modules of diffusers train_lcm_distill_lora_sd_wds.py.
LCM_LORA_TARGET_MODULES: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)
#: Initialisations of the student's new ``time_embedding.cond_proj`` (see build_w_conditioned_unet).
COND_PROJ_INITS: tuple[str, ...] = ("default", "zero")


def check_cond_proj_init(value: str) -> None:
    """``value`` is one of COND_PROJ_INITS; shared by the w/gamma-conditioned students' configs
    (LCM, SCott, SPLAM) and build_w_conditioned_unet."""
    if value not in COND_PROJ_INITS:
        raise ValueError(f"cond_proj_init must be one of {COND_PROJ_INITS}, got {value!r}")


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LCMConfig(ConsistencyDistillationConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # LCM paper §4 (third-party summary, luosiallen#31): w ~ U[2, 14], squared L2, EMA 0.999943,
        # lr 8e-6, batch 72 at 512 px, 100K iterations.
        "paper": dict(w_min=2.0, w_max=14.0, loss_type="l2", ema_decay=0.999943, learning_rate=8e-6,
                      train_batch_size=72, max_train_steps=100_000),
        # diffusers README / train_lcm_distill_sd_wds.py defaults: --w_min 5 --w_max 15
        # --loss_type huber --ema_decay 0.95 --learning_rate 1e-6 --train_batch_size 12
        # --max_train_steps 1000.
        "official-code": dict(w_min=5.0, w_max=15.0, loss_type="huber", ema_decay=0.95, learning_rate=1e-6,
                              train_batch_size=12, max_train_steps=1000),
    }

    # EMA rate mu of the target network theta- (paper 0.999943; code --ema_decay 0.95).
    ema_decay: float | None = None
    # Width of the w embedding added to the time embedding (code --unet_time_cond_proj_dim 256).
    time_cond_proj_dim: int = 256
    # Which network becomes the student: the diffusers script saves the online U-Net as unet/
    # and the EMA target as unet_target/; "online" is what its unet/ folder holds.
    student_weights: str = "online"
    # Init of the new cond_proj: "default" (nn.Linear's, the reference's; the w embedding then
    # shifts the time embedding of the teacher's weights at step 0) or "zero" (starts as the teacher).
    cond_proj_init: str = "default"

    # The values used on toy teachers instead (methods/toy_schedule.py): methods/configs/lcm/toy.toml.
    toy: dict[str, Any] = toy_schedule_field("lcm")

    def __post_init__(self):
        super().__post_init__()
        if self.student_weights not in ("online", "target"):
            raise ValueError(f"student_weights must be 'online' or 'target', got {self.student_weights!r}")
        check_cond_proj_init(self.cond_proj_init)
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True)
class LCMLoRAConfig(ConsistencyDistillationConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # LCM-LoRA report §3.1 / Fig. 2: "fixed classifier-free guidance scale w = 7.5 during the
        # distillation" (author, luosiallen#40: "we distill a fix cfg scale with 7.5"); loss as LCM.
        # lr: diffusers README 1e-4 (1e-6 "won't learn anything", diffusers#6288); batch and
        # length: not stated, the code's.
        "paper": dict(w_min=7.5, w_max=7.5, loss_type="l2", learning_rate=1e-4, train_batch_size=12,
                      max_train_steps=1000),
        # diffusers train_lcm_distill_lora_sd_wds.py + README: w ~ U[5, 15], huber, lr 1e-4.
        "official-code": dict(w_min=5.0, w_max=15.0, loss_type="huber", learning_rate=1e-4, train_batch_size=12,
                              max_train_steps=1000),
    }

    # peft LoraConfig of the reference (--lora_rank 64, --lora_alpha 64, --lora_dropout 0; the
    # report's 67.5M trainable parameters for SD-1.5 are rank 64 on these modules).
    lora_rank: int = 64
    lora_alpha: float = 64.0
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = LCM_LORA_TARGET_MODULES

    # The values used on toy teachers instead: methods/configs/lcm-lora/toy.toml.
    toy: dict[str, Any] = toy_schedule_field("lcm-lora")


# ------------------------------------------------------------------------------------------------
# Students
# ------------------------------------------------------------------------------------------------


def build_w_conditioned_unet(teacher_unet: nn.Module, time_cond_proj_dim: int, seed: int,
                              cond_proj_init: str = "default") -> nn.Module:
    """The LCM student: ``UNet2DConditionModel.from_config(teacher, time_cond_proj_dim=D)`` with
    the teacher's weights loaded non-strictly. The new ``time_embedding.cond_proj`` keeps its
    default init (not zero) as in ``train_lcm_distill_sd_wds.py`` with ``cond_proj_init="default"``;
    ``"zero"`` zeroes it, so that the student starts as the teacher exactly. fp32 master weights,
    CPU; the random init is seeded by ``seed``."""
    check_cond_proj_init(cond_proj_init)
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(teacher_unet.config, time_cond_proj_dim=time_cond_proj_dim)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in teacher_unet.state_dict().items()}
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"time_embedding.cond_proj.weight"}:
        raise ValueError(f"teacher U-Net does not fit the LCM student: missing {missing}, unexpected {unexpected}")
    if cond_proj_init == "zero":
        nn.init.zeros_(unet.time_embedding.cond_proj.weight)
    return nn.Module.to(unet, dtype=torch.float32)


def build_lora_unet(teacher_unet: nn.Module, config: LCMLoRAConfig, seed: int) -> nn.Module:
    """A fp32 copy of the teacher with a peft LoRA adapter (diffusers ``add_adapter``); only the
    LoRA parameters train. lora_B starts at zero, so the student starts as the teacher."""
    from peft import LoraConfig

    unet = nn.Module.to(copy.deepcopy(teacher_unet), device="cpu", dtype=torch.float32)
    unet.requires_grad_(False)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(lora)
    return unet


# ------------------------------------------------------------------------------------------------
# Methods
# ------------------------------------------------------------------------------------------------


class _LCDMethod(TrainingMethod):
    """What the latent consistency methods (LCM, LCM-LoRA, SCott, SPLAM) share: config resolution,
    the training loop plumbing, the multistep consistency sampler and its timesteps."""

    supported_steps: ClassVar[tuple[int, ...] | None] = None

    def __init__(self, config: Any | None = None):
        super().__init__(config)
        self.config = self.config.resolved()

    # -- declared facts -------------------------------------------------------------------------
    def unsupported_steps_reason(self, steps: int) -> str | None:
        reason = super().unsupported_steps_reason(steps)
        if reason is None and steps > self.config.original_inference_steps:
            reason = (f"{self.name}: at most original_inference_steps={self.config.original_inference_steps} "
                      f"steps (the distillation grid); {steps} skipped")
        return reason

    def training_identity(self) -> dict[str, Any]:
        """What changes the trained student (the student fingerprint): not the sampling fields."""
        return self.config.training_fields()

    def timesteps(self, denoiser: Denoiser, steps: int) -> list[int]:
        """The LCM inference timesteps, pinned by ``timestep_spacing``."""
        return lcm_timesteps(steps, denoiser.schedule.num_train_timesteps, self.config.original_inference_steps,
                             self.config.timestep_spacing)

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, denoiser: Denoiser, request: SampleRequest) -> torch.Tensor:
        return self.sample_at(denoiser, request, self.timesteps(denoiser, request.steps))

    @torch.no_grad()
    def sample_at(self, denoiser: Denoiser, request: SampleRequest, timesteps: list[int]) -> torch.Tensor:
        """LCM's multistep consistency sampler over ``timesteps`` (``[t]``: the x_0 taken at t)."""
        return lcm_multistep_sample(denoiser, request, timesteps, sigma_data=self.config.sigma_data,
                                    timestep_scaling=self.config.timestep_scaling,
                                    timestep_cond=self.timestep_cond(denoiser, request))

    def timestep_cond(self, denoiser: Denoiser, request: SampleRequest) -> torch.Tensor | None:
        """The extra time-embedding input of the student's U-Net: none (LCM overrides it)."""
        return None

    # -- training ------------------------------------------------------------------------------
    def _state(self, ctx: TrainingContext, student: nn.Module, target: nn.Module | None,
               w_embedding_dim: int | None, ema_decay: float | None) -> LCDState:
        cfg, teacher, trainer = self.config, ctx.teacher, ctx.trainer
        student = student.to(trainer.device).train()
        params = [p for p in student.parameters() if p.requires_grad]
        if any(p.dtype != torch.float32 for p in params):   # train_lcm_distill_sd_wds.py raises too
            raise ValueError(f"{self.name}: the student's trainable weights must be float32 master weights")
        optimizer, lr_scheduler = make_optimizer(params, cfg, trainer.schedule.learning_rate,
                                                 trainer.schedule.max_train_steps, trainer.num_processes)
        student, optimizer, lr_scheduler = trainer.prepare(student, optimizer, lr_scheduler)
        return LCDState(student=student, target=target, teacher=teacher.unet, schedule=teacher.schedule,
                        solver=SkippingStepDDIM(teacher.schedule, cfg.num_ddim_timesteps), optimizer=optimizer,
                        lr_scheduler=lr_scheduler, params=params, config=cfg, w_embedding_dim=w_embedding_dim,
                        ema_decay=ema_decay, autocast=trainer.autocast, unwrap=trainer.unwrap)

    def training_step(self, state: LCDState, batch: Any) -> torch.Tensor:
        return lcd_training_step(state, batch)

    def diffusers_scheduler(self, teacher: TeacherModel, steps: int) -> DiffusersScheduler:
        """diffusers' ``LCMScheduler`` (tests/test_lcm.py checks the equality); a spacing diffusers
        no longer has is passed as explicit timesteps."""
        from diffusers import LCMScheduler

        c = self.config
        scheduler = scheduler_from_teacher_config(LCMScheduler, teacher.scheduler_config,
                                                  original_inference_steps=c.original_inference_steps,
                                                  timestep_scaling=c.timestep_scaling)
        kwargs = {}
        if c.timestep_spacing != "diffusers-2023-11":
            kwargs["timesteps"] = lcm_timesteps(steps, teacher.schedule.num_train_timesteps,
                                                c.original_inference_steps, c.timestep_spacing)
        return DiffusersScheduler(scheduler, kwargs)


@register_method("lcm")
class LCM(_LCDMethod):
    paper: ClassVar[str] = "Luo et al. 2023, Latent Consistency Models, arXiv:2310.04378"
    summary: ClassVar[str] = ("latent consistency distillation of the full U-Net with a guidance (w) embedding; "
                              "LCMScheduler sampler, 1 call per step")
    config_class: ClassVar[type] = LCMConfig
    reported_names: ClassVar[tuple[str, ...]] = ("LCM",)

    def nfe(self, steps: int, guidance_scale: float) -> int:
        return steps                                   # guidance is distilled into the w embedding

    def init_training_state(self, ctx: TrainingContext) -> LCDState:
        cfg = self.config
        student = build_w_conditioned_unet(ctx.teacher.unet, cfg.time_cond_proj_dim, ctx.trainer.seed,
                                           cfg.cond_proj_init)
        # the target starts as a copy of the online student (reference step 8); no grad; EMA-updated
        target = copy.deepcopy(student).requires_grad_(False).to(ctx.trainer.device).train()
        return self._state(ctx, student, target, cfg.time_cond_proj_dim, cfg.ema_decay)

    def student_from_state(self, state: LCDState, ctx: TrainingContext) -> Student:
        unet = ctx.trainer.unwrap(state.student) if self.config.student_weights == "online" else state.target
        unet = unet.eval().requires_grad_(False)
        return Student(unet=unet, kind="unet", metadata={"weights": self.config.student_weights,
                                                         "time_cond_proj_dim": self.config.time_cond_proj_dim})

    def timestep_cond(self, denoiser: Denoiser, request: SampleRequest) -> torch.Tensor:
        """The w embedding of the request's guidance scale g, w = g - 1 as in the diffusers LCM pipeline."""
        dim = getattr(denoiser.unet.config, "time_cond_proj_dim", None)
        if not dim:
            raise ValueError("lcm samples with its student U-Net (time_cond_proj_dim set); this denoiser's "
                             "U-Net has no w embedding")
        w = torch.full((request.noise.shape[0],), lcm_w_from_guidance_scale(request.guidance_scale))
        return guidance_scale_embedding(w, dim).to(request.noise.device, request.noise.dtype)


@register_method("lcm-lora")
class LCMLoRA(_LCDMethod):
    paper: ClassVar[str] = ("Luo et al. 2023, LCM-LoRA: A Universal Stable-Diffusion Acceleration Module, "
                            "arXiv:2311.05556")
    summary: ClassVar[str] = ("latent consistency distillation into a rank-64 LoRA (no w embedding, stop-grad "
                              "target); LCMScheduler sampler with ordinary CFG")
    config_class: ClassVar[type] = LCMLoRAConfig
    reported_names: ClassVar[tuple[str, ...]] = ("LCM-LoRA",)
    # The guidance is distilled into the adapter (fixed w = 7.5, report §3.1); the model card samples
    # with guidance_scale 1.0 (no CFG) to 2 (diffusers#5773).
    default_guidance_scale: ClassVar[float | None] = 1.0

    def init_training_state(self, ctx: TrainingContext) -> LCDState:
        student = build_lora_unet(ctx.teacher.unet, self.config, ctx.trainer.seed)
        return self._state(ctx, student, None, None, None)   # no w embedding, no EMA

    def student_from_state(self, state: LCDState, ctx: TrainingContext) -> Student:
        unet = ctx.trainer.unwrap(state.student).eval().requires_grad_(False)
        lora = {k: v for k, v in dataclasses.asdict(self.config).items() if k.startswith("lora_")}
        return Student(unet=unet, kind="lora", metadata={"lora": lora})


__all__ = ["LCM", "LCMLoRA", "LCMConfig", "LCMLoRAConfig", "LCM_LORA_TARGET_MODULES", "build_w_conditioned_unet",
           "build_lora_unet"]
