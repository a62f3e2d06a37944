"""The released code's from-scratch initialisation, shared by the HRNet and ResNet backbones."""

from __future__ import annotations

from torch import nn


def init_official(module: nn.Module) -> None:
    """(De)convolutions N(0, 0.001) with zero bias; BatchNorm weight 1 and bias 0 (every submodule)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
