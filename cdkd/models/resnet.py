"""ResNet + deconvolution backbone of SimpleBaseline, as used by SimCC and CDKD Table IX.

Implements the backbone of Xiao et al., "Simple Baselines for Human Pose Estimation and
Tracking" (ECCV 2018): a torchvision ResNet without its pooling and classifier, followed by three
stride-2 transposed convolutions (256 channels, kernel 4) that bring the stride-32 feature back to
stride 4. CDKD's Table IX distils into a SimCC ResNet-50 student at 64x64 with this backbone.

Parameter names follow the SimCC ``lib/models/pose_resnet.py`` (leeyegy/SimCC): ``conv1, bn1,
layer1..layer4`` exactly as torchvision (so ImageNet files such as ``resnet50-19c8e357.pth`` load
into it, their ``fc.*`` reported as unexpected) and ``deconv_layers.{0,1,3,4,6,7}`` for the
ConvTranspose2d/BatchNorm pairs (ReLUs at 2, 5, 8). The SimCC head adds ``final_layer`` and the
two ``mlp_head`` layers (see :mod:`cdkd.models.simcc`). No weights are downloaded: pretrained
weights come only from a local file (``ModelConfig.pretrained``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from cdkd.models.init import init_official

BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class ResNetSettings:
    """One pose ResNet variant (the official ``MODEL.EXTRA`` of pose_resnet).

    Attributes:
        depth: 18, 34 or 50 (torchvision ResNet).
        deconv_channels: output channels of each deconvolution (NUM_DECONV_FILTERS).
        deconv_kernel: kernel of every deconvolution (NUM_DECONV_KERNELS; 4 -> padding 1).
    """

    depth: int
    deconv_channels: tuple[int, ...] = (256, 256, 256)
    deconv_kernel: int = 4


RESNET_VARIANTS: dict[str, ResNetSettings] = {
    # ResNet + 3 deconvolutions (SimpleBaseline). resnet50 is the SimCC student of Table IX and SimBase
    # of Table I; resnet18/34 are CPU sizes, not in the paper.
    "resnet18": ResNetSettings(depth=18),
    "resnet34": ResNetSettings(depth=34),
    "resnet50": ResNetSettings(depth=50),
}

# kernel -> (padding, output_padding) giving an exact 2x upsampling (official _get_deconv_cfg)
_DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}


class PoseResNet(nn.Module):
    """ResNet trunk + deconvolutions; returns ``[B, 256, H/4, W/4]``.

    Attributes:
        settings: the :class:`ResNetSettings` it was built from.
        out_channels: channels of the returned feature (the last deconvolution's).
        stride: 4; size_divisor: 32 (input sides must be multiples of it).
    """

    stride = 4
    size_divisor = 32

    def __init__(self, settings: ResNetSettings):
        super().__init__()
        self.settings = settings
        factories = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}
        if settings.depth not in factories:
            raise ValueError(f"ResNet depth {settings.depth} not supported; choose one of {sorted(factories)}")
        if settings.deconv_kernel not in _DECONV_PADDING:
            raise ValueError(f"deconv kernel {settings.deconv_kernel} not supported; choose 2, 3 or 4")
        trunk = factories[settings.depth](weights=None)
        # Adopt the torchvision modules under their own names (the official names); avgpool/fc dropped.
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(trunk, name))
        in_channels = trunk.fc.in_features  # 512 (ResNet-18/34) or 2048 (ResNet-50)
        padding, output_padding = _DECONV_PADDING[settings.deconv_kernel]
        layers: list[nn.Module] = []
        for channels in settings.deconv_channels:
            layers += [
                nn.ConvTranspose2d(
                    in_channels,
                    channels,
                    kernel_size=settings.deconv_kernel,
                    stride=2,
                    padding=padding,
                    output_padding=output_padding,
                    bias=False,  # DECONV_WITH_BIAS: false in every SimCC config
                ),
                nn.BatchNorm2d(channels, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            ]
            in_channels = channels
        self.deconv_layers = nn.Sequential(*layers)
        self.out_channels = in_channels
        init_official(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: images ``[B, 3, H, W]`` (H, W multiples of 32).
        Returns: ``[B, 256, H/4, W/4]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [B, 64, H/4, W/4]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, 512|2048, H/32, W/32]
        return self.deconv_layers(x)  # [B, 256, H/4, W/4]
