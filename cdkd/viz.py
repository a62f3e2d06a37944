"""Figures for the CDKD reproduction: crops, SimCC distributions, predictions, training records.

Illustrates "Cross-Domain Knowledge Distillation for Low-Resolution Human Pose Estimation" (CDKD,
Gu et al.) and the SimCC representation it builds on (Li et al., ECCV 2022):

* :func:`plot_paired_crops` - the teacher crop (256x256) and the student crop (32x32 / 64x64) warped
  from the same person with the same centre, scale and rotation (Sec. III, Fig. 3 a), with the
  SimCC one-hot targets of one joint (Sec. III-A). Notebook 01.
* :func:`plot_simcc_distributions` - cross-class alignment (CCA, Sec. III-B1): the teacher's 256*k
  class probabilities, merged every m classes (Eq. 6), next to the student's res*k probabilities
  that Eq. 7 pulls towards them. Notebook 05.
* :func:`plot_predictions`, :func:`plot_resolution_grid` - keypoint overlays at the student and the
  teacher resolution (the paper's Fig. 5).
* :func:`plot_training_curves`, :func:`plot_temperature`, :func:`plot_sau_weights` - the loss terms
  of Eq. 8, the ETHT temperature tau and the reversal weight xi (Eq. 9-12), and the SAU projector
  weights w_k (Eq. 3-4), read from a run folder's ``steps.csv``.
* :func:`plot_metric_bars` - our tables against the paper's numbers (Tables I-X). Notebook 04.

Every plotting function builds a :class:`NotebookFigure` (a :class:`matplotlib.figure.Figure`)
without pyplot (so nothing is kept in pyplot's global figure list), returns it, and saves it when
``save=path`` is given. In a notebook the returned figure is the cell's value and is shown inline as
a PNG by any front end (JupyterLab, papermill, nbclient), with or without ``%matplotlib inline``: a
figure made without pyplot has no inline backend behind it, so it renders itself (``_repr_png_``).

Prediction records (used by :func:`plot_resolution_grid` and :mod:`cdkd.explorer`) are plain dicts
that map a resolution name (``'student'``, ``'teacher'``) to a *view*::

    {'image': uint8 [h, w, 3], 'pred': [J, 3] (x, y, score in crop px),
     'gt': [J, 3] (x, y, visibility) or None,
     'x_logits': [J, W*k] or None, 'y_logits': [J, H*k] or None, 'split_ratio': k}

Other keys of a record (``'image_id'``, ``'index'``) are carried along and shown in titles.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cdkd.data.topdown import IMAGENET_MEAN, IMAGENET_STD
from cdkd.distill.cca import cca_loss, merge_probs
from cdkd.engine.recorder import read_epochs, read_steps
from cdkd.joints import JOINTS_META

LEFT_COLOR = "#1f77b4"
RIGHT_COLOR = "#d62728"
CENTER_COLOR = "#2ca02c"
PRED_COLOR = "#ff7f0e"
GT_COLOR = "#17becf"
TEACHER_COLOR = "#9467bd"
STUDENT_COLOR = "#ff7f0e"


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


class NotebookFigure(Figure):
    """A matplotlib Figure that displays itself inline as ``image/png`` in Jupyter.

    IPython shows a pyplot-free Figure as the text ``<Figure size 900x700 with 4 Axes>`` unless an
    inline backend registered a formatter for it; ``_repr_png_`` makes the image the default.
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        return buffer.getvalue()


def _numpy(x: Any, name: str) -> np.ndarray:
    """A float64 numpy copy of a tensor / array / list; raises naming ``name`` on failure."""
    if x is None:
        raise ValueError(f"{name} is None")
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} cannot be converted to an array: {err}") from None


def finish_figure(fig: Figure, save: str | Path | None, dpi: int = 120) -> Figure:
    """Save ``fig`` to ``save`` (creating its folder) when given; return the figure."""
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def simcc_probabilities(logits: Any, tau: float = 1.0, merge_to: int | None = None) -> np.ndarray:
    """SimCC class probabilities softmax(z / tau) for plotting, optionally merged by CCA (Eq. 6).

    The softmax is torch's and the merge :func:`cdkd.distill.cca.merge_probs`, in float64; only the
    result becomes a numpy array.

    Args:
        logits: [..., C] logits (tensor, array or list).
        tau: temperature (Eq. 7); must be positive.
        merge_to: C_s: merge the C = m * C_s probabilities into C_s classes; None keeps all C.

    Returns:
        [..., C] or [..., C_s] float64 probabilities.
    """
    if tau <= 0:
        raise ValueError(f"temperature tau must be positive, got {tau}")
    z = torch.from_numpy(np.ascontiguousarray(_numpy(logits, "logits")))  # [..., C] float64
    probs = torch.softmax(z / tau, dim=-1)  # [..., C]
    if merge_to is not None:
        probs = merge_probs(probs, merge_to)  # [..., C_s]
    return probs.numpy()


def note_axis(ax: Axes, text: str) -> None:
    """Write a centred note into an axis that has nothing to plot."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4", wrap=True)


def joint_names(dataset_name: str, num_joints: int | None = None) -> tuple[str, ...]:
    """Joint names of a dataset (:mod:`cdkd.joints`), or ``joint0..`` for an unknown layout.

    Args:
        dataset_name: 'coco' or 'mpii' (any other name gives generic names).
        num_joints: J; when it differs from the dataset's count, generic names are returned.

    Returns:
        Tuple of J names.
    """
    meta = JOINTS_META.get(dataset_name.lower())
    if meta is not None and num_joints in (None, meta.num_joints):
        return meta.joint_names
    return tuple(f"joint{j}" for j in range(num_joints or 0))


def skeleton_for(dataset_name: str, num_joints: int) -> tuple[tuple[int, int], ...]:
    """The dataset's limbs when its joint count matches ``num_joints``, else no limbs."""
    meta = JOINTS_META.get(dataset_name.lower())
    return meta.skeleton if meta is not None and meta.num_joints == num_joints else ()


def joint_index(joint: int | str, names: Sequence[str]) -> int:
    """Resolve a joint given by index or name; raises naming the valid choices."""
    if isinstance(joint, str):
        if joint not in names:
            raise ValueError(f"unknown joint name {joint!r}; joints: {', '.join(names)}")
        return list(names).index(joint)
    j = int(joint)
    if not 0 <= j < len(names):
        raise ValueError(f"joint index {j} out of range for {len(names)} joints")
    return j


def _side_color(name: str) -> str:
    if name.startswith(("left", "l_")):
        return LEFT_COLOR
    if name.startswith(("right", "r_")):
        return RIGHT_COLOR
    return CENTER_COLOR


# ----------------------------------------------------------------------------------------------
# images and keypoints
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# paired crops and SimCC targets (notebook 01)
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# SimCC distributions and CCA (notebook 05)
# ----------------------------------------------------------------------------------------------


def mass_window(probs: Sequence[tuple[np.ndarray, np.ndarray]], pad: float) -> tuple[float, float]:
    """Axis window holding all but 0.1% of each distribution's mass, padded (zoom on the peaks).

    Args:
        probs: (bin centres [C], probabilities [C]) pairs.
        pad: added on both sides, in the centres' unit.

    Returns:
        (low, high).
    """
    lo, hi = math.inf, -math.inf
    for centers, p in probs:
        cdf = np.cumsum(p) / max(p.sum(), 1e-12)
        first = int(np.searchsorted(cdf, 0.0005))
        last = int(np.searchsorted(cdf, 0.9995))
        lo = min(lo, centers[min(first, len(centers) - 1)])
        hi = max(hi, centers[min(last, len(centers) - 1)])
    return lo - pad, hi + pad


def plot_simcc_distributions(
    teacher_x_logits: Any,
    student_x_logits: Any,
    m: int,
    tau: float = 1.0,
    joint_name: str = "",
    teacher_y_logits: Any | None = None,
    student_y_logits: Any | None = None,
    split_ratio: float | None = None,
    xlim: str | tuple[float, float] | None = None,
    save: str | Path | None = None,
) -> Figure:
    """CCA (Sec. III-B1): teacher probabilities, their m-bin merge (Eq. 6) and the student's.

    Left panel: p^t = softmax(z^t / tau) over the teacher's C_t = 256*k classes. Right panel: the
    merged teacher p~t_j = sum of p^t over classes j*m .. j*m+m-1 (Eq. 6, bars) and the student's
    p^s = softmax(z^s / tau) over C_s = C_t / m classes (steps), the pair whose KL Eq. 7 takes
    (its value tau^2 * KL(p~t || p^s) is in the title).

    All panels share one axis in teacher-frame input pixels: SimCC class c of a k-split sits at
    pixel c / k, so teacher class i covers [(i - 0.5)/k, (i + 0.5)/k), student class j sits at
    j*m/k and covers m/k teacher pixels, and the merged bin j covers teacher classes j*m .. j*m+m-1,
    i.e. it is centred (m - 1) / (2k) teacher pixels right of student class j (visible as an offset
    between bars and steps). Without ``split_ratio`` the axis is in teacher classes (k taken as 1).

    Args:
        teacher_x_logits: [C_t] teacher x logits of one joint.
        student_x_logits: [C_s] student x logits of the same joint; C_t must equal m * C_s.
        m: merge factor (teacher size / student size, 8 for 32 -> 256, 4 for 64 -> 256).
        tau: temperature of both softmaxes (Eq. 7).
        joint_name: shown in the title.
        teacher_y_logits, student_y_logits: optional y logits; adds a second row.
        split_ratio: SimCC k, to label the axis in pixels.
        xlim: None zooms on the distributions' mass, 'full' shows the whole axis, or (lo, hi) pixels.
        save: optional output path.

    Returns:
        Figure with 2 axes per SimCC axis (2 for x only, 4 with y). The right panel's first bar
        container holds the merged teacher probabilities.
    """
    rows = [("x", teacher_x_logits, student_x_logits)]
    if (teacher_y_logits is None) != (student_y_logits is None):
        raise ValueError("give both teacher_y_logits and student_y_logits, or neither")
    if teacher_y_logits is not None:
        rows.append(("y", teacher_y_logits, student_y_logits))
    m = int(m)
    k = float(split_ratio) if split_ratio else 1.0
    unit = "input pixel (teacher frame)" if split_ratio else "teacher class index"

    fig = NotebookFigure(figsize=(11, 3.2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False, sharex="row")
    for r, (axis, t_logits, s_logits) in enumerate(rows):
        zt = _numpy(t_logits, f"teacher_{axis}_logits").reshape(-1)  # [C_t]
        zs = _numpy(s_logits, f"student_{axis}_logits").reshape(-1)  # [C_s]
        if zt.size != m * zs.size:
            raise ValueError(f"CCA on the {axis} axis needs C_t = m * C_s; got C_t={zt.size}, m={m}, C_s={zs.size}")
        pt = simcc_probabilities(zt, tau)  # [C_t]
        ps = simcc_probabilities(zs, tau)  # [C_s]
        merged = simcc_probabilities(zt, tau, merge_to=zs.size)  # [C_s]
        s, te = torch.from_numpy(zs).view(1, 1, -1), torch.from_numpy(zt).view(1, 1, -1)  # [1, 1, C]
        kl = float(cca_loss(s, s, te, te, tau)["x"])  # Eq. 7 of one joint (the x term; y is the same)

        t_edges = (np.arange(zt.size + 1) - 0.5) / k  # teacher class i: [(i-0.5)/k, (i+0.5)/k)
        s_edges = (np.arange(zs.size + 1) - 0.5) * m / k  # student class j centred at j*m/k
        merged_left = (np.arange(zs.size) * m - 0.5) / k  # merged bin j: teacher classes j*m..j*m+m-1

        ax_t, ax_m = axes[r]
        ax_t.stairs(pt, t_edges, fill=True, color=TEACHER_COLOR, alpha=0.8, label=f"teacher p^t ({zt.size} classes)")
        ax_t.set_title(f"{axis}: teacher softmax(z/tau), C_t = {zt.size}, tau = {tau:g}", fontsize=10)
        ax_m.bar(merged_left, merged, width=m / k, align="edge", color=TEACHER_COLOR, alpha=0.45,
                 edgecolor=TEACHER_COLOR, linewidth=0.5, label=f"merged teacher p~t (Eq. 6, m={m})")
        ax_m.stairs(ps, s_edges, color=STUDENT_COLOR, linewidth=2, label=f"student p^s ({zs.size} classes)")
        ax_m.set_title(f"{axis}: CCA merge vs student, tau^2 KL(p~t||p^s) = {kl:.4f}", fontsize=10)
        for ax in (ax_t, ax_m):
            ax.set_xlabel(unit)
            ax.set_ylabel("probability")
            ax.legend(fontsize=8, loc="upper right")
        if xlim == "full":
            ax_t.set_xlim(t_edges[0], t_edges[-1])
        elif xlim is None:
            centers_t = np.arange(zt.size) / k
            centers_s = np.arange(zs.size) * m / k
            ax_t.set_xlim(*mass_window([(centers_t, pt), (centers_s, ps), (centers_s, merged)], pad=2 * m / k))
        else:
            ax_t.set_xlim(*xlim)
    title = "SimCC distributions" + (f" of '{joint_name}'" if joint_name else "")
    fig.suptitle(f"{title}: cross-class alignment, {m} teacher classes per student class")
    return finish_figure(fig, save)


# ----------------------------------------------------------------------------------------------
# predictions (the paper's Fig. 5)
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# training records (steps.csv)
# ----------------------------------------------------------------------------------------------


def _runs(run_dirs: Sequence[str | Path] | Mapping[str, str | Path] | str | Path) -> dict[str, Path]:
    """Normalise run folders to {label: path}; labels default to the folder names."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    if isinstance(run_dirs, Mapping):
        return {str(label): Path(p) for label, p in run_dirs.items()}
    return {Path(p).name or str(p): Path(p) for p in run_dirs}


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (NaN-free input)."""
    if window <= 1 or values.size < 2:
        return values
    window = min(window, values.size)
    csum = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(values.size):
        lo = max(0, i + 1 - window)
        out[i] = (csum[i + 1] - csum[lo]) / (i + 1 - lo)
    return out


def _series(steps: dict[str, np.ndarray], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray] | None:
    """(x, y) of a column with NaN rows dropped, or None when the column is absent or empty."""
    if key not in steps:
        return None
    y = steps[key]
    xs = steps[x] if x in steps else np.arange(y.size, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(xs)
    if not ok.any():
        return None
    return xs[ok], y[ok]


CURVE_TITLES = {"task": "task loss L_ori", "feature": "feature loss L_fea (Eq. 5)",
                "logit": "logit loss L_logit (Eq. 7)", "loss": "total loss (Eq. 8)"}


def plot_training_curves(
    run_dirs: Sequence[str | Path] | Mapping[str, str | Path] | str | Path,
    keys: Sequence[str] = ("task", "feature", "logit"),
    smooth: int = 1,
    logy: bool = False,
    val_metric: str | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Loss terms of Eq. 8 over training steps, one panel per term, one line per run.

    ``task`` is L_ori, ``feature`` is alpha * L_fea (SAPE, Eq. 5), ``logit`` beta * L_logit (CCA,
    Eq. 7), as the engine records them; any other ``steps.csv`` column (``loss``, ``lr``) works too.
    A term a run did not record is skipped for that run, and a panel no run has says so.

    Args:
        run_dirs: run folders, or {label: folder}.
        keys: columns to plot.
        smooth: trailing moving-average window in logged steps (1 = raw).
        logy: logarithmic y axis.
        val_metric: a validation metric of ``epochs.jsonl`` (e.g. 'Mean' for PCKh, 'AP'): adds a last
            panel with its value after each validated epoch.
        save: optional output path.

    Returns:
        Figure with one axis per key (plus one for ``val_metric``).
    """
    runs = _runs(run_dirs)
    records = {label: read_steps(path) for label, path in runs.items()}
    panels = len(keys) + (val_metric is not None)
    fig = NotebookFigure(figsize=(4.2 * panels, 3.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, key in zip(axes, keys):
        plotted = 0
        for label, steps in records.items():
            series = _series(steps, key)
            if series is None:
                continue
            xs, ys = series
            ax.plot(xs, _smooth(ys, smooth), label=label, linewidth=1.2)
            plotted += 1
        ax.set_title(CURVE_TITLES.get(key, key), fontsize=10)
        ax.set_xlabel("step")
        if plotted:
            if logy:
                ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            note_axis(ax, f"'{key}' not recorded\nin {', '.join(records)}")
    if val_metric is not None:
        ax = axes[-1]
        ax.set_title(f"validation {val_metric}", fontsize=10)
        ax.set_xlabel("epoch")
        plotted = 0
        for label, path in runs.items():
            rows = [r for r in read_epochs(path) if val_metric in r.get("val", {})]
            if rows:
                metric = rows[-1]["val"].get("protocol", {}).get("metric", val_metric)
                ax.set_title(f"validation {metric if val_metric == 'main' else val_metric}", fontsize=10)
                ax.plot([r["epoch"] + 1 for r in rows], [r["val"][val_metric] for r in rows], marker="o", label=label)
                plotted += 1
        if plotted:
            ax.legend(fontsize=8)
        else:
            note_axis(ax, f"no validated epoch with '{val_metric}'\nin {', '.join(runs)}")
    return finish_figure(fig, save)


def plot_temperature(run_dir: str | Path, save: str | Path | None = None) -> Figure:
    """ETHT (Sec. III-B2, Eq. 9-12): the learned temperature tau and the reversal weight xi.

    Args:
        run_dir: a run folder with ``steps.csv`` (columns 'tau' and 'xi'; either may be absent).
        save: optional output path.

    Returns:
        Figure with 2 axes (tau, xi); a missing column leaves a note in its axis.
    """
    steps = read_steps(run_dir)
    fig = NotebookFigure(figsize=(9, 3.2), layout="constrained")
    axes = fig.subplots(1, 2)
    labels = {"tau": "temperature tau (Eq. 7, learned by ETHT)", "xi": "reversal weight xi (Eq. 12)"}
    for ax, key in zip(axes, ("tau", "xi")):
        series = _series(steps, key)
        ax.set_title(labels[key], fontsize=10)
        ax.set_xlabel("step")
        if series is None:
            note_axis(ax, f"'{key}' not recorded in {Path(run_dir).name}")
            continue
        ax.plot(*series, color=TEACHER_COLOR if key == "tau" else STUDENT_COLOR, linewidth=1.4)
    return finish_figure(fig, save)


def plot_share_sweep(points: Sequence[Mapping[str, Any]], ylabel: str = "PCKh@0.5 Mean",
                     save: str | Path | None = None) -> Figure:
    """The distillation-weight sweep (beyond the paper): the main metric against the distillation
    terms' share of the student's update, from :func:`cdkd.report.share_sweep`.

    Args:
        points: dicts with 'target' (requested share per term; 0 = the baseline), 'measured' (the
            feature + logit share measured in the last epoch) and 'metric'.
        ylabel: the metric's name.
        save: optional output path.

    Returns:
        Figure with one axis: the metric at each measured total share, labelled with the requested
        per-term share.
    """
    fig = NotebookFigure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    if not points:
        note_axis(ax, "no sweep runs found")
        return finish_figure(fig, save)
    x = [100.0 * float(p["measured"]) for p in points]
    y = [float(p["metric"]) for p in points]
    ax.plot(x, y, "o-", color=STUDENT_COLOR, linewidth=1.4)
    for xi, yi, p in zip(x, y, points):
        ax.annotate(f"S={float(p['target']):g}", (xi, yi), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.axhline(y[0] if float(points[0]["target"]) == 0 else np.nan, color="0.5", linestyle=":", linewidth=1,
               label="baseline (no distillation)")
    ax.set_xlabel("distillation share of the update, measured (%)")
    ax.set_ylabel(ylabel)
    ax.set_title("CDKD (paper form): distillation weight sweep, one seed", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return finish_figure(fig, save)


def sau_columns(steps: Mapping[str, np.ndarray]) -> list[str]:
    """The ``sau_w<k>`` columns of a training record, in projector order."""
    found = [c for c in steps if c.startswith("sau_w") and c[5:].isdigit()]
    return sorted(found, key=lambda c: int(c[5:]))


def plot_sau_weights(run_dir: str | Path, save: str | Path | None = None) -> Figure:
    """SAU projector weights w_k (Eq. 3-4) over training, as a stacked area (they sum to one).

    Args:
        run_dir: a run folder with ``steps.csv`` holding ``sau_w0``, ``sau_w1``, ... (batch means of
            the softmax weights); a run without them gets a note instead.
        save: optional output path.

    Returns:
        Figure with one axis.
    """
    steps = read_steps(run_dir)
    columns = sau_columns(steps)
    fig = NotebookFigure(figsize=(6, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("SAU weights w_k over the projectors (Eq. 3-4)", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("weight")
    if not columns:
        note_axis(ax, f"no sau_w* columns in {Path(run_dir).name}/steps.csv\n(columns: {', '.join(steps)})")
        return finish_figure(fig, save)
    values = np.stack([steps[c] for c in columns])  # [K, N]
    xs = steps["step"] if "step" in steps else np.arange(values.shape[1], dtype=np.float64)
    ok = np.isfinite(values).all(axis=0) & np.isfinite(xs)
    ax.stackplot(xs[ok], values[:, ok], labels=[f"w{c[5:]}" for c in columns], alpha=0.85)
    ax.set_ylim(0, max(1.0, float(values[:, ok].sum(0).max(initial=1.0))))
    ax.legend(fontsize=8, loc="upper right")
    return finish_figure(fig, save)


# ----------------------------------------------------------------------------------------------
# result tables (notebook 04)
# ----------------------------------------------------------------------------------------------


def _mean_std(value: Any, where: str) -> tuple[float, float]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return float(value[0]), float(value[1])
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value), math.nan
    raise ValueError(f"{where}: expected a number or (mean, std), got {value!r}")


def plot_metric_bars(
    table: Mapping[str, Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    reference: Mapping[str, Mapping[str, float]] | None = None,
    ylabel: str = "",
    zoom: bool = False,
    annotate: bool = True,
    reference_label: str = "paper (its own data)",
    spread_label: str = "error bars: sample std over seeds",
    save: str | Path | None = None,
) -> Figure:
    """Grouped bars of our results (mean +- std over seeds) with the paper's numbers as markers.

    One group per column (a metric, e.g. PCKh Mean or AP), one bar per row label (a method or
    setting, e.g. 'SimCC 64x64', 'CDKD 64x64'); a black diamond marks the paper's value for the
    same (label, column) where ``reference`` has one (Tables I-X), with the value written beside it
    in italics. Our means are written inside the bars, so a number never sits above a paper marker
    and reads as the paper's (a bar too short to hold its number gets it above, in its own
    colour, upright). The caption under the axis says what the error bars are and what the
    markers are. Reference entries without a bar are not drawn.

    Args:
        table: {label: {column: (mean, std) or mean}}; a missing column leaves a gap.
        columns: columns to show, in order (default: all, in first-seen order).
        reference: {label: {column: paper value}}.
        ylabel: y axis label.
        zoom: start the y axis near the smallest value instead of 0 (the default 0 keeps bar
            heights proportional to the values).
        annotate: write each mean inside its bar and each paper value beside its marker.
        reference_label: legend label of the markers.
        spread_label: the caption's explanation of the error bars.
        save: optional output path.

    Returns:
        Figure with one axis; one BarContainer per label; the reference markers are one
        PathCollection labelled ``reference_label``.
    """
    if not table:
        raise ValueError("plot_metric_bars needs a non-empty table")
    if columns is None:
        columns = list(dict.fromkeys(c for row in table.values() for c in row))
    labels = list(table)
    width = 0.8 / len(labels)
    fig = NotebookFigure(figsize=(max(5.5, 1.3 * len(columns) * max(1, len(labels)) ** 0.5 + 2.5), 4.2),
                         layout="constrained")
    ax = fig.add_subplot()
    shown: list[float] = []
    ref_x, ref_y = [], []
    bars: list[tuple] = []  # (x, means, errors, colour) per label, annotated once the axis range is known
    positions = np.arange(len(columns))
    for i, label in enumerate(labels):
        means, stds = [], []
        for col in columns:
            if col in table[label]:
                mean, std = _mean_std(table[label][col], f"table['{label}']['{col}']")
            else:
                mean, std = math.nan, math.nan
            means.append(mean)
            stds.append(std)
        xs = positions - 0.4 + width * (i + 0.5)
        errs = np.nan_to_num(np.asarray(stds), nan=0.0)
        ax.bar(xs, means, width=width * 0.92, yerr=errs, capsize=3, label=label, error_kw={"linewidth": 1})
        shown += [v + e for v, e in zip(means, errs) if np.isfinite(v)]
        if annotate:
            bars.append((xs, means, errs, ax.containers[-1].patches[0].get_facecolor()))
        if reference and label in reference:
            for x, col, mean in zip(xs, columns, means):
                if col in reference[label] and np.isfinite(mean):
                    ref_x.append(x)
                    ref_y.append(float(reference[label][col]))
    if ref_x:
        ax.scatter(ref_x, ref_y, marker="D", s=30, color="black", zorder=4, label=reference_label)
        if annotate:
            for x, y in zip(ref_x, ref_y):
                ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(5, 0), ha="left", va="center",
                            fontsize=7, fontstyle="italic")
        shown += ref_y
    ax.set_xticks(positions, list(columns))
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    caption = "bars: our mean (written in the bar); " + spread_label
    if ref_x:
        caption += f"; \u25c6 {reference_label}, value in italics"
    ax.set_xlabel(caption, fontsize=8)
    if shown:
        hi = max(shown)
        if zoom:
            lo = min(shown)
            pad = max(0.15 * (hi - lo), 0.5)
            ax.set_ylim(max(0.0, lo - 2 * pad), hi + 1.5 * pad)
        else:
            ax.set_ylim(0, hi * 1.08)
    lo, hi = ax.get_ylim()
    for xs, means, errs, colour in bars:
        for x, mean, err in zip(xs, means, errs):
            if not np.isfinite(mean):
                continue
            if mean - lo > 0.2 * (hi - lo):  # inside a tall bar, at its base (clear of the error bar), white
                ax.annotate(f"{mean:.2f}", (x, lo + 0.03 * (hi - lo)), ha="center", va="bottom", fontsize=8,
                            color="white", fontweight="bold", rotation=90)
            else:  # a short bar: above its error bar, in the bar's colour
                ax.annotate(f"{mean:.2f}", (x, mean + err), textcoords="offset points", xytext=(0, 3), ha="center",
                            va="bottom", fontsize=7, color=colour, fontweight="bold", rotation=90)
    return finish_figure(fig, save)
