"""`bench profile`: speed and memory of methods beside a stock diffusers pipeline, and of training.

For each method, step count and precision (``--dtypes``):

* **our harness**: batch-1 end-to-end latency (text encoder + every denoiser evaluation + VAE
  decode; median and p90 over ``--runs`` >= 20 timed runs after ``--warmup``, CUDA events on a
  GPU), the denoiser-only time and its share, throughput in images/s at each of ``--batches``, peak
  memory. The closures are the ones `bench run` times (``bench.scoring.timing.latency_closures``,
  ``throughput_closure``), measured by ``bench.scoring.metrics.latency.measure_latency``.
* **stock diffusers**: a ``StableDiffusionPipeline`` assembled from the same teacher components
  (unet or the student's U-Net, vae, text_encoder, tokenizer) with the scheduler matching the
  method (``Method.diffusers_scheduler``), the same step count, guidance and per-image seeds, measured the
  same way in the same process; and the ratio ours/diffusers of the end-to-end medians (target
  <= 1.02: the harness adds nothing). Both sides do the same work: the prompt is encoded on every
  call, the empty-prompt embedding is computed once (ours caches it; the pipeline gets it as
  ``negative_prompt_embeds``), noise is drawn on the CPU from the same generators, and the
  pipeline returns latents (``output_type="latent"``) that are decoded with the same
  ``vae.decode`` call the pipeline makes, in the VAE's own dtype (fp32 for the SD-1.5 VAE, as the
  harness's ``VaeCodec`` upcasts it). Pixel-space teachers have no VAE and no pipeline row.
* **training** (``--no-train`` skips it): optimizer-step time and peak memory of every training
  method at ``--train-batch``, with and without gradient checkpointing
  (``enable_gradient_checkpointing()`` on every diffusers model inside the trained networks: the
  student U-Net, a fake-score or discriminator U-Net), through the method's real
  ``init_training_state`` / ``training_step`` and the harness's ``Trainer.fit``. A step is timed
  from the start of one batch's preparation (data, VAE encode, text encode) to the next's, so it
  holds everything ``fit`` does per optimizer step. On a GPU, the largest batch that fits is found
  by doubling the batch until CUDA runs out of memory.

Students: latency does not depend on weight values, so distilled methods are profiled with an
untrained student of the exact architecture, built by the method's own ``init_training_state``
(LoRA students fused into the U-Net, as ``bench.engine.students.load_student_unet`` does); no student is
trained. While a student is measured on a GPU, the teacher's U-Net waits on the CPU, so peak memory
holds the networks that sample (student U-Net, text encoder, VAE) and not an idle teacher.

Precision: fp16/bf16 are measured on a GPU only; on the CPU those cells are written as skipped
with a note (the harness runs fp32 there; half-precision CPU kernels say nothing about GPU speed).

Parts: ``--no-sampling`` / ``--no-train`` measure one part only; ``--speedup`` adds the make-it-fast
study of ``bench.perf.speedup`` (profiler, per-component times, eager / channels-last / half-vae /
compile / cuda-graphs / cuda-graphs-all). The report is rewritten after every method and every
variant of the study (``"complete": false`` until the end), so a run cut short keeps what it
finished; ``--merge`` joins the reports of several runs on one device, teacher and library versions.

Output: ``<out>/<device-name-slug>.md`` (tables, the exact command, library versions, the device)
and ``.json`` beside it (every number, raw timings included), both written atomically, with the
latencies printed in SCott Table 2 (a single A100) and DMD Table 3 (batch 1; GPU not stated)
labelled as measured on another GPU.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bench.assets.teachers import load_teacher
from bench.core.errors import UsageError
from bench.engine.cells import guidance_for
from bench.engine.published import OWN_TEACHER, load_own_teacher
from bench.engine.sampling import PRECISIONS
from bench.perf.profile_report import (
    device_info,
    report_notes,
    reported_latencies,
    versions,
)
from bench.perf.profile_spec import (
    DEFAULT_OUT,
    HALF_ON_CPU_NOTE,
    ProfileSpec,
    SpeedRow,
    TrainRow,
    free_memory,
    vae_dtype,
)
from bench.perf.sampling_speed import (
    profile_method_latency,
    profile_student,
    sampling_teacher,
)
from bench.perf.speedup import run_study
from bench.perf.training_speed import profile_method_training

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def run_profile(spec: ProfileSpec, progress: bool = True, partial: Callable[[dict], None] | None = None) -> dict:
    """Every measurement of ``spec``; returns the report (JSON-serialisable). ``partial`` is given
    the report so far (``"complete": False``) after each method and after the study, so a run
    stopped midway keeps what it measured."""
    speed: list[SpeedRow] = []
    training: list[TrainRow] = []
    speedup: list[dict] = []
    teacher_info: dict[str, Any] = {"name": spec.teacher}
    started = time.perf_counter()

    def report(complete: bool) -> dict:
        return _report(spec, started, teacher_info, speed, training, speedup, complete)

    for dtype in spec.dtypes:
        if spec.device.type == "cpu" and dtype != "fp32":
            note = HALF_ON_CPU_NOTE.format(dtype=dtype)
            if spec.sampling:
                speed += [SpeedRow(m.name, s, dtype, p, status="skipped", note=note)
                          for m in spec.methods for s in spec.steps for p in ("ours", "diffusers")]
            if spec.train:
                training += [TrainRow(m.name, dtype, spec.train_batch, ckpt, status="skipped", note=note)
                             for m in spec.methods for ckpt in (False, True)]
            continue
        if spec.teacher == OWN_TEACHER:
            teacher = load_own_teacher(spec.student, spec.device, PRECISIONS[dtype])
        else:
            teacher = load_teacher(spec.teacher, device=spec.device, dtype=PRECISIONS[dtype])
        teacher_info.update(identity=teacher.identity, resolution=teacher.resolution,
                            latent_shape=list(teacher.latent_shape), codec=type(teacher.codec).__name__,
                            vae_dtype=vae_dtype(teacher))
        if spec.sampling:
            for method in spec.methods:
                speed += profile_method_latency(spec, teacher, method, dtype, progress)
                if partial:
                    partial(report(False))
        if spec.speedup_at:
            def study_so_far(study):
                if partial:
                    partial(_report(spec, started, teacher_info, speed, training,
                                    speedup + [dataclasses.asdict(study)], False))

            speedup.append(dataclasses.asdict(speedup_study(spec, teacher, dtype, progress, study_so_far)))
            if partial:
                partial(report(False))
        if spec.train:
            for method in spec.methods:
                training += profile_method_training(spec, teacher, method, dtype, progress)
                if partial:
                    partial(report(False))
        del teacher
        free_memory(spec.device)
    return report(True)


def _report(spec: ProfileSpec, started: float, teacher_info: dict, speed: list[SpeedRow], training: list[TrainRow],
            speedup: list[dict], complete: bool) -> dict:
    return {
        "format": 1,
        "complete": complete,
        "command": spec.command(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": time.perf_counter() - started,
        "device": device_info(spec.device),
        "versions": versions(),
        "teacher": teacher_info,
        "settings": {"runs": spec.runs, "throughput_runs": spec.throughput_runs, "warmup": spec.warmup,
                     "batches": list(spec.batches), "seed": spec.seed,
                     "prompt": spec.prompt, "guidance": spec.guidance, "train_batch": spec.train_batch,
                     "train_steps": spec.train_steps, "train_warmup": spec.train_warmup,
                     "threads": torch.get_num_threads()},
        "latency": [dataclasses.asdict(r) for r in speed],
        "training": [dataclasses.asdict(r) for r in training],
        "speedup": speedup,
        "reported": reported_latencies(),
        "notes": report_notes(spec),
    }


def speedup_study(spec: ProfileSpec, teacher, dtype: str, progress: bool = True,
                  on_variant: Callable | None = None):
    """The make-it-fast study (bench/perf/speedup.py) of ``spec.speedup_at`` in ``dtype``; ``on_variant``
    as in ``run_study``."""
    method, steps = spec.speedup_at
    guidance = guidance_for(spec.guidance, method, teacher)
    student = profile_student(method, teacher)
    with sampling_teacher(teacher, student.denoiser.unet) as sampler_teacher:
        study = run_study(spec, sampler_teacher, method, student, steps, guidance, dtype, spec.speedup_variants,
                          progress, on_variant)
    del student
    free_memory(spec.device)
    return study


def merge_reports(paths: list[str], out: str | Path = DEFAULT_OUT) -> dict:
    """One report from several of one device, teacher and library versions: their rows in order,
    each run's command listed (``runs``)."""
    reports = []
    for path in paths:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as err:
            raise UsageError(f"--merge: cannot read report {path}: {err}") from None
    for key, what in (("device", "device names"), ("teacher", "teachers")):
        names = sorted({r[key]["name"] for r in reports})
        if len(names) > 1:
            raise UsageError(f"--merge: the reports have different {what} ({', '.join(names)}); merge the reports "
                             "of one device and teacher at a time")
    if any(r["versions"] != reports[0]["versions"] for r in reports):
        raise UsageError("--merge: the reports were made with different library versions; their timings do not "
                         "belong in one table")
    notes = list(dict.fromkeys(note for r in reports for note in r["notes"]))
    return dict(reports[0], complete=all(r.get("complete", True) for r in reports),
                command=f"python -m bench profile --merge {','.join(paths)} --out {out}",
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=sum(r["seconds"] for r in reports),
                runs=[{k: r.get(k, True) for k in ("command", "created", "seconds", "complete")} for r in reports],
                latency=[row for r in reports for row in r["latency"]],
                training=[row for r in reports for row in r["training"]],
                speedup=[study for r in reports for study in r.get("speedup", [])],
                reported=reported_latencies(), notes=notes)


