"""SimCC head and the pose model (backbone + head) used by teacher and student in CDKD.

Implements the coordinate-classification head of Li et al., "SimCC: a Simple Coordinate
Classification Perspective for Human Pose Estimation" (ECCV 2022), the baseline that CDKD
(Gu et al., Sec. III-A, Fig. 3) distils:

    feature  = final_layer(backbone(image))       1x1 conv to J channels     [B, J, H/4, W/4]
    x logits = mlp_head_x(flatten(feature))       Linear(H/4*W/4 -> W*k)     [B, J, W*k]
    y logits = mlp_head_y(flatten(feature))       Linear(H/4*W/4 -> H*k)     [B, J, H*k]

k is the splitting factor (``split_ratio``, SIMDR_SPLIT_RATIO). ``feature`` is what CDKD's SAPE
aligns between student and teacher (F^s and F^t in Eq. 4-5), the logits are what CCA aligns (Eq. 6-7).

Parameter names are those of SimCC's ``lib/models/pose_hrnet.py`` / ``pose_resnet.py``: the
backbone's modules and ``final_layer``, ``mlp_head_x``, ``mlp_head_y`` all sit at the top level, so
an official state dict loads into :class:`SimCCPoseModel` with ``strict=True``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from cdkd.codec import num_bins


class PoseOutput(NamedTuple):
    """What a SimCC pose model returns.

    Attributes:
        x: horizontal class logits ``[B, J, W*k]``.
        y: vertical class logits ``[B, J, H*k]``.
        feature: the ``final_layer`` output ``[B, J, H/4, W/4]`` (the feature CDKD distils).
    """

    x: torch.Tensor
    y: torch.Tensor
    feature: torch.Tensor


class SimCCHead(nn.Module):
    """SimCC head: 1x1 conv to joints, then one linear classifier per axis.

    Args:
        in_channels: channels of the backbone feature.
        num_joints: J.
        input_size: (H, W) of the model input.
        split_ratio: k.
        stride: backbone stride (4 for HRNet and the deconv ResNet).
    """

    def __init__(
        self, in_channels: int, num_joints: int, input_size: tuple[int, int], split_ratio: float, stride: int = 4
    ):
        super().__init__()
        height, width = input_size
        if height % stride or width % stride:
            raise ValueError(f"input_size {height}x{width} is not a multiple of the backbone stride {stride}")
        self.feature_size = (height // stride, width // stride)
        plane = self.feature_size[0] * self.feature_size[1]  # HEAD_INPUT = H/4 * W/4
        self.final_layer = nn.Conv2d(in_channels, num_joints, kernel_size=1, stride=1, padding=0)
        self.mlp_head_x = nn.Linear(plane, num_bins(width, split_ratio, "W"))
        self.mlp_head_y = nn.Linear(plane, num_bins(height, split_ratio, "H"))
        # Official init: the conv as every HRNet conv; the linears keep PyTorch's default init.
        nn.init.normal_(self.final_layer.weight, std=0.001)
        nn.init.constant_(self.final_layer.bias, 0)

    def joint_feature(self, features: torch.Tensor) -> torch.Tensor:
        """Args: features: backbone output ``[B, C, H/4, W/4]``.
        Returns: the per-joint feature ``[B, J, H/4, W/4]``."""
        return self.final_layer(features)

    def classify(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: feature: ``[B, J, H/4, W/4]`` from :meth:`joint_feature`.
        Returns: (x logits ``[B, J, W*k]``, y logits ``[B, J, H*k]``)."""
        if tuple(feature.shape[-2:]) != self.feature_size:
            h, w = self.feature_size
            raise ValueError(
                f"SimCC head built for a {h}x{w} feature map (input {4 * h}x{4 * w}) got "
                f"{tuple(feature.shape[-2:])}; build the model for this input size"
            )
        flat = feature.flatten(2)  # [B, J, H/4*W/4]
        return self.mlp_head_x(flat), self.mlp_head_y(flat)  # [B, J, W*k], [B, J, H*k]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: features: backbone output ``[B, C, H/4, W/4]``.
        Returns: (x logits ``[B, J, W*k]``, y logits ``[B, J, H*k]``)."""
        return self.classify(self.joint_feature(features))


class SimCCPoseModel(nn.Module):
    """A backbone and a :class:`SimCCHead` under one flat parameter namespace.

    The children of both parts are registered directly on this module (``conv1``, ...,
    ``stage4``, ``final_layer``, ``mlp_head_x``, ``mlp_head_y``), so ``state_dict()`` and
    ``named_parameters()`` use the official SimCC key names. The two parts themselves are kept as
    plain attributes ``backbone`` and ``head`` (sharing those very modules) and run their own
    forward code; they are not registered, so no parameter is listed twice. (Multi-GPU: use
    DistributedDataParallel; ``nn.DataParallel`` replicas would still run the original parts.)

    Attributes:
        arch, num_joints, input_size (H, W), split_ratio: what :meth:`settings` returns.
        backbone, head: the two parts.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: SimCCHead,
        arch: str,
        num_joints: int,
        input_size: tuple[int, int],
        split_ratio: float,
    ):
        super().__init__()
        for part_name, part in (("backbone", backbone), ("head", head)):
            own = list(part.named_parameters(recurse=False)) + list(part.named_buffers(recurse=False))
            if own:
                raise ValueError(f"the {part_name} holds tensors outside submodules ({own[0][0]}); cannot flatten it")
            for name, child in part.named_children():
                if name in self._modules:
                    raise ValueError(f"module name '{name}' is used by both backbone and head")
                self.add_module(name, child)
        self.__dict__["backbone"] = backbone  # not registered: its modules are above
        self.__dict__["head"] = head
        self.arch = arch
        self.num_joints = int(num_joints)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.split_ratio = float(split_ratio)

    def settings(self) -> dict:
        """Plain values that rebuild this model with :func:`cdkd.models.build_pose_model`."""
        return {
            "arch": self.arch,
            "num_joints": self.num_joints,
            "input_size": list(self.input_size),
            "split_ratio": self.split_ratio,
        }

    def train(self, mode: bool = True) -> SimCCPoseModel:
        """Set train/eval mode here, on all modules, and on the two unregistered parts."""
        super().train(mode)
        self.backbone.training = mode
        self.head.training = mode
        return self

    def forward(self, images: torch.Tensor) -> PoseOutput:
        """Args: images: ``[B, 3, H, W]`` at exactly ``input_size``.
        Returns: :class:`PoseOutput` (x ``[B, J, W*k]``, y ``[B, J, H*k]``, feature ``[B, J, H/4, W/4]``)."""
        if tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(
                f"{self.arch} SimCC model built for input {self.input_size[0]}x{self.input_size[1]} "
                f"(H x W) got images of {tuple(images.shape[-2:])}"
            )
        feature = self.head.joint_feature(self.backbone(images))  # [B, J, H/4, W/4]
        x, y = self.head.classify(feature)  # [B, J, W*k], [B, J, H*k]
        return PoseOutput(x=x, y=y, feature=feature)

    def extra_repr(self) -> str:
        h, w = self.input_size
        return f"arch={self.arch}, num_joints={self.num_joints}, input_size=({h}, {w}), split_ratio={self.split_ratio}"
