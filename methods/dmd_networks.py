"""DMD's networks besides the generator (Yin et al. 2024, arXiv:2311.18828, §3.2; DMD2,
arXiv:2405.14867, §4.3): the fake score, a copy of the teacher U-Net trained on the generator's
outputs, with DMD2's optional GAN classifier on its bottleneck; and the loading of U-Net weights
that a stage starts from (DMD2's stage 2 resumes from a stage-1 student: ``generator_init``,
``fake_score_init``); used by ``methods.dmd``."""
from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

Tensor = torch.Tensor

#: what a student folder holds (bench/engine/students.py writes it; methods do not import bench):
#: ``student.json`` with ``kind``, and a diffusers U-Net folder ``unet/``
STUDENT_RECORD, STUDENT_UNET_FOLDER = "student.json", "unet"
#: DMD2's checkpoints (tianweiy/DMD2 main/train_sd.py, ``--ckpt_only_path``): ``pytorch_model.bin``
#: is the generator U-Net's state dict, ``pytorch_model_1.bin`` the guidance model's, whose fake
#: score is under this prefix (beside ``real_unet.`` and, in stage 2, ``cls_pred_branch.``)
DMD2_FAKE_UNET_PREFIX = "fake_unet."


def unet_weight_files(path: str | Path) -> list[Path]:
    """The weight files of ``path``: the file itself (``.safetensors``, else a ``torch.save`` state
    dict), or a student folder saved by this tool (its ``unet/``; a diffusers U-Net folder works
    too): its ``diffusion_pytorch_model*.safetensors`` (or ``.bin``), sorted. One clear error for a
    missing path, a LoRA student or a folder without U-Net weights."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder (expected a student folder saved by bench, "
                                "or a U-Net .safetensors / torch state dict file)")
    record = path / STUDENT_RECORD
    if record.is_file():
        kind = json.loads(record.read_text()).get("kind", "unet")
        if kind != "unet":
            raise ValueError(f"{path}: a {kind!r} student; only a full U-Net student (kind 'unet') can be loaded")
    folder = path / STUDENT_UNET_FOLDER if (path / STUDENT_UNET_FOLDER).is_dir() else path
    files = sorted(folder.glob("diffusion_pytorch_model*.safetensors")) or \
        sorted(folder.glob("diffusion_pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{path}: no U-Net weights (diffusion_pytorch_model*.safetensors) in {folder}")
    return files


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def unet_weights_sha256(path: str | Path) -> str:
    """sha256 of the weights ``path`` names: of the file itself, or, for a folder, over its weight
    files (``name\0sha256`` lines, sorted by name), so a copy elsewhere hashes the same."""
    files = unet_weight_files(path)
    if len(files) == 1 and Path(path).expanduser().is_file():
        return _file_sha256(files[0])
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{_file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _read_state_dict(file: Path) -> dict[str, Tensor]:
    if file.suffix == ".safetensors":
        return load_file(str(file), device="cpu")
    state = torch.load(str(file), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{file}: not a state dict (got {type(state).__name__})")
    return state


def unet_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The U-Net state dict ``path`` names (:func:`unet_weight_files`); a DMD2 guidance checkpoint's
    ``fake_unet.`` entries with the prefix dropped."""
    state: dict[str, Tensor] = {}
    for file in unet_weight_files(path):
        state.update(_read_state_dict(file))
    if any(k.startswith(DMD2_FAKE_UNET_PREFIX) for k in state):
        state = {k[len(DMD2_FAKE_UNET_PREFIX):]: v for k, v in state.items() if k.startswith(DMD2_FAKE_UNET_PREFIX)}
    return state


def load_unet_weights(unet: nn.Module, path: str | Path, what: str) -> nn.Module:
    """``unet`` with every weight replaced by those of ``path`` (cast to its dtype): all keys must
    match, else one error naming ``what`` (the config field) and the first mismatches."""
    state = unet_state_dict(path)
    try:
        missing, unexpected = unet.load_state_dict(state, strict=False)
    except RuntimeError as err:                 # a shape mismatch
        raise ValueError(f"{what}={path}: its weights do not fit the teacher's U-Net: {err}") from None
    if missing or unexpected:
        raise ValueError(f"{what}={path}: its weights do not fit the teacher's U-Net (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}); it must be a student of this teacher")
    return unet



class _StopForward(Exception):
    pass


class FakeScore(nn.Module):
    """mu_fake: a trainable copy of the teacher U-Net, plus DMD2's GAN classifier on its
    bottleneck (mid-block) features. The head is the code's ``cls_pred_branch`` (Conv 4x4/2 -> GN ->
    SiLU -> Conv 4x4/4 -> GN -> SiLU -> Conv 1x1) with an adaptive pool to 4x4 in between, which is
    the identity on SD-1.5's 8x8 bottleneck and lets smaller U-Nets use the same head."""

    def __init__(self, unet: nn.Module, gan: bool, seed: int = 0):
        super().__init__()
        self.unet = unet
        self.head = None
        self._armed = False
        self._features: Tensor | None = None
        if gan:
            channels = unet.config.block_out_channels[-1]
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.head = nn.Sequential(
                    nn.Conv2d(channels, channels, 4, 2, 1), nn.GroupNorm(groups, channels), nn.SiLU(),
                    nn.AdaptiveAvgPool2d(4),
                    nn.Conv2d(channels, channels, 4, 4, 0), nn.GroupNorm(groups, channels), nn.SiLU(),
                    nn.Conv2d(channels, 1, 1, 1, 0))
            unet.mid_block.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        if self._armed:                    # not during checkpoint recomputation in backward
            self._features = output
            raise _StopForward

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor, classify: bool = False) -> Tensor:
        """The U-Net's raw output, or (``classify``) one realism logit per sample from its
        bottleneck features; the classifier pass stops after the mid-block (code classify_forward)."""
        if not classify:
            return self.unet(x_t, t, encoder_hidden_states=cond).sample
        self._armed = True
        try:
            self.unet(x_t, t, encoder_hidden_states=cond)
        except _StopForward:
            pass
        finally:
            self._armed = False
        features, self._features = self._features, None
        return self.head(features).flatten()


def copy_unet(unet: nn.Module, checkpointing: bool) -> nn.Module:
    """A fp32 trainable copy of the teacher U-Net (G and mu_fake both start as the teacher, Alg. 1 l.2)."""
    copy_ = nn.Module.to(copy.deepcopy(unet), device="cpu", dtype=torch.float32).train().requires_grad_(True)
    if checkpointing:
        copy_.enable_gradient_checkpointing()
    return copy_


