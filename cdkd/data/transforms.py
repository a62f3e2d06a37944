"""Top-down crop geometry of HRNet/SimCC, used for the CDKD student and teacher crops.

CDKD (Sec. III, released code) warps the *same* original image twice per sample, once to the
teacher resolution (256x256) and once to the student's (32x32 or 64x64), with the same centre,
scale, rotation and flip. Both crops come from :func:`get_affine_transform`, which maps the
box centre to the crop centre ``(W/2, H/2)`` and scales isotropically by ``W / (scale_w * 200)``.
Hence a point lands at exactly ``m`` times its student coordinate in an ``m`` times larger
teacher crop (see ``topdown.py`` for the pixel-centre remark).

Conventions: sizes are (H, W) like ``cdkd.config`` (``input_size``); points are (x, y); pixel
``i`` has its centre at coordinate ``i`` (cv2 and HRNet), so a flip maps ``x -> width - 1 - x``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from cdkd.joints import flip_permutation

PIXEL_STD = 200.0


def fit_aspect(w: float, h: float, aspect_ratio: float) -> tuple[float, float]:
    """Extend the shorter side of a ``w`` x ``h`` box so that ``w / h == aspect_ratio`` (HRNet).

    Args:
        w, h: box width and height in pixels.
        aspect_ratio: model input W / H.

    Returns:
        (w, h) with the model's aspect ratio; the longer side is kept.
    """
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return w, h


def box_to_center_scale(
    box: Sequence[float],
    aspect_ratio: float,
    enlarge: float = 1.25,
    pixel_std: float = PIXEL_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """HRNet's ``_xywh2cs``: a box -> centre and scale with the model's aspect ratio.

    The shorter side is extended so that ``w / h == aspect_ratio``, then both sides are
    divided by ``pixel_std`` and multiplied by ``enlarge``.

    Args:
        box: (x, y, w, h) in image pixels.
        aspect_ratio: model input W / H.
        enlarge: box enlargement (1.25 in HRNet/SimCC/CDKD).
        pixel_std: 200, the unit of ``scale``.

    Returns:
        center: [2] float32 (x, y); scale: [2] float32 (w, h) / pixel_std.
    """
    x, y, w, h = (float(v) for v in box[:4])
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    w, h = fit_aspect(w, h, aspect_ratio)
    scale = np.array([w / pixel_std, h / pixel_std], dtype=np.float32) * enlarge
    return center, scale


def _rotate(point: np.ndarray, rot_rad: float) -> np.ndarray:
    sn, cs = np.sin(rot_rad), np.cos(rot_rad)
    return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs], dtype=np.float64)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The point completing a right angle at ``b`` (``a - b`` turned by 90 degrees)."""
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=np.float64)


def get_affine_transform(
    center: Sequence[float],
    scale: Sequence[float] | float,
    rot: float,
    output_size: Sequence[int],
    inv: bool = False,
) -> np.ndarray:
    """The 2x3 affine matrix from an image box to a crop (HRNet/SimCC geometry).

    The box centre maps to the crop centre ``(W/2, H/2)``; the box width ``scale[0] * 200``
    maps to the crop width ``W`` (the box height follows with the same factor, so boxes must
    already have the crop's aspect ratio). A positive ``rot`` turns the box's "up" direction
    clockwise on screen (x right, y down), so the content appears turned counter-clockwise by
    ``rot`` degrees in the crop, as in the released code.

    Args:
        center: (x, y) box centre in image pixels.
        scale: (w, h) / 200, or a single number for a square box.
        rot: rotation in degrees.
        output_size: (H, W) of the crop, the ``cdkd.config`` ``input_size`` order.
        inv: return the crop -> image matrix instead.

    Returns:
        [2, 3] float64 matrix for ``cv2.warpAffine`` (image -> crop unless ``inv``).
    """
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (2,))
    center = np.asarray(center, dtype=np.float64)
    out_h, out_w = float(output_size[0]), float(output_size[1])
    src_w = scale[0] * PIXEL_STD
    rot_rad = np.pi * rot / 180.0
    src_dir = _rotate(np.array([0.0, src_w * -0.5]), rot_rad)
    dst_dir = np.array([0.0, out_w * -0.5])
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + src_dir
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = dst[0] + dst_dir
    src[2] = _third_point(src[0].astype(np.float64), src[1].astype(np.float64))
    dst[2] = _third_point(dst[0].astype(np.float64), dst[1].astype(np.float64))
    if inv:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def affine_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points.

    Args:
        points: [..., 2] (x, y); extra trailing columns are not allowed (slice them first).
        matrix: [2, 3].

    Returns:
        [..., 2] float64 transformed points.
    """
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def flip_matrix(width: int) -> np.ndarray:
    """The 2x3 matrix of a horizontal image flip, ``x -> width - 1 - x``."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of ``outer(inner(p))``."""
    a = np.vstack([outer, [0.0, 0.0, 1.0]])
    b = np.vstack([inner, [0.0, 0.0, 1.0]])
    return (a @ b)[:2]


def fliplr_joints(joints: np.ndarray, width: int, flip_pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Mirror joints of an image of ``width`` pixels and swap left/right (HRNet ``fliplr_joints``).

    Args:
        joints: [J, C] with x in column 0 (any further columns, e.g. y and visibility, follow
            their joint through the swap).
        width: image width in pixels.
        flip_pairs: (left, right) index pairs.

    Returns:
        [J, C] new array.
    """
    out = np.array(joints, dtype=np.float64, copy=True)
    out[:, 0] = width - 1 - out[:, 0]
    return out[flip_permutation(flip_pairs, len(out))]


def half_body_transform(
    joints: np.ndarray,
    visible: np.ndarray,
    upper_body_ids: Sequence[int],
    aspect_ratio: float,
    rng: np.random.Generator,
    pixel_std: float = PIXEL_STD,
) -> tuple[np.ndarray, np.ndarray] | None:
    """HRNet's half-body augmentation: a box around the visible upper or lower body.

    As in the released code, the upper body is chosen when ``randn() < 0.5`` (probability about
    0.69) and it has more than two visible joints, otherwise the lower body if it has more than
    two; the box is the joints' extent with the model aspect ratio, enlarged 1.5 times.

    Args:
        joints: [J, >=2] image coordinates.
        visible: [J] visibility.
        upper_body_ids: joint indices of the upper body.
        aspect_ratio: model input W / H.
        rng: random generator.

    Returns:
        (center [2], scale [2]) float32, or None when fewer than two joints qualify.
    """
    upper_set = {int(i) for i in upper_body_ids}
    vis = np.asarray(visible).reshape(-1) > 0
    upper = [joints[j, :2] for j in range(len(vis)) if vis[j] and j in upper_set]
    lower = [joints[j, :2] for j in range(len(vis)) if vis[j] and j not in upper_set]
    if rng.standard_normal() < 0.5 and len(upper) > 2:
        selected = upper
    else:
        selected = lower if len(lower) > 2 else upper
    if len(selected) < 2:
        return None
    pts = np.asarray(selected, dtype=np.float32)
    center = pts.mean(axis=0)
    w, h = (pts.max(axis=0) - pts.min(axis=0)).astype(np.float64)
    w, h = fit_aspect(w, h, aspect_ratio)
    scale = np.array([w / pixel_std, h / pixel_std], dtype=np.float32) * 1.5
    return center.astype(np.float32), scale


@dataclass
class AugmentParams:
    """Training augmentation of HRNet/SimCC (defaults: the MPII settings of the paper)."""

    scale_factor: float = 0.25
    rotation_factor: float = 30.0
    rot_prob: float = 0.6
    flip: bool = True
    half_body_prob: float = 0.0
    num_joints_half_body: int = 8


@dataclass
class Augmentation:
    """One sampled augmentation, applied identically to the student and teacher crops."""

    center: np.ndarray
    scale: np.ndarray
    rotation: float
    flip: bool


def sample_augmentation(
    center: np.ndarray,
    scale: np.ndarray,
    joints: np.ndarray,
    visible: np.ndarray,
    params: AugmentParams,
    upper_body_ids: Sequence[int],
    aspect_ratio: float,
    rng: np.random.Generator,
) -> Augmentation:
    """Draw HRNet's augmentation for one person (order: half-body, scale, rotation, flip).

    - half-body with probability ``half_body_prob`` when more than ``num_joints_half_body``
      joints are visible;
    - scale times ``clip(1 + sf * N(0,1), 1 - sf, 1 + sf)``;
    - rotation ``clip(rf * N(0,1), -2 rf, 2 rf)`` degrees with probability ``rot_prob``, else 0;
    - horizontal flip with probability 0.5 when ``flip``.

    The centre returned is in the *unflipped* image; :func:`crop_matrix` applies the flip.

    Returns:
        :class:`Augmentation`.
    """
    center = np.asarray(center, dtype=np.float32).copy()
    scale = np.asarray(scale, dtype=np.float32).copy()
    vis = np.asarray(visible).reshape(-1)
    enough = params.half_body_prob > 0 and vis.sum() > params.num_joints_half_body
    if enough and rng.random() < params.half_body_prob:
        half = half_body_transform(joints, vis, upper_body_ids, aspect_ratio, rng)
        if half is not None:
            center, scale = half
    sf, rf = params.scale_factor, params.rotation_factor
    scale = scale * np.float32(np.clip(rng.standard_normal() * sf + 1.0, 1.0 - sf, 1.0 + sf))
    rotation = 0.0
    if rng.random() <= params.rot_prob:
        rotation = float(np.clip(rng.standard_normal() * rf, -2.0 * rf, 2.0 * rf))
    flip = bool(params.flip and rng.random() <= 0.5)
    return Augmentation(center=center, scale=scale, rotation=rotation, flip=flip)


def crop_matrix(
    center: np.ndarray,
    scale: np.ndarray,
    rotation: float,
    flip: bool,
    image_width: int,
    output_size: Sequence[int],
) -> np.ndarray:
    """Image -> crop matrix including an optional horizontal flip of the whole image.

    Equivalent to the released code, which flips the image array, mirrors the centre
    (``c_x -> width - 1 - c_x``) and then warps: here the flip is folded into the matrix so
    the decoded image is never copied.

    Args:
        center, scale, rotation: the (unflipped) box and rotation in degrees.
        flip: mirror the image first.
        image_width: width of the original image.
        output_size: (H, W) of the crop.

    Returns:
        [2, 3] matrix for ``cv2.warpAffine`` on the original (unflipped) image.
    """
    if not flip:
        return get_affine_transform(center, scale, rotation, output_size)
    mirrored = np.array([image_width - 1 - center[0], center[1]], dtype=np.float64)
    warp = get_affine_transform(mirrored, scale, rotation, output_size)
    return compose(warp, flip_matrix(image_width))


def transform_preds(
    coords: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    output_size: Sequence[int],
) -> np.ndarray:
    """Map crop-pixel predictions back to the original image (HRNet ``transform_preds``).

    Args:
        coords: [J, 2] or [B, J, 2] (x, y) in crop pixels (extra columns are ignored).
        center: [2] or [B, 2] box centres.
        scale: [2] or [B, 2] box scales.
        output_size: (H, W) of the crop the coordinates live in.

    Returns:
        Same leading shape as ``coords`` with 2 columns, float64 image pixels.
    """
    coords = np.asarray(coords, dtype=np.float64)[..., :2]
    if coords.ndim == 2:
        inv = get_affine_transform(center, scale, 0.0, output_size, inv=True)
        return affine_points(coords, inv)
    center = np.asarray(center, dtype=np.float64).reshape(-1, 2)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1, 2)
    out = np.empty_like(coords)
    for b in range(coords.shape[0]):
        inv = get_affine_transform(center[b], scale[b], 0.0, output_size, inv=True)
        out[b] = affine_points(coords[b], inv)
    return out
