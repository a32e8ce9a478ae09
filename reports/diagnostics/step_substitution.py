"""Which sampling step makes a few-step student worse? Substitute one step at a time.

An analysis script for the toy world (not part of the package or the tests): it samples the toy
suite's prompts with the bench's noise (seed 0), replaces the step of one sampling interval by
another source, and prints FID split into its two terms, the mean term |mu - mu_ref|^2 and the
covariance term Tr(S + S_ref - 2 (S S_ref)^(1/2)), on the toy FID features.

Two kinds of sampler:

* ``--method mcm`` (deterministic segment sampler, Multistep CM Alg. 2): each interval t -> s is a
  map z_t -> z_s. Sources: ``student`` (f(z_t, t), then DDIM to s), ``teacher`` (one guided teacher
  DDIM step) and ``ode`` (the teacher's guided DDIM with ``--ode-substeps`` sub-steps, the ODE the
  student distils). The base is ``ode``; each row replaces one interval.
* a multistep consistency sampler (``lcm``, ``splam``, ``scott``, ``lcm-lora``; LCM Alg. 3): each
  step predicts x_0 at t and re-noises it to the next timestep with fresh noise. Sources:
  ``student``, ``ode`` (the endpoint of the teacher's guided ODE from z_t, what an exact
  consistency function returns) and ``--against M`` (M's student at the same step). The base is
  the student; each row replaces one step.

    python reports/diagnostics/step_substitution.py --method mcm --steps 4
    python reports/diagnostics/step_substitution.py --method splam --steps 4 --against lcm

Students come from the bench's cache (trained first when missing, as ``bench sample`` would).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.assets.suites import load_suite
from bench.assets.teachers import load_teacher
from bench.core.spec import load_method
from bench.engine.cells import guidance_for
from bench.engine.sampling import initial_noise, make_generators, to_pil
from bench.engine.students import load_student
from bench.scoring.metrics.features import (
    extract_features,
    list_images,
    protocol_for_suite,
)
from bench.scoring.metrics.fid import feature_statistics, fid_from_stats
from bench.scoring.toy import toy_image_folder, toy_metric_models
from methods.base import SampleRequest, per_sample_randn
from methods.diffusion_math import add_noise, ddim_step

#: methods sampled with LCM's multistep consistency sampler (methods.lcm._LCDMethod.sample_at)
CONSISTENCY_SAMPLERS = ("lcm", "lcm-lora", "scott", "splam")


class FidTerms:
    """FID of a latent batch against the toy reference, as (FID, mean term, covariance term)."""

    def __init__(self, teacher, num_images: int):
        self.teacher = teacher
        self.extractor, _ = toy_metric_models(("fid",), torch.device("cpu"))
        self.protocol = protocol_for_suite("toy")
        self.mu_ref, self.cov_ref = feature_statistics(
            self._features(list_images(toy_image_folder("reference", num_images))))

    def _features(self, paths) -> np.ndarray:
        return extract_features(paths, self.extractor, self.protocol, progress=False)

    def __call__(self, latents: torch.Tensor) -> tuple[float, float, float]:
        with tempfile.TemporaryDirectory() as folder:
            for i, image in enumerate(to_pil(self.teacher.codec.decode(latents))):
                image.save(Path(folder) / f"{i:05d}.png")
            feats = self._features(list_images(folder))
        mu, cov = feature_statistics(feats)
        fid = fid_from_stats(mu, cov, self.mu_ref, self.cov_ref)        # the bench's FID (clean-fid's)
        mean_term = float(((mu - self.mu_ref) ** 2).sum())
        return fid, mean_term, fid - mean_term


class Sources:
    """The step sources on one batch of prompts (all images at once, ``batch`` rows per call)."""

    def __init__(self, teacher, suite, args):
        self.schedule, self.batch = teacher.schedule, args.batch_size
        self.guidance = float(teacher.default_guidance_scale)
        prompts = list(suite.prompts)
        self.cond = teacher.encode_prompts(prompts)
        self.uncond = teacher.encode_prompts([""]).expand(len(prompts), -1, -1)
        self.teacher_denoiser = load_student(load_method("ddim"), teacher, 1, batching="fast").denoiser

    def rows(self, fn, x: torch.Tensor) -> torch.Tensor:
        """``fn(x_rows, rows)`` over the batch in chunks of ``self.batch`` rows."""
        return torch.cat([fn(x[i:i + self.batch], slice(i, i + self.batch)) for i in range(0, x.shape[0], self.batch)])

    def _teacher_x0_eps(self, x, rows, t):
        return self.teacher_denoiser.guided_x0_eps(x, t, self.cond[rows], self.uncond[rows], self.guidance)

    def ode(self, x, rows, t: int, s: int | None, substeps: int, return_x0: bool = False):
        """The teacher's guided DDIM from t to s (None: the final abar) in ``substeps`` steps equal
        in timestep; ``return_x0``: the last step's x_0 prediction instead of the point at s."""
        low = -1 if s is None else s
        times = [round(t - (t - low) * j / substeps) for j in range(substeps)] + [s]
        for a, b in zip(times[:-1], times[1:]):
            x0, eps = self._teacher_x0_eps(x, rows, a)
            if return_x0 and b is None:
                return x0
            x = ddim_step(x0, eps, self.schedule.abar(a), self.schedule.abar(b))
        return x

    def student_request(self, x, rows, steps: int, guidance: float) -> SampleRequest:
        return SampleRequest(noise=x, cond=self.cond[rows], uncond=self.uncond[rows], generators=[],
                             steps=steps, guidance_scale=guidance)


def segment_rows(args, teacher, suite, fid: FidTerms) -> None:
    """MCM: base = the teacher ODE on every interval; each row swaps in one other interval map."""
    method = load_method(args.method)
    student = load_student(method, teacher, args.steps, batching="fast", progress=True)
    sampler, src = student.sampling_method(method), Sources(teacher, suite, args)
    bounds = sampler.timesteps(student.denoiser, args.steps) + [None]
    intervals = list(zip(bounds[:-1], bounds[1:]))

    def interval(source, x, t, s):
        if source == "ode":
            return src.rows(lambda xb, rows: src.ode(xb, rows, t, s, args.ode_substeps), x)
        if source == "teacher":
            return src.rows(lambda xb, rows: src.ode(xb, rows, t, s, 1), x)
        denoiser = student.denoiser
        return src.rows(lambda xb, rows: ddim_step(*denoiser.guided_x0_eps(xb, t, src.cond[rows], src.uncond[rows], 1.0),
                                                   src.schedule.abar(t), src.schedule.abar(s)), x)

    noise = initial_noise(make_generators(0, range(len(suite.prompts))), teacher.latent_shape)
    ode_points = [noise]
    for t, s in intervals:
        ode_points.append(interval("ode", ode_points[-1], t, s))
    report("ode on every interval", fid(ode_points[-1]))
    for source in ("student", "teacher"):
        x = noise
        for t, s in intervals:
            x = interval(source, x, t, s)
        report(f"{source} on every interval", fid(x))
    for k, (t, s) in enumerate(intervals):
        for source in ("student", "teacher"):
            x = interval(source, ode_points[k], t, s)
            mse = float((x - ode_points[k + 1]).pow(2).mean())
            for t2, s2 in intervals[k + 1:]:
                x = interval("ode", x, t2, s2)
            report(f"ode, {t}->{'final' if s is None else s} by {source} (latent MSE {mse:.5f})", fid(x))


def consistency_rows(args, teacher, suite, fid: FidTerms) -> None:
    """Multistep consistency sampling: base = the student; each row swaps one step's x_0."""
    students = {}
    for name in [args.method] + ([args.against] if args.against else []):
        method = load_method(name)
        loaded = load_student(method, teacher, args.steps, batching="fast", progress=True)
        students[name] = (loaded.sampling_method(method), loaded.denoiser)
    sampler, denoiser = students[args.method]
    timesteps = sampler.timesteps(denoiser, args.steps)
    src = Sources(teacher, suite, args)

    def x0_at(source, x, i):
        t = timesteps[i]
        if source == "ode":
            return src.rows(lambda xb, rows: src.ode(xb, rows, t, None, max(args.ode_substeps, t // 10), True), x)
        method, den = students[source]
        guidance = guidance_for(None, method, teacher)   # as `bench run`
        return src.rows(lambda xb, rows: method.sample_at(den, src.student_request(xb, rows, args.steps, guidance),
                                                          [t]), x)

    def sample(plan):
        gens = make_generators(0, range(len(suite.prompts)))
        x = initial_noise(gens, teacher.latent_shape)
        for i, source in enumerate(plan):
            x0 = x0_at(source, x, i)
            if i + 1 < len(plan):
                alpha, sigma = src.schedule.alpha_sigma(timesteps[i + 1])
                x = add_noise(x0, per_sample_randn(gens, x), alpha, sigma)
        return x0

    report(f"{args.method} on every step", fid(sample([args.method] * args.steps)))
    if args.against:
        report(f"{args.against} on every step", fid(sample([args.against] * args.steps)))
    for k in range(args.steps):
        for source in ([args.against] if args.against else []) + ["ode"]:
            plan = [args.method] * args.steps
            plan[k] = source
            report(f"{args.method}, step {k} (t = {timesteps[k]}) by {source}", fid(sample(plan)))


def report(label: str, terms: tuple[float, float, float]) -> None:
    print(f"{label:60s} FID {terms[0]:6.3f}  mean {terms[1]:6.3f}  cov {terms[2]:6.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=("mcm",) + CONSISTENCY_SAMPLERS)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--against", choices=CONSISTENCY_SAMPLERS,
                        help="consistency samplers: another method whose student fills one step")
    parser.add_argument("--ode-substeps", type=int, default=25,
                        help="the ode source's teacher DDIM sub-steps: per interval (mcm); from t to the end, "
                             "at least t / 10 (consistency samplers)")
    parser.add_argument("--batch-size", type=int, default=250, help="images per network call")
    args = parser.parse_args()
    if args.against and args.method == "mcm":
        parser.error("--against applies to consistency samplers; mcm rows compare with the teacher")
    torch.set_grad_enabled(False)
    teacher, suite = load_teacher("toy"), load_suite("toy")
    fid = FidTerms(teacher, len(suite.prompts))
    (segment_rows if args.method == "mcm" else consistency_rows)(args, teacher, suite, fid)


if __name__ == "__main__":
    main()
