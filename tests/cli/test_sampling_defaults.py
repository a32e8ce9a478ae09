"""Default batching: the suite's (toy: fast, 250), else fast with a free-memory batch on CUDA, else exact, 8."""
from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
import torch

from bench.cli import build_parser, commands
from bench.cli.commands import GpuBatchModel, apply_sampling_defaults
from bench.cli.profile import parse_cell_spec


def _args(**given) -> argparse.Namespace:
    return argparse.Namespace(batching=given.get("batching"), batch_size=given.get("batch_size"))


def _cuda_ctx(resolution: int = 512):
    return SimpleNamespace(device=torch.device("cuda", 0), teacher=SimpleNamespace(resolution=resolution))


def test_the_batch_model_reproduces_the_measured_h100_memory():
    model = GpuBatchModel()
    # the two measurements it was read from (bench profile, sd15-arch fp16, H100): 16 and 32 images
    assert model.base_mb + 16 * model.mb_per_image_at_512 == pytest.approx(18657, rel=0.01)
    assert model.base_mb + 32 * model.mb_per_image_at_512 == pytest.approx(35044, rel=0.01)
    assert model.batch_size(free_mb=80_000, resolution=512) == 16           # saturated: no bigger batch
    assert model.batch_size(free_mb=10_000, resolution=512) == (10_000 * 0.8 - 2270) // 1024 == 5
    assert model.batch_size(free_mb=10_000, resolution=1024) == 1           # 4x the pixels: 4 GB per image
    assert model.batch_size(free_mb=1_000, resolution=512) == 1             # never below one


def test_cuda_defaults_to_fast_batching_at_the_batch_free_memory_holds(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (12_000 * 2**20, 24_000 * 2**20))
    coco = SimpleNamespace(name="coco2017-5k")
    args = _args()
    apply_sampling_defaults(args, coco, _cuda_ctx())
    assert (args.batching, args.batch_size) == ("fast", (12_000 * 0.8 - 2270) // 1024)
    args = _args(batching="exact")                                          # the bit-exact path stays
    apply_sampling_defaults(args, coco, _cuda_ctx())
    assert (args.batching, args.batch_size) == ("exact", 8)
    args = _args(batch_size=3)                                              # a given batch size is kept
    apply_sampling_defaults(args, coco, _cuda_ctx())
    assert (args.batching, args.batch_size) == ("fast", 3)


def test_cpu_and_toy_keep_their_defaults():
    cpu = SimpleNamespace(device=torch.device("cpu"), teacher=SimpleNamespace(resolution=512))
    args = _args()
    apply_sampling_defaults(args, SimpleNamespace(name="coco2017-5k"), cpu)
    assert (args.batching, args.batch_size) == ("exact", 8)
    args = _args()
    apply_sampling_defaults(args, SimpleNamespace(name="toy"), _cuda_ctx(16))
    assert (args.batching, args.batch_size) == commands.SUITE_SAMPLING_DEFAULTS["toy"]


@pytest.mark.parametrize("device, networks, batching, expected", [
    ("cpu", "eager", None, ("exact", 8)),
    ("cpu", "half-vae", None, ("fast", 8)),             # a variant samples whole batches
    ("cpu", "compile", "fast", ("fast", 8)),
    ("cuda:0", "eager", None, ("fast", 7)),             # (12,000 MiB x 0.8 - 2,270) // 1,024
    ("cuda:0", "eager", "exact", ("exact", 8)),
    ("cuda:0", "cuda-graphs", None, ("fast", 7)),
])
def test_a_profiled_cell_is_batched_as_bench_run_batches_it(monkeypatch, device, networks, batching, expected):
    """`bench profile --cell` on sd15-arch and `bench run` on a COCO suite take the same defaults."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (12_000 * 2**20, 24_000 * 2**20))
    given = ["--batching", batching] if batching else []
    argv = ["profile", "--cell", "--device", device, "--teacher", "sd15-arch", "--networks", networks, *given]
    spec = parse_cell_spec(build_parser().parse_args([*argv, "--out", "unused"]))
    args = argparse.Namespace(batching=batching, batch_size=None, networks=networks)
    ctx = SimpleNamespace(device=torch.device(device), teacher=SimpleNamespace(resolution=512))
    apply_sampling_defaults(args, SimpleNamespace(name="coco2017-5k"), ctx)
    assert (spec.batching, spec.batch_size) == (args.batching, args.batch_size) == expected
