"""The LPIPS distance a method may ask the harness for (``TrainerServices.lpips_distance``; DMD's
regression loss, Yin et al. 2024, arXiv:2311.18828, Eq. 9): Zhang et al.'s LPIPS-VGG (the
``lpips`` package, whose wheel ships the learned linear layers) on torchvision's ImageNet VGG16
weights from a local file. With either missing it raises one :class:`MissingResourceError`
naming both and the way to supply them, before anything is built. Latents are decoded with the
teacher's codec first (DMD decodes with the Tiny VAE to save memory; the full VAE is used here, as
DMD's g = 8 run ended up doing).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.core.errors import MissingResourceError

LPIPS_VGG_ENV = "BENCH_LPIPS_VGG_PATH"
#: torchvision's VGG16 ImageNet weights (what lpips.pretrained_networks.vgg16 downloads)
VGG16_FILE = "vgg16-397923af.pth"


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
        import lpips  # optional dependency, checked by resolve_lpips


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


__all__ = ["resolve_lpips", "lpips_distance", "LPIPSDistance", "LPIPS_VGG_ENV"]
