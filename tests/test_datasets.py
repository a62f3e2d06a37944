"""COCO and MPII loaders and the top-down dataset, on real samples and on files we write."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cdkd.config import Config
from cdkd.data import DataError
from cdkd.data.coco import load_coco_api, load_coco_det, load_coco_gt
from cdkd.data.mpii import load_mpii_json
from cdkd.data.topdown import TopDownDataset, build_dataset
from cdkd.joints import COCO_META, MPII_META
from cdkd.metrics.mpii import load_gt_valid, write_gt_valid

REAL = Path(__file__).parents[2] / "shared" / "realsamples"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real samples not found at {REAL}")


# --- files in the real formats, written by the tests ------------------------------------------
def write_image(path: Path, width=160, height=120, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (7, 7), 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def coco_ann(ann_id, image_id=1, bbox=(40, 20, 50, 80), n_kp=17, area=None):
    kp = []
    for j in range(n_kp):
        kp += [45.0 + 2 * j, 25.0 + 4 * j, 2]
    w, h = bbox[2], bbox[3]
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": list(bbox),
            "area": float(w * h) if area is None else area, "num_keypoints": n_kp, "keypoints": kp}


def write_coco(root: Path, anns, set_name="val", images=None):
    images = images or [{"id": 1, "file_name": "000000000001.jpg", "width": 160, "height": 120}]
    for info in images:
        write_image(root / "images" / set_name / info["file_name"], info["width"], info["height"], info["id"])
    cats = [{"id": 1, "name": "person", "supercategory": "person",
             "keypoints": list(COCO_META.joint_names), "skeleton": []}]
    ann_file = root / "annotations" / f"person_keypoints_{set_name}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann_file


def mpii_entry(image="a.jpg", n_joints=16, scale=0.5):
    joints = [[41.0 + 3 * j, 21.0 + 5 * j] for j in range(n_joints)]
    return {"image": image, "center": [70.0, 60.0], "scale": scale, "joints": joints,
            "joints_vis": [1] * n_joints}


def write_mpii(root: Path, entries, set_name="valid"):
    write_image(root / "images" / "a.jpg")
    path = root / "annot" / f"{set_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


def coco_cfg(root, **data):
    cfg = Config()
    cfg.data.dataset, cfg.data.root, cfg.data.val_set = "coco", str(root), "val"
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


# --- real samples ------------------------------------------------------------------------------
@needs_real
def test_real_coco_gt_loads_and_gives_valid_crops():
    raw = json.loads((REAL / "coco" / "test_coco.json").read_text())
    loaded = load_coco_gt(REAL / "coco" / "test_coco.json", REAL / "coco", aspect_ratio=1.0)
    with_kp = [a for a in raw["annotations"] if not a["iscrowd"] and max(a["keypoints"]) > 0]
    assert len(loaded.records) == len(with_kp) and loaded.filtered["no_keypoints"] == len(raw["annotations"]) - len(with_kp)
    assert [r.ann_id for r in loaded.records] == [a["id"] for a in with_kp]
    rec = loaded.records[0]
    x, y, w, h = with_kp[0]["bbox"]
    np.testing.assert_allclose(rec.center, [x + (w - 1) / 2, y + (h - 1) / 2], atol=1e-3)  # cleaned box
    ds = TopDownDataset(loaded.records, COCO_META, (64, 48), 2.0, train=False, teacher_size=(256, 192))
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 64, 48) and s["teacher_image"].shape == (3, 256, 192)
        assert s["split_ratio"] == 2.0  # figures read k from the sample
        assert torch.isfinite(s["image"]).all() and s["image"].std() > 0.1
        vis = torch.from_numpy(ds.records[i].visible)
        assert (s["target_weight"] <= vis).all() and s["target_weight"].sum() >= 0.5 * vis.sum()
        inside = s["target_weight"] > 0
        assert (s["joints"][inside, 0] >= -0.5).all() and (s["joints"][inside, 0] < 48).all()


@needs_real
def test_real_coco_detections_load_with_threshold():
    coco = load_coco_api(REAL / "coco" / "test_coco.json")
    dets = json.loads((REAL / "coco" / "test_coco_det_AP_H_56.json").read_text())
    loaded = load_coco_det(REAL / "coco" / "test_coco_det_AP_H_56.json", coco, REAL / "coco", 1.0, score_thr=0.3)
    assert len(loaded.records) == sum(d["score"] >= 0.3 for d in dets)
    assert all(r.visible.sum() == 0 and r.score >= 0.3 for r in loaded.records)
    ds = TopDownDataset(loaded.records, COCO_META, (32, 32), 2.0, train=False)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["target_weight"].sum() == 0


@needs_real
def test_real_mpii_loads_with_official_adjustments():
    raw = json.loads((REAL / "mpii" / "test_mpii.json").read_text())
    loaded = load_mpii_json(REAL / "mpii" / "test_mpii.json", REAL / "mpii")
    assert len(loaded.records) == len(raw)
    for rec, entry in zip(loaded.records, raw):
        s = entry["scale"]
        np.testing.assert_allclose(rec.center, [entry["center"][0] - 1, entry["center"][1] + 15 * s - 1], rtol=1e-5)
        np.testing.assert_allclose(rec.scale, [1.25 * s] * 2, rtol=1e-6)
        np.testing.assert_allclose(rec.joints[:, :2], np.array(entry["joints"]) - 1, rtol=1e-6)
        assert rec.visible.tolist() == entry["joints_vis"]
    torch.manual_seed(0)
    ds = TopDownDataset(loaded.records, MPII_META, (64, 64), 3.0, train=True, teacher_size=(256, 256))
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 64, 64) and s["teacher_image"].shape == (3, 256, 256)
        assert s["target_x"].max() < 192 and s["target_weight"].sum() >= 8


# --- the dataset on files we write -----------------------------------------------------------
def test_dataset_sample_contract_and_teacher_relation(tmp_path):
    write_coco(tmp_path, [coco_ann(1), coco_ann(2, bbox=(10, 10, 60, 60))], set_name="train")
    cfg = coco_cfg(tmp_path)
    torch.manual_seed(0)
    ds = build_dataset(cfg, "train", (64, 64), 3.0, teacher_size=(256, 256))
    assert ds.dataset_name == "coco" and ds.num_joints == 17 and ds.flip_pairs == COCO_META.flip_pairs
    assert ds.coco is not None and ds.ann_file.endswith("person_keypoints_train.json")
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    expected = {"image": (2, 3, 64, 64), "target_x": (2, 17), "target_y": (2, 17), "target_weight": (2, 17),
                "teacher_image": (2, 3, 256, 256), "joints": (2, 17, 3), "center": (2, 2), "scale": (2, 2),
                "rotation": (2,), "score": (2,), "area": (2,), "image_id": (2,), "index": (2,), "flipped": (2,)}
    for key, shape in expected.items():
        assert tuple(batch[key].shape) == shape, key
    assert batch["target_x"].dtype == torch.int64 and batch["target_weight"].dtype == torch.float32
    # targets are the crop joints in bins
    k = 3.0
    joints = batch["joints"][..., :2].numpy()
    w = batch["target_weight"].numpy() > 0
    np.testing.assert_array_equal(batch["target_x"].numpy()[w], np.around(joints[..., 0] * k)[w])


def test_training_flip_swaps_left_and_right(tmp_path):
    write_coco(tmp_path, [coco_ann(1)], set_name="train")
    cfg = coco_cfg(tmp_path, scale_factor=0.0, rot_prob=0.0)
    ds = build_dataset(cfg, "train", (64, 64), 2.0)
    plain = build_dataset(cfg, "train", (64, 64), 2.0, train=False)[0]
    torch.manual_seed(0)
    samples = [ds[0] for _ in range(16)]
    flipped = [s for s in samples if s["flipped"]]
    assert flipped and len(flipped) < len(samples)
    f = flipped[0]["joints"].numpy()
    p = plain["joints"].numpy()
    # HRNet mirrors the image (x -> width - 1 - x) and the box centre, and the centre goes to
    # crop x = W / 2: a crop point x lands at W - x (not W - 1 - x) in the flipped crop.
    for a, b in COCO_META.flip_pairs:
        np.testing.assert_allclose(f[a, :2], [64 - p[b, 0], p[b, 1]], atol=1e-3)
    np.testing.assert_allclose(f[0, :2], [64 - p[0, 0], p[0, 1]], atol=1e-3)
    # so the flipped crop is the mirror image of the plain crop moved right by one pixel
    mirror = plain["image"].flip(-1)
    assert (flipped[0]["image"][..., 1:] - mirror[..., :-1]).abs().max() < 0.05


def test_max_samples_and_det_boxes(tmp_path):
    write_coco(tmp_path, [coco_ann(i) for i in range(1, 6)])
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [30, 15, 70, 90], "score": s}
                                    for s in (0.9, 0.5, 0.1)]))
    ds = build_dataset(coco_cfg(tmp_path, max_samples=3), "val", (64, 64), 2.0)
    assert len(ds) == 3 and [r.ann_id for r in ds.records] == [1, 2, 3]
    ds = build_dataset(coco_cfg(tmp_path, use_gt_bbox=False, det_file=str(det_file), det_score_thr=0.3), "val", (64, 64), 2.0)
    assert [r.score for r in ds.records] == [0.9, 0.5]
    with pytest.raises(DataError, match="data.det_file"):
        build_dataset(coco_cfg(tmp_path, use_gt_bbox=False), "val", (64, 64), 2.0)


# --- bad input ----------------------------------------------------------------------------------
def test_missing_image_names_the_file_or_is_counted(tmp_path):
    write_coco(tmp_path, [coco_ann(1)])
    (tmp_path / "images" / "val" / "000000000001.jpg").unlink()
    ds = build_dataset(coco_cfg(tmp_path), "val", (64, 64), 2.0)
    with pytest.raises(DataError, match="000000000001.jpg"):
        ds[0]
    with pytest.warns(UserWarning, match="000000000001.jpg"):
        ds = build_dataset(coco_cfg(tmp_path, on_bad="skip"), "val", (64, 64), 2.0)
    assert len(ds) == 0 and len(ds.skipped) == 1 and "not found" in ds.skipped[0]["reason"]


def test_corrupt_image_bytes(tmp_path):
    anns = [coco_ann(1), coco_ann(2, image_id=2)]
    write_coco(tmp_path, anns, images=[
        {"id": 1, "file_name": "000000000001.jpg", "width": 160, "height": 120},
        {"id": 2, "file_name": "000000000002.jpg", "width": 160, "height": 120}])
    img_dir = tmp_path / "images" / "val"
    (img_dir / "000000000001.jpg").write_bytes(b"this is not a jpeg" * 10)  # bad header
    good = (img_dir / "000000000002.jpg").read_bytes()
    (img_dir / "000000000002.jpg").write_bytes(good[:4] + bytes(200))  # JPEG magic, garbage body
    ds = build_dataset(coco_cfg(tmp_path), "val", (64, 64), 2.0)
    for i, name in enumerate(["000000000001.jpg", "000000000002.jpg"]):
        with pytest.raises(DataError, match=name):
            ds[i]
    with pytest.warns(UserWarning):
        ds = build_dataset(coco_cfg(tmp_path, on_bad="skip"), "val", (64, 64), 2.0, teacher_size=(128, 128))
    assert len(ds.skipped) == 1 and "000000000001.jpg" in ds.skipped[0]["where"]  # header check
    assert len(ds) == 1
    with pytest.warns(UserWarning, match="000000000002.jpg"):
        s = ds[0]  # decodes badly later: a blank sample, counted
    assert s["valid"] == 0 and s["target_weight"].sum() == 0 and s["teacher_image"].shape == (3, 128, 128)
    assert len(ds.skipped) == 2


@pytest.mark.parametrize(
    "ann, reason",
    [
        (coco_ann(7, n_kp=16), "keypoint values"),
        (coco_ann(7, bbox=(40, 20, 0, 80)), "bad box"),
        (coco_ann(7, bbox=(40, 20, 50, -3)), "bad box"),
        (coco_ann(7, area=0.0), "area"),
    ],
    ids=["wrong_keypoint_count", "zero_width", "negative_height", "zero_area"],
)
def test_bad_coco_annotation_names_its_id(tmp_path, ann, reason):
    write_coco(tmp_path, [coco_ann(1), ann])
    with pytest.raises(DataError, match=f"annotation id 7.*{reason}"):
        build_dataset(coco_cfg(tmp_path), "val", (64, 64), 2.0)
    with pytest.warns(UserWarning, match="annotation id 7"):
        ds = build_dataset(coco_cfg(tmp_path, on_bad="skip"), "val", (64, 64), 2.0)
    assert len(ds) == 1 and len(ds.skipped) == 1 and reason in ds.skipped[0]["reason"]


def test_bad_detection_names_its_index(tmp_path):
    write_coco(tmp_path, [coco_ann(1)])
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [3, 3, 40, 40], "score": 0.9},
                                    {"image_id": 1, "category_id": 1, "bbox": [3, 3, 0, 40], "score": 0.9}]))
    with pytest.raises(DataError, match="detection #1"):
        build_dataset(coco_cfg(tmp_path, use_gt_bbox=False, det_file=str(det_file)), "val", (64, 64), 2.0)


@pytest.mark.parametrize(
    "entry, reason",
    [(mpii_entry(n_joints=15), "joints"), (mpii_entry(scale=0.0), "scale"), (mpii_entry(scale=-1.0), "scale")],
    ids=["wrong_joint_count", "zero_scale", "negative_scale"],
)
def test_bad_mpii_annotation_names_its_index(tmp_path, entry, reason):
    write_mpii(tmp_path, [mpii_entry(), entry])
    cfg = Config()
    cfg.data.root = str(tmp_path)
    with pytest.raises(DataError, match=f"annotation #1 .*{reason}"):
        build_dataset(cfg, "val", (64, 64), 3.0)
    cfg.data.on_bad = "skip"
    with pytest.warns(UserWarning, match="annotation #1"):
        ds = build_dataset(cfg, "val", (64, 64), 3.0)
    assert len(ds) == 1 and len(ds.skipped) == 1 and ds.gt_mat is None


def test_mpii_gt_mat_round_trip_and_head_boxes(tmp_path):
    entries = [mpii_entry(), mpii_entry()]
    entries[1]["head_box"] = [50, 20, 70, 40]
    write_mpii(tmp_path, entries)
    rng = np.random.default_rng(0)
    visible, joints, heads = rng.integers(0, 2, (2, 16)) > 0, rng.uniform(0, 99, (2, 16, 2)), rng.uniform(0, 49, (2, 2, 2))
    write_gt_valid(tmp_path / "annot" / "gt_valid.mat", joints, visible, heads)
    first = (tmp_path / "annot" / "gt_valid.mat").read_bytes()
    write_gt_valid(tmp_path / "annot" / "gt_valid.mat", joints, visible, heads)
    assert (tmp_path / "annot" / "gt_valid.mat").read_bytes() == first  # no timestamp
    gt = load_gt_valid(tmp_path / "annot" / "gt_valid.mat")
    np.testing.assert_array_equal(gt.visible, visible)
    np.testing.assert_allclose(gt.joints, joints)
    np.testing.assert_allclose(gt.head_boxes, heads)
    cfg = Config()
    cfg.data.root = str(tmp_path)
    ds = build_dataset(cfg, "val", (64, 64), 3.0)
    assert ds.gt_mat.endswith("gt_valid.mat")
    assert ds.head_boxes is None  # only one entry has a head box
    np.testing.assert_allclose(ds.records[1].head_box, [49, 19, 69, 39])


def test_missing_root_names_the_config_key(tmp_path):
    cfg = Config()
    cfg.data.root = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match="data.root"):
        build_dataset(cfg, "train", (64, 64), 3.0)
