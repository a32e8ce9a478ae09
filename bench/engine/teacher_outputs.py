"""Cached teacher outputs: a dataset of (noise, teacher output) pairs a method asks for
(``methods.base.TeacherOutputSpec``; DMD's regression pairs, Yin et al. 2024, arXiv:2311.18828,
§3.3, Eq. 9), made once with a deterministic teacher solver and cached.

Pair ``i`` is ``(z_i, y_i, c_i)``: ``z_i ~ N(0, I)`` drawn from a generator seeded by
``(seed, i)``, ``c_i`` a caption of the training source, ``y_i`` = the teacher solver (the
registered teacher-solver method the spec names, "pndm" in DMD, at the spec's steps and guidance)
run from ``z_i``. Pairs are made in chunks of ``chunk_size``; chunk ``k`` takes the captions of training
micro-batch ``k`` (``data.batch(k, chunk_size)``) and is one batched solver call, so its bytes are a
function of (teacher, data, spec) alone. Each chunk is one safetensors file (``noise``, ``target``;
the captions and the fingerprint in its metadata) written atomically, so a killed generation
resumes at the first missing chunk and ends with the same bytes as an uninterrupted one::

    <cache>/teacher-outputs/<fingerprint>/chunk-00000.safetensors ...
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bench.assets.train_data import batch_seed
from bench.core.atomic import atomic_path
from bench.core.errors import MissingResourceError
from bench.core.fingerprint import fingerprint, library_versions
from bench.core.paths import cache_dir
from bench.core.progress import progress_bar
from methods import get_method_class
from methods.base import Denoiser, SampleRequest, TeacherOutputSpec

log = logging.getLogger(__name__)

OUTPUTS_FOLDER = "teacher-outputs"
#: the noise stream's name (kept from when DMD's regression pairs were the only user: same noise)
NOISE_STREAM = "regression-pairs"


def _spec_dict(spec: TeacherOutputSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def outputs_fingerprint(teacher: Any, data: Any, spec: TeacherOutputSpec, seed: int) -> str:
    return fingerprint({"kind": "teacher-outputs", "format": 1, "teacher": teacher.identity,
                        "data": data.identity, "spec": _spec_dict(spec), "seed": seed,
                        "versions": library_versions()})


def outputs_dir(teacher: Any, data: Any, spec: TeacherOutputSpec, seed: int) -> Path:
    return cache_dir() / OUTPUTS_FOLDER / outputs_fingerprint(teacher, data, spec, seed)


def _chunk_file(folder: Path, k: int) -> Path:
    return folder / f"chunk-{k:05d}.safetensors"


def _num_chunks(spec: Any) -> int:
    return -(-spec.num_pairs // spec.chunk_size)


def _chunk_complete(path: Path, fp: str) -> bool:
    try:
        with safe_open(str(path), "pt") as f:
            return _chunk_metadata(f)["fingerprint"] == fp
    except Exception:                                  # missing or truncated: make it again
        return False


def _chunk_metadata(f: Any) -> dict[str, Any]:
    return json.loads((f.metadata() or {}).get("pairs", "{}"))


@torch.no_grad()
def _make_chunk(teacher: Any, data: Any, spec: Any, seed: int, k: int) -> dict[str, Any]:
    """Chunk ``k``: noise, the solver's output, captions (one batched solver call)."""
    first = k * spec.chunk_size
    count = min(spec.chunk_size, spec.num_pairs - first)
    _, captions = data.batch(k, spec.chunk_size)
    captions = list(captions)[:count]
    generators = [torch.Generator("cpu").manual_seed(batch_seed(seed, first + i, NOISE_STREAM)) for i in range(count)]
    noise = torch.stack([torch.randn(teacher.latent_shape, generator=g) for g in generators])
    param = next(teacher.unet.parameters())
    cond = teacher.encode_prompts(captions)
    uncond = teacher.encode_prompts([""]).expand(count, -1, -1)
    request = SampleRequest(noise=noise.to(param.device, param.dtype), cond=cond, uncond=uncond,
                            generators=generators, steps=spec.steps, guidance_scale=spec.guidance_scale)
    solver = get_method_class(spec.solver)()
    if solver.trains:
        raise ValueError(f"teacher outputs need a teacher solver, {spec.solver!r} trains a student")
    denoiser = Denoiser(teacher.unet, teacher.schedule, images_per_call=None, scheduler_config=teacher.scheduler_config)
    target = solver.sample(denoiser, request)
    return {"noise": noise.float().contiguous(), "target": target.float().cpu().contiguous(), "captions": captions}


def build_teacher_outputs(teacher: Any, data: Any, spec: TeacherOutputSpec, seed: int = 0, *, rank: int = 0,
                          world: int = 1, progress: bool = True) -> Path:
    """Make the missing chunks of the paired dataset (chunks ``k = rank mod world`` on this
    process); returns its folder. Existing complete chunks are kept: a killed run resumes."""
    fp = outputs_fingerprint(teacher, data, spec, seed)
    folder = cache_dir() / OUTPUTS_FOLDER / fp
    todo = [k for k in range(rank, _num_chunks(spec), world) if not _chunk_complete(_chunk_file(folder, k), fp)]
    if todo:
        log.info("teacher outputs: %d of %d chunks to make with %s (%d steps, g=%g) into %s", len(todo),
                 _num_chunks(spec), spec.solver, spec.steps, spec.guidance_scale, folder)
    for k in progress_bar(todo, desc=f"teacher outputs ({spec.solver} {spec.steps} steps)", unit="chunk",
                          disable=not progress or not todo):
        chunk = _make_chunk(teacher, data, spec, seed, k)
        # one metadata key: safetensors writes several in a hash-map order that varies between runs
        metadata = {"pairs": json.dumps({"fingerprint": fp, "captions": chunk.pop("captions"),
                                         "spec": _spec_dict(spec)}, sort_keys=True)}
        with atomic_path(_chunk_file(folder, k)) as tmp:
            save_file(chunk, str(tmp), metadata=metadata)
    return folder


class CachedTeacherOutputs:
    """A complete paired dataset (``methods.base.TeacherOutputs``): ``batch(indices)`` -> (noise,
    target, prompt embeddings) on the training device; rows are read lazily from the chunk files."""

    def __init__(self, folder: Path, spec: TeacherOutputSpec, device: torch.device,
                 encode: Callable[[list[str]], torch.Tensor]):
        self.folder, self.spec, self.device, self._encode = Path(folder), spec, device, encode
        self._captions: dict[int, list[str]] = {}
        missing = [k for k in range(_num_chunks(spec)) if not _chunk_file(self.folder, k).is_file()]
        if missing:
            raise MissingResourceError(f"teacher outputs in {self.folder}: chunks {missing[:5]} missing")

    def __len__(self) -> int:
        return self.spec.num_pairs

    def _rows(self, k: int, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        with safe_open(str(_chunk_file(self.folder, k)), "pt") as f:
            if k not in self._captions:
                self._captions[k] = _chunk_metadata(f)["captions"]
            noise = torch.stack([f.get_slice("noise")[r] for r in rows])
            target = torch.stack([f.get_slice("target")[r] for r in rows])
        return noise, target, [self._captions[k][r] for r in rows]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        noise, target, captions = [], [], []
        for i in indices.tolist():
            n, y, c = self._rows(i // self.spec.chunk_size, [i % self.spec.chunk_size])
            noise.append(n)
            target.append(y)
            captions += c
        cond = self._encode(captions).to(self.device, torch.float32)
        return torch.cat(noise).to(self.device), torch.cat(target).to(self.device), cond


__all__ = ["CachedTeacherOutputs", "build_teacher_outputs", "outputs_dir", "outputs_fingerprint"]
