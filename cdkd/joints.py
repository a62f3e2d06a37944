"""The skeletons of the CDKD paper's benchmarks (Sec. IV-A): COCO (17 joints) and MPII (16 joints).

One record per dataset (:class:`JointsMeta`): the joint names in annotation order, the left/right
pairs swapped by a horizontal flip (flip augmentation and the flip test), the upper body (half-body
crops) and the limbs drawn by :mod:`cdkd.viz`. The data readers, the SimCC codec, the metrics,
inference and the figures all read the skeletons from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class JointsMeta:
    """A skeleton: joint names, left/right pairs, the upper body and the limbs (0-based pairs)."""

    name: str
    joint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    upper_body_ids: tuple[int, ...]
    skeleton: tuple[tuple[int, int], ...]

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)


def flip_permutation(flip_pairs: Sequence[Sequence[int]], num_joints: int) -> list[int]:
    """Joint order after a horizontal flip: entry j is the joint that becomes joint j.

    Args:
        flip_pairs: (left, right) index pairs.
        num_joints: J.

    Returns:
        [J] indices: the identity with every pair swapped.
    """
    perm = list(range(num_joints))
    for a, b in flip_pairs:
        perm[a], perm[b] = perm[b], perm[a]
    return perm


COCO_META = JointsMeta(
    name="coco",
    joint_names=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
        "left_wrist", "right_wrist", "left_hip", "right_hip",
        "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    upper_body_ids=tuple(range(11)),
    # the official COCO person skeleton (1-based in the annotation files' 'categories')
    skeleton=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
        (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
)  # fmt: skip

MPII_META = JointsMeta(
    name="mpii",
    joint_names=(
        "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
        "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow",
        "l_wrist",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    upper_body_ids=(7, 8, 9, 10, 11, 12, 13, 14, 15),
    skeleton=(
        (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
        (7, 12), (12, 11), (11, 10), (7, 13), (13, 14), (14, 15),
    ),
)  # fmt: skip

JOINTS_META: dict[str, JointsMeta] = {"coco": COCO_META, "mpii": MPII_META}


def meta_for(dataset_name: str = "", num_joints: int | None = None) -> JointsMeta | None:
    """The skeleton of a dataset name, or of a joint count (17: COCO, 16: MPII), or None.

    Args:
        dataset_name: 'coco' or 'mpii' (any case); '' to go by ``num_joints`` alone.
        num_joints: J; a named skeleton with another J gives None.

    Returns:
        The matching :class:`JointsMeta`, or None when none matches.
    """
    if dataset_name:
        meta = JOINTS_META.get(dataset_name.lower())
    else:
        meta = next((m for m in JOINTS_META.values() if m.num_joints == num_joints), None)
    if meta is None or (num_joints is not None and meta.num_joints != num_joints):
        return None
    return meta
