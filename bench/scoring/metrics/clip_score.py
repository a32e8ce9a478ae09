"""CLIP score: mean cosine between OpenCLIP image and prompt embeddings (as in DMD2's
``compute_clip_score``, tianweiy/DMD2 ``main/coco_eval/coco_evaluator.py``, which GigaGAN and DMD2 use).

Protocol recorded here (see ``ClipScorer.protocol``):

* Model: OpenCLIP ViT-g/14. The default tag ``laion2b_s12b_b42k`` is the one in the GigaGAN, DMD2 and
  SiD evaluation code; BK-SDM used ``laion2b_s34b_b88k``. The two checkpoints give different numbers,
  so the tag (and the weights' sha256) goes into every fingerprint.
* Text: open_clip's own tokenizer. ``SimpleTokenizer.__call__`` builds ``[SOT] + bpe + [EOT]``, keeps the
  first ``context_length`` (77) tokens and overwrites the last kept slot with EOT, so the pooled
  (argmax = EOT) position of a long prompt is still the EOT token. An optional prefix (GigaGAN/DMD2's
  "A photo depicts", after Hessel et al.'s CLIPScore) is prepended to the text before tokenising.
  DMD2 instead splices the prefix's 3 BPE tokens in after SOT of the already truncated caption, cuts
  to 77 and writes EOT into the last slot when it is not padding; both give the same 77 tokens
  (SOT, 3 prefix tokens, the first 72 caption tokens at most, EOT), because CLIP's BPE works word by word.
* Images: optionally (``ClipScoreConfig.image_size``) a centre crop of the long edge to a square
  (torchvision ``center_crop`` offsets, DMD2's ``CenterCropLongEdge``) and a PIL Lanczos resize to
  ``image_size`` x ``image_size`` (DMD2: 256) first, the crop of :mod:`bench.scoring.metrics.features`;
  then the transform returned by ``open_clip.create_model_and_transforms`` (shortest-side bicubic
  resize to 224, centre crop, OpenAI mean/std).
* Number: the raw cosine between the L2-normalised embeddings, per image and averaged (e.g. 0.31),
  with no clamping. torchmetrics' ``CLIPScore`` differs: it reports ``100 * cos`` and clamps at 0
  (``max(mean, 0)`` in ``compute()``). Use :func:`as_paper_scale` only for display next to papers that
  print ×100.

The configuration defaults (no prefix, image straight into the open_clip transform) are the library's;
the benchmark picks a protocol per suite (:func:`clip_protocol_for_suite`, applied by
``bench.scoring.evaluate``):

``coco2014-30k``, ``coco2017-5k``
    ``dmd2``: DMD2's ``compute_clip_score`` exactly: prefix "A photo depicts", centre crop + PIL
    Lanczos 256, the open_clip transform, raw mean cosine (ViT-g/14 ``laion2b_s12b_b42k``).
``mjhq-5k``
    ``dmd2`` as well. None of the papers we compare with publishes a ViT-g/14 CLIP score on MJHQ (the
    MJHQ card reports FID only; SVDQuant-style tables use torchmetrics' ViT-L/14, x100 and clamped),
    so there is no MJHQ protocol to follow; the COCO one keeps a method's CLIP numbers on one
    definition across suites. The prefix reads oddly before Midjourney-style prompts, but it is the same
    constant shift of the text for every method, and the choice is recorded.
``toy``, ``smoke``, ``prompts-file``
    ``raw``: no prefix, image straight into the transform (their stand-in / toy CLIP models; the toy
    leaderboard numbers were made this way).

``--clip-prefix none|TEXT`` and ``--clip-resize raw|N`` select variants. A result row records the
protocol in ``protocol["clip_protocol"]`` (name, prefix, image path) whenever it is not ``raw``, so rows
of different CLIP protocols never share a fingerprint; rows without the key used ``raw`` (every row
made before the per-suite protocol existed, the toy rows included).

Weights are never downloaded: a tag is resolved to a file in the Hugging Face cache, or a local
checkpoint file is given through ``ClipScoreConfig.weights_path`` / ``--clip-weights`` /
``BENCH_CLIP_PATH``. When neither exists, :func:`resolve_clip_weights` raises one
:class:`MissingResourceError` before any model is built.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from bench.core.distributed import map_loaded, process_shard
from bench.core.errors import BenchError, MissingResourceError, UsageError
from bench.core.fingerprint import sha256_file
from bench.core.progress import progress_bar
from bench.scoring.metrics.features import ImageProtocol, feature_loading
from bench.scoring.metrics.features import preprocess as crop_and_resize

logger = logging.getLogger(__name__)

CLIP_WEIGHTS_ENV = "BENCH_CLIP_PATH"
CLIP_WEIGHTS_FLAG = "--clip-weights"
GIGAGAN_PREFIX = "A photo depicts"  # GigaGAN / DMD2 evaluation code (CLIPScore, Hessel et al. 2021)
DMD2_IMAGE_SIZE = 256  # DMD2 compute_clip_score: resize_and_center_crop(image_np, resize_size=256)
DMD2_SOURCE = "tianweiy/DMD2 main/coco_eval/coco_evaluator.py::compute_clip_score"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# open_clip.constants: the default file names of an open_clip checkpoint on the Hub. open_clip tries
# the safetensors name first (pretrained.download_pretrained_from_hf), and so do we.
_HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
_HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"


CLIP_PRECISIONS = ("auto", "fp16", "fp32")


@dataclass(frozen=True)
class ClipScoreConfig:
    """How CLIP score is computed. Defaults follow the DMD2 / GigaGAN / SiD protocol.

    ``pretrained`` is an open_clip tag: ``laion2b_s12b_b42k`` (DMD2, GigaGAN, SiD) or
    ``laion2b_s34b_b88k`` (BK-SDM); they do not give the same numbers.
    ``prefix``: ``None`` (BK-SDM, SiD) or ``GIGAGAN_PREFIX`` (GigaGAN / DMD2 parity).
    ``image_size``: ``None`` (the image goes into the open_clip transform as it is) or N: centre crop
    of the long edge + PIL Lanczos to N x N first (``DMD2_IMAGE_SIZE`` = 256 for DMD2 parity).
    ``weights_path``: a local open_clip checkpoint file; when ``None`` the ``BENCH_CLIP_PATH``
    environment variable is used, then the Hugging Face cache.
    ``cache_dir``: the Hugging Face hub cache to search; ``None`` means ``HF_HUB_CACHE`` /
    ``HF_HOME``/hub / ``~/.cache/huggingface/hub``, read when the weights are resolved.
    """

    model_name: str = "ViT-g-14"
    pretrained: str | None = "laion2b_s12b_b42k"
    prefix: str | None = None
    batch_size: int = 32
    image_size: int | None = None
    weights_path: str | None = None
    cache_dir: str | None = None
    precision: str = "auto"           # "auto": fp16 on CUDA, fp32 elsewhere; or "fp16" / "fp32"
    fp16_tolerance: float = 2e-3      # largest |cos fp16 - cos fp32| allowed on a process's first batch

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"CLIP score batch_size must be >= 1, got {self.batch_size}")
        if self.precision not in CLIP_PRECISIONS:
            raise UsageError(f"--clip-precision must be one of {', '.join(CLIP_PRECISIONS)}, got {self.precision!r}")
        if self.prefix is not None and not self.prefix.strip():
            raise UsageError("CLIP score prefix must be None or a non-empty string")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 1):
            raise UsageError(f"CLIP score image_size must be None or a positive int, got {self.image_size!r}")

    @property
    def clip_protocol(self) -> ClipProtocol:
        return ClipProtocol(self.prefix, self.image_size)


@dataclass(frozen=True)
class ClipProtocol:
    """What happens to the text and the image before the model: the prefix, and the optional centre
    crop + Lanczos resize (``image_size``) before the open_clip transform."""

    prefix: str | None
    image_size: int | None

    def __post_init__(self) -> None:
        if self.prefix is not None:  # the scorer strips it (text_for): one spelling per protocol
            object.__setattr__(self, "prefix", self.prefix.strip())

    @property
    def name(self) -> str:
        if self == DMD2_CLIP_PROTOCOL:
            return "dmd2"
        if self == RAW_CLIP_PROTOCOL:
            return "raw"
        return "variant"

    def describe_image(self) -> str:
        if self.image_size is None:
            return "open_clip transform only"
        return f"centre crop + PIL lanczos {self.image_size}, then the open_clip transform"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "prefix": self.prefix, "image": self.describe_image(),
                **({"source": DMD2_SOURCE} if self.name == "dmd2" else {})}

    def recorded(self) -> dict[str, Any] | None:
        """What a result row records: None for ``raw`` (rows made before per-suite CLIP protocols,
        the toy rows included, carry no key and were made this way), else :meth:`as_dict`."""
        return None if self == RAW_CLIP_PROTOCOL else self.as_dict()


DMD2_CLIP_PROTOCOL = ClipProtocol(GIGAGAN_PREFIX, DMD2_IMAGE_SIZE)
RAW_CLIP_PROTOCOL = ClipProtocol(None, None)
_SUITE_CLIP_PROTOCOLS: dict[str, ClipProtocol] = {
    "coco2014-30k": DMD2_CLIP_PROTOCOL,
    "coco2017-5k": DMD2_CLIP_PROTOCOL,
    "mjhq-5k": DMD2_CLIP_PROTOCOL,   # no published MJHQ CLIP protocol: the COCO one (module docstring)
    "toy": RAW_CLIP_PROTOCOL,        # toy CLIP, unchanged: the committed toy leaderboard was made so
    "smoke": RAW_CLIP_PROTOCOL,      # stand-in CLIP
    "prompts-file": RAW_CLIP_PROTOCOL,  # stand-in CLIP
}


def clip_protocol_for_suite(name: str) -> ClipProtocol:
    """The CLIP protocol of a suite (module docstring); a suite not listed (a named prompts file
    scored with the real model) gets DMD2's."""
    return _SUITE_CLIP_PROTOCOLS.get(name, DMD2_CLIP_PROTOCOL)


def parse_clip_prefix(text: str) -> str | None:
    """A given ``--clip-prefix``: ``none`` -> no prefix, else the text."""
    if text.strip().lower() == "none":
        return None
    if not text.strip():
        raise UsageError("--clip-prefix takes 'none' or a non-empty text")
    return text.strip()  # the scorer strips it anyway (text_for): one spelling per protocol


def parse_clip_resize(text: str | int) -> int | None:
    """A given ``--clip-resize``: ``raw`` -> None (no crop/resize before the transform), else a positive int."""
    if str(text).strip().lower() == "raw":
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        value = 0
    if isinstance(text, bool) or value < 1:
        raise UsageError(f"--clip-resize takes 'raw' or a positive integer size, got {text!r}")
    return value


def resolve_clip_protocol(suite_name: str, prefix: str | None = None,
                          resize: str | int | None = None) -> ClipProtocol:
    """The suite's CLIP protocol with the ``--clip-prefix`` / ``--clip-resize`` overrides (None: not
    given, keep the suite's) applied."""
    base = clip_protocol_for_suite(suite_name)
    return ClipProtocol(base.prefix if prefix is None else parse_clip_prefix(prefix),
                        base.image_size if resize is None else parse_clip_resize(resize))


@dataclass(frozen=True)
class ClipScoreResult:
    """``mean_cosine``: mean over images of the raw cosine; ``per_image[i]`` pairs image i with prompt i."""

    mean_cosine: float
    per_image: np.ndarray
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def paper_scale(self) -> float:
        return as_paper_scale(self.mean_cosine)


def as_paper_scale(x: float) -> float:
    """The ×100 scale some papers print (e.g. 0.31 -> 31.0). Display only; we store the raw cosine."""
    return 100.0 * x


@dataclass(frozen=True)
class ResolvedClipWeights:
    path: str
    source: str  # "config.weights_path", "env:BENCH_CLIP_PATH" or "hf-cache:<repo id>"


def hf_hub_cache_dir(environ: Mapping[str, str] | None = None) -> str:
    """The hub cache huggingface_hub would use, computed from the environment *now*.

    huggingface_hub.constants freezes these at import time; recomputing them here makes the error
    message name the cache that was really searched when HF_HOME changes later (as in tests).
    """
    env = os.environ if environ is None else environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return os.path.expandvars(os.path.expanduser(cache))


def _hub_location(model_name: str, pretrained: str) -> tuple[str, list[str]] | None:
    """(hf repo id, candidate file names) that open_clip would download for a tag, or None."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name, pretrained)
    hub = cfg.get("hf_hub", "") if cfg else ""
    if not hub:
        return None
    repo_id, filename = os.path.split(hub)
    filename = filename or _HF_WEIGHTS_NAME
    candidates = []
    if filename == _HF_WEIGHTS_NAME:
        candidates.append(_HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        candidates.append(filename[:-4] + ".safetensors")
    candidates.append(filename)
    return repo_id, candidates


def resolve_clip_weights(config: ClipScoreConfig, environ: Mapping[str, str] | None = None) -> ResolvedClipWeights:
    """Find the checkpoint file for ``config`` without touching the network, or raise one clear error.

    Order: ``config.weights_path``, then ``$BENCH_CLIP_PATH``, then the Hugging Face cache entry of the
    tag's hub repo (``huggingface_hub.try_to_load_from_cache``, a pure file-system look-up).
    """
    env = os.environ if environ is None else environ
    candidates = (("config.weights_path", config.weights_path), (f"env:{CLIP_WEIGHTS_ENV}", env.get(CLIP_WEIGHTS_ENV)))
    for source, value in candidates:
        if value:
            path = os.path.expandvars(os.path.expanduser(value))
            if not os.path.isfile(path):
                raise MissingResourceError(
                    f"OpenCLIP weights file {path!r} (from {source}, given for {config.model_name}"
                    f"{'/' + config.pretrained if config.pretrained else ''}) does not exist or is not a file; "
                    f"point {CLIP_WEIGHTS_FLAG} or {CLIP_WEIGHTS_ENV} at an open_clip checkpoint "
                    f"({_HF_SAFE_WEIGHTS_NAME} or {_HF_WEIGHTS_NAME})."
                )
            return ResolvedClipWeights(path=path, source=source)

    if not config.pretrained:
        raise UsageError(
            f"CLIP score needs trained weights for {config.model_name}: set a pretrained tag or give "
            f"{CLIP_WEIGHTS_FLAG} PATH / {CLIP_WEIGHTS_ENV}=PATH (random weights are not a metric)."
        )

    cache_dir = config.cache_dir or hf_hub_cache_dir(env)
    location = _hub_location(config.model_name, config.pretrained)
    if location is not None:
        from huggingface_hub import try_to_load_from_cache

        repo_id, candidates = location
        for filename in candidates:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return ResolvedClipWeights(path=found, source=f"hf-cache:{repo_id}")
        where = f"the Hugging Face Hub repo {repo_id} (file {' or '.join(candidates)})"
        fetch_hint = f" On a machine with internet: `huggingface-cli download {repo_id} {candidates[-1]}`."
    else:
        where = "no Hugging Face Hub repo (not a hub-hosted open_clip tag)"
        fetch_hint = ""
    offline = env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE")
    raise MissingResourceError(
        f"CLIP score weights {config.model_name}/{config.pretrained} are not available offline: they would "
        f"come from {where}, and they are not in the Hugging Face cache {cache_dir}"
        f"{' (HF_HUB_OFFLINE is set)' if offline else ''}; nothing is downloaded. Give a local open_clip "
        f"checkpoint file with {CLIP_WEIGHTS_FLAG} PATH or {CLIP_WEIGHTS_ENV}=PATH.{fetch_hint}"
    )


def weights_sha256(path: str) -> str:
    """sha256 of a checkpoint file. A Hugging Face cache blob of an LFS file is named by that sha256."""
    real = os.path.realpath(path)
    name = os.path.basename(real)
    if re.fullmatch(r"[0-9a-f]{64}", name) and os.path.basename(os.path.dirname(real)) == "blobs":
        return name
    logger.info("hashing CLIP weights %s for the fingerprint", real)
    return sha256_file(real)


def _natural_key(path: Path) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def list_images(folder: str | Path) -> list[Path]:
    """Image files of ``folder`` (not recursive) in natural order: 2.png before 10.png."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"image folder {str(folder)!r} does not exist")
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=_natural_key)


def _as_rgb(item: Image.Image | Path) -> Image.Image:
    if isinstance(item, Path):
        with Image.open(item) as image:
            return image.convert("RGB")
    return item if item.mode == "RGB" else item.convert("RGB")


def clip_input_image(item: Image.Image | Path, image_size: int | None) -> Image.Image:
    """The RGB image handed to the open_clip transform: centre crop + Lanczos to ``image_size``
    when it is set, the image as it is otherwise."""
    image = _as_rgb(item)
    if image_size is None:
        return image
    protocol = ImageProtocol(image_size, center_crop_long_edge=True, resize_filter="lanczos")
    return Image.fromarray(crop_and_resize(image, protocol))


class ClipImages(Dataset):
    """Item i: (image i through :func:`clip_input_image` and the open_clip transform, i), for a
    ``DataLoader`` whose workers decode ahead of the encoders."""

    def __init__(self, items: Sequence[Image.Image | Path], preprocess: Callable[[Image.Image], torch.Tensor],
                 image_size: int | None) -> None:
        self.items, self.preprocess, self.image_size = items, preprocess, image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.preprocess(clip_input_image(self.items[i], self.image_size)), i


class ClipScorer:
    """Scores (image, prompt) pairs with an open_clip model. Build with :meth:`from_config` (real
    weights) or :meth:`from_model` (an already-built model, e.g. a tiny one in tests or the toy world).
    """

    def __init__(
        self,
        model: Any,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        identity: str,
        config: ClipScoreConfig,
        device: torch.device | str | None = None,
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.identity = identity
        self.config = config
        if device is None:
            params = list(model.parameters()) if hasattr(model, "parameters") else []
            device = params[0].device if params else "cpu"
        self.device = torch.device(device)
        self.precision = config.precision
        if self.precision == "auto":
            self.precision = "fp16" if self.device.type == "cuda" else "fp32"
        if hasattr(model, "eval"):
            model.eval()

    @classmethod
    def from_config(
        cls,
        config: ClipScoreConfig | None = None,
        device: torch.device | str = "cpu",
        environ: Mapping[str, str] | None = None,
    ) -> ClipScorer:
        """Load the real model through open_clip's loader from a local file; never downloads."""
        config = config or ClipScoreConfig()
        resolved = resolve_clip_weights(config, environ)  # raises before any work
        import open_clip
        from open_clip.pretrained import get_pretrained_cfg

        # Preprocessing as the tag defines it, even though the weights come from a file path.
        tag_cfg = get_pretrained_cfg(config.model_name, config.pretrained) if config.pretrained else {}
        overrides = {}
        if tag_cfg:
            overrides = dict(
                image_mean=tag_cfg.get("mean"),
                image_std=tag_cfg.get("std"),
                image_interpolation=tag_cfg.get("interpolation"),
                image_resize_mode=tag_cfg.get("resize_mode"),
            )
        logger.info("loading OpenCLIP %s from %s (%s)", config.model_name, resolved.path, resolved.source)
        model, _, preprocess = open_clip.create_model_and_transforms(
            config.model_name, pretrained=resolved.path, device=device, **overrides
        )
        tokenizer = open_clip.get_tokenizer(config.model_name)
        return cls(model, preprocess, tokenizer, weights_sha256(resolved.path), config, device)

    @classmethod
    def from_model(
        cls,
        model: Any,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        identity: str,
        config: ClipScoreConfig | None = None,
        device: torch.device | str | None = None,
    ) -> ClipScorer:
        """Wrap an open_clip-like model (``encode_image``/``encode_text``); ``identity`` names its weights."""
        return cls(model, preprocess, tokenizer, identity, config or ClipScoreConfig(), device)

    def protocol(self) -> dict[str, Any]:
        """What changes the number: goes into fingerprints and result rows."""
        return {
            "metric": "clip_score",
            "model_name": self.config.model_name,
            "pretrained": self.config.pretrained,
            "weights": self.identity,
            "prefix": self.config.prefix,
            "image": self.config.clip_protocol.describe_image(),
            "value": "raw mean cosine, no clamp",
            "context_length": getattr(self.tokenizer, "context_length", None),
            # recorded only when not fp32, so fp32 rows keep the fingerprints they always had
            **({"precision": f"{self.precision} autocast, within {self.config.fp16_tolerance:g} of fp32 "
                             "on each process's first batch"} if self.precision != "fp32" else {}),
        }

    def text_for(self, prompt: str) -> str:
        """The text actually tokenised for ``prompt`` (with the configured prefix, if any)."""
        if self.config.prefix is None:
            return prompt
        return f"{self.config.prefix.strip()} {prompt.strip()}"

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer([self.text_for(p) for p in prompts])
        eot = getattr(self.tokenizer, "eot_token_id", None)
        if eot is not None and tokens.ndim == 2:
            full = tokens[:, -1] != 0
            if bool((tokens[full, -1] != eot).any()):
                raise RuntimeError("tokenizer truncated a prompt without keeping the end-of-text token")
            if bool(full.any()):
                logger.info("%d of %d prompts filled the %d-token context (truncated, EOT kept)",
                            int(full.sum()), len(prompts), tokens.shape[1])
        return tokens

    def prepare_image(self, item: Image.Image | Path) -> Image.Image:
        """The RGB image handed to the open_clip transform (centre crop + Lanczos when configured)."""
        return clip_input_image(item, self.config.image_size)

    def cosines(self, images: Sequence[Image.Image | Path], prompts: Sequence[str],
                precision: str | None = None) -> torch.Tensor:
        """Raw cosine of each (image i, prompt i) pair, for one batch; the encoders run in
        ``precision`` (default the scorer's) under autocast, the cosine in fp32."""
        pixels = torch.stack([self.preprocess(self.prepare_image(item)) for item in images])
        return self.pixel_cosines(pixels, prompts, precision)

    @torch.inference_mode()
    def pixel_cosines(self, pixels: torch.Tensor, prompts: Sequence[str], precision: str | None = None) -> torch.Tensor:
        """:meth:`cosines` of a batch already through the open_clip transform ([B, 3, H, W]; a
        page-locked batch is copied to the device asynchronously)."""
        pixels = pixels.to(self.device, non_blocking=pixels.is_pinned())
        tokens = self.tokenize(prompts).to(self.device)
        half = (precision or self.precision) == "fp16"
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=half):
            image_emb, text_emb = self.model.encode_image(pixels), self.model.encode_text(tokens)
        return (F.normalize(image_emb.float(), dim=-1) * F.normalize(text_emb.float(), dim=-1)).sum(dim=-1)

    def checked_half(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """fp16 cosines of a batch, checked against fp32 ones of the same batch: a BenchError when
        they differ by more than ``fp16_tolerance`` (the number would then depend on the precision)."""
        half, full = self.pixel_cosines(pixels, prompts), self.pixel_cosines(pixels, prompts, precision="fp32")
        worst = float((half.float() - full).abs().max())
        if not worst <= self.config.fp16_tolerance:
            raise BenchError(f"CLIP score in fp16 differs from fp32 by {worst:.2e} on this device (> "
                             f"{self.config.fp16_tolerance:g}); rerun with --clip-precision fp32")
        logger.info("CLIP fp16 checked against fp32 on %d images: max |diff| %.1e", len(pixels), worst)
        return half

    def score(
        self,
        images: Sequence[Image.Image] | str | Path,
        prompts: Sequence[str],
        progress: bool = True,
    ) -> ClipScoreResult:
        """CLIP score of images (PIL images, or a folder read in natural file-name order) against prompts."""
        items: Sequence[Image.Image | Path]
        items = list_images(images) if isinstance(images, (str, Path)) else list(images)
        prompts = list(prompts)
        if len(items) != len(prompts):
            raise UsageError(f"CLIP score needs one prompt per image: {len(items)} images, {len(prompts)} prompts")
        if not items:
            raise UsageError("CLIP score of zero images is undefined")

        size = self.config.batch_size
        batches = [range(i, min(i + size, len(items))) for i in range(0, len(items), size)]
        rank, world = process_shard()       # under `accelerate launch`, every process scores its share
        bar = progress_bar(total=len(range(rank, len(batches), world)), desc="CLIP score", disable=not progress,
                           leave=False)
        # image files are decoded and transformed by loader workers on a GPU (in-memory images in
        # this process): the same pixels, so the same cosines, as the plain loop
        workers = feature_loading(self.device)[1] if all(isinstance(item, Path) for item in items) else 0
        checked: list[bool] = []

        def cosines(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            pixels, indices = batch
            batch_prompts = [prompts[i] for i in indices.tolist()]
            first_half = self.precision == "fp16" and not checked
            out = (self.checked_half if first_half else self.pixel_cosines)(pixels, batch_prompts).cpu()
            checked.append(True)
            bar.update(1)
            return out

        images_dataset = ClipImages(items, self.preprocess, self.config.image_size)
        parts = map_loaded(cosines, images_dataset, batches, num_workers=workers,
                           pin_memory=self.device.type == "cuda")
        bar.close()
        per_image = torch.cat(parts).double().numpy()
        return ClipScoreResult(mean_cosine=float(per_image.mean()), per_image=per_image, protocol=self.protocol())


def clip_score(
    images: Sequence[Image.Image] | str | Path,
    prompts: Sequence[str],
    config: ClipScoreConfig | None = None,
    device: torch.device | str = "cpu",
) -> ClipScoreResult:
    """One-shot CLIP score with the real weights (see :meth:`ClipScorer.from_config`)."""
    return ClipScorer.from_config(config, device=device).score(images, prompts)
