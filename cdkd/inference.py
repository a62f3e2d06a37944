"""Inference on one image: person boxes in, keypoints in image pixels out.

The top-down test-time pipeline of SimCC (Li et al., ECCV 2022), which a CDKD student (Gu et
al.) runs unchanged, since distillation adds nothing at inference:

1. each box ``(x, y, w, h)`` becomes a centre and a scale with the model's aspect ratio and the
   1.25 enlargement (:func:`cdkd.data.transforms.box_to_center_scale`);
2. the image is warped to the model's input size (:func:`cdkd.data.transforms.get_affine_transform`,
   ``cv2.warpAffine`` bilinear, as in training) and ImageNet-normalised
   (:func:`cdkd.data.topdown.normalize`);
3. the model gives x and y logits; with ``flip`` the mirrored crop is run too and its softmaxes are
   brought back with :func:`cdkd.codec.flip_back` (left/right pairs of COCO for J = 17, of MPII
   for J = 16; shift ``'exact'``: k - 1 bins) and averaged with the plain ones;
4. :func:`cdkd.codec.decode` takes the argmax / k (crop pixels) and the confidence, and
   :func:`cdkd.data.transforms.transform_preds` maps the crop pixels back to the image.

Nothing is cached between calls: to predict on many images, load the model once
(:func:`cdkd.models.load.load_model`) and pass it as ``checkpoint``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from cdkd.codec import decode, flip_back
from cdkd.data.topdown import normalize, read_image
from cdkd.data.transforms import box_to_center_scale, get_affine_transform, transform_preds
from cdkd.joints import meta_for

CHANNEL_ORDERS = ("rgb", "bgr")


def default_flip_pairs(num_joints: int) -> tuple[tuple[int, int], ...]:
    """Left/right joint pairs of the standard skeletons: COCO (J = 17) or MPII (J = 16).

    Raises:
        ValueError: for any other J (pass ``flip_pairs`` to :func:`predict_image`, or ``flip=False``).
    """
    meta = meta_for(num_joints=num_joints)
    if meta is not None:
        return meta.flip_pairs
    raise ValueError(
        f"flip test needs the left/right joint pairs: known for J=17 (COCO) and J=16 (MPII), but the "
        f"model has J={num_joints}; pass flip_pairs=... or flip=False"
    )


def _checked_pairs(flip_pairs, num_joints: int) -> tuple[tuple[int, int], ...]:
    """The given pairs (checked against J) or :func:`default_flip_pairs`."""
    if flip_pairs is None:
        return default_flip_pairs(num_joints)
    pairs = tuple((int(a), int(b)) for a, b in flip_pairs)
    bad = [p for p in pairs if not (0 <= p[0] < num_joints and 0 <= p[1] < num_joints)]
    if bad:
        raise ValueError(f"flip pair {bad[0]} refers to a joint outside 0..{num_joints - 1} (the model has J={num_joints})")
    return pairs


def _load_image(image, channel_order: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] from a path or an array (see :func:`predict_image`)."""
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image file not found: {image}")
        return read_image(str(image))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a file path or an HxWx3 uint8 array; got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image array must be HxWx3 uint8; got shape {image.shape} and dtype {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image array is empty ({image.shape[0]}x{image.shape[1]} pixels)")
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}; got {channel_order!r}")
    return image[..., ::-1] if channel_order == "bgr" else image


def _check_boxes(boxes) -> np.ndarray:
    """[N, 4] float64 xywh boxes with positive sizes, or a ValueError naming the problem."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1 and array.shape[0] == 4:
        array = array[None]  # one box
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] (x, y, w, h) in image pixels; got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("boxes is empty: give at least one person box (x, y, w, h)")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1) | (array[:, 2] <= 0) | (array[:, 3] <= 0))
    if bad.size:
        raise ValueError(f"box {int(bad[0])} = {array[bad[0]].tolist()} needs finite values and a positive width and height")
    return array


def _model_settings(model: nn.Module) -> tuple[int, int, float]:
    """(H, W, k) of a pose model, or a TypeError naming the missing attribute."""
    for name in ("input_size", "split_ratio"):
        if not hasattr(model, name):
            raise TypeError(f"predict_image needs a SimCC pose model with '{name}'; {type(model).__name__} has none")
    h, w = (int(s) for s in model.input_size)
    return h, w, float(model.split_ratio)


def _resolve_model(checkpoint, device: str | torch.device) -> nn.Module:
    if isinstance(checkpoint, nn.Module):
        return checkpoint
    if isinstance(checkpoint, (str, Path)):
        from cdkd.models.load import load_model

        return load_model(checkpoint, map_location=device)
    raise TypeError(f"checkpoint must be a file path or a pose model; got {type(checkpoint).__name__}")


def crop_persons(image: np.ndarray, boxes: np.ndarray, input_size: Sequence[int], enlarge: float = 1.25):
    """Centre, scale and normalised crop of every box.

    Args:
        image: RGB uint8 [H_img, W_img, 3].
        boxes: [N, 4] (x, y, w, h) in image pixels.
        input_size: (H, W) of the model input.
        enlarge: box enlargement (1.25 in HRNet/SimCC/CDKD).
    Returns:
        crops [N, 3, H, W] float32 tensor, centers [N, 2], scales [N, 2] (pixel_std 200).
    """
    h, w = int(input_size[0]), int(input_size[1])
    centers, scales, crops = [], [], []
    for box in boxes:
        center, scale = box_to_center_scale(box, aspect_ratio=w / h, enlarge=enlarge)
        matrix = get_affine_transform(center, scale, 0.0, (h, w))
        crop = cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR)  # [h, w, 3]
        centers.append(center)
        scales.append(scale)
        crops.append(normalize(crop))  # [3, h, w]
    return torch.stack(crops), np.stack(centers), np.stack(scales)


@torch.no_grad()
def predict_crops(model: torch.nn.Module, images: torch.Tensor, flip_pairs, flip: bool = True,
                  shift: str = "exact", *, return_logits: bool = False) -> tuple[torch.Tensor, ...]:
    """SimCC keypoints of a batch of person crops, with the flip test (the engine's evaluation too).

    Args:
        model: a pose model returning ``PoseOutput`` (``split_ratio`` attribute).
        images: normalised crops [B, 3, h, w].
        flip_pairs: left/right joint pairs (used when ``flip``).
        flip: average the softmax of the mirrored crop, flipped back (:func:`cdkd.codec.flip_back`).
        shift: flip alignment and order:

            * ``'exact'`` (default): softmax, then flip back and shift the *probabilities* k-1 bins
              (the alignment that is right for any integer k).
            * ``'official'``: the released SimCC/CDKD ``validate``: flip back the *logits*, shift x
              one bin left (the last bin keeps its value), then the softmax, so dropping the first
              bin renormalises the rest. Joint confidences and, near the crop border, coordinates
              differ from ``'exact'``.
        return_logits: also return the plain crop's logits (what the explorer plots).

    Returns:
        (coords [B, J, 2] in crop pixels, scores [B, J]); with ``return_logits`` also the plain
        crop's x [B, J, W*k] and y [B, J, H*k] logits (float32).
    """
    k = model.split_ratio
    out = model(images)
    px, py = out.x.float().softmax(-1), out.y.float().softmax(-1)  # [B, J, W*k], [B, J, H*k]
    if flip:
        mirrored = model(torch.flip(images, dims=[3]))
        mx, my = mirrored.x.float(), mirrored.y.float()
        if shift == "official":  # logits flipped and shifted first, softmax last
            fx, fy = flip_back(mx, my, flip_pairs, k, shift="official")
            fx, fy = fx.softmax(-1), fy.softmax(-1)
        else:
            fx, fy = flip_back(mx.softmax(-1), my.softmax(-1), flip_pairs, k, shift=shift)
        px, py = (px + fx) / 2, (py + fy) / 2
    coords, scores = decode(px, py, k, probabilities=True)
    if return_logits:
        return coords, scores, out.x.float(), out.y.float()
    return coords, scores


def predict_image(
    image,
    boxes,
    checkpoint,
    device: str | torch.device = "cpu",
    flip: bool = True,
    *,
    channel_order: str = "rgb",
    flip_pairs: Sequence[Sequence[int]] | None = None,
    flip_shift: str = "exact",
    enlarge: float = 1.25,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Keypoints of the persons in ``boxes``, in the pixels of ``image``.

    Args:
        image: a file path (read with OpenCV and converted to RGB), or an HxWx3 uint8 array whose
            channels are in ``channel_order``: RGB by default, as the models were trained
            (``PIL``/``imageio`` arrays); pass ``channel_order='bgr'`` for an array from
            ``cv2.imread``.
        boxes: [N, 4] person boxes (x, y, w, h) in image pixels (COCO format); a single box may
            be given as [4].
        checkpoint: a cdkd checkpoint path, or a loaded pose model (anything with ``input_size``
            (H, W) and ``split_ratio`` returning ``.x`` [B, J, W*k] and ``.y`` [B, J, H*k]). A
            model is used on its current device and put in eval mode for the call.
        device: where a checkpoint loaded from a path runs.
        flip: flip test (average with the mirrored crop's prediction).
        channel_order: 'rgb' or 'bgr', for array images.
        flip_pairs: left/right joint pairs; default COCO for J = 17, MPII for J = 16.
        flip_shift: 'exact' (k - 1 bins, right for any integer k) or 'official' (one bin, the
            released SimCC/CDKD code; exact only for k = 2); see :func:`cdkd.codec.flip_back`.
        enlarge: box enlargement before cropping.
        batch_size: crops per forward pass.
    Returns:
        ``{'keypoints': [N, J, 2] float64 (x, y) image pixels, 'scores': [N, J] float32
        confidences (the larger of the x and y peak probabilities), 'center': [N, 2], 'scale':
        [N, 2]}`` (the box as centre and scale / 200 after the aspect fix and enlargement), and
        ``'in_image'``: [N] bool, False for a box wholly outside the image (its scores are 0).
    Raises:
        FileNotFoundError: the image file does not exist (named).
        ValueError: empty boxes, boxes not [N, 4], a box with non-positive size (its index named),
            an array image that is not HxWx3 uint8 or has no pixels, ``batch_size`` < 1, a bad
            ``enlarge`` or ``flip_shift``, or flip test with unknown flip pairs.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if isinstance(enlarge, bool) or not isinstance(enlarge, (int, float)) or not np.isfinite(enlarge) or enlarge <= 0:
        raise ValueError(f"enlarge must be a finite number > 0; got {enlarge!r}")
    if flip_shift not in ("exact", "official"):
        raise ValueError(f"flip_shift must be 'exact' or 'official'; got {flip_shift!r}")
    boxes = _check_boxes(boxes)
    rgb = _load_image(image, channel_order)
    in_image = _boxes_in_image(boxes, rgb.shape[:2])
    model = _resolve_model(checkpoint, device)
    h, w, k = _model_settings(model)
    params = list(model.parameters())
    run_device = params[0].device if params else torch.device(device)
    crops, centers, scales = crop_persons(rgb, boxes, (h, w), enlarge)  # [N, 3, h, w]

    was_training = model.training
    model.eval()
    try:
        coords, scores = [], []
        pairs = None
        for start in range(0, len(crops), max(1, int(batch_size))):
            batch = crops[start:start + batch_size].to(run_device)  # [B, 3, h, w]
            if flip and pairs is None:
                pairs = _checked_pairs(flip_pairs, model.num_joints)
            crop_xy, conf = predict_crops(model, batch, pairs, flip, flip_shift)  # [B, J, 2] crop px, [B, J]
            coords.append(crop_xy.cpu().numpy())
            scores.append(conf.cpu().numpy())
    finally:
        model.train(was_training)
    crop_xy = np.concatenate(coords)  # [N, J, 2]
    keypoints = transform_preds(crop_xy, centers, scales, (h, w))  # [N, J, 2] image px
    scores = np.concatenate(scores).astype(np.float32)
    scores[~in_image] = 0.0  # a box wholly outside the image shows no person
    return {"keypoints": keypoints, "scores": scores, "center": centers, "scale": scales, "in_image": in_image}


def _boxes_in_image(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """[N] bool: does the box (x, y, w, h) overlap the image ``[0, W) x [0, H)`` at all."""
    height, width = image_hw
    x, y, w, h = boxes.T
    return (x < width) & (x + w > 0) & (y < height) & (y + h > 0)
