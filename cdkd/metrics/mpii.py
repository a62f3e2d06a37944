"""MPII PCKh: the metric of the paper's Table I (and Tables III-VIII, X).

Implements the protocol of the official HRNet/SimCC ``MPIIDataset.evaluate`` (which follows the
MPII MATLAB evaluation):

- a joint is correct when ``||pred - gt|| <= threshold * SC_BIAS * ||head_br - head_tl||``,
  with ``SC_BIAS = 0.6`` (the head-box diagonal times 0.6 approximates the head segment length);
- only joints visible in ``gt_valid.mat`` (``jnt_missing == 0``) count;
- a column is the PCKh of one joint, or the mean of the left and right joints' PCKh
  (``0.5 * (PCKh_l + PCKh_r)``, not pooled over both);
- ``'Mean'`` is pooled over every visible joint except pelvis (6) and thorax (7), which is what
  the official ``jnt_ratio`` weighting amounts to; the neck (8) counts in the mean although it
  has no column. ``'Mean@0.1'`` is the same at threshold 0.1.

Coordinates. ``gt_valid.mat`` is in MATLAB's 1-based pixel convention; the HRNet code keeps
predictions 0-based (it subtracts 1 from the MPII annotations when loading) and adds 1 to them
before comparing with the .mat file. Here every array is 0-based: :func:`load_gt_valid`
subtracts 1 from ``pos_gt_src`` (and from ``headboxes_src``, where only the difference matters)
and :func:`write_gt_valid` adds it back, so ``pckh(preds, "gt_valid.mat")`` equals the official
``preds + 1`` against the file. A joint or column without any visible ground truth is NaN, as in
the official code (0 / 0).
"""

from __future__ import annotations

from dataclasses import dataclass
import io
from pathlib import Path

import numpy as np
from scipy.io import loadmat, savemat

NUM_JOINTS = 16
JOINT_NAMES = ("rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thrx",
               "neck", "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri")
# Table I columns -> MPII joint indices.
# "Mean@0.1" is read off the pooled PCKh curve over thresholds arange(0, 0.51, 0.01). The SimCC and
# CDKD releases (whose numbers are Table I's) take index 10, a threshold of 0.10; HRNet's release
# takes index 11, i.e. 0.11. ``eval.mean_at_01`` chooses; the default is the releases' 0.10.
MEAN_AT_01_THRESHOLDS = {"simcc": 0.10, "hrnet": 0.11}
MEAN_AT_01_THRESHOLD = MEAN_AT_01_THRESHOLDS["simcc"]

COLUMNS = {
    "Head": (9,),
    "Sho.": (12, 13),
    "Elb.": (11, 14),
    "Wri.": (10, 15),
    "Hip": (2, 3),
    "Knee": (1, 4),
    "Ank.": (0, 5),
}
EXCLUDED_FROM_MEAN = (6, 7)  # pelvis, thorax
SC_BIAS = 0.6


@dataclass
class MPIIGroundTruth:
    """Validation ground truth in 0-based image pixels.

    Attributes:
        joints: ``[N, 16, 2]`` joint positions (x, y).
        visible: ``[N, 16]`` bool, True where the joint is annotated (``jnt_missing == 0``).
        head_boxes: ``[N, 2, 2]`` head boxes as (top-left, bottom-right) corners of (x, y).
    """

    joints: np.ndarray
    visible: np.ndarray
    head_boxes: np.ndarray

    def __post_init__(self) -> None:
        self.joints = np.asarray(self.joints, dtype=np.float64)
        self.visible = np.asarray(self.visible).astype(bool)
        self.head_boxes = np.asarray(self.head_boxes, dtype=np.float64)
        n = self.joints.shape[0] if self.joints.ndim == 3 else -1
        if self.joints.shape != (n, NUM_JOINTS, 2):
            raise ValueError(f"MPII ground-truth joints must be [N, 16, 2], got {self.joints.shape}")
        if self.visible.shape != (n, NUM_JOINTS):
            raise ValueError(f"MPII ground-truth visible must be [N, 16] = ({n}, 16), got "
                             f"{self.visible.shape}")
        if self.head_boxes.shape != (n, 2, 2):
            raise ValueError(f"MPII ground-truth head_boxes must be [N, 2, 2] = ({n}, 2, 2), got "
                             f"{self.head_boxes.shape}")

    def __len__(self) -> int:
        return self.joints.shape[0]


def load_gt_valid(path: str | Path) -> MPIIGroundTruth:
    """Read an official-format ``gt_valid.mat`` into 0-based arrays.

    Args:
        path: file with ``jnt_missing [16, N]``, ``pos_gt_src [16, 2, N]``,
            ``headboxes_src [2, 2, N]`` (1-based MATLAB pixels) and optionally
            ``dataset_joints`` (checked against :data:`JOINT_NAMES` when present).

    Returns:
        The ground truth with 1 subtracted from every coordinate.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"MPII ground truth not found: {path}")
    mat = loadmat(str(path))
    for key in ("jnt_missing", "pos_gt_src", "headboxes_src"):
        if key not in mat:
            raise ValueError(f"{path}: missing variable '{key}' (expected an MPII gt_valid.mat)")
    missing = np.asarray(mat["jnt_missing"])
    n = missing.shape[-1] if missing.ndim == 2 else 1
    try:  # MATLAB drops a trailing singleton dimension when N == 1
        missing = missing.reshape(NUM_JOINTS, n)
        pos = np.asarray(mat["pos_gt_src"], dtype=np.float64).reshape(NUM_JOINTS, 2, n)
        boxes = np.asarray(mat["headboxes_src"], dtype=np.float64).reshape(2, 2, n)
    except ValueError:
        raise ValueError(
            f"{path}: expected jnt_missing [16, N], pos_gt_src [16, 2, N], headboxes_src [2, 2, N]; "
            f"got {mat['jnt_missing'].shape}, {mat['pos_gt_src'].shape}, "
            f"{mat['headboxes_src'].shape}") from None
    if "dataset_joints" in mat:
        names = tuple(str(np.squeeze(x)) for x in np.asarray(mat["dataset_joints"]).ravel())
        names = tuple("thrx" if n == "thor" else n for n in names)  # both spellings of the thorax occur
        if names != JOINT_NAMES:
            raise ValueError(f"{path}: dataset_joints {names} differ from the MPII order "
                             f"{JOINT_NAMES}")
    return MPIIGroundTruth(
        joints=pos.transpose(2, 0, 1) - 1.0,  # [16, 2, N] -> [N, 16, 2]
        visible=missing.T == 0,  # [N, 16]
        head_boxes=boxes.transpose(2, 0, 1) - 1.0,  # [2, 2, N] -> [N, 2, 2]
    )


def write_gt_valid(path: str | Path, joints: np.ndarray, visible: np.ndarray,
                   head_boxes: np.ndarray) -> Path:
    """Write 0-based arrays as an official-format ``gt_valid.mat`` (1-based, MATLAB layout).

    Args:
        path: output ``.mat`` file.
        joints: ``[N, 16, 2]`` 0-based joint positions.
        visible: ``[N, 16]`` visibility (nonzero = annotated).
        head_boxes: ``[N, 2, 2]`` 0-based head boxes (top-left, bottom-right).

    Returns:
        The path written.
    """
    gt = MPIIGroundTruth(joints, visible, head_boxes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = np.empty((1, NUM_JOINTS), dtype=object)  # a MATLAB cell array of strings
    names[0, :] = JOINT_NAMES
    buffer = io.BytesIO()
    savemat(buffer, {
        "dataset_joints": names,
        "jnt_missing": (~gt.visible).T.astype(np.float64),  # [16, N]
        "pos_gt_src": gt.joints.transpose(1, 2, 0) + 1.0,  # [16, 2, N]
        "headboxes_src": gt.head_boxes.transpose(1, 2, 0) + 1.0,  # [2, 2, N]
    })
    data = bytearray(buffer.getvalue())
    # The 116-byte text header carries a creation time; a fixed one makes equal inputs give equal bytes.
    data[:116] = b"MATLAB 5.0 MAT-file, written by cdkd.metrics.mpii.write_gt_valid".ljust(116, b" ")
    path.write_bytes(bytes(data))
    return path


def _as_ground_truth(gt) -> MPIIGroundTruth:
    if isinstance(gt, MPIIGroundTruth):
        return gt
    if isinstance(gt, (str, Path)):
        return load_gt_valid(gt)
    if isinstance(gt, dict):
        unknown = set(gt) - {"joints", "visible", "head_boxes"}
        if unknown:
            raise ValueError(f"MPII ground-truth dict has unknown keys {sorted(unknown)}; "
                             "expected joints, visible, head_boxes")
        return MPIIGroundTruth(**gt)
    if isinstance(gt, (tuple, list)) and len(gt) == 3:
        return MPIIGroundTruth(*gt)
    raise TypeError("gt must be a gt_valid.mat path, an MPIIGroundTruth, a dict or a "
                    f"(joints, visible, head_boxes) tuple; got {type(gt).__name__}")


def normalized_errors(preds: np.ndarray, gt) -> tuple[np.ndarray, np.ndarray]:
    """Joint errors divided by the PCKh head size ``0.6 * ||head box diagonal||``.

    Args:
        preds: ``[N, 16, 2]`` (or ``[N, 16, >=2]``; extra columns such as scores are ignored)
            predictions in 0-based image pixels.
        gt: ground truth in any form :func:`pckh` accepts.

    Returns:
        ``(errors [N, 16], visible [N, 16] bool)``.
    """
    gt = _as_ground_truth(gt)
    preds = np.asarray(preds, dtype=np.float64)
    if preds.ndim != 3 or preds.shape[1] != NUM_JOINTS or preds.shape[2] < 2:
        raise ValueError(f"MPII predictions must be [N, 16, 2], got {preds.shape}")
    if preds.shape[0] != len(gt):
        raise ValueError(f"{preds.shape[0]} predictions for {len(gt)} ground-truth persons")
    dist = np.linalg.norm(preds[:, :, :2] - gt.joints, axis=-1)  # [N, 16]
    head = SC_BIAS * np.linalg.norm(gt.head_boxes[:, 1] - gt.head_boxes[:, 0], axis=-1)  # [N]
    bad = gt.visible.any(axis=1) & ~(head > 0)
    if bad.any():
        raise ValueError(f"MPII ground truth: person {int(np.argmax(bad))} has visible joints but "
                         "an empty head box")
    with np.errstate(divide="ignore", invalid="ignore"):
        errors = dist / head[:, None]  # [N, 16]
    return errors, gt.visible


def _pck_from_errors(errors: np.ndarray, visible: np.ndarray,
                     threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint PCK in percent ``[16]`` and visible counts ``[16]`` from normalised errors."""
    correct = (errors <= threshold) & visible  # [N, 16]; NaN predictions are never correct
    counts = visible.sum(axis=0)  # [16]
    with np.errstate(divide="ignore", invalid="ignore"):
        pck = 100.0 * correct.sum(axis=0) / counts  # 0 / 0 -> NaN, as the official code
    return pck, counts


def pckh_per_joint(preds: np.ndarray, gt, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """PCKh (in %) of each of the 16 MPII joints and its number of visible ground-truth joints.

    Args:
        preds: ``[N, 16, 2]`` predictions, 0-based image pixels.
        gt: as in :func:`pckh`.
        threshold: fraction of the head size (0.5 for PCKh@0.5).

    Returns:
        ``(pck [16] in percent, NaN where a joint is never visible; counts [16] int)``.
    """
    errors, visible = normalized_errors(preds, gt)
    return _pck_from_errors(errors, visible, threshold)


def _pooled_mean(errors: np.ndarray, visible: np.ndarray, threshold: float) -> float:
    keep = np.ones(NUM_JOINTS, dtype=bool)
    keep[list(EXCLUDED_FROM_MEAN)] = False
    vis = visible[:, keep]  # [N, 14]
    correct = (errors[:, keep] <= threshold) & vis
    total = vis.sum()
    return float(100.0 * correct.sum() / total) if total else float("nan")


def pckh(preds: np.ndarray, gt, threshold: float = 0.5, low_threshold: float = MEAN_AT_01_THRESHOLD) -> dict[str, float]:
    """MPII PCKh with exactly the columns of the paper's Table I.

    Args:
        preds: ``[N, 16, 2]`` predicted joints in 0-based image pixels (the HRNet convention).
        gt: the path of an official ``gt_valid.mat``; an :class:`MPIIGroundTruth`; a dict with
            ``joints [N, 16, 2]`` (0-based), ``visible [N, 16]``, ``head_boxes [N, 2, 2]``; or the
            tuple ``(joints, visible, head_boxes)``.
        threshold: PCKh threshold as a fraction of the head size (Table I uses 0.5).
        low_threshold: the threshold of the 'Mean@0.1' column (0.10 as the SimCC/CDKD releases;
            HRNet's release uses 0.11, see ``MEAN_AT_01_THRESHOLDS``).

    Returns:
        ``{'Head', 'Sho.', 'Elb.', 'Wri.', 'Hip', 'Knee', 'Ank.', 'Mean', 'Mean@0.1'}`` in percent.
    """
    errors, visible = normalized_errors(preds, gt)  # [N, 16] each
    pck, _ = _pck_from_errors(errors, visible, threshold)  # [16]
    out = {name: float(np.mean(pck[list(idx)])) for name, idx in COLUMNS.items()}
    out["Mean"] = _pooled_mean(errors, visible, threshold)
    out["Mean@0.1"] = _pooled_mean(errors, visible, low_threshold)
    return out
