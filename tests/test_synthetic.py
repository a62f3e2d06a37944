"""The synthetic people dataset: determinism, formats, and the real loaders on it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from cdkd.__main__ import main
from cdkd.config import Config
from cdkd.data import DataError
from cdkd.data.coco import load_coco_api
from cdkd.data.synthetic import ensure_synthetic, synthesize
from cdkd.data.topdown import build_dataset
from cdkd.joints import COCO_META, MPII_META
from cdkd.metrics.mpii import load_gt_valid

TRAIN, VAL = 14, 9


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, train=TRAIN, val=VAL, seed=3)
    return out


def all_files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_same_seed_same_bytes_other_seed_other_bytes(synth, tmp_path):
    synthesize(tmp_path / "again", train=TRAIN, val=VAL, seed=3, workers=2)
    synthesize(tmp_path / "other", train=TRAIN, val=VAL, seed=4)
    first, again, other = all_files(synth), all_files(tmp_path / "again"), all_files(tmp_path / "other")
    assert first.keys() == again.keys() and all(first[k] == again[k] for k in first)
    images = [k for k in first if k.endswith(".jpg")]
    assert images and all(first[k] != other.get(k) for k in images)


def test_layout_and_counts(synth):
    for rel in ["coco/annotations/person_keypoints_train.json", "coco/annotations/person_keypoints_val.json",
                "coco/person_detection_results/det_val.json", "mpii/annot/train.json", "mpii/annot/valid.json",
                "mpii/annot/gt_valid.mat", "synth_summary.json"]:
        assert (synth / rel).is_file(), rel
    assert (synth / "coco" / "images").is_symlink() and (synth / "mpii" / "images").is_symlink()
    summary = json.loads((synth / "synth_summary.json").read_text())
    assert summary["splits"]["train"]["persons"] == TRAIN and summary["splits"]["val"]["persons"] == VAL
    assert len(json.loads((synth / "mpii" / "annot" / "valid.json").read_text())) == VAL


def test_coco_annotations_load_with_pycocotools_and_are_consistent(synth):
    coco = load_coco_api(synth / "coco" / "annotations" / "person_keypoints_train.json")
    assert len(coco.getAnnIds()) == TRAIN and coco.loadCats(1)[0]["keypoints"] == list(COCO_META.joint_names)
    visible_checked = 0
    for ann in coco.loadAnns(coco.getAnnIds()):
        kp = np.array(ann["keypoints"]).reshape(17, 3)
        assert set(kp[:, 2]) <= {0, 1, 2} and ann["num_keypoints"] == (kp[:, 2] > 0).sum() > 0
        assert (kp[kp[:, 2] == 0, :2] == 0).all()
        assert ann["bbox"][2] > 0 and ann["bbox"][3] > 0 and ann["area"] > 0 and ann["iscrowd"] == 0
        info = coco.imgs[ann["image_id"]]
        labelled = kp[kp[:, 2] > 0]
        assert (labelled[:, 0] <= info["width"] - 1).all() and (labelled[:, 1] <= info["height"] - 1).all()
        # a joint marked visible lies on its own person's visible pixels
        mask = mask_utils.decode(ann["segmentation"])
        for x, y, _ in kp[kp[:, 2] == 2]:
            assert mask[int(round(y)), int(round(x))] == 1
            visible_checked += 1
    assert visible_checked > TRAIN * 5


def test_synthetic_set_loads_through_coco_and_mpii_code_paths(synth):
    cfg = Config()
    cfg.data.root = str(synth / "mpii")  # MPII, as the defaults (data/synth/mpii)
    train_mpii = build_dataset(cfg, "train", (64, 64), 3.0, teacher_size=(256, 256))
    val_mpii = build_dataset(cfg, "val", (64, 64), 3.0)
    assert len(train_mpii) == TRAIN and len(val_mpii) == VAL
    assert val_mpii.gt_mat is not None and val_mpii.head_boxes.shape == (VAL, 4)
    gt = load_gt_valid(val_mpii.gt_mat)
    assert gt.joints.shape == (VAL, 16, 2) and gt.visible.shape == (VAL, 16) and gt.head_boxes.shape == (VAL, 2, 2)
    joints = np.stack([r.joints[:, :2] for r in val_mpii.records])  # [N, 16, 2] 0-based
    np.testing.assert_allclose(joints[gt.visible], gt.joints[gt.visible], atol=0.01)
    np.testing.assert_array_equal(gt.visible, np.stack([r.visible > 0 for r in val_mpii.records]))
    np.testing.assert_allclose(gt.head_boxes.reshape(VAL, 4), val_mpii.head_boxes, atol=0.01)

    cfg.data.dataset, cfg.data.root, cfg.data.val_set = "coco", str(synth / "coco"), "val"
    train_coco = build_dataset(cfg, "train", (64, 64), 3.0)
    val_coco = build_dataset(cfg, "val", (64, 64), 3.0)
    assert len(train_coco) == TRAIN and len(val_coco) == VAL
    cfg.data.use_gt_bbox, cfg.data.det_file = False, "person_detection_results/det_val.json"
    det_coco = build_dataset(cfg, "val", (64, 64), 3.0)
    assert len(det_coco) >= VAL and det_coco.coco is not None

    # the two formats describe the same people: shared joints agree
    pairs = [(COCO_META.joint_names.index(c), MPII_META.joint_names.index(m)) for c, m in
             [("left_shoulder", "l_shoulder"), ("right_knee", "r_knee"), ("left_wrist", "l_wrist"), ("right_hip", "r_hip")]]
    for rc, rm in zip(train_coco.records, train_mpii.records):
        for c, m in pairs:
            if rc.visible[c] > 0:
                np.testing.assert_allclose(rc.joints[c, :2], rm.joints[m, :2], atol=0.02)

    torch.manual_seed(0)
    batch = next(iter(torch.utils.data.DataLoader(train_mpii, batch_size=4, shuffle=True)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["teacher_image"].shape == (4, 3, 256, 256)
    assert batch["target_weight"].sum() > 0 and torch.isfinite(batch["image"]).all()


def test_ensure_synthetic_generates_once(tmp_path):
    root = tmp_path / "s"
    first = ensure_synthetic(root, train=3, val=2, seed=1)
    stamp = (root / "mpii" / "annot" / "train.json").stat().st_mtime_ns
    second = ensure_synthetic(root, train=3, val=2, seed=1)
    assert second["splits"] == first["splits"]
    assert (root / "mpii" / "annot" / "train.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="seed 1"):
        ensure_synthetic(root, train=5, val=2, seed=1)


def test_cli_writes_the_default_layout(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--train", "4", "--val", "3", "--seed", "2"]) == 0
    assert json.loads((out / "synth_summary.json").read_text())["splits"]["val"]["persons"] == 3
    assert (out / "mpii" / "annot" / "valid.json").is_file()
    assert '"persons": 4' in capsys.readouterr().out
