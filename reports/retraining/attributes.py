"""Print, per toy-world attribute (size, colour, shape, position, background), the share of each
folder's PNG images that the toy feature network classifies as each value: where a retrained
student's coverage went (README "Retraining a student": DMD2 on two threads, 4 steps).

    python reports/retraining/attributes.py REFERENCE_FOLDER SAMPLES_FOLDER [...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.assets.toy.load import load_toy_feature_net, load_toy_world
from bench.core.errors import UsageError
from bench.scoring.metrics.features import list_images


def folder_images(folder: Path) -> torch.Tensor:
    """A flat image folder as the metrics read it (list_images: sidecars ignored, anything else named)."""
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in list_images(folder)])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float()


def main(folders: list[Path]) -> None:
    net, world = load_toy_feature_net(), load_toy_world()
    shares = {folder: net.attribute_frequencies(folder_images(folder)) for folder in folders}
    for attribute in next(iter(shares.values())):
        print(f"{attribute}: " + " / ".join(world.values(attribute)))
        for folder, share in shares.items():
            print("  " + " ".join(f"{float(v):.3f}" for v in share[attribute]) + f"  {folder}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    try:
        main([Path(arg) for arg in sys.argv[1:]])
    except UsageError as error:
        raise SystemExit(f"error: {error}") from None
