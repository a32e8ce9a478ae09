"""What a regression loss needs from the harness (DMD, Yin et al. 2024, arXiv:2311.18828, §3.3,
Eq. 9): a paired dataset of (noise, teacher output) made once with a deterministic teacher solver,
and the LPIPS distance.

Paired dataset. Pair ``i`` is ``(z_i, y_i, c_i)``: ``z_i ~ N(0, I)`` drawn from a generator seeded
by ``(seed, i)``, ``c_i`` a caption of the training source, ``y_i`` = the teacher solver (a
registered teacher-solver method, "pndm" in the paper, at the spec's steps and guidance) run from
``z_i``. Pairs are made in chunks of ``chunk_size``; chunk ``k`` takes the captions of training
micro-batch ``k`` (``data.batch(k, chunk_size)``) and is one batched solver call, so its bytes are a
function of (teacher, data, spec) alone. Each chunk is one safetensors file (``noise``, ``target``;
the captions and the fingerprint in its metadata) written atomically, so a killed generation
resumes at the first missing chunk and ends with the same bytes as an uninterrupted one::

    <cache>/regression-pairs/<fingerprint>/chunk-00000.safetensors ...

LPIPS. ``lpips_distance`` loads Zhang et al.'s LPIPS-VGG (the ``lpips`` package, whose wheel ships
the learned linear layers) on torchvision's ImageNet VGG16 weights from a local file; with either
missing it raises one :class:`MissingResourceError` naming both and the way to supply them, before
any pair is generated. Latents are decoded with the teacher's codec first (DMD decodes with the
Tiny VAE to save memory; the full VAE is used here, as DMD's g = 8 run ended up doing).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench.atomic import atomic_path
from bench.errors import MissingResourceError
from bench.fingerprint import fingerprint, library_versions
from bench.paths import cache_dir
from bench.train_data import batch_seed

log = logging.getLogger(__name__)

PAIRS_FOLDER = "regression-pairs"
NOISE_STREAM = "regression-pairs"
LPIPS_VGG_ENV = "BENCH_LPIPS_VGG_PATH"
#: torchvision's VGG16 ImageNet weights (what lpips.pretrained_networks.vgg16 downloads)
VGG16_FILE = "vgg16-397923af.pth"


# ------------------------------------------------------------------------------------------------
# The paired dataset
# ------------------------------------------------------------------------------------------------


def _spec_dict(spec: Any) -> dict[str, Any]:
    """The spec's fields (methods.dmd.RegressionPairSpec: solver, steps, guidance_scale,
    num_pairs, chunk_size)."""
    return dataclasses.asdict(spec)


def pairs_fingerprint(teacher: Any, data: Any, spec: Any, seed: int) -> str:
    return fingerprint({"kind": "regression-pairs", "format": 1, "teacher": teacher.identity,
                        "data": data.identity, "spec": _spec_dict(spec), "seed": seed,
                        "versions": library_versions()})


def pairs_dir(teacher: Any, data: Any, spec: Any, seed: int) -> Path:
    return cache_dir() / PAIRS_FOLDER / pairs_fingerprint(teacher, data, spec, seed)


def _chunk_file(folder: Path, k: int) -> Path:
    return folder / f"chunk-{k:05d}.safetensors"


def _num_chunks(spec: Any) -> int:
    return -(-spec.num_pairs // spec.chunk_size)


def _chunk_complete(path: Path, fp: str) -> bool:
    from safetensors import safe_open

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
    from methods import get_method_class
    from methods.base import Denoiser, SampleRequest

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
        raise ValueError(f"regression pairs need a teacher solver, {spec.solver!r} trains a student")
    denoiser = Denoiser(teacher.unet, teacher.schedule, images_per_call=None, scheduler_config=teacher.scheduler_config)
    target = solver.sample(denoiser, request)
    return {"noise": noise.float().contiguous(), "target": target.float().cpu().contiguous(), "captions": captions}


def build_regression_pairs(teacher: Any, data: Any, spec: Any, seed: int = 0, *, rank: int = 0, world: int = 1,
                           progress: bool = True) -> Path:
    """Make the missing chunks of the paired dataset (chunks ``k = rank mod world`` on this
    process); returns its folder. Existing complete chunks are kept: a killed run resumes."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    fp = pairs_fingerprint(teacher, data, spec, seed)
    folder = cache_dir() / PAIRS_FOLDER / fp
    todo = [k for k in range(rank, _num_chunks(spec), world) if not _chunk_complete(_chunk_file(folder, k), fp)]
    if todo:
        log.info("regression pairs: %d of %d chunks to make with %s (%d steps, g=%g) into %s", len(todo),
                 _num_chunks(spec), spec.solver, spec.steps, spec.guidance_scale, folder)
    for k in tqdm(todo, desc=f"regression pairs ({spec.solver} {spec.steps} steps)", unit="chunk",
                  disable=not progress or not todo, dynamic_ncols=True):
        chunk = _make_chunk(teacher, data, spec, seed, k)
        # one metadata key: safetensors writes several in a hash-map order that varies between runs
        metadata = {"pairs": json.dumps({"fingerprint": fp, "captions": chunk.pop("captions"),
                                         "spec": _spec_dict(spec)}, sort_keys=True)}
        with atomic_path(_chunk_file(folder, k)) as tmp:
            save_file(chunk, str(tmp), metadata=metadata)
    return folder


class RegressionPairs:
    """A complete paired dataset: ``batch(indices)`` -> (noise, target, prompt embeddings) on the
    training device; rows are read lazily from the chunk files."""

    def __init__(self, folder: Path, spec: Any, teacher: Any, device: torch.device,
                 encode: Callable[[list[str]], torch.Tensor]):
        self.folder, self.spec, self.device, self._encode = Path(folder), spec, device, encode
        self._captions: dict[int, list[str]] = {}
        missing = [k for k in range(_num_chunks(spec)) if not _chunk_file(self.folder, k).is_file()]
        if missing:
            raise MissingResourceError(f"regression pairs in {self.folder}: chunks {missing[:5]} missing")

    def __len__(self) -> int:
        return self.spec.num_pairs

    def _rows(self, k: int, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        from safetensors import safe_open

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


# ------------------------------------------------------------------------------------------------
# LPIPS
# ------------------------------------------------------------------------------------------------


def _torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_lpips(vgg_path: str | os.PathLike | None = None) -> Path:
    """The VGG16 weights file for LPIPS-VGG; one MissingResourceError naming everything missing
    (the ``lpips`` package, the weights file) and how to supply it."""
    missing = []
    if importlib.util.find_spec("lpips") is None:
        missing.append("the `lpips` package (pip install lpips==0.1.4; its wheel ships the LPIPS linear "
                       "layers vgg.pth)")
    candidates = [(str(vgg_path), "config lpips_vgg_path")] if vgg_path else []
    if os.environ.get(LPIPS_VGG_ENV):
        candidates.append((os.environ[LPIPS_VGG_ENV], f"env {LPIPS_VGG_ENV}"))
    candidates.append((str(_torch_hub_checkpoints() / VGG16_FILE), "the torch hub cache"))
    found = next((Path(p).expanduser() for p, _ in candidates if Path(p).expanduser().is_file()), None)
    if found is None:
        looked = ", ".join(f"{p} ({source})" for p, source in candidates)
        missing.append(f"torchvision's VGG16 ImageNet weights {VGG16_FILE} (looked in: {looked}; point "
                       f"{LPIPS_VGG_ENV}=FILE or --config lpips_vgg_path=FILE at a local copy)")
    if missing:
        raise MissingResourceError(
            "the LPIPS regression distance (DMD Eq. 9) needs " + " and ".join(missing) + ". Nothing is "
            "downloaded. Without LPIPS, train with a latent-space distance: --config regression_distance=l2 "
            "(or pseudo-huber).")
    return found


class LPIPSDistance(nn.Module):
    """``LPIPS-VGG(decode(a), decode(b))`` per sample, frozen; gradients flow into ``a``."""

    def __init__(self, codec: Any, vgg_file: Path):
        super().__init__()
        import lpips

        self.codec = codec
        # pnet_rand: build VGG16 without torchvision's download, then load the local file
        self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        vgg = torch.load(str(vgg_file), map_location="cpu", weights_only=True)
        # lpips' vgg16 keeps torchvision's layer indices in slices: slice<k>.<i>.* = features.<i>.*
        state = {name: vgg["features." + name.split(".", 1)[1]] for name in self.lpips.net.state_dict()}
        self.lpips.net.load_state_dict(state)
        self.lpips.eval().requires_grad_(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.lpips(self.codec.decode(a), self.codec.decode(b), normalize=False).flatten()


def lpips_distance(teacher: Any, vgg_path: str | os.PathLike | None = None) -> LPIPSDistance:
    vgg_file = resolve_lpips(vgg_path)                 # fails before anything is built
    distance = LPIPSDistance(teacher.codec, vgg_file)
    return distance.to(next(teacher.unet.parameters()).device)


__all__ = ["RegressionPairs", "build_regression_pairs", "pairs_dir", "pairs_fingerprint", "resolve_lpips",
           "lpips_distance", "LPIPSDistance", "LPIPS_VGG_ENV"]
