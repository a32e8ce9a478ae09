"""`bench toy`: train the toy world's models and released students from scratch, and verify them.

    python -m bench toy train   [--what teacher|features|clip|students|all] [--out DIR] [--seed 0] [--steps N]
                                [--students lcm,mcm-s4] [--retrain] [--threads N]
    python -m bench toy verify  [--dir DIR]      check every committed checkpoint and released student against
                                                 its recorded sha256 (and each student against the current recipe)

What the toy models measure (teacher FID by step count, the real-vs-real floor, CLIP with own vs
shuffled captions) is measured by the benchmark itself on the ``toy`` suite:
``python -m bench run --methods ddim,dpmpp,er-sde --steps 1,2,4,8,25,50`` (leaderboards/toy.md).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from bench.assets.toy.checkpoints import (
    TOY_MODELS,
    default_toy_dir,
    load_toy_checkpoint,
)
from bench.assets.toy.train import build_and_save
from bench.core.errors import UsageError
from bench.engine.toy_students import build_students, verify_students

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="toy_command", metavar="{train,verify}", required=True)
    p = sub.add_parser("train", help="train toy checkpoints from scratch with a fixed seed")
    p.add_argument("--what", default="all", choices=[*TOY_MODELS, "students", "all"],
                   help="which toy model to train: a metric model, the teacher, or the released students of "
                        "every distillation method on the teacher (bench/data/toy/students); all: each in turn, "
                        "students last (default: all)")
    p.add_argument("--students", default=None, metavar="A,B",
                   help="with --what students: only these (release names: lcm, mcm-s4, ...; default: all)")
    p.add_argument("--retrain", action="store_true",
                   help="with --what students: train anew even when the cache (BENCH_CACHE_DIR) holds a student "
                        "of the same fingerprint trained on this machine (default: release that one)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"where to write checkpoints and hashes.json (default: {default_toy_dir()})")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0: the committed checkpoints)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="override the number of training steps (for quick checks; the committed "
                        "checkpoints use each model's default)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's choice)")
    p = sub.add_parser("verify", help="check the toy checkpoints and released students against their recorded sha256")
    p.add_argument("--dir", default=None, metavar="DIR", help="checkpoint folder (default: bench/data/toy)")


def command(args: argparse.Namespace) -> int:
    if args.toy_command == "train":
        return _train(args)
    root = Path(args.dir) if args.dir else None
    for name in TOY_MODELS:
        ckpt = load_toy_checkpoint(name, root)
        print(f"toy {name}: ok ({', '.join(ckpt.tensors)}, sha256 as recorded)")
    for line in verify_students(root):
        print(line)
    return 0


def _train(args: argparse.Namespace) -> int:
    if not args.quiet:  # training progress (loss, steps/s) is logged at INFO
        logging.getLogger("bench.assets.toy").setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else default_toy_dir()
    names = [*TOY_MODELS, "students"] if args.what == "all" else [args.what]
    if "students" in names and (args.seed != 0 or args.steps is not None):
        raise UsageError("--seed and --steps apply to the toy models, not to the released students (each trains at its "
                         "method's default toy config); train a variant with `python -m bench train --config ...`")
    for name in names:
        if name != "students":
            log.info("training toy %s (seed %d) -> %s", name, args.seed, out)
            build_and_save(name, out, seed=args.seed, steps=args.steps)
            continue
        for released in build_students(args.students, root=args.out and out, retrain=args.retrain,
                                       progress=not args.quiet):
            print(f"toy student {released.name}: {released.path} ({released.record['bytes']} bytes, "
                  f"sha256 {released.sha256[:16]}...)")
    return 0
