"""HRNet backbone: the feature extractor of every SimCC model in the CDKD paper.

Implements the High-Resolution Network of Sun et al., "Deep High-Resolution Representation
Learning for Human Pose Estimation" (CVPR 2019), which CDKD (Gu et al., Sec. IV-A, Tables I-II)
uses for the 256x256 teacher and for the 32x32 / 64x64 students (HRNet-W32, HRNet-W48).

The module tree and every parameter name follow the official pose HRNet
(leoxiaobin/deep-high-resolution-net.pytorch, ``lib/models/pose_hrnet.py``, reused unchanged by
SimCC and the released CDKD code), so that official checkpoints load with ``strict=True``::

    conv1, bn1, conv2, bn2           stem: two 3x3 stride-2 convs            -> H/4 x W/4
    layer1                           Bottlenecks (4 in W32/W48)              -> 256 channels
    transition1, stage2              2 parallel branches (H/4, H/8)
    transition2, stage3              3 branches (... H/16)
    transition3, stage4              4 branches (... H/32); the last module fuses into branch 0 only

Each stage is an ``nn.Sequential`` of :class:`HighResolutionModule` (``branches``, ``fuse_layers``);
transitions are ``nn.ModuleList`` with ``None`` where a branch passes through unchanged. The
backbone returns the highest-resolution branch, ``[B, C, H/4, W/4]``.

The ImageNet-pretrained classification files (``hrnet_w32-36af842e.pth``, ``hrnet_w48-8ef0771d.pth``)
share these names for the stem and stages; :func:`cdkd.checkpoint.load_pretrained_backbone` loads
the matching keys into this backbone and reports the classification-only ones.

File order (as timm ``timm/models/hrnet.py``): variant settings, blocks, main class, private
builder, public factories.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cdkd.models.init import init_official

BN_MOMENTUM = 0.1  # the official value (equal to PyTorch's default)


# --------------------------------------------------------------------------------------------
# Variant settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageSettings:
    """One HRNet stage: ``num_modules`` multi-resolution modules of BasicBlock branches.

    Attributes:
        num_modules: number of :class:`HighResolutionModule` in the stage (NUM_MODULES).
        num_blocks: residual blocks per branch (NUM_BLOCKS), highest resolution first.
        num_channels: width of each branch (NUM_CHANNELS), highest resolution first.
    """

    num_modules: int
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]


@dataclass(frozen=True)
class HRNetSettings:
    """Widths and depths of one HRNet variant (the official ``MODEL.EXTRA`` block).

    Stages 2-4 use BasicBlocks in every pose HRNet config; layer1 uses Bottlenecks.

    Attributes:
        stage2, stage3, stage4: the three multi-resolution stages (2, 3 and 4 branches).
        stem_width: channels of conv1/conv2 (64 in the official nets).
        layer1_planes: Bottleneck planes of layer1; its output has ``4 * layer1_planes`` channels.
        layer1_blocks: Bottlenecks in layer1 (4 in the official nets).
    """

    stage2: StageSettings
    stage3: StageSettings
    stage4: StageSettings
    stem_width: int = 64
    layer1_planes: int = 64
    layer1_blocks: int = 4

    def __post_init__(self) -> None:
        for index, stage in enumerate((self.stage2, self.stage3, self.stage4)):
            name = f"stage{index + 2}"
            if len(stage.num_blocks) != len(stage.num_channels):
                raise ValueError(
                    f"HRNet {name}: {len(stage.num_blocks)} num_blocks but "
                    f"{len(stage.num_channels)} num_channels (one of each per branch)"
                )
            if len(stage.num_channels) != index + 2:
                raise ValueError(f"HRNet {name} must have {index + 2} branches, got {len(stage.num_channels)}")
            if stage.num_modules < 1 or min(stage.num_blocks) < 1:
                raise ValueError(f"HRNet {name} needs at least one module and one block per branch")


def _official(width: int) -> HRNetSettings:
    """The official pose HRNet-W{width}: modules 1/4/3, 4 blocks per branch, widths C, 2C, 4C, 8C."""
    c = (width, 2 * width, 4 * width, 8 * width)
    return HRNetSettings(
        stage2=StageSettings(num_modules=1, num_blocks=(4, 4), num_channels=c[:2]),
        stage3=StageSettings(num_modules=4, num_blocks=(4, 4, 4), num_channels=c[:3]),
        stage4=StageSettings(num_modules=3, num_blocks=(4, 4, 4, 4), num_channels=c),
    )


HRNET_VARIANTS: dict[str, HRNetSettings] = {
    # The paper's backbones (official w32_256x256 / w48_256x192 configs): HRNet-W32 (28.5M parameters
    # with the SimCC head, the main backbone) and HRNet-W48 (63.6M, COCO 64x64 of Table II).
    "hrnet_w32": _official(32),
    "hrnet_w48": _official(48),
    # Small CPU variants (ours; not in the paper). hrnet_w16_small follows the layout of the
    # official HRNet-W18-Small-v1 (1 layer1 Bottleneck of 32 planes, one module of 2 blocks per
    # stage) at widths 16/32/64/128.
    "hrnet_w16_small": HRNetSettings(
        stage2=StageSettings(num_modules=1, num_blocks=(2, 2), num_channels=(16, 32)),
        stage3=StageSettings(num_modules=1, num_blocks=(2, 2, 2), num_channels=(16, 32, 64)),
        stage4=StageSettings(num_modules=1, num_blocks=(2, 2, 2, 2), num_channels=(16, 32, 64, 128)),
        stem_width=64,
        layer1_planes=32,
        layer1_blocks=1,
    ),
    # hrnet_w8_tiny: the smallest net with the full four-stage topology, for tests and tiny
    # CPU runs (a 256x256 teacher of this size trains on a laptop).
    "hrnet_w8_tiny": HRNetSettings(
        stage2=StageSettings(num_modules=1, num_blocks=(1, 1), num_channels=(8, 16)),
        stage3=StageSettings(num_modules=1, num_blocks=(1, 1, 1), num_channels=(8, 16, 32)),
        stage4=StageSettings(num_modules=1, num_blocks=(1, 1, 1, 1), num_channels=(8, 16, 32, 64)),
        stem_width=16,
        layer1_planes=8,
        layer1_blocks=1,
    ),
}


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """1x1 conv + BN shortcut (``downsample``) used when a block changes width or stride."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes, momentum=BN_MOMENTUM),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (He et al., 2016)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 conv-BN bottleneck with residual connection; output is 4x ``planes``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _fuse_path(channels: tuple[int, ...], i: int, j: int) -> nn.Module | None:
    """The path that carries branch ``j`` into branch ``i`` inside a fuse layer.

    j > i (lower resolution): 1x1 conv + BN + nearest upsampling by 2**(j-i).
    j == i: identity (``None`` in the official module list).
    j < i (higher resolution): i-j stride-2 3x3 conv + BN steps; all but the last keep
    ``channels[j]`` and end with ReLU, the last maps to ``channels[i]`` without ReLU.
    """
    if j == i:
        return None
    if j > i:
        return nn.Sequential(
            nn.Conv2d(channels[j], channels[i], 1, 1, 0, bias=False),
            nn.BatchNorm2d(channels[i]),
            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
        )
    steps = []
    for k in range(i - j):
        last = k == i - j - 1
        out = channels[i] if last else channels[j]
        layers: list[nn.Module] = [nn.Conv2d(channels[j], out, 3, 2, 1, bias=False), nn.BatchNorm2d(out)]
        if not last:
            layers.append(nn.ReLU(True))
        steps.append(nn.Sequential(*layers))
    return nn.Sequential(*steps)


class HighResolutionModule(nn.Module):
    """Parallel BasicBlock branches followed by all-to-all multi-resolution fusion.

    Args:
        num_blocks: blocks per branch.
        in_channels: input width of each branch.
        num_channels: output width of each branch.
        multi_scale_output: False fuses into branch 0 only (the last module of the last stage).
    """

    def __init__(
        self,
        num_blocks: tuple[int, ...],
        in_channels: tuple[int, ...],
        num_channels: tuple[int, ...],
        multi_scale_output: bool = True,
    ):
        super().__init__()
        self.num_branches = len(num_channels)
        self.branches = nn.ModuleList(
            self._branch(n, cin, c) for n, cin, c in zip(num_blocks, in_channels, num_channels)
        )
        if self.num_branches == 1:
            self.fuse_layers = None
        else:
            targets = range(self.num_branches if multi_scale_output else 1)
            self.fuse_layers = nn.ModuleList(
                nn.ModuleList(_fuse_path(tuple(num_channels), i, j) for j in range(self.num_branches)) for i in targets
            )
        self.relu = nn.ReLU(True)

    @staticmethod
    def _branch(num_blocks: int, in_channels: int, channels: int) -> nn.Sequential:
        downsample = _projection(in_channels, channels, 1) if in_channels != channels else None
        blocks = [BasicBlock(in_channels, channels, 1, downsample)]
        blocks += [BasicBlock(channels, channels) for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Args: xs: one ``[B, C_b, H/2^(b+2), W/2^(b+2)]`` tensor per branch b.
        Returns: the fused branches (one per fuse target)."""
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        fused = []
        for i, paths in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else paths[0](xs[0])
            for j in range(1, self.num_branches):
                y = y + (xs[j] if i == j else paths[j](xs[j]))
            fused.append(self.relu(y))
        return fused


def _transition(previous: tuple[int, ...], current: tuple[int, ...]) -> nn.ModuleList:
    """Adapt the branches of one stage to the next and create the new lower-resolution branch.

    Kept branches get a 3x3 conv + BN + ReLU only if their width changes (else ``None``); each new
    branch is made from the lowest-resolution previous branch by stride-2 3x3 conv + BN + ReLU steps.
    """
    layers: list[nn.Module | None] = []
    for i, channels in enumerate(current):
        if i < len(previous):
            if previous[i] == channels:
                layers.append(None)
            else:
                layers.append(
                    nn.Sequential(
                        nn.Conv2d(previous[i], channels, 3, 1, 1, bias=False),
                        nn.BatchNorm2d(channels),
                        nn.ReLU(inplace=True),
                    )
                )
            continue
        steps = []
        for j in range(i + 1 - len(previous)):
            cin = previous[-1]
            cout = channels if j == i - len(previous) else cin
            steps.append(
                nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
            )
        layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


# --------------------------------------------------------------------------------------------
# Main class
# --------------------------------------------------------------------------------------------


class HighResolutionNet(nn.Module):
    """Pose HRNet backbone; returns the highest-resolution branch at stride 4.

    Attributes:
        settings: the :class:`HRNetSettings` it was built from.
        out_channels: channels of the returned feature (the width C of branch 0).
        stride: 4, the input-to-feature downsampling.
        size_divisor: 32; input sides must be multiples of it for the four branches to fuse.
    """

    stride = 4
    size_divisor = 32

    def __init__(self, settings: HRNetSettings):
        super().__init__()
        self.settings = settings
        width = settings.stem_width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._layer1(width, settings.layer1_planes, settings.layer1_blocks)

        channels: tuple[int, ...] = (settings.layer1_planes * Bottleneck.expansion,)
        stages = (settings.stage2, settings.stage3, settings.stage4)
        for index, stage in enumerate(stages, start=2):
            transition = _transition(channels, stage.num_channels)
            last_stage = index == 4
            modules = []
            for m in range(stage.num_modules):
                # Only the very last module of stage 4 collapses to the highest resolution.
                multi_scale = not (last_stage and m == stage.num_modules - 1)
                # The transition already maps every branch to its stage width.
                modules.append(
                    HighResolutionModule(stage.num_blocks, stage.num_channels, stage.num_channels, multi_scale)
                )
            setattr(self, f"transition{index - 1}", transition)
            setattr(self, f"stage{index}", nn.Sequential(*modules))
            channels = stage.num_channels
        self.out_channels = settings.stage4.num_channels[0]
        init_official(self)

    @staticmethod
    def _layer1(inplanes: int, planes: int, blocks: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = _projection(inplanes, out, 1) if inplanes != out else None
        layers = [Bottleneck(inplanes, planes, 1, downsample)]
        layers += [Bottleneck(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @staticmethod
    def _enter_stage(transition: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
        """Inputs of a stage: kept branches (adapted if needed) plus new ones from the last branch."""
        xs = []
        for i, layer in enumerate(transition):
            if i < len(ys):
                xs.append(ys[i] if layer is None else layer(ys[i]))
            else:
                xs.append(layer(ys[-1]))  # [B, C_i, H/2^(i+2), W/2^(i+2)]
        return xs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: images ``[B, 3, H, W]`` (H, W multiples of 32).
        Returns: the highest-resolution feature ``[B, C, H/4, W/4]``."""
        x = self.relu(self.bn1(self.conv1(x)))  # [B, 64, H/2, W/2]
        x = self.relu(self.bn2(self.conv2(x)))  # [B, 64, H/4, W/4]
        x = self.layer1(x)  # [B, 256, H/4, W/4]
        ys = self.stage2(self._enter_stage(self.transition1, [x]))  # 2 branches
        ys = self.stage3(self._enter_stage(self.transition2, ys))  # 3 branches
        ys = self.stage4(self._enter_stage(self.transition3, ys))  # [[B, C, H/4, W/4]]
        return ys[0]
