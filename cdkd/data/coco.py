"""COCO keypoints (17 joints) as used by the CDKD paper's COCO experiments (Table II, IX).

Reads the official ``person_keypoints_{set}.json`` with pycocotools and produces one
:class:`cdkd.data.PersonRecord` per person, following HRNet's
``_load_coco_keypoint_annotation_kernal``:

- only non-crowd annotations of the person category with at least one labelled keypoint;
- the box is cleaned (clipped to the image, ``x2 = x1 + max(0, w - 1)``) and annotations whose
  ``area`` is not positive or whose cleaned box is empty are dropped;
- centre/scale from the cleaned box with the model aspect ratio, enlarged 1.25 times.

Protocol filtering (crowd, no keypoints, other categories) is counted in ``filtered``; broken
annotations (wrong keypoint count, missing image, ``w <= 0`` or ``h <= 0``, ``area <= 0``, a
non-numeric or non-finite value, visibility other than 0/1/2, a labelled keypoint an image size
outside the image, an annotation or image id used twice) are errors naming the file and the
annotation id (``data.on_bad: skip`` warns, records them and leaves them out of the evaluation
ground truth too).

Person detections (val with ``data.use_gt_bbox: false``) come from a SimpleBaselines-style
file, a JSON list of ``{image_id, category_id, bbox: [x, y, w, h], score}``.

Image paths are ``image_dir / file_name`` from the annotation's ``images`` list (HRNet derives
``%012d.jpg`` from the id instead; the official files agree on both).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from cdkd.data import DataError, PersonRecord, ProblemLog, plain_numbers, read_json_list
from cdkd.data.transforms import box_to_center_scale
from cdkd.joints import COCO_META

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
    records: list[PersonRecord] = []
    dropped = _duplicate_ids(coco, ann_file, problems)
    for ann_id, ann in coco.anns.items():
        if ann.get("image_id") not in coco.imgs:
            problems.report(
                f"{ann_file}: annotation id {ann_id}",
                f"refers to image id {ann.get('image_id')}, which is not in 'images'",
            )
            dropped.add(ann_id)
    for image_id in coco.getImgIds():
        info = coco.imgs[image_id]
        for ann_id in coco.getAnnIds(imgIds=image_id):
            ann = coco.anns[ann_id]
            if ann_id in dropped:
                continue
            where = f"{ann_file}: annotation id {ann_id} (image id {image_id})"
            if ann.get("category_id") != PERSON_CATEGORY_ID:
                filtered["not_person"] += 1
                continue
            if ann.get("iscrowd", 0):
                filtered["crowd"] += 1
                continue
            problem = _check_keypoints(ann, info)
            if problem is None and max(ann["keypoints"]) == 0:
                filtered["no_keypoints"] += 1
                continue
            problem = problem or _check_box(ann)
            if problem:
                problems.report(where, problem)
                dropped.add(ann_id)
                continue
            kp = np.asarray(ann["keypoints"], dtype=np.float32).reshape(COCO_META.num_joints, 3)
            clean = _clean_box(ann["bbox"], int(info["width"]), int(info["height"]))
            if clean is None:
                filtered["empty_clean_box"] += 1
                continue
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
    if dropped:  # the evaluation ground truth holds the same persons as the records
        coco = _without_annotations(coco, dropped)
    return CocoLoad(records=records, coco=coco, problems=problems, filtered=filtered)


def _duplicate_ids(coco: COCO, ann_file, problems: ProblemLog) -> set:
    """Report annotation and image ids used twice (pycocotools keeps only the last of each, so a
    person would be dropped and another duplicated); returns the annotation ids to leave out."""
    dropped: set = set()
    for kind, items in (("image", coco.dataset.get("images", [])), ("annotation", coco.dataset.get("annotations", []))):
        seen: set = set()
        for item in items:
            key = item.get("id") if isinstance(item, dict) else None
            if key in seen:
                problems.report(f"{ann_file}: {kind} id {key}", f"is used by more than one entry of "
                                f"'{kind}s'; ids must be unique")
                if kind == "image":
                    dropped.update(a["id"] for a in coco.dataset.get("annotations", []) if a.get("image_id") == key)
                else:
                    dropped.add(key)
            seen.add(key)
    return dropped


def _check_keypoints(ann: dict, info: dict) -> str | None:
    """Why a person's keypoints cannot be used (None when they can): finite numbers, visibility 0,
    1 or 2, labelled keypoints no more than an image size outside the image."""
    num_joints = COCO_META.num_joints
    kp, problem = plain_numbers(ann.get("keypoints"), "keypoints", 3 * num_joints)
    if problem:
        return problem.replace("values, expected", "keypoint values, expected")
    width, height = info.get("width"), info.get("height")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (width, height)) \
            or not isinstance(info.get("file_name"), str) or not info["file_name"]:
        return f"is in image id {info.get('id')}, whose 'width', 'height' or 'file_name' is missing or invalid"
    kp = kp.reshape(num_joints, 3)  # [J, 3] (x, y, v)
    bad_v = np.flatnonzero(~np.isin(kp[:, 2], (0, 1, 2)))
    if bad_v.size:
        j = int(bad_v[0])
        return f"has visibility {kp[j, 2]:g} for keypoint {j} ({COCO_META.joint_names[j]}); COCO uses 0, 1, 2"
    far = (kp[:, 2] > 0) & ((kp[:, 0] < -width) | (kp[:, 0] > 2 * width) | (kp[:, 1] < -height) | (kp[:, 1] > 2 * height))
    if far.any():
        j = int(np.flatnonzero(far)[0])
        return (f"has keypoint {j} ({COCO_META.joint_names[j]}) at ({kp[j, 0]:g}, {kp[j, 1]:g}) with v={kp[j, 2]:g}, "
                f"far outside the {width}x{height} image")
    return None


def _check_box(ann: dict) -> str | None:
    """Why a person's box or area cannot be used: finite numbers, w, h and area > 0."""
    bbox, problem = plain_numbers(ann.get("bbox"), "bbox", 4)
    if problem or bbox[2] <= 0 or bbox[3] <= 0:
        return f"has a bad box {ann.get('bbox')} (need [x, y, w, h], finite, with w, h > 0)"
    area, problem = plain_numbers(ann.get("area", 0.0), "area", None)
    if problem or area[0] <= 0:
        return f"has area {ann.get('area')} (must be a finite number > 0)"
    return None


def _without_annotations(coco: COCO, ann_ids: set) -> COCO:
    """A COCO index of the same file without the given annotations (and without images that are
    listed twice): what skip mode evaluates against."""
    images, seen = [], set()
    counts: dict = {}
    for img in coco.dataset.get("images", []):
        counts[img.get("id")] = counts.get(img.get("id"), 0) + 1
    for img in coco.dataset.get("images", []):
        if counts[img.get("id")] == 1 and img.get("id") not in seen:
            images.append(img)
            seen.add(img.get("id"))
    clean = COCO()
    clean.dataset = {**coco.dataset, "images": images,
                     "annotations": [a for a in coco.dataset.get("annotations", [])
                                     if a.get("id") not in ann_ids and a.get("image_id") in seen]}
    with contextlib.redirect_stdout(io.StringIO()):
        clean.createIndex()
    return clean


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
    detections = read_json_list(det_file, "detection file", "data.det_file")
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
        score, problem = plain_numbers(det["score"], "score", None)
        bbox, box_problem = plain_numbers(det["bbox"], "bbox", 4)
        if problem or box_problem:
            problems.report(where, str(problem or box_problem))
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
