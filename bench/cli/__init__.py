"""`python -m bench`: the command line.

Exit codes: 0 success, 2 usage error (bad flag, unknown name, unsupported value), 1 runtime
failure (missing weights or data, a failed run). Errors are one line on stderr; `--debug` shows
the traceback.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
import traceback
from typing import Callable, Sequence

from bench.cli import commands
from bench.cli.run import add_run_arguments
from bench.core.defaults import DEFAULT_SUITE, DEFAULT_TEACHER
from bench.core.errors import BenchError, UsageError
from bench.core.spec import guidance_scale
from bench.engine.network_variants import RUN_VARIANTS

log = logging.getLogger("bench")



class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")
    parser.add_argument("--verbose", action="store_true",
                        help="log what each stage does (INFO level); with `list`, also each method's config fields")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_teacher_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default=None,
                        help=f"teacher name from `bench list` (default: {DEFAULT_TEACHER}; ignored with "
                             "--teacher-path)")
    parser.add_argument("--teacher-path", default=None, metavar="DIR",
                        help="a local diffusers-format folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"],
                        help="network precision (default: fp32 on CPU, fp16 on CUDA; the VAE decodes in fp32)")


def _add_suite_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default=None,
                        help=f"prompt suite from `bench list` (default: {DEFAULT_SUITE})")
    parser.add_argument("--prompts-file", default=None, metavar="FILE",
                        help="any UTF-8 file with one prompt per line (replaces --suite)")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="where suite annotations and reference images live (env BENCH_DATA_ROOT)")
    parser.add_argument("--num-images", type=int, default=None, metavar="N",
                        help="use the first N prompts of the suite (default: all)")


def _add_student_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student-source", default="auto", choices=["auto", "released", "trained"],
                        help="where distilled students come from: auto (default): a released student whose training "
                             "fingerprint matches (bench/data/toy/students for the toy teacher), else one trained on "
                             "this machine (cache), else train it now; released: released ones only, an error when "
                             "none matches (CI); trained: the cache or train now, never a released one")
    parser.add_argument("--retrain", action="store_true",
                        help="train the students anew even when a released or cached one exists (the new one "
                             "replaces the cached one; an interrupted retraining resumes from its checkpoints)")


def _add_published_arg(parser: argparse.ArgumentParser, many: bool = False) -> None:
    parser.add_argument(
        "--student", default=None, metavar="NAMES" if many else "NAME",
        help=("published student(s), comma-separated: " if many else "a published student: ")
        + "a zoo name (`bench list`: lcm-sd15, lcm-lora-sd15, lcm-dreamshaper-v7, dmd2-sd15, ...), a Hugging Face "
          "reference owner/name[@revision][/path/in/repo], or a local folder or file (a diffusers pipeline or "
          "UNet folder, LoRA weights, or a raw UNet state dict); it replaces the student the method would "
          "train. The zoo gives the method, teacher and preset; otherwise pass --method and --teacher")


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="empty an image folder that holds another run's images or files this tool did not "
                             "write, instead of refusing it (a folder belongs to one run's image fingerprint)")
    parser.add_argument("--guidance", type=guidance_scale, default=None, metavar="G",
                        help="classifier-free guidance scale, diffusers convention (1 = none; default: the teacher's)")
    parser.add_argument("--seed", type=int, default=0, help="run seed; image i uses a seed derived from (seed, i) only")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B",
                        help="images per batch (default 8; 250 on the toy suite; on CUDA with fast batching, "
                             "what the free memory holds, at most 16)")
    parser.add_argument("--batching", default=None, choices=["exact", "fast"],
                        help="exact: one image per network call, identical PNG bytes whatever --batch-size "
                             "(default on the CPU); fast: whole batch per call, faster, recorded in the "
                             "fingerprint (default on CUDA, and on the toy suite, where per-image calls would "
                             "cost 4x the time)")
    parser.add_argument("--networks", default="eager", choices=list(RUN_VARIANTS),
                        help="how the networks run (fast batching; recorded in the fingerprint unless eager): "
                             "eager (default), half-vae (VAE decode in the run's dtype, checked against fp32 on "
                             "the first batch), compile (half-vae + torch.compile), cuda-graphs (half-vae + "
                             "torch.compile mode reduce-overhead). `bench profile --speedup` measures them")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench",
                     description="Few-step diffusion distillation benchmark: train or load students, "
                                 "sample suites at 1/2/4/8 steps, score FID / CLIP / Coverage / latency.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("list", help="methods, teachers, suites and metrics, one line each",
                       description="List registered methods, teachers, suites and metrics.")
    p.add_argument("--names", action="store_true",
                   help="print only the registered method names, comma-separated (for scripts: "
                        "`bench run --methods $(python -m bench list --names)`)")
    p.add_argument("--experiments", action="store_true",
                   help="list the named experiments `bench run --experiment` takes, with their labels and overrides")
    _add_common(p)

    p = sub.add_parser("sample", help="sample one method at one step count into a folder",
                       description="Write exactly N PNGs named 00000.png... by prompt index into --out, plus "
                                   "metadata.json. Resumable; shard with `accelerate launch -m bench sample ...`.")
    p.add_argument("--method", default=None,
                   help="method name from `bench list` (required unless --student is a zoo name)")
    p.add_argument("--steps", type=int, required=True, metavar="K", help="number of sampling steps")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (PNGs go directly in it)")
    p.add_argument("--config", default=None, metavar="K=V,...",
                   help="method config overrides, e.g. eta=0.5 (fields: see `bench list --verbose`)")
    _add_teacher_args(p)
    _add_published_arg(p)
    _add_student_args(p)
    _add_suite_args(p)
    _add_sampling_args(p)
    _add_common(p)

    p = sub.add_parser("train", help="train (or find released or cached) a method's student",
                       description="Train a method's student from the teacher; cached by training fingerprint. "
                                   "A released or cached student of the same fingerprint is reported, not "
                                   "trained again, unless --retrain.")
    p.add_argument("--method", required=True, help="method name from `bench list`")
    p.add_argument("--max-train-steps", type=int, default=None, metavar="N", help="override the method's schedule")
    p.add_argument("--steps", type=int, default=1, metavar="S",
                   help="sampling steps the student is for, where a method trains one student per step count "
                        "(mcm: S segments); other methods ignore it (default 1)")
    p.add_argument("--out", default=None, metavar="DIR", help="also export the student here")
    p.add_argument("--config", default=None, metavar="K=V,...", help="method config overrides")
    _add_teacher_args(p)
    _add_student_args(p)
    _add_common(p)

    p = sub.add_parser("run", help="train-or-load, sample and score several methods and step counts",
                       description="For each method and step count: train or load the student, sample the "
                                   "suite, score it and write result rows. Unsupported step counts are skipped "
                                   "with a note; the rest of the run goes on.")
    p.add_argument("--methods", default=None, metavar="A,B", help="comma-separated method names")
    p.add_argument("--experiment", default=None, metavar="M/NAME,...",
                   help="named experiments (methods/configs/<method>/ablations/<name>.toml: a method with config "
                        "overrides under a label of its own; `bench list --experiments`), run like --methods")
    p.add_argument("--steps", default="1,2,4", metavar="1,2,4", help="comma-separated step counts (default 1,2,4)")
    p.add_argument("--out", default="runs", metavar="DIR", help="run folder (samples/, results/); default runs/")
    p.add_argument("--config", default=None, metavar="K=V,M:K=V",
                   help="method config overrides: plain K=V for every method of the run, M:K=V for method (or "
                        "experiment label, or published student) M only, e.g. `lcm:learning_rate=1e-5,seed=1`; "
                        "tuples as a:b:c (fields: `bench list --verbose`)")
    p.add_argument("--max-train-steps", type=int, default=None, metavar="N",
                   help="train every student for N steps instead of its schedule (a new fingerprint: never a "
                        "released student)")
    _add_teacher_args(p)
    _add_published_arg(p, many=True)
    _add_student_args(p)
    _add_suite_args(p)
    _add_sampling_args(p)

    add_run_arguments(p)
    _add_common(p)

    for name, (module_name, help_text) in _EXTERNAL_COMMANDS.items():
        module = _import(module_name)
        if module is None:
            continue
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(p)
        _add_common(p)
    return parser


#: Subcommands implemented in their own modules (each exposes add_arguments + command).
_EXTERNAL_COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("bench.cli.eval", "score a folder of images (FID, CLIP score, Coverage)"),
    "leaderboard": ("bench.cli.leaderboard", "write leaderboards/<suite>.md and .json from the results"),
    "report": ("bench.cli.report", "write plots, an image grid and an index page for a run"),
    "check": ("bench.cli.check", "compare results with a baseline leaderboard JSON (CI regression check)"),
    "results": ("bench.cli.results", "export every result row as one table: CSV, Parquet or JSON (for pandas)"),
    "benchmark": ("bench.cli.benchmark", "measure harness overhead and metric speed (prints the figures)"),
    "profile": ("bench.cli.profile", "speed and memory of methods vs a stock diffusers pipeline, and of training"),
    "toy": ("bench.cli.toy", "the toy world: train its teacher and metric models from scratch"),
}


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            return None  # that part of the tool is not installed in this checkout
        raise


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else (logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    for noisy in ("diffusers", "transformers", "accelerate", "PIL", "matplotlib", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING if args.debug else logging.ERROR)


def _dispatch(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "list": commands.cmd_list, "sample": commands.cmd_sample, "train": commands.cmd_train,
        "run": commands.cmd_run,
    }
    if args.command in handlers:
        return handlers[args.command](args)
    module_name = _EXTERNAL_COMMANDS[args.command][0]
    return int(_import(module_name).command(args) or 0)


def one_line(message: str) -> str:
    """Error messages may be written over several lines for readability; the CLI prints one."""
    parts = (line.strip() for line in message.splitlines())
    return " ".join(p[2:] if p.startswith("- ") else p for p in parts if p)


#: what survives a Ctrl-C, by command (the work in flight is lost; the rest resumes)
INTERRUPTED = {
    "sample": "finished images are kept; run the same command again to resume",
    "run": "finished images, students and result rows are kept; run the same command again to resume",
    "train": "training resumes from its last checkpoint when you run the same command again",
    "eval": "nothing was written; run the same command again",
    "toy": "finished parts are kept; run the same command again to resume",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit codes: 0, 2 (usage), 1 (runtime), 130 (Ctrl-C); ``--debug`` adds the
    traceback and keeps the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        return _dispatch(args)
    except BenchError as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"interrupted: {INTERRUPTED.get(args.command, 'run the same command again')}", file=sys.stderr)
        return 130
    except OSError as err:
        if args.debug:
            traceback.print_exc()
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            print(f"error: {type(err).__name__}: {one_line(str(err))}"
                  + ("" if args.debug else " (rerun with --debug for the traceback)"), file=sys.stderr)
            return 1
        where = f" writing {err.filename}" if err.filename else ""
        print(f"error: no space left on the device{where}: free some space (or point --out / BENCH_CACHE_DIR "
              "elsewhere) and run the same command again; finished work is kept", file=sys.stderr)
        return 1
    except Exception as err:  # a bug or a library failure: one line, traceback on --debug
        if args.debug:
            traceback.print_exc()
        print(f"error: {type(err).__name__}: {one_line(str(err))}"
              + ("" if args.debug else " (rerun with --debug for the traceback)"), file=sys.stderr)
        return 1


__all__ = ["main", "build_parser", "UsageError"]
