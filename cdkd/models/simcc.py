"""SimCC head and the pose model (backbone + head) used by teacher and student in CDKD.

Implements the coordinate-classification head of Li et al., "SimCC: a Simple Coordinate
Classification Perspective for Human Pose Estimation" (ECCV 2022), the baseline that CDKD
(Gu et al., Sec. III-A, Fig. 3) distils:

    feature  = final_layer(backbone(image))       1x1 conv to J channels     [B, J, H/4, W/4]
    x logits = mlp_head_x(flatten(feature))       Linear(H/4*W/4 -> W*k)     [B, J, W*k]
    y logits = mlp_head_y(flatten(feature))       Linear(H/4*W/4 -> H*k)     [B, J, H*k]

k is the splitting factor (``split_ratio``, SIMDR_SPLIT_RATIO). ``feature`` is what CDKD's SAPE
aligns between student and teacher (F^s and F^t in Eq. 4-5), the logits are what CCA aligns (Eq. 6-7).

The model registers its two parts as ``backbone`` and ``head``, so its own ``state_dict()`` keys
read ``backbone.conv1.weight``, ``head.mlp_head_x.weight``. SimCC's ``lib/models/pose_hrnet.py`` /
``pose_resnet.py`` put the backbone's modules and ``final_layer``, ``mlp_head_x``, ``mlp_head_y``
all at the top level; :func:`to_official_keys` and :func:`from_official_keys` map a state dict
between the two layouts (the idea of timm's ``checkpoint_filter_fn``), and the checkpoint files
keep the official names.
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


HEAD_MODULES = ("final_layer", "mlp_head_x", "mlp_head_y")  # SimCCHead's children, official names


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
    """A backbone and a :class:`SimCCHead`, registered as the submodules ``backbone`` and ``head``.

    ``state_dict()`` keys carry the part's prefix (``backbone.stage4...``, ``head.final_layer...``);
    files use the official flat names, mapped by :func:`to_official_keys` / :func:`from_official_keys`.

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
        clash = {name for name, _ in backbone.named_children()} & set(HEAD_MODULES)
        if clash:
            raise ValueError(f"backbone module name(s) {sorted(clash)} are the head's; official keys would be ambiguous")
        self.backbone = backbone
        self.head = head
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


def to_official_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A :class:`SimCCPoseModel` state dict with the official SimCC key names.

    ``backbone.stage4.0...`` -> ``stage4.0...``, ``head.mlp_head_x.weight`` -> ``mlp_head_x.weight``;
    keys without either prefix are kept. Order is kept; the tensors are the same objects.
    """
    out = {}
    for key, value in state_dict.items():
        part, _, rest = key.partition(".")
        out[rest if part in ("backbone", "head") and rest else key] = value
    return out


def from_official_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official SimCC state dict (flat names) with :class:`SimCCPoseModel`'s key names.

    ``final_layer.*``, ``mlp_head_x.*``, ``mlp_head_y.*`` go under ``head.``, every other key under
    ``backbone.``. The inverse of :func:`to_official_keys`.
    """
    return {
        (f"head.{key}" if key.partition(".")[0] in HEAD_MODULES else f"backbone.{key}"): value
        for key, value in state_dict.items()
    }
