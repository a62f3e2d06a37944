"""Pose models of the CDKD reproduction: backbone factories and the SimCC model builder.

``ARCHS`` maps an architecture name (``ModelConfig.arch`` / ``TeacherConfig.arch``) to the
factory of its backbone; :func:`build_pose_model` puts a SimCC head on it (SimCC, Li et al.
ECCV 2022; used for teacher and student in CDKD, Gu et al., Sec. III-A). The paper's models are
``hrnet_w32`` (Tables I-II) and ``hrnet_w48`` (Table II), plus ``resnet50`` (Table IX); the others
are small CPU variants for tests and tiny runs.

Saving and loading pose models (checkpoint files with the official key names) is
:mod:`cdkd.models.load`, which this package does not import: it sits above both this package and
:mod:`cdkd.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from cdkd.checkpoint import load_pretrained_backbone
from cdkd.models.hrnet import HRNET_VARIANTS, HighResolutionNet
from cdkd.models.resnet import RESNET_VARIANTS, PoseResNet
from cdkd.models.simcc import PoseOutput, SimCCHead, SimCCPoseModel, num_bins

ARCHS: dict[str, Callable[[], nn.Module]] = {
    **{name: partial(HighResolutionNet, settings) for name, settings in HRNET_VARIANTS.items()},
    **{name: partial(PoseResNet, settings) for name, settings in RESNET_VARIANTS.items()},
}

__all__ = ["ARCHS", "PoseOutput", "SimCCHead", "SimCCPoseModel", "build_pose_model", "num_bins"]


def build_pose_model(
    arch: str,
    num_joints: int,
    input_size: tuple[int, int] | list[int] | int,
    split_ratio: float,
    **options: Any,
) -> SimCCPoseModel:
    """Build a SimCC pose model (backbone + head) with the official initialisation.

    Args:
        arch: a key of :data:`ARCHS`.
        num_joints: J (16 for MPII, 17 for COCO).
        input_size: (H, W) of the input crop, or one int for a square crop; both sides must be
            multiples of 32 (the backbones' coarsest stride).
        split_ratio: SimCC splitting factor k; H*k and W*k must be integers.
        **options: ``pretrained``: path of an ImageNet backbone file (``hrnet_w32-36af842e.pth``,
            ``resnet50-19c8e357.pth``, ...); its matching keys are loaded into the backbone and the
            load report is kept in ``model.pretrained_report``. Other options are errors.
    Returns:
        A :class:`SimCCPoseModel` returning ``PoseOutput(x, y, feature)``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch '{arch}'; known archs: {', '.join(ARCHS)}")
    unknown = sorted(set(options) - {"pretrained"})
    if unknown:
        raise ValueError(f"unknown build_pose_model option(s) {unknown}; known: ['pretrained']")
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if len(input_size) != 2:
        raise ValueError(f"input_size must be (H, W), got {input_size!r}")
    height, width = int(input_size[0]), int(input_size[1])
    if num_joints < 1:
        raise ValueError(f"num_joints must be positive, got {num_joints}")
    backbone = ARCHS[arch]()
    divisor = backbone.size_divisor
    if height <= 0 or width <= 0 or height % divisor or width % divisor:
        raise ValueError(
            f"{arch} needs input sides that are positive multiples of {divisor}; got {height}x{width} (H x W)"
        )
    report = None
    if options.get("pretrained"):
        report = load_pretrained_backbone(backbone, options["pretrained"])
    head = SimCCHead(backbone.out_channels, num_joints, (height, width), split_ratio, stride=backbone.stride)
    model = SimCCPoseModel(backbone, head, arch, num_joints, (height, width), split_ratio)
    model.pretrained_report = report
    return model
