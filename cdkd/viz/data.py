"""Network inputs as pictures: crops, keypoints and SimCC targets (notebook 01).

CDKD (Gu et al., "Cross-Domain Knowledge Distillation for Low-Resolution Human Pose Estimation")
pairs a 256x256 teacher crop with a 32x32 / 64x64 student crop warped from the same person
(Sec. III, Fig. 3 a); SimCC (Li et al., ECCV 2022) turns each joint into one-hot x and y classes
(Sec. III-A). :func:`plot_paired_crops` shows both; :func:`draw_keypoints` is the pose overlay that
every keypoint figure uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from cdkd.data.topdown import IMAGENET_MEAN, IMAGENET_STD
from cdkd.viz._style import (STUDENT_COLOR, NotebookFigure, _numpy, _side_color, finish_figure, joint_index,
                             joint_names, skeleton_for)


def denormalize(image: Any, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Undo the ImageNet normalisation of a network input (the crops fed to SimCC, Sec. IV-A).

    Args:
        image: [3, h, w] tensor or array, RGB, normalised as (x/255 - mean) / std.
        mean: per-channel mean used by the data pipeline.
        std: per-channel standard deviation.

    Returns:
        uint8 array [h, w, 3] RGB, clipped to 0..255.
    """
    x = _numpy(image, "image")
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"denormalize expects a [3, h, w] image, got shape {tuple(x.shape)}")
    x = x * np.asarray(std).reshape(3, 1, 1) + np.asarray(mean).reshape(3, 1, 1)
    x = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(1, 2, 0))  # [h, w, 3]


def as_rgb(image: Any) -> np.ndarray:
    """An image ready for ``imshow``: uint8 [h, w, 3] kept, a normalised [3, h, w] input denormalised.

    Args:
        image: uint8 [h, w, 3] / [h, w] array, or a normalised [3, h, w] tensor / array.

    Returns:
        uint8 [h, w, 3] (or [h, w] for a grey image).
    """
    if hasattr(image, "detach") or (isinstance(image, np.ndarray) and image.dtype != np.uint8):
        arr = image.detach().cpu().numpy() if hasattr(image, "detach") else image
        if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
            return denormalize(arr)
        if arr.dtype == np.uint8:
            return arr
        if arr.ndim in (2, 3) and np.nanmax(arr) <= 1.0 and np.nanmin(arr) >= 0.0:
            return np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)
        raise ValueError(f"cannot display image of shape {tuple(arr.shape)} and dtype {arr.dtype}; "
                         "give uint8 [h, w, 3] or a normalised [3, h, w] tensor")
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"image must be [h, w, 3] or [h, w], got shape {tuple(arr.shape)}")
    return arr


def draw_keypoints(
    ax: Axes,
    image: Any,
    joints: Any,
    skeleton: Iterable[tuple[int, int]] = (),
    color: str | None = None,
    score_thr: float = 0.0,
    names: Sequence[str] | None = None,
    marker: str = "o",
    size: float = 24.0,
    linewidth: float = 1.5,
    linestyle: str = "-",
    hollow: bool = False,
    label: str | None = None,
    highlight: int | None = None,
) -> dict[str, Any]:
    """Draw an image (optional) with keypoints and limbs on ``ax``: the pose of one person.

    A joint is drawn when its coordinates are finite and, for [J, 3] input, its third column
    (visibility or confidence) is above ``score_thr``; a limb when both its joints are drawn.

    Args:
        ax: matplotlib axis.
        image: uint8 [h, w, 3], a normalised [3, h, w] tensor, or None to draw keypoints only.
        joints: [J, 2] or [J, 3] keypoints in the image's pixels.
        skeleton: pairs of joint indices to connect (``COCO_META.skeleton`` of :mod:`cdkd.joints`).
        color: one colour for everything; None colours by body side (needs ``names``).
        score_thr: joints with score <= this are hidden.
        names: joint names, used for side colours.
        marker, size, linewidth, linestyle: marker style and size (points^2), limb width and style.
        hollow: draw markers as rings (ground truth under a prediction).
        label: legend label of the markers.
        highlight: index of a joint to ring in black (the joint under study).

    Returns:
        dict with 'points' (PathCollection), 'limbs' (LineCollection or None), 'visible' (bool [J]).
    """
    if image is not None:
        rgb = as_rgb(image)
        h, w = rgb.shape[:2]
        ax.imshow(rgb, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
    kp = _numpy(joints, "joints")
    if kp.ndim != 2 or kp.shape[1] not in (2, 3):
        raise ValueError(f"joints must be [J, 2] or [J, 3], got shape {tuple(kp.shape)}")
    num = kp.shape[0]
    visible = np.isfinite(kp[:, :2]).all(axis=1)
    if kp.shape[1] == 3:
        visible &= kp[:, 2] > score_thr
    if color is not None:
        colors = [color] * num
    else:
        names = names if names is not None and len(names) == num else [f"joint{j}" for j in range(num)]
        colors = [_side_color(n) for n in names]

    limbs = None
    segments, seg_colors = [], []
    for a, b in skeleton:
        if a >= num or b >= num:
            raise ValueError(f"skeleton edge ({a}, {b}) refers to a joint beyond J={num}")
        if visible[a] and visible[b]:
            segments.append([kp[a, :2], kp[b, :2]])
            seg_colors.append(colors[b])
    if segments:
        limbs = LineCollection(segments, colors=seg_colors, linewidths=linewidth, linestyles=linestyle, alpha=0.9)
        ax.add_collection(limbs)
    idx = np.flatnonzero(visible)
    point_colors = [colors[j] for j in idx]
    style = {"facecolors": "none", "edgecolors": point_colors, "linewidths": 1.5} if hollow else {
        "c": point_colors, "edgecolors": "white", "linewidths": 0.5}
    points = ax.scatter(kp[idx, 0], kp[idx, 1], s=size, marker=marker, label=label, zorder=3, **style)
    if highlight is not None and 0 <= highlight < num and visible[highlight]:
        ax.scatter([kp[highlight, 0]], [kp[highlight, 1]], s=size * 5, facecolors="none", edgecolors="black",
                   linewidths=1.5, zorder=4)
    if image is not None:
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    return {"points": points, "limbs": limbs, "visible": visible}



def plot_paired_crops(
    sample: Mapping[str, Any],
    dataset_name: str,
    joint: int | str | None = None,
    split_ratio: float | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Teacher and student crops of one person with keypoints, and one joint's SimCC targets.

    Illustrates CDKD's paired inputs (Sec. III, Fig. 3 a): both crops are warped from the same
    image with the same centre / scale / rotation / flip, so a student pixel maps to m teacher
    pixels (m = teacher size / student size) and the student's joints times m land on the
    teacher's person. The bottom row shows the SimCC one-hot classification targets of one joint
    (Sec. III-A; class round(x * k) out of W*k), with the continuous position x*k dashed.

    Args:
        sample: a TopDownDataset sample: 'image' [3, h, w] and 'teacher_image' [3, H, W]
            (normalised), 'joints' [J, 3] student-crop px, 'target_x', 'target_y' [J],
            'target_weight' [J], 'split_ratio' (k); 'image_id' and 'index' are shown when present.
        dataset_name: 'coco' or 'mpii' (skeleton and joint names).
        joint: joint index or name whose targets are shown; None picks the first labelled one.
        split_ratio: k; None uses ``sample['split_ratio']`` (every TopDownDataset sample has it).
        save: optional path of a PNG/PDF.

    Returns:
        Figure with 4 axes: teacher crop, student crop, x target, y target.
    """
    for key in ("image", "teacher_image", "joints", "target_x", "target_y"):
        if key not in sample:
            raise KeyError(f"plot_paired_crops: sample has no '{key}' (keys: {', '.join(map(str, sample))})")
    student = as_rgb(sample["image"])
    teacher = as_rgb(sample["teacher_image"])
    h, w = student.shape[:2]
    big_h, big_w = teacher.shape[:2]
    scale = np.array([big_w / w, big_h / h])
    joints = _numpy(sample["joints"], "joints")
    num = joints.shape[0]
    names = joint_names(dataset_name, num)
    edges = skeleton_for(dataset_name, num)
    tx = _numpy(sample["target_x"], "target_x").reshape(-1)
    ty = _numpy(sample["target_y"], "target_y").reshape(-1)
    weight = _numpy(sample.get("target_weight", np.ones(num)), "target_weight").reshape(-1)
    if split_ratio is None:
        split_ratio = sample.get("split_ratio")
    if split_ratio is None:
        raise KeyError("plot_paired_crops: the sample has no 'split_ratio'; pass split_ratio=k")
    k = float(split_ratio)
    if joint is None:
        labelled = np.flatnonzero(weight > 0)
        j = int(labelled[0]) if labelled.size else 0
    else:
        j = joint_index(joint, names)

    fig = NotebookFigure(figsize=(9, 7), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1.2))
    ax_t, ax_s = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    scaled = joints.copy()
    scaled[:, :2] = joints[:, :2] * scale
    draw_keypoints(ax_t, teacher, scaled, edges, names=names, highlight=j)
    ax_t.set_title(f"teacher crop {big_w}x{big_h}\nstudent joints x m (m = {big_w / w:g})", fontsize=10)
    draw_keypoints(ax_s, student, joints, edges, names=names, highlight=j, size=40)
    ax_s.set_title(f"student crop {w}x{h}\njoints in crop pixels", fontsize=10)

    for col, (axis, targets, coord, size) in enumerate((("x", tx, joints[j, 0], w), ("y", ty, joints[j, 1], h))):
        ax = fig.add_subplot(grid[1, col])
        classes = int(size * k)
        c = int(targets[j])
        onehot = np.zeros(classes)
        if 0 <= c < classes:
            onehot[c] = 1.0
        color = STUDENT_COLOR if weight[j] > 0 else "0.6"
        ax.bar(np.arange(classes), onehot, width=1.0, color=color, label=f"target class {c}")
        ax.axvline(coord * k, color="black", linestyle="--", linewidth=1, label=f"{axis}*k = {coord * k:.2f}")
        ax.set_xlim(max(-0.5, c - 12.5), min(classes - 0.5, c + 12.5))  # zoom: the rounding is visible
        ax.set_ylim(0, 1.15)
        ax.set_xlabel(f"{axis} class (of 0..{classes - 1}: {size} px x k={k:g})")
        ax.set_title(f"SimCC {axis} target of '{names[j]}' (weight {weight[j]:g})", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
    meta = ", ".join(f"{key} {sample[key]}" for key in ("image_id", "index") if key in sample)
    fig.suptitle(f"{dataset_name.upper()} paired crops" + (f" ({meta})" if meta else ""))
    return finish_figure(fig, save)
