"""Runs that never lose or misreport (issue 12): re-runs, resume, bad annotations, validation, predict.

One test (or one parametrised group) per defect of the issue, in its order; each fails on the code
before the fix. Everything runs on tiny data the tests write themselves.
"""

import json
import math
import shutil
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cdkd.checkpoint import CheckpointError, load_checkpoint
from cdkd.config import Config, ConfigError, load_config
from cdkd.data import DataError
from cdkd.data.synthetic import synthesize
from cdkd.data.topdown import build_dataset, read_image
from cdkd.engine.cli import cli, one_line
from cdkd.engine.evaluate import evaluate, write_metrics
from cdkd.engine.train import RunFolderError, fit
from cdkd.metrics.coco import oks_matrix, oks_nms
from cdkd.models import build_pose_model
from cdkd.models.load import save_checkpoint
from cdkd.pipeline import is_complete, reuse_or_train
from tests.test_datasets import coco_ann, coco_cfg, mpii_entry, write_coco, write_image, write_mpii
from tests.test_studies import finished, synth, teacher_cfg  # noqa: F401 - the same tiny data, config and finished run


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def snapshot(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


# --- 1. a re-run never destroys a finished run ---------------------------------------------------
def test_rerun_refuses_and_overwrite_replaces_only_when_finished(synth, finished, tmp_path):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    with pytest.raises(RunFolderError, match="--overwrite"):
        fit(teacher_cfg(synth), run_dir=run)
    assert snapshot(run) == before
    # an early failure of the new run (no teacher for distillation) leaves the old run as it was
    with pytest.raises(ConfigError, match="teacher.checkpoint"):
        fit(teacher_cfg(synth, "train.mode=distill", "teacher.checkpoint="), run_dir=run, overwrite=True)
    assert snapshot(run) == before and sorted(p.name for p in run.parent.iterdir()) == ["run"]
    fit(teacher_cfg(synth, "train.seed=1"), run_dir=run, overwrite=True)
    assert json.loads((run / "metrics.json").read_text())["config"]["train"]["seed"] == 1
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]  # no staging folder left


def test_cli_rerun_is_one_line_exit_2(synth, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    rc = cli(["--config", "tiny_teacher", "--out", str(run), "--set", f"data.root={synth}/mpii"])
    err = capsys.readouterr().err
    assert rc == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (run / "best.pth").exists() and (run / "metrics.json").exists()


# --- 2. resume and reuse never keep old settings while the records claim new ones -----------------
def test_resume_refuses_a_changed_config_and_applies_an_accepted_one(synth, tmp_path):
    run = tmp_path / "run"
    cfg = teacher_cfg(synth, "train.epochs=2", "train.lr_steps=[1]")
    fit(cfg, run_dir=run, stop_after=1)
    config_before = (run / "config.yaml").read_text()
    changed = teacher_cfg(synth, "train.epochs=2", "train.lr_steps=[1]", "train.lr=0.5")
    with pytest.raises(ConfigError, match="train.lr"):
        fit(changed, run_dir=run, resume="auto")
    assert (run / "config.yaml").read_text() == config_before
    fit(changed, run_dir=run, resume="auto", accept_config_change=True)
    groups = load_checkpoint(run / "last.pth")["optimizer"]["param_groups"]
    assert groups[0]["initial_lr"] == 0.5 and groups[0]["lr"] == pytest.approx(0.05)  # after the step at 1
    record = json.loads((run / "metrics.json").read_text())
    assert record["config"]["train"]["lr"] == 0.5
    assert record["config_changes"] == [{"epoch": 1, "changes": {"train.lr": [0.001, 0.5]}}]


def test_resume_with_another_optimizer_or_from_best_pth(synth, tmp_path):
    run = tmp_path / "run"
    fit(teacher_cfg(synth, "train.epochs=2"), run_dir=run, stop_after=1)
    with pytest.raises(CheckpointError, match="last.pth"):
        fit(teacher_cfg(synth, "train.epochs=2"), run_dir=run, resume=run / "best.pth")
    fit(teacher_cfg(synth, "train.epochs=2", "train.optimizer=sgd"), run_dir=run, resume="auto",
        accept_config_change=True)
    assert "momentum" in load_checkpoint(run / "last.pth")["optimizer"]["param_groups"][0]


def test_pipeline_reuses_only_an_equal_config_and_a_whole_metrics_file(synth, finished, tmp_path):
    run = copy_run(finished, tmp_path)
    assert reuse_or_train(teacher_cfg(synth, "train.device=cpu", "train.threads=1"), run, force=False) == run
    with pytest.raises(ConfigError, match="data.workers"):  # the augmentation streams: another run
        reuse_or_train(teacher_cfg(synth, "data.workers=1"), run, force=False)
    with pytest.raises(ConfigError, match="train.seed"):
        reuse_or_train(teacher_cfg(synth, "train.seed=4"), run, force=False)
    (run / "metrics.json").write_text("")  # a kill while it was written
    assert not is_complete(run)


def test_metrics_file_is_replaced_atomically(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"old": true}')
    model = build_pose_model("hrnet_w8_tiny", 16, (64, 64), 2.0)

    class Unwritable:
        def __float__(self):
            raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_metrics(path, {"Mean": Unwritable()}, Config(), model)
    assert json.loads(path.read_text()) == {"old": True}


# --- 3. non-finite, impossible and untyped annotation values --------------------------------------
def _mpii(**change):
    entry = mpii_entry()
    entry.update(change)
    return entry


def _joints(j, x, y):
    joints = [list(p) for p in mpii_entry()["joints"]]
    joints[j] = [x, y]
    return joints


@pytest.mark.parametrize("entry, reason", [
    (_mpii(joints=_joints(3, float("nan"), 40.0)), "non-finite"),
    (_mpii(center=[float("inf"), 60.0]), "non-finite"),
    (_mpii(joints=_joints(5, -5000.0, 40.0)), "far from the person"),
    (_mpii(joints_vis=[1] * 15 + [9]), "joints_vis 9"),
    (_mpii(scale="big"), "non-numeric"),
    (_mpii(center=[70.0, 60.0, 1.0]), "3 values"),
    (_mpii(image=None), "image None"),
], ids=["nan_joint", "inf_center", "joint_far_away", "visibility_9", "string_scale", "3_element_center", "null_image"])
def test_bad_mpii_values_are_named_in_error_and_skip_mode(tmp_path, entry, reason):
    write_mpii(tmp_path, [mpii_entry(), entry])
    cfg = Config()
    cfg.data.root = str(tmp_path)
    with pytest.raises(DataError, match=f"valid.json: annotation #1 .*{reason}"):
        build_dataset(cfg, "val", (64, 64), 3.0)
    cfg.data.on_bad = "skip"
    with pytest.warns(UserWarning, match="annotation #1"):
        ds = build_dataset(cfg, "val", (64, 64), 3.0)
    assert len(ds) == 1 and len(ds.skipped) == 1


def _coco(**change):
    ann = coco_ann(7)
    for key, (index, value) in change.items():
        ann[key] = list(ann[key])
        ann[key][index] = value
    return ann


@pytest.mark.parametrize("ann, reason", [
    (_coco(keypoints=(0, float("nan"))), "non-finite"),
    (_coco(keypoints=(0, -5000.0)), "far outside"),
    (_coco(keypoints=(1, 1e30)), "far outside"),
    (_coco(keypoints=(2, 9)), "visibility 9"),
    (_coco(bbox=(2, float("nan"))), "bad box"),
    (_coco(keypoints=(0, "12")), "non-numeric"),
], ids=["nan_keypoint", "x_minus_5000", "y_1e30", "visibility_9", "nan_box_width", "string_keypoint"])
def test_bad_coco_values_are_named_in_error_and_skip_mode(tmp_path, ann, reason):
    write_coco(tmp_path, [coco_ann(1), ann])
    with pytest.raises(DataError, match=f"person_keypoints_val.json: annotation id 7 .*{reason}"):
        build_dataset(coco_cfg(tmp_path), "val", (64, 64), 2.0)
    with pytest.warns(UserWarning, match="annotation id 7"):
        ds = build_dataset(coco_cfg(tmp_path, on_bad="skip"), "val", (64, 64), 2.0)
    assert [r.ann_id for r in ds.records] == [1] and sorted(ds.coco.anns) == [1]  # evaluated = trained


# --- 4. validation data is checked before training; skipped items are recorded -------------------
@pytest.fixture()
def own_synth(tmp_path):
    synthesize(tmp_path / "data", train=16, val=8, seed=7)
    return tmp_path / "data" / "mpii"


def _first_val_image(root: Path) -> Path:
    return root / "images" / json.loads((root / "annot" / "valid.json").read_text())[0]["image"]


def test_missing_val_image_is_found_before_the_first_epoch(own_synth, tmp_path):
    _first_val_image(own_synth).unlink()
    cfg = load_config("tiny_teacher", [f"data.root={own_synth}", "data.max_samples=0"])
    with pytest.raises(DataError, match="before training"):
        fit(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "steps.csv").exists() and not (tmp_path / "run" / "last.pth").exists()


def test_skip_mode_records_what_it_skipped_and_scores_the_rest(own_synth, tmp_path):
    image = _first_val_image(own_synth)
    image.unlink()
    cfg = load_config("tiny_teacher", [f"data.root={own_synth}", "data.max_samples=0", "data.on_bad=skip",
                                       "train.max_steps_per_epoch=1"])
    with pytest.warns(UserWarning):
        run = fit(cfg, run_dir=tmp_path / "run")
    skipped = json.loads((run / "skipped.json").read_text())
    assert skipped["val"]["count"] >= 1 and image.name in skipped["val"]["skipped"][0]["where"]
    record = json.loads((run / "metrics.json").read_text())
    assert record["metrics"]["persons_dropped"] == skipped["val"]["count"]
    assert record["metrics"]["persons_evaluated"] == record["protocol"]["persons"]


def test_unreadable_val_image_in_a_worker_is_not_scored(own_synth):
    cfg = load_config("tiny_teacher", [f"data.root={own_synth}", "data.max_samples=0", "data.on_bad=skip",
                                       "data.workers=1"])
    ds = build_dataset(cfg, "val", (64, 64), 2.0, train=False)
    image = _first_val_image(own_synth)
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # header fine, body cut: fails only when decoded
    persons = sum(r.image == str(image) for r in ds.records)
    model = build_pose_model("hrnet_w8_tiny", 16, (64, 64), 2.0)
    with pytest.warns(UserWarning):
        metrics = evaluate(model, ds, cfg, torch.device("cpu"), flip=False, progress=False)
    assert metrics["persons_dropped"] == persons >= 1
    assert metrics["persons_evaluated"] == len(ds) - persons


# --- 5. duplicate COCO ids ----------------------------------------------------------------------
def test_duplicate_annotation_and_image_ids_are_named(tmp_path):
    write_coco(tmp_path, [coco_ann(1), coco_ann(7), coco_ann(7, bbox=(10, 10, 30, 40))])
    with pytest.raises(DataError, match="annotation id 7: .*more than one"):
        build_dataset(coco_cfg(tmp_path), "val", (64, 64), 2.0)
    with pytest.warns(UserWarning, match="annotation id 7"):
        ds = build_dataset(coco_cfg(tmp_path, on_bad="skip"), "val", (64, 64), 2.0)
    assert [r.ann_id for r in ds.records] == [1] and sorted(ds.coco.anns) == [1]
    images = [{"id": 1, "file_name": "000000000001.jpg", "width": 160, "height": 120},
              {"id": 1, "file_name": "000000000002.jpg", "width": 160, "height": 120}]
    write_coco(tmp_path, [coco_ann(1)], images=images)
    with pytest.raises(DataError, match="image id 1: .*more than one"):
        build_dataset(coco_cfg(tmp_path), "val", (64, 64), 2.0)


# --- 6. truncated JPEGs ---------------------------------------------------------------------------
def test_truncated_jpeg_is_an_error_in_training_data_and_predict(tmp_path):
    path = tmp_path / "a.jpg"
    write_image(path, 160, 120)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    assert cv2.imread(str(path)) is not None  # OpenCV alone accepts it (grey fill)
    with pytest.raises(DataError, match="truncated JPEG"):
        read_image(str(path))
    from cdkd.inference import predict_image

    model = build_pose_model("hrnet_w8_tiny", 16, (64, 64), 2.0)
    with pytest.raises(DataError, match="truncated JPEG"):
        predict_image(str(path), [10, 10, 50, 80], model, flip=False)


# --- 7. tracebacks instead of messages ---------------------------------------------------------------
@pytest.mark.parametrize("override, key", [
    ("model.arch=hrnet_w33", "model.arch"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("data.workers=-1", "data.workers"),
    ("train.lr=nan", "train.lr"),
])
def test_bad_config_values_name_their_key_before_any_folder(synth, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        teacher_cfg(synth, override)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_config_error(synth, tmp_path, capsys):
    rc = cli(["--config", "tiny_teacher", "--out", str(tmp_path / "run"), "--set", f"data.root={synth}/mpii",
              "--set", "train.device=cuda"])
    assert rc == 2 and "train.device" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_unwritable_out_and_missing_checkpoint_are_one_line(synth, finished, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = cli(["--config", "tiny_teacher", "--out", str(blocker / "run"), "--set", f"data.root={synth}/mpii"])
    assert rc == 2 and str(blocker) in capsys.readouterr().err
    rc = cli(["--checkpoint", str(finished / "best.pth"), "--out", str(blocker / "eval.json")], command="eval")
    err = capsys.readouterr().err
    assert rc == 2 and str(blocker) in err and len(err.strip().splitlines()) == 1
    from cdkd.export import cli as export_cli

    assert export_cli(["--checkpoint", str(tmp_path / "none.pth")]) == 2
    assert "none.pth" in capsys.readouterr().err
    assert export_cli(["--checkpoint", str(finished / "best.pth"), "--out", str(blocker / "m.onnx")]) == 2
    assert str(blocker) in capsys.readouterr().err


def test_disk_full_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model = build_pose_model("hrnet_w8_tiny", 16, (64, 64), 2.0)
    path = save_checkpoint(tmp_path / "last.pth", model, epoch=1)

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4352 vs 4240")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*last.pth"):
        save_checkpoint(path, model, epoch=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pth"]


class _Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise DataError(f"image file not found: /data/{index}.jpg")


def test_dataloader_worker_error_is_reduced_to_its_message():
    loader = torch.utils.data.DataLoader(_Broken(), num_workers=1)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    assert one_line(info.value) == "image file not found: /data/0.jpg"


def test_help_texts_have_defaults_and_no_rst(capsys):
    from cdkd.export import cli as export_cli

    for run in (lambda: cli(["--help"]), lambda: cli(["--help"], command="eval"), lambda: export_cli(["--help"])):
        with pytest.raises(SystemExit):
            run()
        text = capsys.readouterr().out
        assert "``" not in text
        blocks = text.split("options:")[1].split("\n  -")[2:]  # every option after -h
        assert len(blocks) >= 5 and all("default" in b or "(required)" in b for b in blocks), text


# --- 8. cdkd.predict_image arguments ---------------------------------------------------------------------
def test_predict_validates_arguments_and_flags_boxes_outside():
    from cdkd.inference import predict_image

    model = build_pose_model("hrnet_w8_tiny", 16, (64, 64), 2.0)
    image = np.full((120, 160, 3), 128, dtype=np.uint8)
    boxes = [[10, 10, 50, 80], [500, 500, 40, 40], [20, 20, 30, 30]]
    with pytest.raises(ValueError, match="batch_size"):
        predict_image(image, boxes, model, flip=False, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        predict_image(np.zeros((0, 0, 3), dtype=np.uint8), boxes, model, flip=False)
    out = predict_image(image, boxes, model, flip=False, batch_size=2)
    assert out["keypoints"].shape[0] == 3
    assert out["in_image"].tolist() == [True, False, True]
    assert (out["scores"][1] == 0).all() and (out["scores"][[0, 2]] > 0).all()


# --- 9. killed saves and unsafe files -------------------------------------------------------------
class _Payload:
    pass


def test_stale_temporaries_are_removed_and_no_weights_only_false_advice(tmp_path):
    model = build_pose_model("hrnet_w8_tiny", 16, (64, 64), 2.0)
    stale = tmp_path / ".last.pth.tmp999999999"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "last.pth", model)
    assert not stale.exists()
    evil = tmp_path / "evil.pth"
    torch.save({"x": _Payload()}, evil)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(evil)
    assert "evil.pth" in str(info.value) and "could run code" in str(info.value)
    assert "weights_only" not in str(info.value)
    assert len(str(info.value).splitlines()) == 1


# --- 10. OKS-NMS memory ----------------------------------------------------------------------------
def _reference_nms(keypoints, scores, areas, thr):
    order = np.argsort(-scores, kind="stable")
    ovr = oks_matrix(keypoints[order], areas[order], None, None)
    suppressed, keep = np.zeros(len(order), dtype=bool), []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed[i + 1:] |= ovr[i, i + 1:] > thr
    return order[keep]


def test_oks_nms_memory_is_linear_in_persons():
    rng = np.random.default_rng(0)
    small = rng.uniform(0, 60, (60, 17, 3)), rng.uniform(0, 1, 60), rng.uniform(200, 900, 60)
    assert oks_nms(*small, thr=0.5).tolist() == _reference_nms(*small, thr=0.5).tolist()
    n = 1000  # the full matrix would take n*n*17*2*8 bytes = 272 MB
    big = rng.uniform(0, 2000, (n, 17, 3)), rng.uniform(0, 1, n), rng.uniform(50, 500, n)
    tracemalloc.start()
    oks_nms(*big, thr=0.9)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_reproduce_timing_adds_up_every_call_including_an_interrupted_one(tmp_path):
    """A study made by several calls (finished runs reused) reports the sum of its calls, not the last one."""
    from cdkd.reproduce import Timing

    machine = {"git": {"commit": "a" * 40, "dirty": False}, "cpu_count": 2, "processor": "x86_64",
               "torch_threads": 2, "cuda": None}
    path = tmp_path / "timing.json"
    first = Timing(path, "python -m cdkd reproduce", machine)
    first.add("01_data.ipynb", 60.0)
    first.add("02_teacher.ipynb", 120.0)  # then interrupted: no finish()
    assert json.loads(path.read_text())["calls"][0]["finished"] is False
    second = Timing(path, "python -m cdkd reproduce --seeds 7", {**machine, "git": {"commit": "b" * 40, "dirty": True}})
    second.add("01_data.ipynb", 6.0)
    second.finish(30.0)
    record = json.loads(path.read_text())
    assert [c["finished"] for c in record["calls"]] == [False, True]
    assert record["total_seconds"] == pytest.approx(180.0 + 30.0)
    assert record["steps"] == [{"notebook": "01_data.ipynb", "seconds": 6.0}]
    text = second.summary_text()
    assert "3.5 minutes over 2 calls" in text and "interrupted" in text and "bbbbbbb with uncommitted" in text
    path.write_text("{not json")
    with pytest.raises(SystemExit, match="timing.json"):
        Timing(path, "python -m cdkd reproduce", machine)


def test_git_state_is_dirty_for_code_changes_not_for_replaced_results(tmp_path):
    """A fresh reproduction deletes the committed results first; that alone must not mark the code dirty."""
    import subprocess

    from cdkd.engine.run import git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "cdkd").mkdir()
    (tmp_path / "cdkd" / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "demo").mkdir(parents=True)
    (tmp_path / "results" / "demo" / "summary.md").write_text("old\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_state(tmp_path)["dirty"] is False
    shutil.rmtree(tmp_path / "results" / "demo")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "cdkd" / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True
