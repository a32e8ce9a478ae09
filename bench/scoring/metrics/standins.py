"""Stand-in metric model: a tiny seeded random-weight conv net with the Inception call contract.

Tests, CI and the ``smoke`` suite use it where the real Inception weights cannot be downloaded. Its
numbers are *not* FIDs comparable with anything published; rows computed with it carry the
identity ``standin-random-init:<seed>`` so they can never be mistaken for Inception numbers.

Contract (clean-fid custom extractor): float tensor [B, 3, 299, 299] in 0..255 -> [B, 64]. It
downsamples by 4 first (average pooling), so a CPU batch costs a few milliseconds.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from bench.scoring.metrics.features import FeatureExtractor

STANDIN_NAME = "standin-conv"
STANDIN_DIM = 64


class StandinFeatureNet(nn.Module):
    """avgpool /4 -> 3 strided 3x3 convs with ReLU (3->16->32->64) -> global average -> [B, 64].

    Weights are drawn from a private ``torch.Generator`` seeded with ``seed`` (the global RNG is
    untouched), He-normal for the convs, zero biases: the same seed gives the same network on
    every machine.
    """

    def __init__(self, seed: int = 0, dim: int = STANDIN_DIM) -> None:
        super().__init__()
        widths = (3, 16, 32, dim)
        self.pool = nn.AvgPool2d(4)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1) for c_in, c_out in zip(widths, widths[1:])
        )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
                conv.bias.zero_()
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 128.0) / 128.0  # same input normalisation as clean-fid's Inception wrapper
        x = self.pool(x)
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.mean(dim=(2, 3))


def standin_extractor(seed: int = 0, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The stand-in as a :class:`FeatureExtractor` (identity ``standin-random-init:<seed>``)."""
    device = torch.device(device)
    module = StandinFeatureNet(seed).to(device)
    return FeatureExtractor(STANDIN_NAME, f"standin-random-init:{seed}", STANDIN_DIM, module, device)
