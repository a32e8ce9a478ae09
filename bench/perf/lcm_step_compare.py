"""`bench benchmark lcm-step`: the time of one ``lcm`` training step (methods/lcm.py through
``Trainer.fit``) next to the inner step of diffusers' ``train_lcm_distill_sd_wds.py``
(bench/perf/lcm_reference_step.py), side by side in one process. Target on a GPU: ours / reference
<= 1.1 at batch 8 on ``sd15-arch``.

Like for like: both sides use the same frozen networks (the teacher's U-Net, VAE, text encoder and
tokenizer, built once), start from the same student weights, train with AdamW on the same
pre-made image-caption batches (the same batch size, dtype and mixed precision) and run the
reference with the project's values of every field the step reads (``reference_config_for``; the
ones that differ from the script's defaults are printed). Each side's step is what its training
loop does per optimizer step: text encoding, VAE encoding, the LCD loss, backward, gradient
clipping, the optimizer and LR-scheduler steps, the EMA update and the loop's own bookkeeping
(ours: ``Trainer.fit`` for one more step, with its NaN guard and loss history; the script: its
``loss.item()``). Images come from a few batches made before timing, so neither side pays for them.
Not counted by the ratio: the script casts the VAE to the weight dtype (fp16), while both sides
here encode with the project's fp32 VAE (SD's ``force_upcast``); see lcm_reference_step.py.
On a GPU both sides' fp32 students, EMA targets and AdamW states live side by side (about 28 GB
for SD-1.5, plus one step's activations at a time).

The steps run alternately, ours first in even rounds and the reference first in odd ones, after
``warmup`` untimed rounds; each is timed with the device synchronised before and after. The medians
and their ratio are printed. tests/perf/test_lcm_step_compare.py checks on the CPU that, given the
same draws, both sides compute the same losses and the same updated weights.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from bench.assets.teachers import load_teacher
from bench.assets.teachers.model import TEACHER_SPECS, VaeCodec
from bench.core.errors import UsageError
from bench.engine.students import training_plan
from bench.engine.training import Trainer
from bench.perf.lcm_reference_step import (
    ReferenceConfig,
    ReferenceRandomness,
    ReferenceState,
    build_reference,
    reference_training_step,
)
from bench.perf.training_speed import new_trainer, training_context, training_source
from bench.scoring.metrics.latency import summarize_timings
from methods.lcm import LCM

LCM_STEP_BENCHMARK = "lcm-step"
TARGET_RATIO = 1.1
#: distinct pre-made batches, served in turn
FIXED_BATCHES = 4
#: the script's fixed sigma_data of the boundary scalings
SCRIPT_SIGMA_DATA = 0.5


@dataclass(frozen=True)
class LcmStepSpec:
    teacher: str = "sd15-arch"
    batch: int = 8
    steps: int = 10                # timed steps per side
    warmup: int = 2                # untimed rounds first
    threads: int | None = None     # torch threads on the CPU (None, or on a GPU: torch's default)

    def __post_init__(self):
        if self.batch < 1 or self.steps < 1 or self.warmup < 0:
            raise UsageError(f"lcm-step: --batch and --steps must be >= 1 and --warmup >= 0 "
                             f"(got batch {self.batch}, steps {self.steps}, warmup {self.warmup})")


# ------------------------------------------------------------------------------------------------
# The two sides
# ------------------------------------------------------------------------------------------------


def reference_config_for(config: Any, schedule: Any) -> ReferenceConfig:
    """The script's arguments set to the project's values (an ``LCMConfig``, resolved, and the
    Trainer's ``TrainSchedule``)."""
    if config.sigma_data != SCRIPT_SIGMA_DATA:
        raise UsageError(f"lcm-step: the reference script fixes sigma_data = {SCRIPT_SIGMA_DATA}; "
                         f"this lcm config has {config.sigma_data}")
    return ReferenceConfig(
        mixed_precision=schedule.mixed_precision, learning_rate=schedule.learning_rate,
        lr_scheduler=config.lr_scheduler, lr_warmup_steps=config.lr_warmup_steps,
        max_train_steps=schedule.max_train_steps, adam_beta1=config.adam_beta1, adam_beta2=config.adam_beta2,
        adam_weight_decay=config.adam_weight_decay, adam_epsilon=config.adam_epsilon,
        max_grad_norm=schedule.max_grad_norm, w_min=config.w_min, w_max=config.w_max,
        num_ddim_timesteps=config.num_ddim_timesteps, loss_type=config.loss_type, huber_c=config.huber_c,
        unet_time_cond_proj_dim=config.time_cond_proj_dim, timestep_scaling_factor=config.timestep_scaling,
        ema_decay=config.ema_decay, seed=schedule.seed)


def differences_from_script(config: ReferenceConfig) -> list[str]:
    """``field value (script default)`` for every field where ``config`` is not the script's default."""
    default = ReferenceConfig()
    return [f"{f.name} {getattr(config, f.name)} (script {getattr(default, f.name)})"
            for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(default, f.name)]


class FixedBatches:
    """``count`` batches of a training source, made once and served in turn by index: both sides
    get the same images and captions for the same index, and neither pays for making them."""

    def __init__(self, source: Any, batch_size: int, count: int = FIXED_BATCHES):
        self.source = source
        self.batch_size = batch_size
        self.batches = [source.batch(i, batch_size) for i in range(count)]

    @property
    def identity(self) -> dict:
        return self.source.identity

    def batch(self, index: int, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        if batch_size != self.batch_size:
            raise ValueError(f"FixedBatches holds batches of {self.batch_size}, asked for {batch_size}")
        images, captions = self.batches[index % len(self.batches)]
        return images, list(captions)


@dataclass
class StepPair:
    """The project's LCM training (method, Trainer, state) and the reference, ready to step."""

    teacher: Any
    method: Any                    # the LCM instance that trains (toy/plumbing schedule applied)
    trainer: Trainer
    state: Any                     # methods.consistency.LCDState
    reference: ReferenceState
    data: FixedBatches
    ours_steps: int = 0
    reference_steps: int = 0

    def ours_step(self) -> float:
        """One optimizer step through ``Trainer.fit``: it runs up to ``schedule.max_train_steps``
        from its own step counter, so raising that by one runs exactly the next step."""
        self.trainer.schedule = dataclasses.replace(self.trainer.schedule, max_train_steps=self.ours_steps + 1)
        report = self.trainer.fit(self.state, self.method.training_step, self.data, self.teacher)
        self.ours_steps += 1
        return report.losses[-1]

    def reference_step(self, randomness: ReferenceRandomness | None = None) -> float:
        """The reference's next step, on the images and captions of the same index as ours."""
        images, captions = self.data.batch(self.reference_steps, self.data.batch_size)
        loss = reference_training_step(self.reference, images, captions, randomness)
        self.reference_steps += 1
        return loss

    def shared_randomness(self, index: int) -> ReferenceRandomness:
        """The generators our step ``index`` draws from (Trainer.generator): the reference then
        draws the same t, noise, w and posterior sample."""
        return ReferenceRandomness(step=self.trainer.generator(index), vae=self.trainer.generator(index, "vae"))


def build_pair(teacher: Any, batch: int, total_steps: int, config: Any | None = None,
               source: Any | None = None) -> StepPair:
    """Both sides on ``teacher`` (on its device; fp16 teacher: fp16 mixed precision) at ``batch``.
    ``config``: an ``LCMConfig`` (default: LCM's own, with the teacher's toy/plumbing schedule as
    ``bench train`` would apply it). ``total_steps``: the length the LR schedules are made for."""
    if not isinstance(teacher.codec, VaeCodec):
        raise UsageError(f"lcm-step needs a latent (VAE) teacher such as sd15-arch or tiny; "
                         f"{teacher.name!r} has no VAE")
    method, schedule = training_plan(LCM(config), teacher)
    schedule = dataclasses.replace(schedule, max_train_steps=total_steps, train_batch_size=batch,
                                   gradient_accumulation_steps=1, checkpointing_steps=0)
    device = next(teacher.unet.parameters()).device
    trainer = new_trainer(schedule, device, f"{LCM_STEP_BENCHMARK} lcm")
    data = FixedBatches(source if source is not None else training_source(teacher)[0], batch)
    state = method.init_training_state(training_context(method, teacher, trainer, data))
    reference = build_reference(teacher.unet, teacher.codec.vae, teacher.text_encoder, teacher.tokenizer,
                                teacher.scheduler_config, reference_config_for(method.config, trainer.schedule),
                                batch, device, initial_student=trainer.unwrap(state.student))
    return StepPair(teacher, method, trainer, state, reference, data)


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


@dataclass
class LcmStepResult:
    teacher: str
    batch: int
    device: str
    mixed_precision: str
    warmup: int
    ours_ms: list[float] = field(default_factory=list)
    reference_ms: list[float] = field(default_factory=list)
    ours_losses: list[float] = field(default_factory=list)
    reference_losses: list[float] = field(default_factory=list)
    ours_skipped: int = 0          # fp16 loss scaling: optimizer steps skipped on overflow
    reference_skipped: int = 0
    differences: list[str] = field(default_factory=list)

    @property
    def ours_median_ms(self) -> float:
        return summarize_timings(self.ours_ms)[0]

    @property
    def reference_median_ms(self) -> float:
        return summarize_timings(self.reference_ms)[0]

    @property
    def ratio(self) -> float:
        return self.ours_median_ms / self.reference_median_ms


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(step: Callable[[], float], device: torch.device) -> tuple[float, float]:
    """(milliseconds, loss) of one step, the device synchronised before and after."""
    _synchronize(device)
    began = time.perf_counter()
    loss = step()
    _synchronize(device)
    return (time.perf_counter() - began) * 1000.0, loss


def measure_pair(pair: StepPair, steps: int, warmup: int) -> tuple[list[float], list[float], list[float], list[float]]:
    """``warmup + steps`` rounds of one step per side, alternating which goes first; the timed
    rounds' (ours ms, reference ms, ours losses, reference losses)."""
    device = next(pair.teacher.unet.parameters()).device
    ours_ms, ref_ms, ours_loss, ref_loss = [], [], [], []
    for round_ in range(warmup + steps):
        sides = [(pair.ours_step, ours_ms, ours_loss), (pair.reference_step, ref_ms, ref_loss)]
        for step, times, losses in (sides if round_ % 2 == 0 else sides[::-1]):
            ms, loss = timed_ms(step, device)
            if round_ >= warmup:
                times.append(ms)
                losses.append(loss)
    return ours_ms, ref_ms, ours_loss, ref_loss


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"


def measure(spec: LcmStepSpec) -> LcmStepResult:
    """Load the teacher (fp16 on CUDA, fp32 on the CPU), build both sides, time them."""
    cuda = torch.cuda.is_available()
    known = TEACHER_SPECS.get(spec.teacher)
    if not cuda and known is not None and known.resolution >= 256:
        raise UsageError(f"lcm-step on {spec.teacher} ({known.resolution} px) needs a GPU and none is visible; "
                         "run `python -m bench benchmark lcm-step --teacher tiny` for a CPU smoke check")
    if spec.threads is not None and not cuda:      # on a GPU the host side keeps torch's default
        torch.set_num_threads(spec.threads)
    device = torch.device("cuda" if cuda else "cpu")
    teacher = load_teacher(spec.teacher, device=device, dtype=torch.float16 if cuda else torch.float32)
    pair = build_pair(teacher, spec.batch, spec.warmup + spec.steps)
    ours_ms, ref_ms, ours_loss, ref_loss = measure_pair(pair, spec.steps, spec.warmup)
    return LcmStepResult(teacher=spec.teacher, batch=spec.batch, device=_device_name(device),
                         mixed_precision=pair.trainer.schedule.mixed_precision, warmup=spec.warmup,
                         ours_ms=ours_ms, reference_ms=ref_ms, ours_losses=ours_loss, reference_losses=ref_loss,
                         ours_skipped=pair.trainer.skipped_steps, reference_skipped=pair.reference.skipped_steps,
                         differences=differences_from_script(pair.reference.config))


def format_result(result: LcmStepResult) -> str:
    ours = summarize_timings(result.ours_ms)
    ref = summarize_timings(result.reference_ms)
    verdict = "within" if result.ratio <= TARGET_RATIO else "over"
    lines = [
        f"lcm-step: teacher {result.teacher}, batch {result.batch}, {result.device}, mixed precision "
        f"{result.mixed_precision}; {result.warmup} warm-up + {len(result.ours_ms)} timed steps per side, alternating",
        f"  ours (methods/lcm.py via Trainer.fit)           median {ours[0]:9.1f} ms/step  "
        f"(p90 {ours[1]:.1f}, mean {ours[2]:.1f})",
        f"  reference (train_lcm_distill_sd_wds.py step)    median {ref[0]:9.1f} ms/step  "
        f"(p90 {ref[1]:.1f}, mean {ref[2]:.1f})",
        f"  ratio ours/reference: {result.ratio:.3f} ({verdict} the target <= {TARGET_RATIO})",
        f"  last losses: ours {result.ours_losses[-1]:.5g}, reference {result.reference_losses[-1]:.5g} "
        "(different draws; the equality is tests/perf/test_lcm_step_compare.py)",
        "  reference run with the project's values: " + (", ".join(result.differences) or "none differ"),
    ]
    if result.ours_skipped or result.reference_skipped:
        lines.append(f"  fp16 overflow-skipped optimizer steps: ours {result.ours_skipped}, "
                     f"reference {result.reference_skipped}")
    if result.device.startswith("cpu"):
        lines.append("  CPU: a smoke check only (shared machine); the 1.1x target is for a GPU")
    return "\n".join(lines)


def run_lcm_step(spec: LcmStepSpec) -> LcmStepResult:
    result = measure(spec)
    print(format_result(result), flush=True)
    return result


__all__ = ["LCM_STEP_BENCHMARK", "LcmStepSpec", "LcmStepResult", "StepPair", "FixedBatches", "build_pair",
           "measure", "measure_pair", "format_result", "reference_config_for", "differences_from_script",
           "run_lcm_step", "TARGET_RATIO"]
