"""DMD's networks besides the generator (Yin et al. 2024, arXiv:2311.18828, §3.2; DMD2,
arXiv:2405.14867, §4.3): the fake score, a copy of the teacher U-Net trained on the generator's
outputs, with DMD2's optional GAN classifier on its bottleneck; used by ``methods.dmd``."""
from __future__ import annotations

import copy

import torch
from torch import nn

Tensor = torch.Tensor



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


