"""predict_image(): image + person boxes -> keypoints in image pixels (SimCC top-down inference).

The geometry is checked against an oracle "model" that knows the true joints of the image and
nothing about ``predict_image``: every image pixel stores its own coordinates (red = x, green = y), so
the oracle reads the affine map of the crop it is given from the pixel values (least squares),
maps the true joints into the crop, and puts one sharp logit peak at ``round(crop * k)`` per axis.
On a mirrored crop it does what a perfect network does: the joint it reports as "left" is the
person's right joint (a mirrored person's right side looks like a left side), so only the right
left/right pairs and the exact k - 1 bin shift bring the flip-test result back onto the plain one.
Its peaks on mirrored crops are a little higher than on plain ones, so a misaligned flip test
moves the argmax (rather than producing a tie that the plain peak might win).

The expected image coordinates are computed here with the HRNet box geometry written out by hand
(crop centre <-> box centre, ``scale * 200`` image pixels <-> W crop pixels), not with cdkd code.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import cdkd
from cdkd.models.load import save_checkpoint
from cdkd.models import PoseOutput, build_pose_model
from cdkd.inference import predict_image

pytestmark = pytest.mark.timeout(120)

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# Left/right pairs written out here (COCO keypoint order, MPII joint order).
PAIRS = {
    17: [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)],
    16: [(0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)],
}
IMAGE_H, IMAGE_W = 180, 240
BOXES = np.array([[30.0, 20.0, 80.0, 120.0], [140.0, 40.0, 70.0, 60.0]])  # x, y, w, h


def coordinate_image() -> np.ndarray:
    """RGB uint8 image whose red channel is x, green is y, blue marks 'inside the image' (200)."""
    yy, xx = np.mgrid[0:IMAGE_H, 0:IMAGE_W]
    return np.stack([xx, yy, np.full_like(xx, 200)], axis=-1).astype(np.uint8)


def true_joints(num_joints: int, seed: int = 0) -> np.ndarray:
    """[P, J, 2] joints inside each box, well away from the borders."""
    rng = np.random.default_rng(seed)
    out = []
    for x, y, w, h in BOXES:
        u = rng.uniform(0.1, 0.9, size=(num_joints, 2))
        out.append(np.stack([x + u[:, 0] * w, y + u[:, 1] * h], axis=-1))
    return np.stack(out)


class OracleModel(nn.Module):
    """Knows the true joints; reads the crop's geometry from the coordinate-coded pixels."""

    def __init__(self, joints: np.ndarray, input_size: tuple[int, int], split_ratio: float):
        super().__init__()
        self.joints = joints  # [P, J, 2] image px
        self.input_size = input_size
        self.split_ratio = split_ratio
        self.num_joints = joints.shape[1]
        swap = list(range(self.num_joints))
        for a, b in PAIRS[self.num_joints]:
            swap[a], swap[b] = b, a
        self.swap = swap

    def crop_to_image(self, crop: torch.Tensor) -> np.ndarray:
        """Least-squares affine [2, 3] (crop px -> image px) from one normalised crop [3, H, W]."""
        rgb = (crop.permute(1, 2, 0).double().numpy() * STD + MEAN) * 255.0  # [H, W, 3]
        inside = rgb[..., 2] > 199.0  # bilinear mixes with the black border come out lower
        vv, uu = np.nonzero(inside)
        design = np.stack([uu, vv, np.ones_like(uu)], axis=1).astype(np.float64)  # [n, 3]
        solution, *_ = np.linalg.lstsq(design, rgb[vv, uu, :2], rcond=None)  # [3, 2]
        return solution.T  # [2, 3]

    def forward(self, images: torch.Tensor) -> PoseOutput:
        h, w = self.input_size
        k = self.split_ratio
        bx, by = round(w * k), round(h * k)
        x = torch.zeros(images.shape[0], self.num_joints, bx)
        y = torch.zeros(images.shape[0], self.num_joints, by)
        for i, crop in enumerate(images):
            a = self.crop_to_image(crop)
            centre = a[:, :2] @ np.array([w / 2, h / 2]) + a[:, 2]
            person = int(np.argmin([np.linalg.norm(j.mean(0) - centre) for j in self.joints]))
            joints = self.joints[person]
            peak = 20.0
            if a[0, 0] < 0:  # mirrored crop: report joint j where the person's partner joint is
                joints, peak = joints[self.swap], 22.0
            uv = (joints - a[:, 2]) @ np.linalg.inv(a[:, :2]).T  # [J, 2] crop px
            cx = np.clip(np.rint(uv[:, 0] * k), 0, bx - 1).astype(int)
            cy = np.clip(np.rint(uv[:, 1] * k), 0, by - 1).astype(int)
            x[i, torch.arange(self.num_joints), torch.from_numpy(cx)] = peak
            y[i, torch.arange(self.num_joints), torch.from_numpy(cy)] = peak
        feature = torch.zeros(images.shape[0], self.num_joints, h // 4, w // 4)
        return PoseOutput(x=x, y=y, feature=feature)


def hand_geometry(box: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Box centre and image pixels per crop pixel: aspect fix to W/H, then 1.25 enlargement."""
    x, y, w, h = box
    height, width = input_size
    centre = np.array([x + w / 2, y + h / 2])
    aspect = width / height
    if w < aspect * h:
        w = h * aspect  # the box grows to the model's aspect ratio; w is the side that maps to W
    return centre, 1.25 * w / width


@pytest.mark.parametrize("num_joints,input_size,k", [(17, (64, 48), 2.0), (16, (32, 32), 3.0), (17, (32, 32), 3.0)])
def test_geometry_matches_affine_mapping(num_joints, input_size, k):
    joints = true_joints(num_joints)
    model = OracleModel(joints, input_size, k)
    image = coordinate_image()
    plain = predict_image(image, BOXES, model, flip=False)
    flipped = predict_image(image, BOXES, model, flip=True)
    height, width = input_size
    for p, box in enumerate(BOXES):
        centre, px_per_crop = hand_geometry(box, input_size)
        # crop coordinates of the prediction by the hand-written inverse map: multiples of 1/k
        crop = (plain["keypoints"][p] - centre) / px_per_crop + np.array([width / 2, height / 2])
        np.testing.assert_allclose(crop * k, np.rint(crop * k), atol=1e-6)
        # ... and within half a bin (plus a little for the oracle's fitted map) of the truth
        error = np.abs(plain["keypoints"][p] - joints[p]) / px_per_crop  # crop px
        assert error.max() <= 0.5 / k + 0.05, error.max()
        np.testing.assert_allclose(plain["center"][p], centre, atol=1e-4)
    np.testing.assert_allclose(flipped["keypoints"], plain["keypoints"], atol=1e-9)
    assert plain["scores"].min() > 0.99 and flipped["scores"].min() > 0.99


def test_flip_test_needs_the_right_pairs():
    joints = true_joints(17)
    model = OracleModel(joints, (32, 32), 2.0)
    image = coordinate_image()
    right = predict_image(image, BOXES, model, flip=True)
    no_swap = predict_image(image, BOXES, model, flip=True, flip_pairs=())
    assert right["scores"].min() > 0.99
    paired = sorted(j for pair in PAIRS[17] for j in pair)
    # without the swap, a paired joint averages its own peak with its partner's: two half peaks
    # on each axis (unless the partner happens to share a bin on one axis; the score is the
    # larger of the x and y peaks)
    assert np.mean(no_swap["scores"][:, paired] < 0.6) > 0.75
    assert np.abs(no_swap["keypoints"][:, paired] - right["keypoints"][:, paired]).max() > 1.0
    np.testing.assert_allclose(no_swap["scores"][:, 0], right["scores"][:, 0])


def test_path_and_bgr_array_give_the_same_result(tmp_path):
    joints = true_joints(16, seed=3)
    model = OracleModel(joints, (32, 32), 2.0)
    rgb = coordinate_image()
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    path = tmp_path / "people.png"
    assert cv2.imwrite(str(path), bgr)
    from_path = predict_image(path, BOXES, model)
    from_bgr = predict_image(bgr, BOXES, model, channel_order="bgr")
    from_rgb = predict_image(rgb, BOXES, model)
    np.testing.assert_allclose(from_path["keypoints"], from_rgb["keypoints"])
    np.testing.assert_allclose(from_bgr["keypoints"], from_rgb["keypoints"])


def test_checkpoint_path_and_package_entry(tmp_path):
    torch.manual_seed(0)
    model = build_pose_model("hrnet_w8_tiny", 17, (32, 32), 2.0)
    ckpt = save_checkpoint(tmp_path / "student.pth", model)
    image = np.random.default_rng(0).integers(0, 255, size=(120, 100, 3), dtype=np.uint8)
    boxes = [[10, 10, 50, 80], [40, 30, 40, 60], [0, 0, 100, 120]]
    out = cdkd.predict_image(image, boxes, ckpt)
    again = cdkd.predict_image(image, boxes, model.eval())  # works again after the submodule import
    assert out["keypoints"].shape == (3, 17, 2) and out["scores"].shape == (3, 17)
    np.testing.assert_allclose(out["keypoints"], again["keypoints"])
    # every decoded point lies inside its (enlarged) crop window
    half = out["scale"] * 200 / 2  # [N, 2]
    assert np.all(np.abs(out["keypoints"] - out["center"][:, None]) <= half[:, None] + 1e-6)
    assert model.training is False


def test_model_mode_is_restored():
    model = build_pose_model("hrnet_w8_tiny", 16, (32, 32), 2.0).train()
    predict_image(np.zeros((40, 40, 3), np.uint8), [0, 0, 30, 30], model)
    assert model.training


def test_bad_inputs_give_clear_errors(tmp_path):
    model = OracleModel(true_joints(17), (32, 32), 2.0)
    image = coordinate_image()
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        predict_image(missing, BOXES, model)
    with pytest.raises(ValueError, match="empty"):
        predict_image(image, np.zeros((0, 4)), model)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        predict_image(image, np.zeros((2, 5)), model)
    with pytest.raises(ValueError, match="box 1"):
        predict_image(image, [[0, 0, 10, 10], [5, 5, -3, 10]], model)
    with pytest.raises(ValueError, match="uint8"):
        predict_image(image.astype(np.float32), BOXES, model)
    with pytest.raises(ValueError, match="channel_order"):
        predict_image(image, BOXES, model, channel_order="bgra")
    with pytest.raises(TypeError, match="checkpoint"):
        predict_image(image, BOXES, 42)
    five = build_pose_model("hrnet_w8_tiny", 5, (32, 32), 2.0)
    with pytest.raises(ValueError, match="flip_pairs"):
        predict_image(image, BOXES, five)
    assert predict_image(image, BOXES, five, flip=False)["keypoints"].shape == (2, 5, 2)
    with pytest.raises(ValueError, match="flip pair"):
        predict_image(image, BOXES, five, flip_pairs=[(1, 7)])
