"""Data for top-down pose estimation (the CDKD paper's Sec. IV-A datasets: COCO and MPII).

This file holds the contract shared by the loaders and the dataset: one person to crop
(:class:`PersonRecord`), and how bad input is reported (:class:`DataError`, :class:`ProblemLog`).
The skeletons (joint names, flip pairs, limbs) are :mod:`cdkd.joints`. The pieces live beside it:

- ``transforms``: HRNet/SimCC crop geometry (box -> centre/scale, affine warps, flips, augmentation).
- ``coco`` / ``mpii``: readers of the official annotation formats.
- ``topdown``: the torch ``Dataset`` producing student (and teacher) crops and SimCC targets.
- ``synthetic``: a procedural people dataset written in both formats.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class PersonRecord:
    """One person to crop: where the image is, the box as centre/scale, and the joints.

    Coordinates are 0-based image pixels with pixel centres on integers (HRNet convention).
    ``scale`` is the box size divided by ``pixel_std = 200`` (already enlarged by 1.25 for COCO
    boxes and by MPII's official adjustment). ``joints[:, 2]`` keeps the annotation's own
    visibility value (COCO 0/1/2, MPII 0/1); ``visible`` is the training weight ``min(v, 1)``.
    Detection records (COCO val with detector boxes) have zero joints and zero visibility.
    """

    image: str
    center: np.ndarray  # [2] (x, y)
    scale: np.ndarray  # [2] (w, h) / 200
    joints: np.ndarray  # [J, 3] (x, y, v)
    visible: np.ndarray  # [J] float32 in {0, 1}
    image_id: int
    ann_id: int
    score: float = 1.0
    area: float = 0.0
    head_box: np.ndarray | None = None  # [4] x1, y1, x2, y2 (MPII, when the annotation has it)


class DataError(ValueError):
    """Bad data: the message names the file, annotation id or config key at fault."""


@dataclass
class ProblemLog:
    """Collects bad input: raises in ``'error'`` mode, warns and counts in ``'skip'`` mode.

    Nothing is dropped silently: every skipped item is kept in :attr:`skipped` as
    ``{'where': ..., 'reason': ...}`` and announced with a warning.
    """

    on_bad: str = "error"
    skipped: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_bad not in ("error", "skip"):
            raise DataError(f"config key 'data.on_bad' must be 'error' or 'skip'; got {self.on_bad!r}")

    def report(self, where: str, reason: str) -> None:
        """Raise :class:`DataError` (error mode) or warn and record (skip mode)."""
        message = f"{where}: {reason}"
        if self.on_bad == "error":
            raise DataError(message + " (set data.on_bad=skip to skip such items)")
        warnings.warn(f"skipping {message}", stacklevel=3)
        self.skipped.append({"where": where, "reason": reason})

    def __len__(self) -> int:
        return len(self.skipped)


def plain_numbers(values, name: str, count: int | None = None) -> tuple[np.ndarray | None, str | None]:
    """``values`` as a float64 array when it is a list of ``count`` finite plain numbers.

    Returns:
        (array, None), or (None, the reason naming the field ``name``), e.g. ``"'keypoints' has a
        non-finite value nan"``.
    """
    if isinstance(values, (int, float)) and not isinstance(values, bool) and count is None:
        values = [values]
    if not isinstance(values, (list, tuple)):
        return None, f"'{name}' has a non-numeric value {values!r}"
    if count is not None and len(values) != count:
        return None, f"'{name}' has {len(values)} values, expected {count}"
    bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))), None)
    if bad is not None or any(isinstance(v, bool) for v in values):
        return None, f"'{name}' has a non-numeric value {bad!r}"
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        return None, f"'{name}' has a non-finite value {array[~np.isfinite(array)][0]}"
    return array, None


def read_json_list(path: str | Path, what: str, config_key: str | None = None) -> list:
    """The JSON list in ``path`` (an annotation or detection file), or a :class:`DataError` naming the
    file (and the config key that points at it) when it is missing, unreadable or not a list."""
    path = Path(path)
    where = f" (config key '{config_key}')" if config_key else ""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}{where}")
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {what} {path}: {err}") from None
    if not isinstance(value, list):
        raise DataError(f"{what} {path} must hold a JSON list")
    return value
