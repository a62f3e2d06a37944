"""COCO keypoints (17 joints) as used by the CDKD paper's COCO experiments (Table II, IX).

Reads the official ``person_keypoints_{set}.json`` with pycocotools and produces one
:class:`cdkd.data.PersonRecord` per person, following HRNet's
``_load_coco_keypoint_annotation_kernal``:

- only non-crowd annotations of the person category with at least one labelled keypoint;
- the box is cleaned (clipped to the image, ``x2 = x1 + max(0, w - 1)``) and annotations whose
  ``area`` is not positive or whose cleaned box is empty are dropped;
- centre/scale from the cleaned box with the model aspect ratio, enlarged 1.25 times.

Protocol filtering (crowd, no keypoints, other categories) is counted in ``filtered``; broken
annotations (wrong keypoint count, missing image, ``w <= 0`` or ``h <= 0``, ``area <= 0``) are
errors naming the annotation id (``data.on_bad: skip`` warns and counts them instead).

Person detections (val with ``data.use_gt_bbox: false``) come from a SimpleBaselines-style
file, a JSON list of ``{image_id, category_id, bbox: [x, y, w, h], score}``.

Image paths are ``image_dir / file_name`` from the annotation's ``images`` list (HRNet derives
``%012d.jpg`` from the id instead; the official files agree on both).
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from cdkd.data import DataError, JointsMeta, PersonRecord, ProblemLog
from cdkd.data.transforms import box_to_center_scale

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
)

# The official COCO person skeleton (1-based joint numbers, as in the annotation files).
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)

PERSON_CATEGORY_ID = 1


@dataclass
class CocoLoad:
    """What a COCO reader returns: the records, the COCO object, and what was left out."""

    records: list[PersonRecord]
    coco: COCO
    problems: ProblemLog
    filtered: dict[str, int] = field(default_factory=dict)


def load_coco_api(ann_file: str | Path) -> COCO:
    """Open an annotation file with pycocotools (quietly), or raise naming the file."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DataError(f"COCO annotation file not found: {ann_file}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(ann_file))
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"cannot read COCO annotation file {ann_file}: {err!r}") from None


def _clean_box(bbox, width: int, height: int) -> list[float] | None:
    """HRNet's box sanitising; None when the cleaned box is empty."""
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 >= x1 and y2 >= y1:
        return [x1, y1, x2 - x1, y2 - y1]
    return None


def load_coco_gt(
    ann_file: str | Path,
    image_dir: str | Path,
    aspect_ratio: float,
    enlarge: float = 1.25,
    on_bad: str = "error",
    coco: COCO | None = None,
) -> CocoLoad:
    """Ground-truth persons of a COCO keypoints file.

    Args:
        ann_file: ``person_keypoints_{set}.json``.
        image_dir: folder of the images (``ROOT/images/{set}``).
        aspect_ratio: model input W / H.
        enlarge: box enlargement (1.25).
        on_bad: ``'error'`` or ``'skip'`` for broken annotations.
        coco: an already opened COCO object for ``ann_file`` (optional).

    Returns:
        :class:`CocoLoad` with records in the file's image order, then annotation order.
    """
    coco = coco or load_coco_api(ann_file)
    problems = ProblemLog(on_bad)
    filtered = {"crowd": 0, "not_person": 0, "no_keypoints": 0, "empty_clean_box": 0}
    num_joints = COCO_META.num_joints
    records: list[PersonRecord] = []
    for ann_id, ann in coco.anns.items():
        if ann.get("image_id") not in coco.imgs:
            problems.report(
                f"{ann_file}: annotation id {ann_id}",
                f"refers to image id {ann.get('image_id')}, which is not in 'images'",
            )
    for image_id in coco.getImgIds():
        info = coco.imgs[image_id]
        for ann_id in coco.getAnnIds(imgIds=image_id):
            ann = coco.anns[ann_id]
            where = f"{ann_file}: annotation id {ann_id} (image id {image_id})"
            if ann.get("category_id") != PERSON_CATEGORY_ID:
                filtered["not_person"] += 1
                continue
            if ann.get("iscrowd", 0):
                filtered["crowd"] += 1
                continue
            keypoints = ann.get("keypoints")
            if keypoints is None or len(keypoints) != 3 * num_joints:
                count = "no" if keypoints is None else len(keypoints)
                problems.report(where, f"has {count} keypoint values, expected {3 * num_joints}")
                continue
            if max(keypoints) == 0:
                filtered["no_keypoints"] += 1
                continue
            bbox = ann.get("bbox")
            if bbox is None or len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
                problems.report(where, f"has a bad box {bbox} (need [x, y, w, h] with w, h > 0)")
                continue
            if float(ann.get("area", 0.0)) <= 0:
                problems.report(where, f"has area {ann.get('area')} (must be > 0)")
                continue
            clean = _clean_box(bbox, int(info["width"]), int(info["height"]))
            if clean is None:
                filtered["empty_clean_box"] += 1
                continue
            kp = np.asarray(keypoints, dtype=np.float32).reshape(num_joints, 3)
            center, scale = box_to_center_scale(clean, aspect_ratio, enlarge)
            records.append(
                PersonRecord(
                    image=str(Path(image_dir) / info["file_name"]),
                    center=center,
                    scale=scale,
                    joints=kp,
                    visible=np.minimum(kp[:, 2], 1.0).astype(np.float32),
                    image_id=int(image_id),
                    ann_id=int(ann_id),
                    score=1.0,
                    area=float(ann["area"]),
                )
            )
    return CocoLoad(records=records, coco=coco, problems=problems, filtered=filtered)


def load_coco_det(
    det_file: str | Path,
    coco: COCO,
    image_dir: str | Path,
    aspect_ratio: float,
    score_thr: float = 0.0,
    enlarge: float = 1.25,
    on_bad: str = "error",
) -> CocoLoad:
    """Person detections (SimpleBaselines format) as records with empty joints.

    Args:
        det_file: JSON list of ``{image_id, category_id, bbox, score}``.
        coco: the COCO object of the matching annotation file (image sizes and names).
        image_dir: folder of the images.
        aspect_ratio: model input W / H.
        score_thr: detections scoring below this are left out (HRNet ``IMAGE_THRE``).
        enlarge: box enlargement.
        on_bad: ``'error'`` or ``'skip'`` for broken detections.

    Returns:
        :class:`CocoLoad`; ``ann_id`` of a record is the detection's index in the file.
    """
    det_file = Path(det_file)
    if not det_file.is_file():
        raise DataError(f"detection file not found: {det_file} (config key 'data.det_file')")
    try:
        with open(det_file) as f:
            detections = json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read detection file {det_file}: {err}") from None
    if not isinstance(detections, list):
        raise DataError(f"detection file {det_file} must hold a JSON list of detections")
    problems = ProblemLog(on_bad)
    filtered = {"not_person": 0, "below_score": 0}
    num_joints = COCO_META.num_joints
    records: list[PersonRecord] = []
    for index, det in enumerate(detections):
        where = f"{det_file}: detection #{index}"
        if not isinstance(det, dict) or not {"image_id", "bbox", "score"} <= set(det):
            problems.report(where, "needs image_id, bbox and score")
            continue
        if det.get("category_id", PERSON_CATEGORY_ID) != PERSON_CATEGORY_ID:
            filtered["not_person"] += 1
            continue
        if float(det["score"]) < score_thr:
            filtered["below_score"] += 1
            continue
        image_id = det["image_id"]
        if image_id not in coco.imgs:
            problems.report(where, f"image id {image_id} is not in the annotation file")
            continue
        bbox = det["bbox"]
        if len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
            problems.report(where, f"has a bad box {bbox} (need [x, y, w, h] with w, h > 0)")
            continue
        center, scale = box_to_center_scale(bbox, aspect_ratio, enlarge)
        records.append(
            PersonRecord(
                image=str(Path(image_dir) / coco.imgs[image_id]["file_name"]),
                center=center,
                scale=scale,
                joints=np.zeros((num_joints, 3), dtype=np.float32),
                visible=np.zeros(num_joints, dtype=np.float32),
                image_id=int(image_id),
                ann_id=index,
                score=float(det["score"]),
                area=float(bbox[2]) * float(bbox[3]),
            )
        )
    return CocoLoad(records=records, coco=coco, problems=problems, filtered=filtered)
