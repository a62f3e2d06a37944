"""The SimCC codec: classification targets, decoding and flip-back (Li et al., SimCC, ECCV 2022).

CDKD (both teacher and student) predicts each joint's x and y as two 1-D classifications over
``W*k`` and ``H*k`` bins, where ``k`` is the splitting factor (``split_ratio``; the paper's MPII
64x64 setting uses k=3). This module holds the three pure functions around those bins:

- :func:`encode`: crop-pixel joints -> class indices and weights (SimCC's ``simdr`` targets).
- :func:`decode`: logits (or probabilities) -> crop-pixel coordinates and confidences.
- :func:`flip_back`: the prediction for a horizontally flipped crop -> the un-flipped frame.

Coordinates follow the HRNet/SimCC convention: pixel ``i`` has its centre at coordinate ``i``,
so a horizontal flip maps ``x -> W - 1 - x``, and bin ``b`` stands for ``x = b / k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cdkd.joints import flip_permutation


def num_bins(size: int, split_ratio: float, axis: str = "W") -> int:
    """Number of SimCC classes along one axis, ``size * k``, which must be an integer.

    Args:
        size: the input side in pixels (W for x, H for y).
        split_ratio: the splitting factor k.
        axis: 'W' or 'H', only used in the error message.
    Returns:
        ``size * k`` as an int.
    Raises:
        ValueError: if ``size * k`` is not a positive integer (the official code would silently
        truncate it with ``int()``, making bins and targets disagree).
    """
    bins = size * split_ratio
    if split_ratio <= 0 or abs(bins - round(bins)) > 1e-6:
        raise ValueError(
            f"split_ratio k={split_ratio} gives {axis}*k = {size}*{split_ratio} = {bins}, not a positive "
            "integer number of SimCC classes; choose k so that input size times k is an integer"
        )
    return round(bins)


def encode(
    joints: np.ndarray,
    visible: np.ndarray,
    input_size: Sequence[int],
    split_ratio: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SimCC targets: the class of each coordinate and the joint's loss weight.

    The class is ``round(x * k)`` with NumPy's round-half-to-even (SimCC uses ``np.around``).
    A class outside ``[0, W*k)`` (or ``[0, H*k)``) is clamped into range and the joint's weight
    is set to 0, exactly as SimCC's ``filter_target_simdr``.

    Args:
        joints: [J, 2] (or [J, >=2]) joint coordinates in crop pixels (x, y).
        visible: [J] visibility; a joint with ``visible <= 0`` gets weight 0.
        input_size: (H, W) of the crop.
        split_ratio: k, classes per pixel.

    Returns:
        target_x: [J] int64 class index along x, in ``[0, W*k)``.
        target_y: [J] int64 class index along y, in ``[0, H*k)``.
        weight: [J] float32, 1 for visible joints whose classes fall inside the crop, else 0.
    """
    joints = np.asarray(joints, dtype=np.float64)
    visible = np.asarray(visible, dtype=np.float64).reshape(-1)
    if joints.ndim != 2 or joints.shape[1] < 2 or joints.shape[0] != visible.shape[0]:
        raise ValueError(f"encode expects joints [J,2] and visible [J]; got {joints.shape} and {visible.shape}")
    height, width = int(input_size[0]), int(input_size[1])
    bins_x, bins_y = num_bins(width, split_ratio, "W"), num_bins(height, split_ratio, "H")
    cls = np.around(joints[:, :2] * split_ratio)  # [J, 2], half-to-even
    inside = (cls[:, 0] >= 0) & (cls[:, 0] < bins_x) & (cls[:, 1] >= 0) & (cls[:, 1] < bins_y)
    weight = ((visible > 0) & inside).astype(np.float32)
    target_x = np.clip(cls[:, 0], 0, bins_x - 1).astype(np.int64)
    target_y = np.clip(cls[:, 1], 0, bins_y - 1).astype(np.int64)
    return target_x, target_y, weight


def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    """Tensor view of ``x`` and whether it was a NumPy array (to convert the result back)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), True
    return x, False


def decode(
    x_logits,
    y_logits,
    split_ratio: float,
    probabilities: bool = False,
):
    """Coordinates and confidences from SimCC outputs (argmax / k, no sub-bin refinement).

    The confidence of a joint is the larger of the two peak softmax probabilities, as SimCC's
    ``validate_simdr`` does (``mask = max_x < max_y; max_x[mask] = max_y[mask]``).

    Args:
        x_logits: [B, J, W*k] logits (or probabilities, see ``probabilities``), tensor or array.
        y_logits: [B, J, H*k] likewise.
        split_ratio: k.
        probabilities: True when the inputs are already probabilities (e.g. the flip-test
            average of two softmaxes); no softmax is applied then.

    Returns:
        coords: [B, J, 2] float32 (x, y) in crop pixels.
        scores: [B, J] float32 confidences.
        Both are tensors for tensor inputs and arrays for array inputs.
    """
    px, was_numpy = _as_tensor(x_logits)
    py, _ = _as_tensor(y_logits)
    px, py = px.float(), py.float()
    if not probabilities:
        px, py = F.softmax(px, dim=-1), F.softmax(py, dim=-1)
    peak_x, idx_x = px.max(dim=-1)  # [B, J]
    peak_y, idx_y = py.max(dim=-1)  # [B, J]
    coords = torch.stack([idx_x, idx_y], dim=-1).float() / split_ratio  # [B, J, 2]
    scores = torch.maximum(peak_x, peak_y)  # [B, J]
    if was_numpy:
        return coords.numpy(), scores.numpy()
    return coords, scores


def flip_shift_bins(split_ratio: float, shift: str) -> int:
    """How many bins :func:`flip_back` moves the x axis to the left.

    A point at crop x in the flipped crop is at ``W - 1 - x`` in the original one, i.e. at bin
    ``W*k - k - b`` for flipped bin ``b``; reversing the bin axis gives ``W*k - 1 - b``, which is
    ``k - 1`` bins too far right. ``'exact'`` removes all ``k - 1`` bins (needs an integer k);
    ``'official'`` moves one bin like SimCC's ``SHIFT_HEATMAP``, exact only for k = 2.
    """
    if shift == "official":
        return 1
    if shift == "exact":
        k_minus_one = split_ratio - 1.0
        if abs(k_minus_one - round(k_minus_one)) > 1e-9:
            raise ValueError(f"flip_back shift='exact' needs an integer split ratio; got k={split_ratio}")
        return int(round(k_minus_one))
    if shift == "none":
        return 0
    raise ValueError(f"flip_back shift must be 'exact', 'official' or 'none'; got {shift!r}")


def _shift_left(t: torch.Tensor, bins: int) -> torch.Tensor:
    """Move the last axis ``bins`` places left; the vacated right end repeats the last value.

    Repeating the edge is what SimCC's in-place ``out[..., :-1] = out[..., 1:]`` leaves behind. It
    is not neutral: on probabilities the row no longer sums to one (the first bin's mass is lost and
    the last bin's counted twice); on logits (the released order, see
    :func:`cdkd.inference.predict_crops`) the softmax that follows renormalises the rest.
    """
    if bins <= 0:
        return t
    edge = t[..., -1:].expand(*t.shape[:-1], bins)
    return torch.cat([t[..., bins:], edge], dim=-1)


def flip_back(
    x_out,
    y_out,
    flip_pairs: Sequence[Sequence[int]],
    split_ratio: float,
    shift: str = "exact",
):
    """Bring the SimCC output of a horizontally flipped crop back to the original frame.

    Steps: reverse the x bins, swap the left/right joints of every flip pair (x and y), then
    shift the x bins left (see :func:`flip_shift_bins`; the vacated end repeats the edge value).

    Args:
        x_out: [B, J, W*k] logits or probabilities for the flipped input (tensor or array).
        y_out: [B, J, H*k] likewise.
        flip_pairs: pairs (left, right) of joint indices.
        split_ratio: k.
        shift: ``'exact'`` (k-1 bins), ``'official'`` (1 bin, the released code) or ``'none'``.

    Returns:
        x_back: [B, J, W*k] and y_back: [B, J, H*k], same type as the inputs.
    """
    tx, was_numpy = _as_tensor(x_out)
    ty, _ = _as_tensor(y_out)
    index = torch.as_tensor(flip_permutation(flip_pairs, tx.shape[-2]), device=tx.device)
    x_back = tx.flip(-1).index_select(-2, index)  # [B, J, W*k]
    y_back = ty.index_select(-2, index)  # [B, J, H*k]
    x_back = _shift_left(x_back, flip_shift_bins(split_ratio, shift))
    if was_numpy:
        return x_back.numpy(), y_back.numpy()
    return x_back, y_back
