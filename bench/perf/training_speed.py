"""`bench profile`, training: optimizer-step time and peak memory of a method's real training step
through ``Trainer.fit``, with and without gradient checkpointing, and the largest batch that fits
on a GPU; see ``bench.perf.profile``."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
from torch import nn

from bench.assets.train_data import SyntheticPairs, training_data_for
from bench.core.errors import MissingResourceError
from bench.engine.students import training_plan
from bench.engine.training import Trainer
from bench.perf.profile_spec import (
    MAX_SEARCH_BATCH,
    ProfileSpec,
    TrainRow,
    free_memory,
    read_peak,
    reset_peak,
)
from bench.scoring.metrics.latency import summarize_timings
from methods.base import TrainingContext

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def training_context(method, teacher, trainer, data) -> TrainingContext:
    """The context ``method.init_training_state`` gets (S = 1 for a method with one student per
    step count: the student's architecture and cost do not depend on S)."""
    return TrainingContext(teacher, trainer, data, 1 if method.student_per_step_count else None)


def new_trainer(schedule, device: torch.device, description: str):
    """A checkpoint-free ``Trainer``. accelerate keeps one process-wide ``AcceleratorState`` and
    refuses an ``Accelerator`` with another mixed precision than the first one's; profiling fp16
    then bf16 in one (single-process) run needs a fresh state, so a stale one is reset here."""
    from accelerate.state import AcceleratorState


    mixed = "no" if device.type == "cpu" else schedule.mixed_precision      # as Trainer decides
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != mixed:
        AcceleratorState._reset_state()
    return Trainer(schedule, None, device=device, progress=False, description=description)


def device_mark(cuda: bool) -> Any:
    """A point on the device's timeline: a recorded CUDA event on a GPU, perf_counter on the CPU."""
    if not cuda:
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def elapsed_ms(start: Any, end: Any) -> float:
    """Milliseconds between two :func:`device_mark` marks (CUDA marks: after a synchronize)."""
    if isinstance(start, float):
        return (end - start) * 1000.0
    return float(start.elapsed_time(end))


class _Clock:
    """Marks on the device's timeline: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def tick(self) -> None:
        self.marks.append(device_mark(self.cuda))

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
        return [elapsed_ms(a, b) for a, b in zip(self.marks, self.marks[1:])]


class _TickingData:
    """A training source that marks the clock when the Trainer asks for a batch: the start of
    each optimizer step (with gradient accumulation 1)."""

    def __init__(self, data, clock: _Clock):
        self.data, self.clock = data, clock

    @property
    def identity(self) -> dict:
        return self.data.identity

    def batch(self, index: int, batch_size: int):
        self.clock.tick()
        return self.data.batch(index, batch_size)


def training_source(teacher, seed: int = 0):
    """The teacher's training data; synthetic pairs where it has none here (step time does not
    depend on the pictures). Returns (data, note)."""
    try:
        return training_data_for(teacher, seed=seed), ""
    except MissingResourceError:
        return SyntheticPairs(resolution=teacher.resolution, seed=seed), \
            "synthetic image-caption pairs (no training data folder set; step time does not depend on the images)"


def checkpointable_networks(models) -> list[nn.Module]:
    """The diffusers models inside the trained models (the U-Net of a fake-score or discriminator
    wrapper included) that support ``enable_gradient_checkpointing``."""
    return [module for model in models for module in model.modules()
            if getattr(module, "_supports_gradient_checkpointing", False)
            and callable(getattr(module, "enable_gradient_checkpointing", None))]


def measure_training_step(method, teacher, data, batch: int, gradient_checkpointing: bool, warmup_steps: int,
                          timed_steps: int) -> TrainRow:
    """``warmup_steps + timed_steps`` optimizer steps of ``method`` through ``Trainer.fit``; the
    timed ones' step times and the peak memory over all of them (optimizer state included)."""
    device = next(teacher.unet.parameters()).device
    train_method, schedule = training_plan(method, teacher)
    train_method, timing_note = train_method.for_step_timing()
    schedule = dataclasses.replace(schedule, max_train_steps=warmup_steps + timed_steps, train_batch_size=batch,
                                   gradient_accumulation_steps=1, checkpointing_steps=0)
    trainer = new_trainer(schedule, device, f"profile {method.name}")
    row = TrainRow(method.name, "", batch, gradient_checkpointing, mixed_precision=trainer.schedule.mixed_precision,
                   warmup_steps=warmup_steps, timed_steps=timed_steps, note=timing_note)
    state = train_method.init_training_state(training_context(train_method, teacher, trainer, data))
    try:
        if gradient_checkpointing:
            networks = checkpointable_networks(trainer.unwrap(model) for model in state.models)
            if not networks:
                row.status, row.note = "skipped", "no trained network supports gradient checkpointing"
                return row
            for network in networks:
                network.enable_gradient_checkpointing()
        clock = _Clock(device)
        reset_ok = reset_peak(device)
        report = trainer.fit(state, train_method.training_step, _TickingData(data, clock), teacher)
        clock.tick()
        row.losses = list(report.losses)
        row.skipped_steps = report.skipped_steps
        row.peak_memory_mb, row.peak_memory_kind = read_peak(device, reset_ok)
    finally:
        trainer.accelerator.free_memory()
        del state

    row.timings_ms = clock.intervals_ms()[warmup_steps:]
    row.step_median_ms, row.step_p90_ms, row.step_mean_ms = summarize_timings(row.timings_ms)
    return row


def largest_training_batch(method, teacher, data, start: int, gradient_checkpointing: bool) -> int | None:
    """GPU: the largest of ``start * 2^k`` (<= MAX_SEARCH_BATCH) for which two training steps
    run without CUDA running out of memory; None when even ``start`` does not fit."""
    device = next(teacher.unet.parameters()).device
    fits, batch = None, start
    while batch <= MAX_SEARCH_BATCH:
        out_of_memory = False
        try:
            measure_training_step(method, teacher, data, batch, gradient_checkpointing, 1, 1)
        except torch.OutOfMemoryError:
            out_of_memory = True
        free_memory(device)              # outside the except block: the traceback no longer holds the tensors
        if out_of_memory:
            break
        fits, batch = batch, batch * 2
    return fits


def profile_method_training(spec: ProfileSpec, teacher, method, dtype: str, progress: bool = True) -> list[TrainRow]:
    """Rows without and with gradient checkpointing at ``spec.train_batch`` (+ the largest batch)."""
    if not method.trains:
        return [TrainRow(method.name, dtype, spec.train_batch, ckpt, status="skipped",
                         note=f"{method.name} is a teacher solver: nothing to train") for ckpt in (False, True)]
    data, data_note = training_source(teacher)
    rows = []
    for ckpt in (False, True):
        row = measure_training_step(method, teacher, data, spec.train_batch, ckpt, spec.train_warmup,
                                    spec.train_steps)
        row.dtype = dtype
        row.note = "; ".join(n for n in (row.note, data_note) if n)
        free_memory(spec.device)
        if row.status == "measured":
            if spec.device.type != "cuda":
                row.largest_batch_note = "largest batch: GPU only (the CPU has no memory limit to find)"
            elif not spec.batch_search:
                row.largest_batch_note = "largest batch: not searched (--no-batch-search)"
            else:
                row.largest_batch = largest_training_batch(method, teacher, data, spec.train_batch, ckpt)
                row.largest_batch_note = (f"largest of {spec.train_batch}*2^k that fits (<= {MAX_SEARCH_BATCH})"
                                          if row.largest_batch else f"batch {spec.train_batch} does not fit")
        rows.append(row)
        if progress:
            print(f"profile training {method.name} {dtype} batch {spec.train_batch} checkpointing={ckpt}: "
                  + (f"{row.step_median_ms:.1f} ms/step" if row.step_median_ms else row.note), flush=True)
    return rows


