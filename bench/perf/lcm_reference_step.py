"""The inner training step of diffusers' LCM distillation script, transcribed as the yardstick of
``bench benchmark lcm-step`` (bench/perf/lcm_step_compare.py).

Source: huggingface/diffusers, ``examples/consistency_distillation/train_lcm_distill_sd_wds.py``
(read at commit 00f354d14d00ed60cfce2ea7c5efceca2e4c4c3f). This is a transcription written for this
project, not a copy of the script: only the set-up the step needs (the noise schedule and DDIM
solver, the online and target students, AdamW, the LR schedule, the accelerate wrapping and the
empty-prompt embedding) and the body of its training loop. No webdataset loader, checkpoints,
validation or trackers.

One step, numbered as the script's own comments number them::

    1   prompt embeddings (tokenizer padded to max length, text encoder, no grad); latents =
        VAE posterior sample (in chunks of vae_encode_batch_size) * scaling_factor, in the weight dtype
    2   n ~ U{0..N-1}; t_{n+k} = grid[n] (grid = (1..N) * T/N - 1); t_n = max(t_{n+k} - T/N, 0)
    3   c_skip, c_out at t_{n+k} and t_n (sigma_data 0.5, timestep scaling 10)
    4   x = DDPMScheduler.add_noise(latents, noise ~ N(0, I), t_{n+k})
    5   w ~ U[w_min, w_max] (LCM convention, CPU) and its Fourier embedding (time_cond_proj_dim wide)
    7   online student: f = c_skip x + c_out x0(student(x, t_{n+k}, w, c))
    8   teacher, cond and uncond, no grad, autocast: CFG in x0 and eps space, cond + w (cond - uncond);
        DDIM step to t_n with abar of the previous grid point
    9   target (EMA) student at (x_{t_n}, t_n, w, c), no grad, autocast to the weight dtype
    10  loss: mean squared error (l2) or pseudo-Huber mean(sqrt(d^2 + c^2) - c)
    11  accelerator.backward, clip the gradient norm, optimizer step, LR scheduler step, zero_grad
    12  EMA update of the target, parameter by parameter (mul_ / add_)
    and the loop's ``loss.detach().item()`` for its progress bar (a device sync every step).

The script's defaults (``parse_args``), held by :class:`ReferenceConfig`: ``--mixed_precision``
unset (the accelerate config's; its README trains with fp16), ``--gradient_checkpointing`` off,
``--use_8bit_adam`` off (torch AdamW), xformers off, ``--allow_tf32`` off, ``--cast_teacher_unet``
off, ``--train_batch_size`` 16, ``--learning_rate`` 1e-4, ``--lr_scheduler`` constant
(``--lr_warmup_steps`` 500), AdamW betas 0.9 / 0.999, weight decay 1e-2, eps 1e-8,
``--max_grad_norm`` 1.0, ``--w_min`` 5, ``--w_max`` 15, ``--num_ddim_timesteps`` 50, ``--loss_type``
l2 (the README uses huber), ``--huber_c`` 0.001, ``--unet_time_cond_proj_dim`` 256,
``--vae_encode_batch_size`` 32, ``--timestep_scaling_factor`` 10, ``--ema_decay`` 0.95. The
benchmark runs it with the project's values instead (``reference_config_for`` in
lcm_step_compare.py), so that both sides do the same work.

Where this transcription departs from the script, and why:

* The networks are handed in (the project's teacher U-Net, VAE, text encoder, tokenizer and
  scheduler config) instead of ``from_pretrained``, so that both sides run the same modules. The
  teacher U-Net runs in the dtype it is given: the project's fp16 teacher on CUDA is the script's
  ``--cast_teacher_unet``. The students are built as in the script (``from_config`` with
  ``time_cond_proj_dim``, teacher weights loaded non-strictly, the target a copy); ``initial_student``
  replaces their weights by given ones (the equality test starts both sides from the same weights).
* The VAE runs in the dtype it is given. The script casts it to the weight dtype inside its loop;
  the project keeps SD's VAE in fp32 (diffusers' ``force_upcast``), and both sides use that VAE.
* Teacher autocast: the script enters ``torch.autocast(device.type)``, which is fp16 on CUDA
  whatever ``--mixed_precision`` says and bf16 on the CPU; here it is the weight dtype, and off in
  fp32. On CUDA under fp16 (the benchmark's GPU setting) the two are the same.
* Randomness: with :class:`ReferenceRandomness` generators, n, the noise and w are drawn from one
  CPU generator in the project's order (n, noise, w) and the posterior sample from another, so
  that identical generators give identical draws (tests/perf/test_lcm_step_compare.py). Without,
  the draws are the script's: the global RNG, n and the noise on the device, w on the CPU.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

MIXED_PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
REFERENCE_LOSS_TYPES = ("l2", "huber")
#: the script's hard-coded length of the empty-prompt tokens
UNCOND_MAX_LENGTH = 77


@dataclass(frozen=True)
class ReferenceConfig:
    """The script's arguments that its training step reads; defaults are the script's."""

    mixed_precision: str = "no"              # accelerate: no | fp16 | bf16
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 500
    max_train_steps: int = 1000              # only the LR schedule reads it here
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    w_min: float = 5.0
    w_max: float = 15.0
    num_ddim_timesteps: int = 50
    loss_type: str = "l2"
    huber_c: float = 0.001
    unet_time_cond_proj_dim: int = 256
    vae_encode_batch_size: int = 32
    timestep_scaling_factor: float = 10.0
    ema_decay: float = 0.95
    seed: int = 0                            # the student's random init (its new cond_proj)

    def __post_init__(self):
        if self.mixed_precision not in MIXED_PRECISION_DTYPES:
            raise ValueError(f"mixed_precision must be one of {tuple(MIXED_PRECISION_DTYPES)}, "
                             f"got {self.mixed_precision!r}")
        if self.loss_type not in REFERENCE_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {REFERENCE_LOSS_TYPES}, got {self.loss_type!r}")

    @property
    def weight_dtype(self) -> torch.dtype:
        return MIXED_PRECISION_DTYPES[self.mixed_precision]


@dataclass
class ReferenceRandomness:
    """CPU generators for one step's draws (None: the script's global RNG)."""

    step: torch.Generator | None = None      # n, noise, w, in this order
    vae: torch.Generator | None = None       # the VAE posterior sample


# ------------------------------------------------------------------------------------------------
# The script's helpers, transcribed
# ------------------------------------------------------------------------------------------------


def w_embedding(w: Tensor, dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Fourier features of 1000 w: sin and cos of w * 1000 * 10000^(-i / (dim/2 - 1))
    (the script's ``guidance_scale_embedding``)."""
    half = dim // 2
    rate = torch.log(torch.tensor(10000.0)) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -rate)
    angles = (w * 1000.0).to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def boundary_scalings(t: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) at integer timesteps ``t`` (``scalings_for_boundary_conditions``)."""
    scaled = timestep_scaling * t
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def _per_sample(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``table[t]`` shaped (B, 1, 1, 1) to broadcast over ``like`` (``extract_into_tensor``)."""
    return table.gather(-1, t).reshape(t.shape[0], *([1] * (like.ndim - 1)))


def _column(x: Tensor, like: Tensor) -> Tensor:
    return x.reshape(x.shape[0], *([1] * (like.ndim - 1)))


def x0_from_output(output: Tensor, t: Tensor, x: Tensor, prediction_type: str, alphas: Tensor,
                   sigmas: Tensor) -> Tensor:
    """The predicted clean sample (``get_predicted_original_sample``)."""
    alpha, sigma = _per_sample(alphas, t, x), _per_sample(sigmas, t, x)
    if prediction_type == "epsilon":
        return (x - sigma * output) / alpha
    if prediction_type == "v_prediction":
        return alpha * x - sigma * output
    if prediction_type == "sample":
        return output
    raise ValueError(f"prediction type {prediction_type!r} is not supported")


def eps_from_output(output: Tensor, t: Tensor, x: Tensor, prediction_type: str, alphas: Tensor,
                    sigmas: Tensor) -> Tensor:
    """The predicted noise (``get_predicted_noise``)."""
    alpha, sigma = _per_sample(alphas, t, x), _per_sample(sigmas, t, x)
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha * output + sigma * x
    if prediction_type == "sample":
        return (x - alpha * output) / sigma
    raise ValueError(f"prediction type {prediction_type!r} is not supported")


class GridDDIM:
    """The script's ``DDIMSolver``: the N-point grid (1..N) * (T // N) - 1 and, for each grid
    index, the abar of the grid point below it (abar_0 below the first)."""

    def __init__(self, alphas_cumprod: np.ndarray, num_train_timesteps: int, num_points: int):
        stride = num_train_timesteps // num_points
        grid = (np.arange(1, num_points + 1) * stride).round().astype(np.int64) - 1
        below = np.asarray([alphas_cumprod[0], *alphas_cumprod[grid[:-1]].tolist()])
        self.timesteps = torch.from_numpy(grid).long()
        self.abar_below = torch.from_numpy(below)

    def to(self, device: torch.device) -> "GridDDIM":
        self.timesteps = self.timesteps.to(device)
        self.abar_below = self.abar_below.to(device)
        return self

    def step(self, x0: Tensor, eps: Tensor, index: Tensor) -> Tensor:
        abar = _per_sample(self.abar_below, index, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps


@torch.no_grad()
def ema_into(target: Iterable[nn.Parameter], source: Iterable[nn.Parameter], rate: float) -> None:
    """target <- rate target + (1 - rate) source, one parameter at a time (``update_ema``)."""
    for t, s in zip(target, source):
        t.detach().mul_(rate).add_(s, alpha=1 - rate)


# ------------------------------------------------------------------------------------------------
# Set-up and step
# ------------------------------------------------------------------------------------------------


@dataclass
class ReferenceState:
    config: ReferenceConfig
    accelerator: Any
    noise_scheduler: Any                     # diffusers DDPMScheduler
    alphas: Tensor                           # sqrt(abar), on the device
    sigmas: Tensor                           # sqrt(1 - abar), on the device
    solver: GridDDIM
    tokenizer: Any
    text_encoder: nn.Module
    vae: nn.Module
    teacher_unet: nn.Module
    unet: nn.Module                          # the online student (prepared)
    target_unet: nn.Module
    optimizer: Any
    lr_scheduler: Any
    uncond_prompt_embeds: Tensor
    time_cond_proj_dim: int
    steps: int = 0
    skipped_steps: int = 0                   # fp16 loss scaling: optimizer steps GradScaler skipped

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


def build_reference(teacher_unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer: Any,
                    scheduler_config: dict, config: ReferenceConfig, batch_size: int,
                    device: torch.device | str, initial_student: nn.Module | None = None) -> ReferenceState:
    """The script's set-up (its steps 1-15, less data, trackers and checkpoint hooks) around the
    given frozen networks, which must already be on ``device``."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler

    device = torch.device(device)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=config.mixed_precision,
                              gradient_accumulation_steps=1)
    # 1. noise schedule and the DDIM solver on the skipping grid
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    alphas = torch.sqrt(noise_scheduler.alphas_cumprod)
    sigmas = torch.sqrt(1 - noise_scheduler.alphas_cumprod)
    solver = GridDDIM(noise_scheduler.alphas_cumprod.numpy(), noise_scheduler.config.num_train_timesteps,
                      config.num_ddim_timesteps)
    # 7. online student: the teacher's architecture with a w embedding, the teacher's weights
    proj_dim = teacher_unet.config.time_cond_proj_dim or config.unet_time_cond_proj_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        unet = UNet2DConditionModel.from_config(teacher_unet.config, time_cond_proj_dim=proj_dim)
    unet.load_state_dict(teacher_unet.state_dict(), strict=False)
    if initial_student is not None:
        unet.load_state_dict(initial_student.state_dict())
    unet.train()
    # 8. target student: a copy, no grad, updated by EMA
    target_unet = copy.deepcopy(unet)
    target_unet.train()
    target_unet.requires_grad_(False)
    # 9. devices (the frozen networks are the caller's, already placed)
    target_unet.to(accelerator.device)
    alphas, sigmas = alphas.to(accelerator.device), sigmas.to(accelerator.device)
    solver = solver.to(accelerator.device)
    # 12. AdamW; 14. LR schedule; 15. accelerate
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate,
                                  betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps,
                                 num_training_steps=config.max_train_steps)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    # the empty prompt, encoded once before the loop
    uncond_ids = tokenizer([""] * batch_size, return_tensors="pt", padding="max_length",
                           max_length=UNCOND_MAX_LENGTH).input_ids.to(accelerator.device)
    with torch.no_grad():
        uncond_prompt_embeds = text_encoder(uncond_ids)[0]
    return ReferenceState(config=config, accelerator=accelerator, noise_scheduler=noise_scheduler, alphas=alphas,
                          sigmas=sigmas, solver=solver, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                          teacher_unet=teacher_unet, unet=unet, target_unet=target_unet, optimizer=optimizer,
                          lr_scheduler=lr_scheduler, uncond_prompt_embeds=uncond_prompt_embeds,
                          time_cond_proj_dim=proj_dim)


@torch.no_grad()
def _encode_captions(state: ReferenceState, captions: Sequence[str]) -> Tensor:
    tokens = state.tokenizer(list(captions), padding="max_length", max_length=state.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
    return state.text_encoder(tokens.input_ids.to(state.text_encoder.device))[0]


def _encode_images(state: ReferenceState, images: Tensor, generator: torch.Generator | None) -> Tensor:
    vae, chunk = state.vae, state.config.vae_encode_batch_size
    pixels = images.to(state.device, non_blocking=True).to(next(vae.parameters()).dtype)
    parts = [vae.encode(pixels[i:i + chunk]).latent_dist.sample(generator=generator)
             for i in range(0, pixels.shape[0], chunk)]
    return (torch.cat(parts) * vae.config.scaling_factor).to(state.config.weight_dtype)


def _teacher_autocast(state: ReferenceState):
    dtype = state.config.weight_dtype
    return torch.autocast(state.device.type, dtype=dtype, enabled=dtype != torch.float32)


def reference_training_step(state: ReferenceState, images: Tensor, captions: Sequence[str],
                            randomness: ReferenceRandomness | None = None) -> float:
    """One optimizer step of the script on ``images`` (B, 3, H, W) in [-1, 1] with ``captions``;
    returns the loss as the script logs it (``loss.detach().item()``)."""
    cfg, acc = state.config, state.accelerator
    rng = randomness or ReferenceRandomness()
    kind = state.noise_scheduler.config.prediction_type
    to_x0 = dict(prediction_type=kind, alphas=state.alphas, sigmas=state.sigmas)
    with acc.accumulate(state.unet):
        # 1. text and image conditioning
        prompt_embeds = _encode_captions(state, captions)
        latents = _encode_images(state, images, rng.vae)
        bsz, device = latents.shape[0], latents.device

        # 2. t_{n+k} on the skipping grid, t_n = t_{n+k} - k (clamped at 0)
        skip = state.noise_scheduler.config.num_train_timesteps // cfg.num_ddim_timesteps
        if rng.step is None:
            index = torch.randint(0, cfg.num_ddim_timesteps, (bsz,), device=device).long()
        else:
            index = torch.randint(0, cfg.num_ddim_timesteps, (bsz,), generator=rng.step).to(device)
        start_t = state.solver.timesteps[index]
        end_t = (start_t - skip).clamp(min=0)

        # 3. boundary scalings at both ends
        c_skip_start, c_out_start = (_column(c, latents) for c in
                                     boundary_scalings(start_t, timestep_scaling=cfg.timestep_scaling_factor))
        c_skip, c_out = (_column(c, latents) for c in
                         boundary_scalings(end_t, timestep_scaling=cfg.timestep_scaling_factor))

        # 4. forward process to t_{n+k}
        if rng.step is None:
            noise = torch.randn_like(latents)
        else:
            noise = torch.randn(latents.shape, generator=rng.step, dtype=torch.float32).to(device, latents.dtype)
        x_start = state.noise_scheduler.add_noise(latents, noise, start_t)

        # 5. w ~ U[w_min, w_max] and its embedding
        w = (cfg.w_max - cfg.w_min) * torch.rand((bsz,), generator=rng.step) + cfg.w_min
        w_emb = w_embedding(w, state.time_cond_proj_dim).to(device=device, dtype=latents.dtype)
        w = w.reshape(bsz, 1, 1, 1).to(device=device, dtype=latents.dtype)

        # 7. online student at t_{n+k}
        out = state.unet(x_start, start_t, timestep_cond=w_emb, encoder_hidden_states=prompt_embeds.float()).sample
        model_pred = c_skip_start * x_start + c_out_start * x0_from_output(out, start_t, x_start, **to_x0)

        # 8. guided teacher in x0 and eps space, one DDIM step to t_n
        with torch.no_grad():
            with _teacher_autocast(state):
                teacher_x = x_start.to(cfg.weight_dtype)
                out_c = state.teacher_unet(teacher_x, start_t,
                                           encoder_hidden_states=prompt_embeds.to(cfg.weight_dtype)).sample
                out_u = state.teacher_unet(teacher_x, start_t,
                                           encoder_hidden_states=state.uncond_prompt_embeds.to(cfg.weight_dtype)).sample
                x0_c = x0_from_output(out_c, start_t, x_start, **to_x0)
                eps_c = eps_from_output(out_c, start_t, x_start, **to_x0)
                x0_u = x0_from_output(out_u, start_t, x_start, **to_x0)
                eps_u = eps_from_output(out_u, start_t, x_start, **to_x0)
                x0_guided = x0_c + w * (x0_c - x0_u)
                eps_guided = eps_c + w * (eps_c - eps_u)
                x_end = state.solver.step(x0_guided, eps_guided, index)

        # 9. target student at t_n
        with torch.no_grad():
            with torch.autocast(device.type, dtype=cfg.weight_dtype, enabled=cfg.weight_dtype != torch.float32):
                out_t = state.target_unet(x_end.float(), end_t, timestep_cond=w_emb,
                                          encoder_hidden_states=prompt_embeds.float()).sample
            target = c_skip * x_end + c_out * x0_from_output(out_t, end_t, x_end, **to_x0)

        # 10. loss
        if cfg.loss_type == "l2":
            loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        else:
            loss = torch.mean(torch.sqrt((model_pred.float() - target.float()) ** 2 + cfg.huber_c**2) - cfg.huber_c)

        # 11. backward and the optimizer step
        acc.backward(loss)
        if acc.sync_gradients:
            acc.clip_grad_norm_(state.unet.parameters(), cfg.max_grad_norm)
        state.optimizer.step()
        state.lr_scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)

    # 12. EMA of the target, after each optimizer step
    if acc.sync_gradients:
        state.skipped_steps += int(acc.optimizer_step_was_skipped)
        ema_into(state.target_unet.parameters(), state.unet.parameters(), cfg.ema_decay)
        state.steps += 1
    return loss.detach().item()


__all__ = ["ReferenceConfig", "ReferenceRandomness", "ReferenceState", "GridDDIM", "build_reference",
           "reference_training_step", "w_embedding", "boundary_scalings", "x0_from_output", "eps_from_output",
           "ema_into"]
