"""Sampling engine: prompts -> per-image noise -> method.sample -> VAE decode -> PNGs on disk.

Invariants:
* Image i gets its initial noise and every stochastic draw of its sampler from one CPU generator
  seeded by (run seed, i) alone (``image_seed``).
* In ``exact`` batching (the default) every network call sees one image (two rows, uncond and
  cond, under CFG), so its bytes do not depend on ``--batch-size``, the number of processes or
  the resume point: CPU and GPU kernels are not batch-invariant in the last bits (a batched
  UNet call here differs from per-image calls by ~1e-6, enough to flip PNG bytes). ``fast``
  batching evaluates the whole batch in one call: faster on a GPU, identical in distribution,
  recorded in the fingerprint because its last bits differ.
* Each PNG is written atomically and carries its fingerprint, prompt index, prompt and seed in
  PNG text chunks; an existing file is skipped only when all of them match.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from bench.core.atomic import atomic_path, atomic_write_json, is_temp_file
from bench.core.distributed import barrier, process_shard
from bench.core.errors import BenchError, UsageError
from bench.core.fingerprint import fingerprint, library_versions
from bench.core.progress import progress_bar
from bench.engine.network_variants import SamplingNetworks, parse_run_variant
from methods.base import Denoiser, Method, SampleRequest

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BATCHING_MODES = ("exact", "fast")
METADATA_FILE = "metadata.json"
PNG_KEYS = ("bench_fingerprint", "bench_index", "bench_prompt", "bench_seed")


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` in a run with ``seed``: a hash, so runs with seeds s and s+1
    share no images (``seed + index`` would shift one onto the other)."""
    digest = hashlib.sha256(f"distill-bench:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def image_name(index: int) -> str:
    return f"{index:05d}.png"


@dataclass(frozen=True)
class SamplingSpec:
    """Everything that changes image i (and nothing that does not, such as N or the batch
    size): its hash is the per-image fingerprint stored in each PNG."""

    method: str
    method_config: dict
    student: str                # LoadedStudent.identity ("teacher" for teacher solvers)
    teacher: dict               # Teacher.identity
    resolution: int
    steps: int
    guidance_scale: float
    seed: int
    precision: str = "fp32"
    batching: str = "exact"
    versions: dict = field(default_factory=library_versions)
    networks: str = "eager"     # bench.engine.network_variants: compiled kernels are not bit-equal to eager

    @property
    def fingerprint(self) -> str:
        fields = asdict(self)
        if fields["networks"] == "eager":
            del fields["networks"]  # the fingerprints of every run before --networks existed
        return fingerprint(fields)


@dataclass
class SampleSummary:
    out_dir: Path
    written: int
    skipped: int
    seconds: float
    fingerprint: str
    student: str = ""           # where the student came from: "released", "trained", "" (teacher solver)


def _encode(teacher: Any, prompts: Sequence[str], exact: bool) -> torch.Tensor:
    if exact:
        return torch.cat([teacher.encode_prompts([p]) for p in prompts])
    return teacher.encode_prompts(list(prompts))


def _decode(teacher: Any, latents: torch.Tensor, exact: bool) -> torch.Tensor:
    if exact:
        return torch.cat([teacher.codec.decode(latents[i:i + 1]) for i in range(latents.shape[0])])
    return teacher.codec.decode(latents)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] (B, 3, H, W) -> PIL, exactly as diffusers' VaeImageProcessor.postprocess does."""
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(do_normalize=True).postprocess(images.float().cpu(), output_type="pil")


def write_pngs(out_dir: Path, spec_fingerprint: str, seed: int, indices: Sequence[int], prompts: Sequence[str],
               images: Sequence[Image.Image]) -> None:
    """One batch's PNGs, each written atomically with its fingerprint, index, prompt and seed."""
    for index, prompt, image in zip(indices, prompts, images):
        # no fsync: a PNG damaged by an OS crash fails the CRC check on resume and is redone
        with atomic_path(out_dir / image_name(index), durable=False) as tmp:
            image.save(tmp, format="PNG", pnginfo=_png_info(spec_fingerprint, index, prompt, image_seed(seed, index)))


class PngWriter:
    """Runs PNG encoding and writing on one background thread, so that the next batch samples
    meanwhile (zlib releases the GIL; on a GPU the sampler only launches kernels). At most
    ``max_pending`` batches are in flight: the oldest is waited for before another is queued, which
    bounds memory and raises a failed write (disk full, say) at the next batch. Leaving the block
    waits for every queued write, so a command returns only when its images are on disk; when the
    block is left by an exception, batches not yet started are dropped (resume redoes them)."""

    def __init__(self, max_pending: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="png-writer")
        self._pending: deque[Future] = deque()
        self._max_pending = max_pending

    def submit(self, write: Callable[..., None], *args: Any) -> None:
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(write, *args))

    def __enter__(self) -> "PngWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            while self._pending:
                future = self._pending.popleft()
                if exc_type is None:
                    future.result()                  # the first failed write is the command's error
                elif not future.cancel():
                    future.exception()               # finish the one being written; its error is secondary
        finally:
            self._pool.shutdown(wait=True)


def _png_info(spec_fingerprint: str, index: int, prompt: str, seed: int) -> PngInfo:
    info = PngInfo()
    for key, value in zip(PNG_KEYS, (spec_fingerprint, str(index), prompt, str(seed))):
        info.add_itxt(key, value)
    return info


def existing_image_matches(path: Path, spec_fingerprint: str, index: int, prompt: str) -> bool:
    """True when ``path`` is a complete PNG written for this fingerprint, index and prompt."""
    try:
        with Image.open(path) as image:
            text = {k: v for k, v in image.info.items() if k in PNG_KEYS}  # chunks before IDAT
            image.verify()  # every chunk's CRC up to IEND: a truncated file fails here
    except Exception:  # unreadable or truncated: regenerate
        return False
    return (text.get("bench_fingerprint") == spec_fingerprint and text.get("bench_index") == str(index)
            and text.get("bench_prompt") == prompt)


def make_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(image_seed(seed, i)) for i in indices]


def initial_noise(generators: Sequence[torch.Generator], latent_shape: tuple[int, ...]) -> torch.Tensor:
    """The first draw of each image's generator: its initial latents."""
    return torch.stack([torch.randn(latent_shape, generator=g, dtype=torch.float32) for g in generators])


def generate_latents(teacher: Any, denoiser: Denoiser, method: Method, prompts: Sequence[str],
                     indices: Sequence[int], steps: int, guidance_scale: float, seed: int,
                     uncond: torch.Tensor, batching: str = "exact") -> torch.Tensor:
    """One batch through the method's sampler; returns latents (B, C, h, w)."""
    exact = batching == "exact"
    device, dtype = _module_device_dtype(denoiser.unet)
    generators = make_generators(seed, indices)
    noise = initial_noise(generators, teacher.latent_shape).to(device=device, dtype=dtype)
    cond = _encode(teacher, prompts, exact).to(device=device, dtype=dtype)
    request = SampleRequest(noise=noise, cond=cond, uncond=uncond.expand(len(prompts), -1, -1).to(device, dtype),
                            generators=generators, steps=steps, guidance_scale=guidance_scale)
    return method.sample(denoiser, request)


def _module_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(module.parameters())
    return param.device, param.dtype


def sample_to_folder(teacher: Any, denoiser: Denoiser, method: Method, prompts: Sequence[str],
                     spec: SamplingSpec, out_dir: Path, batch_size: int = 8,
                     suite_fingerprint: str = "", progress: bool = True,
                     extra_metadata: dict | None = None, overwrite: bool = False) -> SampleSummary:
    """Write ``len(prompts)`` PNGs ``00000.png ...`` into ``out_dir`` plus ``metadata.json``.

    Resumable and shardable: images already on disk with a matching fingerprint are skipped;
    under `accelerate launch` process r of P takes indices i with i % P == r. The folder belongs
    to one image fingerprint (:func:`owned_folder`); ``overwrite`` empties a folder of another."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if spec.batching not in BATCHING_MODES:
        raise UsageError(f"--batching must be one of {', '.join(BATCHING_MODES)}, got {spec.batching!r}")
    parse_run_variant(spec.networks, spec.batching)
    out_dir = Path(out_dir)
    with owned_folder(out_dir, spec, overwrite):
        return _sample_into(SamplingNetworks.build(teacher, denoiser, spec.networks), method, prompts, spec,
                            out_dir, batch_size, suite_fingerprint, progress, extra_metadata)


def _sample_into(networks: SamplingNetworks, method: Method, prompts: Sequence[str], spec: SamplingSpec,
                 out_dir: Path, batch_size: int, suite_fingerprint: str, progress: bool,
                 extra_metadata: dict | None) -> SampleSummary:
    teacher, denoiser = networks.teacher, networks.denoiser
    rank, world = process_shard()
    for stale in out_dir.iterdir():
        if rank == 0 and is_temp_file(stale):
            stale.unlink(missing_ok=True)  # left by a killed run: the work that was in flight

    spec_fp = spec.fingerprint
    mine = [i for i in range(len(prompts)) if i % world == rank]
    pending = [i for i in mine
               if not existing_image_matches(out_dir / image_name(i), spec_fp, i, prompts[i])]
    skipped = len(mine) - len(pending)
    if skipped:
        log.info("%s: %d image(s) already done, %d to go", out_dir, skipped, len(pending))

    start = time.perf_counter()
    exact = spec.batching == "exact"
    uncond = teacher.encode_prompts([""]) if pending else None
    bar = progress_bar(total=len(pending), unit="img", desc=f"{spec.method} {spec.steps} step(s)",
                       disable=not progress or not pending)
    with torch.inference_mode(), PngWriter() as writer:
        for first in range(0, len(pending), batch_size):
            indices = pending[first:first + batch_size]
            batch_prompts = [prompts[i] for i in indices]
            latents = generate_latents(teacher, denoiser, method, batch_prompts, indices, spec.steps,
                                       spec.guidance_scale, spec.seed, uncond, spec.batching)
            decoded = _decode(teacher, latents, exact)
            check_finite(decoded, indices, spec)
            networks.check_decode(latents, decoded)       # a half-precision VAE, on the first batch
            # encoded and written on the writer thread while the next batch samples
            writer.submit(write_pngs, out_dir, spec_fp, spec.seed, indices, batch_prompts, to_pil(decoded))
            bar.update(len(indices))
    bar.close()
    seconds = time.perf_counter() - start

    barrier()
    if rank == 0:
        write_metadata(out_dir, prompts, spec, suite_fingerprint, extra_metadata or {})
    return SampleSummary(out_dir, len(pending), skipped, seconds,
                         folder_fingerprint(spec, suite_fingerprint, len(prompts)))


# ------------------------------------------------------------------------------------------------
# Folder ownership: one image fingerprint per folder
# ------------------------------------------------------------------------------------------------

MARKER_FILE = ".bench-samples.json"
LOCK_FILE = ".bench-samples.lock"


def read_marker(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _describe(owner: dict) -> str:
    return ", ".join(f"{k} {owner[k]}" for k in ("method", "steps", "guidance_scale", "seed") if k in owner) or \
        f"fingerprint {owner.get('fingerprint', '?')}"


@contextlib.contextmanager
def owned_folder(out_dir: Path, spec: SamplingSpec, overwrite: bool = False) -> Iterator[None]:
    """Hold ``out_dir`` for the image fingerprint of ``spec`` while sampling into it.

    The marker file (``.bench-samples.json``, written before any image) names the fingerprint the
    folder belongs to. A folder of another fingerprint, or holding files this run did not write,
    is refused with one UsageError offering ``--overwrite`` (which empties it first) or a fresh
    folder. A lock file (``flock``) lets processes of one fingerprint share the folder (accelerate
    sharding) and stops a process of another fingerprint, or an ``--overwrite``, while they write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a folder for the images")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            claim_folder(out_dir, spec, overwrite)          # nobody else is in the folder
        except BlockingIOError:
            fcntl.flock(lock, fcntl.LOCK_SH)                 # waits while a claim is being made
            owner = read_marker(out_dir) or {}
            if owner.get("fingerprint") != spec.fingerprint:  # not another shard of this run
                raise UsageError(f"another process is writing {out_dir} (a run with {_describe(owner)})"
                                 + ("; --overwrite waits for it to finish" if overwrite else "")
                                 + "; choose another folder") from None
        fcntl.flock(lock, fcntl.LOCK_SH)                     # share with the other shards of this run
        yield


def claim_folder(out_dir: Path, spec: SamplingSpec, overwrite: bool) -> None:
    """Check (or with ``overwrite`` empty) ``out_dir`` for ``spec``, then write the marker."""
    spec_fp = spec.fingerprint
    entries = [p for p in out_dir.iterdir() if p.name != LOCK_FILE]
    if overwrite and entries:
        log.warning("--overwrite: removing %d entries of %s", len(entries), out_dir)
        for entry in entries:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        entries = []
    owner = read_marker(out_dir)
    if owner is not None and owner.get("fingerprint") != spec_fp:
        raise UsageError(f"--out {out_dir} holds the images of another run ({_describe(owner)}); choose a fresh "
                         "folder, or pass --overwrite to replace them")
    if owner is None:
        foreign = [p.name for p in entries if not _written_for(p, spec_fp)]
        if foreign:
            raise UsageError(f"--out {out_dir} holds {len(foreign)} file(s) this run did not write (e.g. "
                             f"{', '.join(sorted(foreign)[:3])}); choose a fresh folder, or pass --overwrite to "
                             "replace them")
    atomic_write_json(out_dir / MARKER_FILE, {"fingerprint": spec_fp, "method": spec.method, "steps": spec.steps,
                                              "guidance_scale": spec.guidance_scale, "seed": spec.seed,
                                              "student": spec.student})


def _written_for(path: Path, spec_fp: str) -> bool:
    """Whether a file found in a folder without a marker is this run's own (a folder an earlier
    version wrote): temp files, its metadata.json, PNGs carrying its fingerprint."""
    if is_temp_file(path) or path.name == MARKER_FILE:
        return True
    if path.name == METADATA_FILE:
        try:
            return json.loads(path.read_text()).get("image_fingerprint") == spec_fp
        except (OSError, ValueError):
            return False
    return path.suffix == ".png" and path.is_file() and png_fingerprint(path) == spec_fp


def png_fingerprint(path: Path) -> str | None:
    """The image fingerprint a PNG of `bench sample` carries (its text chunk, read without decoding
    the pixels); None for another tool's image or an unreadable file."""
    try:
        with Image.open(path) as image:
            return image.info.get("bench_fingerprint")
    except Exception:
        return None


def check_finite(images: torch.Tensor, indices: Sequence[int], spec: SamplingSpec) -> None:
    """A NaN or inf pixel would be written as black (PNG clamps it): one error naming the images,
    before any of the batch is written."""
    finite = torch.isfinite(images.flatten(1)).all(dim=1)
    if bool(finite.all()):
        return
    bad = [index for index, ok in zip(indices, finite.tolist()) if not ok]
    raise BenchError(f"{spec.method} at {spec.steps} step(s), guidance {spec.guidance_scale:g}: non-finite values in "
                     f"image(s) {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''} (nothing of this batch "
                     "was written): the student or the sampler diverged; check the method's config and step count, "
                     "or retrain the student with --retrain")


def folder_fingerprint(spec: SamplingSpec, suite_fingerprint: str, num_images: int) -> str:
    return fingerprint({"images": spec.fingerprint, "suite": suite_fingerprint, "num_images": num_images})


def write_metadata(out_dir: Path, prompts: Sequence[str], spec: SamplingSpec, suite_fingerprint: str,
                   extra: dict) -> None:
    metadata = {
        **extra,
        "method": spec.method,
        "steps": spec.steps,
        "guidance_scale": spec.guidance_scale,
        "seed": spec.seed,
        "num_images": len(prompts),
        "image_fingerprint": spec.fingerprint,
        "fingerprint": folder_fingerprint(spec, suite_fingerprint, len(prompts)),
        "suite_fingerprint": suite_fingerprint,
        "spec": asdict(spec),
        "prompts": [{"index": i, "file": image_name(i), "prompt": p, "seed": image_seed(spec.seed, i)}
                    for i, p in enumerate(prompts)],
    }
    atomic_write_json(out_dir / METADATA_FILE, metadata)
