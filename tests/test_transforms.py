"""Crop geometry: affine round trips, flips, half-body, augmentation, student/teacher crops."""

import cv2
import numpy as np
import pytest

from cdkd.joints import COCO_META, MPII_META
from cdkd.data.transforms import (
    AugmentParams,
    affine_points,
    box_to_center_scale,
    crop_matrix,
    fliplr_joints,
    get_affine_transform,
    half_body_transform,
    sample_augmentation,
    transform_preds,
)


def blob_image(points, shape=(240, 320), sigma=2.0):
    """Grey image with a Gaussian blob at each (x, y)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return (255 * img / img.max()).astype(np.float32)


def centroid(img):
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    weight = np.clip(img - 0.05 * img.max(), 0, None)
    return np.array([(xx * weight).sum(), (yy * weight).sum()]) / weight.sum()


def test_box_to_center_scale_matches_hrnet_rule():
    c, s = box_to_center_scale([10, 20, 100, 50], aspect_ratio=1.0)
    np.testing.assert_allclose(c, [60, 45])
    np.testing.assert_allclose(s, [100 / 200 * 1.25, 100 / 200 * 1.25])  # h raised to w
    c, s = box_to_center_scale([0, 0, 30, 120], aspect_ratio=0.75, enlarge=1.0)
    np.testing.assert_allclose(s, [90 / 200, 120 / 200])  # w raised to 0.75 h


def test_affine_round_trip_seeded():
    rng = np.random.default_rng(0)
    for _ in range(50):
        center = rng.uniform(0, 640, 2)
        scale = rng.uniform(0.2, 3.0) * np.ones(2)
        rot = rng.uniform(-60, 60)
        size = (int(rng.choice([32, 64, 256])),) * 2
        fwd = get_affine_transform(center, scale, rot, size)
        inv = get_affine_transform(center, scale, rot, size, inv=True)
        pts = rng.uniform(0, 640, (17, 2))
        back = affine_points(affine_points(pts, fwd), inv)
        assert np.abs(back - pts).max() < 1e-3
        # centre goes to the crop centre, box width to the crop width
        np.testing.assert_allclose(affine_points(center[None], fwd)[0], [size[1] / 2, size[0] / 2], atol=1e-4)
        if rot == 0:
            np.testing.assert_allclose(fwd[0, 0], size[1] / (scale[0] * 200), rtol=1e-5)


def test_keypoints_survive_crop_and_inverse_within_half_pixel():
    """Image content: a blob at a joint lands where the matrix says, and maps back."""
    rng = np.random.default_rng(1)
    for _ in range(12):
        point = rng.uniform([100, 80], [220, 160])
        center = point + rng.uniform(-20, 20, 2)
        scale = np.full(2, rng.uniform(0.25, 0.6))
        rot = float(rng.uniform(-45, 45)) if _ % 2 else 0.0
        size = (64, 64)
        matrix = get_affine_transform(center, scale, rot, size)
        # blob size ~ 2.5 crop px whatever the zoom
        sigma = 2.5 * scale[0] * 200 / size[1]
        crop = cv2.warpAffine(blob_image([point], sigma=sigma), matrix, (size[1], size[0]), flags=cv2.INTER_LINEAR)
        found = centroid(crop)
        expected = affine_points(point[None], matrix)[0]
        assert np.abs(found - expected).max() < 0.5
        if rot == 0:  # evaluation crops are unrotated: HRNet's transform_preds
            back = transform_preds(found[None], center, scale, size)[0]
        else:
            back = affine_points(found[None], get_affine_transform(center, scale, rot, size, inv=True))[0]
        pixels_per_crop_px = scale[0] * 200 / size[1]
        assert np.abs(back - point).max() < 0.5 * pixels_per_crop_px


def test_transform_preds_batched_equals_single():
    rng = np.random.default_rng(2)
    coords = rng.uniform(0, 64, (3, 16, 2))
    centers = rng.uniform(100, 300, (3, 2))
    scales = rng.uniform(0.5, 2, (3, 2))
    batched = transform_preds(coords, centers, scales, (64, 64))
    for b in range(3):
        np.testing.assert_allclose(batched[b], transform_preds(coords[b], centers[b], scales[b], (64, 64)))


@pytest.mark.parametrize("meta", [COCO_META, MPII_META], ids=["coco", "mpii"])
def test_fliplr_joints_mirrors_and_swaps(meta):
    rng = np.random.default_rng(3)
    nj = meta.num_joints
    joints = np.concatenate([rng.uniform(0, 99, (nj, 2)), rng.integers(0, 3, (nj, 1))], 1)
    flipped = fliplr_joints(joints, 100, meta.flip_pairs)
    for a, b in meta.flip_pairs:
        np.testing.assert_allclose(flipped[a], [99 - joints[b, 0], joints[b, 1], joints[b, 2]])
        np.testing.assert_allclose(flipped[b], [99 - joints[a, 0], joints[a, 1], joints[a, 2]])
    paired = {i for p in meta.flip_pairs for i in p}
    for i in set(range(nj)) - paired:
        np.testing.assert_allclose(flipped[i], [99 - joints[i, 0], joints[i, 1], joints[i, 2]])
    np.testing.assert_allclose(fliplr_joints(flipped, 100, meta.flip_pairs), joints)
    names = meta.joint_names

    def strip(name):
        return name.replace("left_", "").replace("right_", "").replace("l_", "").replace("r_", "")

    for a, b in meta.flip_pairs:  # the pairs really are left/right of the same joint
        assert strip(names[a]) == strip(names[b]) and names[a] != names[b]


def test_flip_folded_into_matrix_equals_flipping_the_image():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (5, 5), 1.5)
    center, scale, rot = np.array([70.0, 60.0]), np.array([0.4, 0.4]), 17.0
    ours = cv2.warpAffine(image, crop_matrix(center, scale, rot, True, 160, (64, 64)), (64, 64))
    mirrored = np.ascontiguousarray(image[:, ::-1])
    released = cv2.warpAffine(mirrored, get_affine_transform([159 - 70.0, 60.0], scale, rot, (64, 64)), (64, 64))
    assert np.abs(ours.astype(int) - released.astype(int)).max() <= 1


def test_half_body_transform():
    rng = np.random.default_rng(5)
    joints = np.zeros((16, 2))
    joints[MPII_META.upper_body_ids, :] = rng.uniform(100, 150, (9, 2))
    joints[:7] = rng.uniform(200, 260, (7, 2))
    visible = np.ones(16)
    for _ in range(10):
        center, scale = half_body_transform(joints, visible, MPII_META.upper_body_ids, 1.0, rng)
        upper = np.allclose(center, joints[list(MPII_META.upper_body_ids)].mean(0), atol=1e-4)
        lower = np.allclose(center, joints[:7].mean(0), atol=1e-4)
        assert upper or lower
        part = joints[list(MPII_META.upper_body_ids)] if upper else joints[:7]
        side = (part.max(0) - part.min(0)).max()
        np.testing.assert_allclose(scale, [side / 200 * 1.5] * 2, rtol=1e-5)
    only_two = np.zeros(16)
    only_two[[0, 12]] = 1
    assert half_body_transform(joints, only_two, MPII_META.upper_body_ids, 1.0, rng) is None


def test_sample_augmentation_ranges_and_rates():
    rng = np.random.default_rng(6)
    params = AugmentParams(scale_factor=0.25, rotation_factor=30, rot_prob=0.6, flip=True)
    base = np.array([1.0, 1.0], dtype=np.float32)
    draws = [
        sample_augmentation(np.zeros(2), base, np.zeros((16, 2)), np.ones(16), params, (), 1.0, rng)
        for _ in range(2000)
    ]
    mult = np.array([d.scale[0] for d in draws])
    rots = np.array([d.rotation for d in draws])
    flips = np.array([d.flip for d in draws])
    assert mult.min() >= 0.75 - 1e-6 and mult.max() <= 1.25 + 1e-6
    assert np.abs(rots).max() <= 60 + 1e-9
    assert 0.55 < (rots != 0).mean() < 0.65
    assert 0.45 < flips.mean() < 0.55
    none = AugmentParams(scale_factor=0.0, rotation_factor=30, rot_prob=0.0, flip=False)
    d = sample_augmentation(np.zeros(2), base, np.zeros((16, 2)), np.ones(16), none, (), 1.0, rng)
    assert d.rotation == 0 and not d.flip and np.allclose(d.scale, base)


@pytest.mark.parametrize("student", [64, 32])
def test_student_keypoints_times_m_equal_teacher_keypoints(student):
    """Same centre/scale/rotation/flip at two sizes: x_teacher = m * x_student exactly."""
    rng = np.random.default_rng(student)
    m = 256 // student
    for _ in range(20):
        center = rng.uniform(50, 250, 2)
        scale = np.full(2, rng.uniform(0.3, 1.5))
        rot, flip = float(rng.uniform(-60, 60)), bool(rng.integers(2))
        pts = rng.uniform(0, 300, (17, 2))
        s = affine_points(pts, crop_matrix(center, scale, rot, flip, 320, (student, student)))
        t = affine_points(pts, crop_matrix(center, scale, rot, flip, 320, (256, 256)))
        np.testing.assert_allclose(t, m * s, atol=1e-3)


@pytest.mark.parametrize("student", [64, 32])
def test_pixel_centre_convention_of_the_two_crops(student):
    """Content check of the documented convention: an area-downsampled teacher crop sits
    (m - 1) / (2 m) student pixels up-left of the student crop (HRNet geometry)."""
    m = 256 // student
    point = np.array([150.3, 118.7])
    center, scale = np.array([148.0, 121.0]), np.array([0.5, 0.5])
    image = blob_image([point], sigma=4.0)
    s_crop = cv2.warpAffine(image, crop_matrix(center, scale, 0.0, False, 320, (student,) * 2), (student, student))
    t_crop = cv2.warpAffine(image, crop_matrix(center, scale, 0.0, False, 320, (256, 256)), (256, 256))
    t_down = cv2.resize(t_crop, (student, student), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(centroid(t_crop), m * centroid(s_crop), atol=0.25 * m)
    offset = centroid(s_crop) - centroid(t_down)
    np.testing.assert_allclose(offset, [(m - 1) / (2 * m)] * 2, atol=0.1)
