"""Evaluation protocols: COCO keypoint AP (rescoring, OKS-NMS, COCOeval) and MPII PCKh."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from scipy.io import savemat

from cdkd.metrics.coco import (
    COCO_SIGMAS,
    coco_keypoint_eval,
    oks_iou,
    oks_matrix,
    oks_nms,
    rescore,
    select_results,
    write_results_json,
)
from cdkd.metrics.mpii import (
    COLUMNS,
    SC_BIAS,
    MPIIGroundTruth,
    load_gt_valid,
    pckh,
    pckh_per_joint,
    write_gt_valid,
)

pytestmark = pytest.mark.timeout(120)

REAL = Path(__file__).parents[2] / "shared" / "realsamples"


# ----------------------------------------------------------------------------- COCO helpers
def _person(rng, x, y, w, h, missing=()):
    kp = np.stack([x + rng.uniform(0.1, 0.9, 17) * w, y + rng.uniform(0.1, 0.9, 17) * h,
                   np.full(17, 2.0)], axis=1)
    kp[list(missing)] = 0.0
    return kp


def _write_gt(path, persons):
    """persons: list of (image_id, keypoints [17, 3], (x, y, w, h))."""
    anns = []
    for k, (image_id, kp, box) in enumerate(persons):
        anns.append({"id": k + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                     "bbox": list(box), "area": box[2] * box[3] * 0.7,
                     "num_keypoints": int((kp[:, 2] > 0).sum()), "keypoints": kp.ravel().tolist()})
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"}
              for i in sorted({p[0] for p in persons})]
    cats = [{"id": 1, "name": "person", "keypoints": [str(i) for i in range(17)], "skeleton": []}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _gt_as_predictions(persons):
    kp = np.stack([p[1] for p in persons]).copy()
    kp[..., 2] = (kp[..., 2] > 0).astype(float)  # confidence 1 where labelled
    return {"keypoints": kp, "image_ids": np.array([p[0] for p in persons]),
            "box_scores": np.ones(len(persons)),
            "areas": np.array([p[2][2] * p[2][3] * 1.5625 for p in persons])}


@pytest.fixture()
def small_coco(tmp_path):
    rng = np.random.default_rng(0)
    persons = [
        (1, _person(rng, 10, 20, 150, 300), (10, 20, 150, 300)),  # large
        (1, _person(rng, 300, 50, 60, 120, missing=(0, 1, 2)), (300, 50, 60, 120)),  # medium
        (2, _person(rng, 100, 100, 200, 250), (100, 100, 200, 250)),
        (3, _person(rng, 50, 60, 50, 90, missing=(15, 16)), (50, 60, 50, 90)),  # medium
        (3, _person(rng, 400, 30, 180, 400), (400, 30, 180, 400)),
    ]
    return _write_gt(tmp_path / "gt.json", persons), persons


# ----------------------------------------------------------------------------- COCO tests
def test_ground_truth_as_predictions_gives_ap_one(small_coco):
    path, persons = small_coco
    res = coco_keypoint_eval(_gt_as_predictions(persons), path)
    for name in ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"):
        assert res[name] == pytest.approx(1.0), name
    assert res["num_persons"] == 5 and res["num_predictions"] == 5
    assert "Average Precision" in res["summary"]


def test_real_coco_samples_ground_truth_gives_ap_one():
    gt_file = REAL / "coco" / "test_coco.json"
    if not gt_file.exists():
        pytest.skip(f"{gt_file} not available")
    anns = [a for a in json.loads(gt_file.read_text())["annotations"] if a["num_keypoints"] > 0]
    kp = np.array([a["keypoints"] for a in anns], dtype=float).reshape(-1, 17, 3)
    kp[..., 2] = (kp[..., 2] > 0).astype(float)
    persons = [{"image_id": a["image_id"], "keypoints": k, "score": 1.0,
                "area": a["bbox"][2] * a["bbox"][3] * 1.5625} for a, k in zip(anns, kp)]
    res = coco_keypoint_eval(persons, COCO(str(gt_file)))  # list-of-dicts form, COCO object
    assert res["AP"] == pytest.approx(1.0) and res["AR"] == pytest.approx(1.0)
    assert res["num_persons"] == len(anns)


def test_perturbed_predictions_lower_ap_monotonically(small_coco):
    path, persons = small_coco
    preds = _gt_as_predictions(persons)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=preds["keypoints"][..., :2].shape)
    aps = []
    for sd in (0.0, 4.0, 12.0):
        p = dict(preds, keypoints=preds["keypoints"].copy())
        p["keypoints"][..., :2] += sd * noise
        aps.append(coco_keypoint_eval(p, path)["AP"])
    assert aps[0] == pytest.approx(1.0) and aps[0] > aps[1] > aps[2], aps


def test_rescoring_by_hand():
    kp = np.zeros((3, 4, 3))
    kp[0, :, 2] = [0.1, 0.5, 0.9, 0.2]  # 0.2 is not strictly above the threshold
    kp[1, :, 2] = [0.1, 0.0, 0.2, 0.15]  # none above -> 0
    kp[2, :, 2] = 1.0
    out = rescore(kp, np.array([0.5, 0.9, 0.8]), in_vis_thr=0.2)
    np.testing.assert_allclose(out, [0.5 * 0.7, 0.0, 0.8])


def test_oks_matrix_and_iou_agree_with_the_definition():
    rng = np.random.default_rng(2)
    kp = np.concatenate([rng.uniform(0, 200, (4, 17, 2)), rng.uniform(0, 1, (4, 17, 1))], axis=2)
    areas = rng.uniform(2000, 9000, 4)
    mat = oks_matrix(kp, areas)
    np.testing.assert_allclose(np.diag(mat), 1.0)
    d2 = ((kp[0, :, :2] - kp[2, :, :2]) ** 2).sum(-1)
    e = d2 / (2 * COCO_SIGMAS) ** 2 / ((areas[0] + areas[2]) / 2 + np.spacing(1)) / 2
    assert mat[0, 2] == pytest.approx(np.exp(-e).mean())
    np.testing.assert_allclose(oks_iou(kp[1], kp, areas[1], areas), mat[1])
    thr = 0.5
    masked = oks_iou(kp[1], kp, areas[1], areas, in_vis_thr=thr)
    np.testing.assert_allclose(masked, oks_matrix(kp, areas, in_vis_thr=thr)[1])
    both = (kp[1, :, 2] > thr) & (kp[3, :, 2] > thr)
    d2 = ((kp[1, :, :2] - kp[3, :, :2]) ** 2).sum(-1)
    e = d2 / (2 * COCO_SIGMAS) ** 2 / ((areas[1] + areas[3]) / 2 + np.spacing(1)) / 2
    assert masked[3] == pytest.approx(np.exp(-e[both]).mean())


def test_oks_nms_removes_near_duplicate_keeps_distinct_persons():
    rng = np.random.default_rng(3)
    a = _person(rng, 0, 0, 100, 200)
    dup = a.copy()
    dup[:, :2] += 0.5  # near-duplicate of a
    b = _person(rng, 300, 0, 100, 200)
    c = a.copy()
    c[:, :2] += 25.0  # same region, clearly another pose
    kp = np.stack([dup, a, b, c])
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    keep = oks_nms(kp, scores, np.full(4, 100 * 200 * 1.5625), thr=0.9)
    assert keep.tolist() == [1, 2, 3]  # score order, duplicate (index 0) removed
    # At threshold 1.0 nothing is suppressed (OKS never exceeds 1).
    assert sorted(oks_nms(kp, scores, np.full(4, 31250.0), thr=1.0).tolist()) == [0, 1, 2, 3]


def test_nms_in_the_protocol_and_results_file(small_coco, tmp_path):
    path, persons = small_coco
    preds = _gt_as_predictions(persons)
    # Add a lower-scored near-duplicate of person 0 (same image).
    preds = {k: np.concatenate([v, v[:1]]) for k, v in preds.items()}
    preds["keypoints"][-1, :, :2] += 0.3
    preds["box_scores"][-1] = 0.5
    with_nms = coco_keypoint_eval(preds, path, results_path=tmp_path / "res.json")
    without = coco_keypoint_eval(preds, path, use_nms=False)
    assert with_nms["num_persons"] == 5 and without["num_persons"] == 6
    assert with_nms["AP"] == pytest.approx(1.0)
    results = json.loads((tmp_path / "res.json").read_text())
    assert len(results) == 5
    assert set(results[0]) == {"image_id", "category_id", "keypoints", "score"}
    assert len(results[0]["keypoints"]) == 51
    # The written file is what pycocotools loads for a submission.
    assert len(COCO(str(path)).loadRes(str(tmp_path / "res.json")).getAnnIds()) == 5
    # write_results_json on its own, with centre/scale carried through.
    preds["centers"] = np.zeros((6, 2))
    preds["scales"] = np.ones((6, 2))
    out = write_results_json(tmp_path / "sub" / "r.json", select_results(preds))
    assert json.loads(out.read_text())[0]["scale"] == [1.0, 1.0]


def test_coco_bad_inputs_name_the_problem(small_coco):
    path, persons = small_coco
    preds = _gt_as_predictions(persons)
    with pytest.raises(ValueError, match="image_id 99"):
        coco_keypoint_eval(dict(preds, image_ids=np.array([1, 2, 3, 3, 99])), path)
    with pytest.raises(ValueError, match="box_scores"):
        coco_keypoint_eval(dict(preds, box_scores=np.ones(3)), path)
    with pytest.raises(ValueError, match="keypoints"):
        coco_keypoint_eval(dict(preds, keypoints=preds["keypoints"][:, :16]), path)
    with pytest.raises(ValueError, match="unknown keys"):
        coco_keypoint_eval(dict(preds, boxes=1), path)


def test_coco_eval_is_fast_for_a_val2017_sized_set(tmp_path):
    rng = np.random.default_rng(4)
    n = 6000
    image_ids = rng.integers(1, 2500, n)
    persons = []
    for i in range(n):
        w, h = rng.uniform(30, 250), rng.uniform(60, 350)
        x, y = rng.uniform(0, 380), rng.uniform(0, 120)
        persons.append((int(image_ids[i]), _person(rng, x, y, w, h), (x, y, w, h)))
    path = _write_gt(tmp_path / "big.json", persons)
    preds = _gt_as_predictions(persons)
    preds["keypoints"][..., :2] += rng.normal(0, 2, preds["keypoints"][..., :2].shape)
    preds["keypoints"][..., 2] = rng.uniform(0.05, 1, (n, 17))
    start = time.perf_counter()
    res = coco_keypoint_eval(preds, path)
    assert time.perf_counter() - start < 30
    assert 0 < res["AP"] < 1 and res["num_predictions"] == n


# ----------------------------------------------------------------------------- MPII helpers
def _mpii_gt(n=4, seed=0):
    rng = np.random.default_rng(seed)
    joints = rng.uniform(50, 400, (n, 16, 2))
    tl = rng.uniform(50, 300, (n, 2))
    head_boxes = np.stack([tl, tl + rng.uniform(20, 60, (n, 2))], axis=1)  # [N, 2, 2]
    visible = np.ones((n, 16), dtype=bool)
    return joints, visible, head_boxes


def _head_size(head_boxes, i):
    return SC_BIAS * np.linalg.norm(head_boxes[i, 1] - head_boxes[i, 0])


# ----------------------------------------------------------------------------- MPII tests
def test_pckh_ground_truth_is_100_for_arrays_and_gt_valid_mat(tmp_path):
    joints, visible, head_boxes = _mpii_gt()
    visible[1, [3, 9]] = False
    expected = {name: 100.0 for name in list(COLUMNS) + ["Mean", "Mean@0.1"]}
    assert pckh(joints, (joints, visible, head_boxes)) == expected
    mat = write_gt_valid(tmp_path / "gt_valid.mat", joints, visible, head_boxes)
    assert pckh(joints, mat) == expected
    loaded = load_gt_valid(mat)
    np.testing.assert_allclose(loaded.joints, joints)
    np.testing.assert_array_equal(loaded.visible, visible)
    np.testing.assert_allclose(loaded.head_boxes, head_boxes)


def test_gt_valid_mat_is_one_based_like_the_official_file(tmp_path):
    joints, visible, head_boxes = _mpii_gt(n=3, seed=1)
    # Hand-made official layout: 1-based MATLAB pixels, joints [16, 2, N], boxes [2, 2, N].
    savemat(str(tmp_path / "official.mat"), {
        "jnt_missing": (~visible).T.astype(float),
        "pos_gt_src": joints.transpose(1, 2, 0) + 1.0,
        "headboxes_src": head_boxes.transpose(1, 2, 0) + 1.0,
    })
    # A tight threshold that a (1, 1) px offset exceeds for at least one person.
    tight = 0.5 * 2 ** 0.5 / min(_head_size(head_boxes, i) for i in range(3))
    assert pckh(joints, tmp_path / "official.mat", threshold=tight)["Mean"] == 100.0
    assert pckh(joints + 1.0, tmp_path / "official.mat", threshold=tight)["Mean"] < 100.0
    one = write_gt_valid(tmp_path / "one.mat", joints[:1], visible[:1], head_boxes[:1])
    assert len(load_gt_valid(one)) == 1 and pckh(joints[:1], one)["Mean"] == 100.0


@pytest.mark.parametrize("factor, wrong", [(1.01, True), (0.99, False)])
def test_moving_one_joint_across_the_threshold_changes_only_its_column(factor, wrong):
    joints, visible, head_boxes = _mpii_gt()
    gt = MPIIGroundTruth(joints, visible, head_boxes)
    preds = joints.copy()
    direction = np.array([0.6, 0.8])
    preds[2, 10] += factor * 0.5 * _head_size(head_boxes, 2) * direction  # right wrist
    out = pckh(preds, gt)
    n = len(joints)
    for name in COLUMNS:
        expected = 100.0 * (1 - 0.5 / n) if (name == "Wri." and wrong) else 100.0
        assert out[name] == pytest.approx(expected), name
    assert out["Mean"] == pytest.approx(100.0 * (1 - 1 / (14 * n)) if wrong else 100.0)
    assert out["Mean@0.1"] == pytest.approx(100.0 * (1 - 1 / (14 * n)))  # off by > 0.1 either way
    pck, counts = pckh_per_joint(preds, gt)
    assert counts.tolist() == [n] * 16
    assert pck[10] == pytest.approx(100.0 * (1 - 1 / n) if wrong else 100.0)
    assert np.all(pck[np.arange(16) != 10] == 100.0)


def test_pelvis_thorax_and_invisible_joints_do_not_count_neck_counts_only_in_mean():
    joints, visible, head_boxes = _mpii_gt()
    visible[0, 4] = False
    preds = joints.copy()
    preds[:, 6] += 1000.0  # pelvis
    preds[:, 7] += 1000.0  # thorax
    preds[0, 4] += 1000.0  # invisible left knee
    out = pckh(preds, (joints, visible, head_boxes))
    assert all(v == 100.0 for v in out.values()), out
    preds[1, 8] += 1000.0  # neck: no column, but in the mean
    out = pckh(preds, (joints, visible, head_boxes))
    assert all(out[name] == 100.0 for name in COLUMNS)
    assert out["Mean"] == pytest.approx(100.0 * (1 - 1 / (14 * 4 - 1)))


def test_perturbed_predictions_lower_pckh():
    joints, visible, head_boxes = _mpii_gt(n=50, seed=2)
    rng = np.random.default_rng(3)
    noise = rng.normal(size=joints.shape)
    means = [pckh(joints + sd * noise, (joints, visible, head_boxes))["Mean"]
             for sd in (0.0, 8.0, 25.0)]
    assert means[0] == 100.0 and means[0] > means[1] > means[2], means


def test_mpii_bad_inputs_name_the_problem(tmp_path):
    joints, visible, head_boxes = _mpii_gt()
    with pytest.raises(ValueError, match=r"\[N, 16, 2\]"):
        pckh(joints[:, :15], (joints, visible, head_boxes))
    with pytest.raises(ValueError, match="3 predictions for 4"):
        pckh(joints[:3], (joints, visible, head_boxes))
    savemat(str(tmp_path / "bad.mat"), {"jnt_missing": np.zeros((16, 4))})
    with pytest.raises(ValueError, match="bad.mat.*pos_gt_src"):
        load_gt_valid(tmp_path / "bad.mat")
    head_boxes[2, 1] = head_boxes[2, 0]
    with pytest.raises(ValueError, match="person 2"):
        pckh(joints, (joints, visible, head_boxes))


def test_mean_at_01_uses_the_released_threshold_and_keeps_hrnets_as_an_option():
    """SimCC/CDKD (Table I) read 'Mean@0.1' at index 10 of arange(0, 0.51, 0.01), a threshold of 0.10
    (the default); HRNet's release reads index 11, 0.11 (``eval.mean_at_01=hrnet``)."""
    from cdkd.metrics.mpii import MEAN_AT_01_THRESHOLDS, pckh

    joints = np.tile(np.arange(16, dtype=float)[:, None] * 5.0, (1, 2))[None]  # [1, 16, 2]
    visible = np.ones((1, 16), bool)
    head_boxes = np.array([[[0.0, 0.0], [10.0, 0.0]]])  # head size 0.6 * 10 = 6 px
    for frac, expected in ((0.095, 100.0), (0.105, 0.0)):
        preds = joints + np.array([frac * 6.0, 0.0])
        assert pckh(preds, (joints, visible, head_boxes))["Mean@0.1"] == pytest.approx(expected)
    for frac, expected in ((0.105, 100.0), (0.115, 0.0)):
        preds = joints + np.array([frac * 6.0, 0.0])
        low = MEAN_AT_01_THRESHOLDS["hrnet"]
        assert pckh(preds, (joints, visible, head_boxes), low_threshold=low)["Mean@0.1"] == pytest.approx(expected)
