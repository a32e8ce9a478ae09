"""The toy world: train its teacher and metric models from scratch, and verify them.

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
from pathlib import Path

from bench.toy import train as toy_train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="toy_command", metavar="{train,verify}", required=True)
    p = sub.add_parser("train", help="train toy checkpoints from scratch with a fixed seed")
    toy_train.add_arguments(p)
    p = sub.add_parser("verify", help="check the toy checkpoints and released students against their recorded sha256")
    p.add_argument("--dir", default=None, metavar="DIR", help="checkpoint folder (default: bench/data/toy)")


def command(args: argparse.Namespace) -> int:
    if args.toy_command == "train":
        if not args.quiet:  # training progress (loss, steps/s) is logged at INFO
            import logging

            logging.getLogger("bench.toy").setLevel(logging.INFO)
        return toy_train.command(args)
    if args.toy_command == "verify":
        from bench.toy.checkpoints import TOY_MODELS, load_toy_checkpoint
        from bench.toy.students import verify_students

        root = Path(args.dir) if args.dir else None
        for name in TOY_MODELS:
            ckpt = load_toy_checkpoint(name, root)
            print(f"toy {name}: ok ({', '.join(ckpt.tensors)}, sha256 as recorded)")
        for line in verify_students(root):
            print(line)
        return 0
    raise ValueError(f"unknown toy command {args.toy_command!r}")
