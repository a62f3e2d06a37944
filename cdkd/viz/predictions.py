"""Predicted keypoints on crops and whole images (the paper's Fig. 5; notebook 05).

Prediction records (used by :func:`plot_resolution_grid` and :mod:`cdkd.explorer`) are plain dicts
that map a resolution name (``'student'``, ``'teacher'``) to a *view*::

    {'image': uint8 [h, w, 3], 'pred': [J, 3] (x, y, score in crop px),
     'gt': [J, 3] (x, y, visibility) or None,
     'x_logits': [J, W*k] or None, 'y_logits': [J, H*k] or None, 'split_ratio': k}

Other keys of a record (``'image_id'``, ``'index'``) are carried along and shown in titles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cdkd.viz._style import GT_COLOR, PRED_COLOR, NotebookFigure, _numpy, finish_figure, joint_names, skeleton_for
from cdkd.viz.data import as_rgb, draw_keypoints


def plot_predictions(
    image: Any,
    pred_joints: Any,
    gt_joints: Any | None = None,
    dataset_name: str = "coco",
    ax: Axes | None = None,
    title: str | None = None,
    score_thr: float = 0.0,
    highlight: int | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Predicted (filled) and ground-truth (rings, dashed limbs) keypoints on one crop (Fig. 5).

    The overlay is drawn at the crop's own resolution (32x32, 64x64 or 256x256 pixels), so a
    low-resolution prediction is seen on the pixels the student saw.

    Args:
        image: uint8 [h, w, 3] or a normalised [3, h, w] tensor.
        pred_joints: [J, 2|3] predicted keypoints (x, y, score) in crop pixels.
        gt_joints: optional [J, 2|3] ground truth (x, y, visibility) in the same pixels.
        dataset_name: 'coco' or 'mpii'.
        ax: draw into this axis instead of a new figure.
        title: axis title (default: the crop size).
        score_thr: hide predicted joints with score <= this and ground truth with visibility <= 0.
        highlight: index of a joint to ring.
        save: optional output path.

    Returns:
        The figure holding the axis.
    """
    pred = _numpy(pred_joints, "pred_joints")
    num = pred.shape[0]
    names = joint_names(dataset_name, num)
    edges = skeleton_for(dataset_name, num)
    if ax is None:
        fig = NotebookFigure(figsize=(4, 4), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    if gt_joints is not None:
        gt = _numpy(gt_joints, "gt_joints")
        if gt.shape[0] != num:
            raise ValueError(f"gt_joints has {gt.shape[0]} joints but pred_joints has {num}")
        draw_keypoints(ax, rgb, gt, edges, color=GT_COLOR, linestyle="--", hollow=True, size=40,
                       label="ground truth")
        rgb = None
    draw_keypoints(ax, rgb, pred, edges, color=PRED_COLOR, score_thr=score_thr, names=names, label="prediction",
                   highlight=highlight)
    ax.set_title(title if title is not None else f"{w}x{h}", fontsize=10)
    ax.legend(fontsize=7, loc="lower right", framealpha=0.6)
    return finish_figure(fig, save)


def people_on_image(records: Sequence[Any], index: int = 0, pad: float = 0.1) -> tuple[Path, np.ndarray, np.ndarray]:
    """The image of person ``index`` and every annotated person on it: path, boxes, ground truth.

    Args:
        records: a dataset's person records (``dataset.records``: objects with ``image`` (path) and
            ``joints`` [J, 3] (x, y, visibility) in 0-based image pixels).
        index: the person whose image is taken.
        pad: each box is the extent of the person's labelled joints, widened by ``pad`` times its
            size on every side (head top to ankles is close to the person's box).

    Returns:
        (image path, boxes [N, 4] as x, y, w, h in image pixels, ground truth [N, J, 3]).
    """
    if not 0 <= index < len(records):
        raise IndexError(f"person index {index} out of range for {len(records)} records")
    path = str(records[index].image)
    people = [r for r in records if str(r.image) == path]
    boxes, gt = [], []
    for person in people:
        joints = np.asarray(person.joints, dtype=np.float64)  # [J, 3]
        seen = joints[joints[:, 2] > 0, :2]
        if not len(seen):
            continue
        lo, hi = seen.min(axis=0), seen.max(axis=0)
        size = np.maximum(hi - lo, 1.0)
        boxes.append([*(lo - pad * size), *((1 + 2 * pad) * size)])
        gt.append(joints)
    if not boxes:
        raise ValueError(f"no labelled joints on {path}")
    return Path(path), np.asarray(boxes), np.stack(gt)


def plot_image_predictions(
    image: Any,
    keypoints: Any,
    scores: Any | None = None,
    boxes: Any | None = None,
    dataset_name: str = "coco",
    score_thr: float = 0.0,
    title: str | None = None,
    gt: Any | None = None,
    zoom: bool = True,
    save: str | Path | None = None,
) -> Figure:
    """Every person's predicted keypoints on an image, e.g. the output of ``cdkd.predict_image``.

    Predictions are drawn with the dataset's skeleton (filled markers, solid limbs, coloured by side),
    the ground truth with rings and dashed limbs; with ``zoom`` the view is cropped to the persons'
    boxes (a 30-pixel person in an 800-pixel image is otherwise unreadable).

    Args:
        image: uint8 [H, W, 3] RGB image (or a normalised [3, H, W] tensor).
        keypoints: [N, J, 2] keypoints in image pixels.
        scores: optional [N, J] confidences (joints with score <= ``score_thr`` are hidden).
        boxes: optional [N, 4] person boxes (x, y, w, h) drawn as rectangles.
        dataset_name: 'coco' or 'mpii' (skeleton).
        score_thr: confidence threshold for drawing a joint.
        title: axis title.
        gt: optional [N, J, 3] ground truth (x, y, visibility) in image pixels.
        zoom: crop the view to the boxes and the drawn keypoints, padded by a quarter of their size.
        save: optional output path.

    Returns:
        The figure.
    """
    kpts = _numpy(keypoints, "keypoints")
    if kpts.ndim != 3 or kpts.shape[-1] != 2:
        raise ValueError(f"keypoints must be [N, J, 2], got {kpts.shape}")
    conf = np.ones(kpts.shape[:2]) if scores is None else _numpy(scores, "scores")
    truth = None if gt is None else _numpy(gt, "gt")
    if truth is not None and truth.shape[1:] != (kpts.shape[1], 3):
        raise ValueError(f"gt must be [N, {kpts.shape[1]}, 3], got {truth.shape}")
    rgb = as_rgb(image)
    frame = np.array([0.0, 0.0, rgb.shape[1], rgb.shape[0]])  # x0, y0, x1, y1
    if zoom:
        shown_kpts = kpts[np.isfinite(kpts).all(-1) & (conf > score_thr)]  # [M, 2]
        corners = [shown_kpts.reshape(-1, 2)]
        if boxes is not None:
            box = _numpy(boxes, "boxes").reshape(-1, 4)
            corners += [box[:, :2], box[:, :2] + box[:, 2:]]
        pts = np.concatenate(corners)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        margin = 0.25 * max(*(hi - lo), 8.0)
        frame = np.array([max(lo[0] - margin, 0), max(lo[1] - margin, 0), min(hi[0] + margin, rgb.shape[1]),
                          min(hi[1] + margin, rgb.shape[0])])
    width, height = frame[2] - frame[0], frame[3] - frame[1]
    fig = NotebookFigure(figsize=(6, min(9.0, max(3.0, 6 * height / max(width, 1)))), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(rgb, interpolation="nearest")
    edges = skeleton_for(dataset_name, kpts.shape[1])
    names = joint_names(dataset_name, kpts.shape[1])
    for n in range(kpts.shape[0]):
        if truth is not None and n < truth.shape[0]:
            draw_keypoints(ax, None, truth[n], skeleton=edges, color=GT_COLOR, linestyle="--", hollow=True, size=60,
                           linewidth=1.5, label="ground truth" if n == 0 else None)
        draw_keypoints(ax, None, np.concatenate([kpts[n], conf[n][:, None]], axis=1), skeleton=edges, names=names,
                       score_thr=score_thr, size=36, linewidth=2.5, label="prediction" if n == 0 else None)
        if boxes is not None:
            x, y, w, h = _numpy(boxes, "boxes")[n]
            ax.add_patch(Rectangle((x, y), w, h, fill=False, color="white", lw=1, ls="--"))
    ax.set_xlim(frame[0], frame[2])
    ax.set_ylim(frame[3], frame[1])
    ax.set_axis_off()
    ax.legend(fontsize=8, loc="lower right", framealpha=0.7)
    ax.set_title(title or f"{kpts.shape[0]} persons", fontsize=10)
    return finish_figure(fig, save)


def plot_resolution_grid(
    records: Sequence[Mapping[str, Any]],
    dataset_name: str,
    resolutions: Sequence[str] = ("student", "teacher"),
    score_thr: float = 0.0,
    save: str | Path | None = None,
) -> Figure:
    """Predictions at every resolution for a few people: one row per resolution, one column each.

    Shows what the paper's Fig. 5 shows for the student, side by side with the teacher at 256x256
    on the same people (the two models CDKD connects).

    Args:
        records: prediction records (see the module docstring), each with a view per resolution.
        dataset_name: 'coco' or 'mpii'.
        resolutions: the record keys to show, one row each.
        score_thr: hide predicted joints with score <= this.
        save: optional output path.

    Returns:
        Figure with len(resolutions) x len(records) axes.
    """
    if not records:
        raise ValueError("plot_resolution_grid needs at least one record")
    fig = NotebookFigure(figsize=(2.4 * len(records), 2.6 * len(resolutions)), layout="constrained")
    axes = fig.subplots(len(resolutions), len(records), squeeze=False)
    for c, record in enumerate(records):
        for r, res in enumerate(resolutions):
            if res not in record:
                raise KeyError(f"record {c} has no '{res}' view (keys: {', '.join(map(str, record))})")
            view = record[res]
            rgb = as_rgb(view["image"])
            label = record.get("index", c)
            plot_predictions(rgb, view["pred"], view.get("gt"), dataset_name, ax=axes[r, c], score_thr=score_thr,
                             title=f"sample {label}, {res} {rgb.shape[1]}x{rgb.shape[0]}")
            if c or r:
                legend = axes[r, c].get_legend()
                if legend is not None:
                    legend.remove()
    return finish_figure(fig, save)
