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


def folder_images(folder: Path) -> torch.Tensor:
    files = sorted(folder.glob("*.png"))
    if not files:
        raise SystemExit(f"{folder}: no PNG images in it")
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
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
    main([Path(arg) for arg in sys.argv[1:]])
