"""SimCC codec: targets, decoding and flip-back (cdkd/codec.py)."""

import numpy as np
import pytest
import torch

from cdkd.codec import decode, encode, flip_back, flip_shift_bins, num_bins
from cdkd.joints import COCO_META, MPII_META
from cdkd.data.transforms import fliplr_joints


def one_hot_logits(target_x, target_y, bins_x, bins_y, peak=20.0):
    """Logits [1, J, bins] with a single high class per joint."""
    j = len(target_x)
    x = torch.zeros(1, j, bins_x)
    y = torch.zeros(1, j, bins_y)
    x[0, torch.arange(j), torch.as_tensor(target_x)] = peak
    y[0, torch.arange(j), torch.as_tensor(target_y)] = peak
    return x, y


def test_encode_rounds_half_to_even_and_clamps():
    joints = np.array([[2.5 / 2, 0.0], [3.5 / 2, 1.0], [-0.3, 5.0], [10.0, 63.9], [31.9, 70.0], [5.0, 5.0]])
    visible = np.array([1, 1, 1, 1, 1, 0])
    tx, ty, w = encode(joints, visible, (64, 32), split_ratio=2.0)  # H=64, W=32: 64 x-bins, 128 y-bins
    assert tx.dtype == np.int64 and ty.dtype == np.int64 and w.dtype == np.float32
    assert (tx[0], tx[1]) == (2, 4)  # 2.5 -> 2 and 3.5 -> 4 (half to even)
    assert (tx[2], w[2]) == (0, 0)  # round(-0.6) = -1 is outside: clamped to 0, weight 0
    assert (ty[3], w[3]) == (127, 0)  # round(127.8) = 128 is outside [0, 128): clamped, weight 0
    assert (tx[4], ty[4], w[4]) == (63, 127, 0)  # x: round(63.8) = 64 clamped; y = 70 px is below the crop
    assert (tx[5], ty[5], w[5]) == (10, 10, 0)  # invisible: correct class, weight 0
    assert w[0] == 1 and w[1] == 1


def test_encode_decode_round_trip_seeded():
    rng = np.random.default_rng(0)
    for k in (1.0, 2.0, 3.0):
        h, w = 64, 48
        joints = rng.uniform(0, [w - 0.5, h - 0.5], size=(16, 2))
        tx, ty, weight = encode(joints, np.ones(16), (h, w), k)
        assert weight.all()
        x, y = one_hot_logits(tx, ty, num_bins(w, k), num_bins(h, k))
        coords, scores = decode(x, y, k)
        assert coords.shape == (1, 16, 2) and scores.shape == (1, 16)
        np.testing.assert_allclose(coords[0].numpy(), np.stack([tx, ty], 1) / k, atol=1e-6)
        assert np.abs(coords[0].numpy() - joints).max() <= 0.5 / k + 1e-6


def test_decode_score_is_larger_peak_and_accepts_probabilities():
    rng = np.random.default_rng(1)
    px = torch.from_numpy(rng.dirichlet(np.ones(30), size=(2, 5))).float()  # [2, 5, 30]
    py = torch.from_numpy(rng.dirichlet(np.ones(40), size=(2, 5))).float()
    coords, scores = decode(px, py, 2.0, probabilities=True)
    expected = torch.maximum(px.max(-1).values, py.max(-1).values)
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(coords[..., 0], px.argmax(-1).float() / 2.0)
    # logits path: softmax first
    _, scores_l = decode(torch.log(px), torch.log(py), 2.0)
    torch.testing.assert_close(scores_l, expected, atol=1e-5, rtol=1e-5)
    # NumPy in, NumPy out
    c_np, s_np = decode(px.numpy(), py.numpy(), 2.0, probabilities=True)
    assert isinstance(c_np, np.ndarray) and np.allclose(s_np, expected.numpy())


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("meta", [COCO_META, MPII_META], ids=["coco", "mpii"])
def test_flip_back_exact_for_a_flipped_prediction(k, meta):
    rng = np.random.default_rng(k)
    h, w = 32, 32
    nj = meta.num_joints
    # joints on the bin grid (x = b / k), so targets are exact on both sides of the flip
    bins = rng.integers(0, w * k - k + 1, size=(nj, 2))
    joints = bins / k
    flipped = fliplr_joints(joints, w, meta.flip_pairs)  # what a perfect model sees on the flipped crop
    tx, ty, _ = encode(flipped, np.ones(nj), (h, w), k)
    x, y = one_hot_logits(tx, ty, w * k, h * k)
    xb, yb = flip_back(x, y, meta.flip_pairs, k, shift="exact")
    coords, _ = decode(xb, yb, k)
    np.testing.assert_allclose(coords[0].numpy(), joints, atol=1e-6)
    # the released one-bin shift leaves a (k - 2)-bin bias to the right
    xo, yo = flip_back(x, y, meta.flip_pairs, k, shift="official")
    coords_o, _ = decode(xo, yo, k)
    np.testing.assert_allclose(coords_o[0, :, 0].numpy() - joints[:, 0], (k - 2) / k, atol=1e-6)
    np.testing.assert_allclose(coords_o[0, :, 1].numpy(), joints[:, 1], atol=1e-6)


def test_flip_back_fills_vacated_bins_with_edge_and_keeps_numpy():
    x = np.arange(2 * 3 * 12, dtype=np.float32).reshape(2, 3, 12)
    y = np.zeros((2, 3, 8), dtype=np.float32)
    y[:, 1, 0] = 1.0
    xb, yb = flip_back(x, y, [(1, 2)], split_ratio=3.0, shift="exact")
    assert isinstance(xb, np.ndarray)
    rev = x[:, [0, 2, 1], ::-1]
    np.testing.assert_array_equal(xb[..., :10], rev[..., 2:])
    np.testing.assert_array_equal(xb[..., 10:], np.repeat(rev[..., -1:], 2, axis=-1))
    assert yb[:, 2, 0].tolist() == [1.0, 1.0] and yb[:, 1, 0].tolist() == [0.0, 0.0]


def test_flip_shift_bins():
    assert flip_shift_bins(2.0, "exact") == 1
    assert flip_shift_bins(3.0, "exact") == 2
    assert flip_shift_bins(3.0, "official") == 1
    with pytest.raises(ValueError, match="integer split ratio"):
        flip_shift_bins(2.5, "exact")
    with pytest.raises(ValueError, match="shift"):
        flip_shift_bins(2.0, "sideways")
