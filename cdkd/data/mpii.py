"""MPII Human Pose (16 joints), the CDKD paper's main benchmark (Table I, III-VIII, X).

Reads HRNet's ``annot/{train,valid}.json``: a list of ``{image, center, scale, joints,
joints_vis}`` in MATLAB 1-based pixels with one scalar ``scale`` (person height / 200). The
official adjustments of HRNet/SimCC are applied: ``center_y += 15 * scale`` and
``scale *= 1.25`` (unless the centre is the ``-1`` placeholder), then centre and joints are
shifted to 0-based pixels. A record keeps the annotation's optional ``head_box``
(``[x1, y1, x2, y2]``, 1-based; the synthetic set writes it, the official files do not).

PCKh ground truth lives in ``annot/gt_valid.mat`` (``jnt_missing`` [16, N], ``pos_gt_src``
[16, 2, N], ``headboxes_src`` [2, 2, N] in 1-based pixels, ``dataset_joints`` names), column
``n`` matching entry ``n`` of ``valid.json``. :func:`cdkd.metrics.mpii.load_gt_valid` reads it and
:func:`cdkd.metrics.mpii.write_gt_valid` writes it (used by ``synthetic.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdkd.data import PersonRecord, ProblemLog, plain_numbers, read_json_list
from cdkd.joints import MPII_META


@dataclass
class MpiiLoad:
    """What the MPII reader returns: the records and what was skipped."""

    records: list[PersonRecord]
    problems: ProblemLog


def head_boxes(records: list[PersonRecord]) -> np.ndarray | None:
    """The records' head boxes as PCKh wants them, or None when a record has none.

    Returns:
        [N, 2, 2] float64 0-based (top-left, bottom-right) corners of (x, y), the layout of
        :class:`cdkd.metrics.mpii.MPIIGroundTruth`.
    """
    if any(r.head_box is None for r in records):
        return None
    return np.stack([np.asarray(r.head_box, dtype=np.float64).reshape(2, 2) for r in records])  # [N, 2, 2]


def load_mpii_json(json_file: str | Path, image_dir: str | Path, on_bad: str = "error") -> MpiiLoad:
    """Persons of an HRNet-style MPII annotation file.

    Args:
        json_file: ``ROOT/annot/{set}.json``.
        image_dir: folder the ``image`` names are relative to (``ROOT/images``).
        on_bad: ``'error'`` or ``'skip'`` for broken entries.

    Returns:
        :class:`MpiiLoad`; ``ann_id`` is the entry's index in the file and ``image_id`` numbers
        the distinct image names in order of first appearance.
    """
    json_file = Path(json_file)
    entries = read_json_list(json_file, "MPII annotation file")
    num_joints = MPII_META.num_joints
    problems = ProblemLog(on_bad)
    image_ids: dict[str, int] = {}
    records: list[PersonRecord] = []
    for index, entry in enumerate(entries):
        name = entry.get("image") if isinstance(entry, dict) else None
        where = f"{json_file}: annotation #{index} (image {name})"
        parsed = _parse_entry(entry, num_joints)
        if isinstance(parsed, str):
            problems.report(where, parsed)
            continue
        center, scale_value, joints, head_box = parsed
        scale = np.array([scale_value, scale_value], dtype=np.float32)
        if center[0] != -1:
            center[1] = center[1] + 15.0 * scale[1]
            scale = scale * 1.25
        center = center - 1.0
        image_id = image_ids.setdefault(str(name), len(image_ids))
        records.append(
            PersonRecord(
                image=str(Path(image_dir) / name),
                center=center,
                scale=scale,
                joints=joints,
                visible=np.minimum(joints[:, 2], 1.0).astype(np.float32),
                image_id=image_id,
                ann_id=index,
                score=1.0,
                area=float(np.prod(scale * 200.0)),
                head_box=head_box,
            )
        )
    return MpiiLoad(records=records, problems=problems)


def _parse_entry(entry, num_joints: int):
    """(centre [2], scale, joints [J, 3] 0-based, head box [4] 0-based or None) of one entry, or
    the reason it cannot be used: fields of the wrong type or length, non-finite values, scale
    <= 0, visibility other than 0/1, a labelled joint far outside the person."""
    if not isinstance(entry, dict) or not {"image", "center", "scale"} <= set(entry):
        return "needs image, center and scale"
    if not isinstance(entry["image"], str) or not entry["image"]:
        return f"has image {entry['image']!r}; it must be a file name"
    center, problem = plain_numbers(entry["center"], "center", 2)
    if problem:
        return problem
    scale, problem = plain_numbers(entry["scale"], "scale", None)
    if problem or scale.size != 1:
        return problem or f"'scale' has {scale.size} values, expected 1"
    if not scale[0] > 0:
        return f"has scale {entry['scale']} (the person box must have positive area)"
    joints = np.zeros((num_joints, 3), dtype=np.float32)
    if "joints" in entry:
        rows = entry["joints"] if isinstance(entry["joints"], list) else None
        if rows is None or len(rows) != num_joints or any(not isinstance(r, list) or len(r) != 2 for r in rows):
            shape = np.shape(entry["joints"]) if isinstance(entry["joints"], list) else type(entry["joints"]).__name__
            return f"has joints {shape}, expected ({num_joints}, 2)"
        raw, problem = plain_numbers([v for r in rows for v in r], "joints", 2 * num_joints)
        if problem:
            return problem
        vis, problem = plain_numbers(entry.get("joints_vis", [1] * num_joints), "joints_vis", None)
        if problem or vis.shape != (num_joints,):
            return problem or f"has joints_vis ({vis.size},), expected ({num_joints},)"
        bad = np.flatnonzero(~np.isin(vis, (0, 1)))
        if bad.size:
            return f"has joints_vis {vis[bad[0]]:g} for joint {int(bad[0])}; MPII uses 0 and 1"
        raw = raw.reshape(num_joints, 2) - 1.0  # MATLAB 1-based -> 0-based
        # a labelled joint lies within the person (height 200 * scale), not far away
        reach = 400.0 * float(scale[0])
        far = (vis > 0) & (np.abs(raw - (center - 1.0)).max(axis=1) > reach) if center[0] != -1 else vis < 0
        if far.any():
            j = int(np.flatnonzero(far)[0])
            return (f"has joint {j} ({MPII_META.joint_names[j]}) at ({raw[j, 0] + 1:g}, {raw[j, 1] + 1:g}), labelled "
                    f"visible but far from the person (centre {center.tolist()}, scale {float(scale[0]):g})")
        joints[:, :2] = raw
        joints[:, 2] = vis
    head_box = None
    if entry.get("head_box") is not None:
        box, problem = plain_numbers(entry["head_box"], "head_box", 4)
        if problem:
            return problem
        head_box = box.astype(np.float32) - 1.0
    return center.astype(np.float32), float(scale[0]), joints, head_box
