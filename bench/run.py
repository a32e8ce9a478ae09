"""`bench run`: for each method and step count, train-or-load, sample, score; write result rows."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class CellOutcome:
    method: str
    steps: int
    status: str          # "sampled" | "skipped"
    note: str = ""
    samples: Path | None = None
    fingerprint: str = ""


def run_benchmark(args: argparse.Namespace, ctx, methods: list, steps_list: list[int], suite) -> int:
    from bench.commands import sample_one, samples_dir

    guidance = ctx.teacher.default_guidance_scale if args.guidance is None else args.guidance
    outcomes: list[CellOutcome] = []
    for method in methods:
        for steps in steps_list:
            reason = method.unsupported_steps_reason(steps)
            if reason:
                log.warning("skipped: %s", reason)
                outcomes.append(CellOutcome(method.name, steps, "skipped", reason))
                continue
            out_dir = samples_dir(Path(args.out), suite.name, ctx.teacher_name, method.name, steps, guidance, args.seed)
            summary = sample_one(ctx, method, suite, steps, guidance, args.seed, out_dir, args.batch_size,
                                 args.batching, progress=not args.quiet)
            outcomes.append(CellOutcome(method.name, steps, "sampled", samples=out_dir,
                                        fingerprint=summary.fingerprint))
    print(format_outcomes(outcomes))
    return 0


def format_outcomes(outcomes: list[CellOutcome]) -> str:
    lines = [f"{'method':<12} {'steps':>5}  {'status':<8} where / why"]
    for o in outcomes:
        lines.append(f"{o.method:<12} {o.steps:>5}  {o.status:<8} {o.samples or o.note}")
    return "\n".join(lines)
