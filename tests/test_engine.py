"""Engine: losses fall, learning beats no learning, GT scores perfectly, resume is exact, DDP and CLI work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cdkd.checkpoint import load_checkpoint
from cdkd.config import ConfigError, load_config
from cdkd.engine.evaluate import evaluate, score_predictions
from cdkd.engine.train import build_training, compute_losses, fit

REPO = Path(__file__).resolve().parents[1]


def tiny(mode: str, synth: Path, *extra: str, teacher: Path | None = None):
    preset = "tiny_teacher" if mode == "teacher" else "tiny_student"
    overrides = [f"data.root={synth}/mpii", f"train.mode={mode}"]
    if teacher is not None:
        overrides.append(f"teacher.checkpoint={teacher}")
    return load_config(preset, [*overrides, *extra])


@pytest.mark.parametrize(
    "mode, weights, term",
    [
        ("baseline", (), "task"),
        ("distill", ("loss.weight=0", "distill.alpha=1", "distill.beta=0"), "feature"),
        ("distill", ("loss.weight=0", "distill.alpha=0", "distill.beta=1"), "logit"),
    ],
)
def test_a_few_steps_lower_each_loss(synth, teacher_ckpt, tmp_path, mode, weights, term):
    """Each term of Eq. 8, optimised through the engine on one batch, goes down."""
    cfg = tiny(mode, synth, "train.lr=0.003", *weights, teacher=teacher_ckpt)
    t = build_training(cfg, tmp_path / "run")
    if t.distiller is not None:
        t.distiller.set_epoch(0)
    batch = next(iter(torch.utils.data.DataLoader(t.train_set, batch_size=8)))
    history = []
    for _ in range(12):
        loss, terms, _ = compute_losses(t.model, batch, t.cfg, t.device, t.teacher, t.distiller)
        t.optimizer.zero_grad()
        loss.backward()
        t.optimizer.step()
        history.append(float(terms[term]))
    assert history[-1] < 0.9 * history[0], history


def test_training_raises_pckh_above_untrained(synth, tmp_path):
    cfg = tiny("baseline", synth, "model.input_size=[64,64]", "train.epochs=8", "train.lr_steps=[100]",
               "train.max_steps_per_epoch=0", "train.lr=0.003", "train.val_every=100", "data.max_samples=0")
    t = build_training(cfg, tmp_path / "untrained")
    untrained = evaluate(t.bare_model, t.val_set, cfg, t.device, progress=False)["Mean"]
    run = fit(cfg, run_dir=tmp_path / "trained")
    trained = json.loads((run / "metrics.json").read_text())["metrics"]["Mean"]
    assert trained > untrained + 5.0, (untrained, trained)


def test_ground_truth_as_predictions_scores_100(synth):
    from cdkd.data.topdown import build_dataset

    cfg = tiny("baseline", synth)
    ds = build_dataset(cfg, "val", (32, 32), 2.0, train=False)
    n = len(ds)
    pred = {"coords": np.stack([r.joints[:, :2] for r in ds.records]), "scores": np.ones((n, 16)),
            "index": np.arange(n), "image_id": np.array([r.image_id for r in ds.records]),
            "box_score": np.ones(n), "area": np.array([r.area for r in ds.records])}
    assert score_predictions(pred, ds, cfg)["Mean"] == pytest.approx(100.0)
    pred["coords"] = pred["coords"] + 40.0  # far off: PCKh must collapse
    assert score_predictions(pred, ds, cfg)["Mean"] < 50.0


def test_resolution_must_divide_the_teachers():
    """Checked once, when the config is loaded (before any run folder or data exists)."""
    with pytest.raises(ConfigError, match="model.input_size"):
        load_config("tiny_student", ["model.input_size=[64,64]", "teacher.input_size=[96,96]"])
    for merge in ("overlap", "centred"):
        load_config("tiny_student", ["model.input_size=[64,64]", "teacher.input_size=[96,96]", f"distill.merge={merge}"])


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["state_dict"]


@pytest.mark.parametrize("fidelity", ["paper", "official"])
def test_two_epochs_equal_one_plus_resume_plus_one(synth, teacher_ckpt, tmp_path, fidelity):
    cfg = tiny("distill", synth, "train.epochs=2", "train.lr_steps=[1]", "train.max_steps_per_epoch=3",
               f"distill.fidelity={fidelity}", teacher=teacher_ckpt)
    straight = fit(cfg, run_dir=tmp_path / "straight")
    part = fit(cfg, run_dir=tmp_path / "resumed", stop_after=1)
    assert load_checkpoint(part / "last.pth")["epoch"] == 0 and not (part / "metrics.json").exists()
    resumed = fit(cfg, run_dir=part, resume=part / "last.pth")
    env = json.loads((resumed / "environment.json").read_text())  # both starts recorded, oldest first
    assert [e["thread_policy"] for e in env["earlier_starts"]] == [env["thread_policy"]]
    assert env["earlier_starts"][0]["started"] <= env["started"]
    assert "earlier_starts" not in json.loads((straight / "environment.json").read_text())
    a, b = _weights(straight / "last.pth"), _weights(resumed / "last.pth")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    da = load_checkpoint(straight / "last.pth")["distiller"]
    db = load_checkpoint(resumed / "last.pth")["distiller"]
    if fidelity == "official":  # frozen projectors are not stored, only their checksums
        assert not any(k.startswith("sape.projectors") for k in da)
        assert load_checkpoint(straight / "last.pth")["distiller_frozen"]
    assert da.keys() == db.keys()
    for key in da:
        assert torch.equal(da[key], db[key]), key
    rows = [json.loads(line) for line in (part / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    # each epoch records the rate it trained at (the drop at lr_steps=[1] is epoch 1's, not epoch 0's)
    assert [r["lr"] for r in rows] == pytest.approx([cfg.train.lr, cfg.train.lr * cfg.train.lr_factor])


def _model_from(state):
    from cdkd.models import build_pose_model
    from cdkd.models.simcc import from_official_keys

    m = state["model"]
    model = build_pose_model(m["arch"], m["num_joints"], tuple(m["input_size"]), m["split_ratio"])
    model.load_state_dict(from_official_keys(state["state_dict"]))
    return model


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


@pytest.mark.slow
def test_torchrun_two_process_gloo(synth, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cdkd", "train", "--config", "tiny_teacher", "--out", str(run),
           "--set", f"data.root={synth}/mpii", "--set", "train.device=cpu", "--set", "train.log_every=1",
           "--set", "train.max_steps_per_epoch=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "last.pth").exists() and (run / "metrics.json").exists()
    rows = (run / "steps.csv").read_text().splitlines()[1:]
    assert len(rows) == 2  # rank 0 alone logs: one row per step, not one per process
    assert len(list(run.glob("*.tmp*"))) == 0


@pytest.mark.slow
def test_cli_interrupt_then_resume(synth, tmp_path):
    run = tmp_path / "killed"
    base = [sys.executable, "-m", "cdkd", "train", "--config", "tiny_teacher", "--out", str(run),
            "--set", f"data.root={synth}/mpii", "--set", "train.epochs=4", "--set", "train.lr_steps=[3]",
            "--set", "train.max_steps_per_epoch=0", "--set", "data.max_samples=0"]
    proc = subprocess.Popen(base, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (run / "last.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(run / "last.pth")["epoch"]
    assert stopped_at < 3, "the run finished before it could be interrupted"
    done = subprocess.run([*base, "--resume"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_checkpoint(run / "last.pth")["epoch"] == 3
    epochs = [json.loads(line)["epoch"] for line in (run / "epochs.jsonl").read_text().splitlines()]
    assert epochs == sorted(set(epochs)) == [0, 1, 2, 3]
    steps = [line.split(",")[0] for line in (run / "steps.csv").read_text().splitlines()[1:]]
    assert len(steps) == len(set(steps)), "the interrupted epoch's log rows must not repeat"


def test_eval_cli_writes_metrics_with_protocol(synth, teacher_ckpt, tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "cdkd", "eval", "--checkpoint", str(teacher_ckpt), "--no-flip",
                           "--set", f"data.root={synth}/mpii", "--out", str(out)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["protocol"]["flip_test"] is False and record["protocol"]["boxes"] == "ground truth"
    assert set(record["metrics"]) >= {"Head", "Sho.", "Elb.", "Wri.", "Hip", "Knee", "Ank.", "Mean", "Mean@0.1"}
    assert record["model"]["params"] == sum(p.numel() for p in _model_from(load_checkpoint(teacher_ckpt)).parameters())


def coco_cfg(synth: Path, *extra: str):
    return load_config("tiny_teacher", [f"data.root={synth}/coco", "data.dataset=coco", "data.train_set=train",
                                        "data.val_set=val", "loss.kind=sum", "loss.label_smoothing=0.1", *extra])


def test_coco_ground_truth_as_predictions_scores_ap_1(synth):
    from cdkd.data.topdown import build_dataset

    cfg = coco_cfg(synth)
    ds = build_dataset(cfg, "val", (64, 64), 2.0, train=False)
    n = len(ds)
    joints = np.stack([r.joints for r in ds.records])
    pred = {"coords": joints[..., :2], "scores": np.ones((n, 17)), "index": np.arange(n),
            "image_id": np.array([r.image_id for r in ds.records]), "box_score": np.ones(n),
            "area": np.array([r.area for r in ds.records])}
    assert score_predictions(pred, ds, cfg)["AP"] == pytest.approx(1.0)
    pred["coords"] = pred["coords"] + np.random.default_rng(0).normal(0, 6, pred["coords"].shape)
    assert score_predictions(pred, ds, cfg)["AP"] < 0.9


@pytest.mark.parametrize("boxes", ["gt", "det"])
def test_coco_training_and_evaluation_with_gt_and_detector_boxes(synth, tmp_path, boxes):
    extra = ["data.use_gt_bbox=false", "data.det_file=person_detection_results/det_val.json"] if boxes == "det" else []
    run = fit(coco_cfg(synth, *extra), run_dir=tmp_path / boxes)
    record = json.loads((run / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "APM", "APL", "AR"} <= set(record["metrics"])
    assert record["protocol"]["boxes"] == ("ground truth" if boxes == "gt" else
                                           "detections (person_detection_results/det_val.json)")
    assert record["model"]["num_joints"] == 17


class CentreModel(torch.nn.Module):
    """Predicts every joint at the crop centre (W/2, H/2): its image position must be the box centre."""

    def __init__(self, input_size, k=2.0, joints=16):
        super().__init__()
        self.input_size, self.split_ratio, self.num_joints, self.arch = tuple(input_size), k, joints, "centre"
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, image):
        from cdkd.models.simcc import PoseOutput

        h, w = self.input_size
        b, k, j = image.shape[0], self.split_ratio, self.num_joints
        x = torch.full((b, j, int(w * k)), -10.0)
        y = torch.full((b, j, int(h * k)), -10.0)
        x[..., int(w / 2 * k)] = 10.0
        y[..., int(h / 2 * k)] = 10.0
        return PoseOutput(x, y, torch.zeros(b, j, h // 4, w // 4))


@pytest.mark.parametrize("size", [(64, 64), (64, 32), (32, 64)])
def test_predictions_map_back_through_the_crop(synth, size):
    from cdkd.data.topdown import build_dataset
    from cdkd.engine.evaluate import predict_dataset

    cfg = tiny("baseline", synth)
    ds = build_dataset(cfg, "val", size, 2.0, train=False)
    pred = predict_dataset(CentreModel(size), ds, cfg, torch.device("cpu"), flip=False, progress=False)
    centres = np.stack([ds.records[i].center for i in pred["index"]])  # [N, 2]
    np.testing.assert_allclose(pred["coords"], np.repeat(centres[:, None], 16, axis=1), atol=1e-4)
    scales = np.stack([ds.records[i].scale for i in pred["index"]])
    np.testing.assert_allclose(pred["area"], np.prod(scales * 200.0, axis=1), rtol=1e-6)  # OKS-NMS area (HRNet)


@pytest.mark.parametrize("amp, channels_last", [("bf16", True), ("fp16", False)])
def test_mixed_precision_and_channels_last_paths(synth, teacher_ckpt, tmp_path, amp, channels_last):
    """The CUDA-oriented options run through the same code on CPU: autocast, GradScaler, channels_last."""
    cfg = tiny("distill", synth, f"train.amp={amp}", f"train.channels_last={str(channels_last).lower()}",
               teacher=teacher_ckpt)
    t = build_training(cfg, tmp_path / "run")
    batch = next(iter(torch.utils.data.DataLoader(t.train_set, batch_size=4)))
    loss, terms, _ = compute_losses(t.model, batch, t.cfg, t.device, t.teacher, t.distiller)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    t.scaler.scale(loss).backward()
    grads = [p.grad for p in t.bare_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if channels_last:
        assert t.bare_model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_torch_compile_option_trains_and_saves_plain_weights(synth, tmp_path):
    run = fit(tiny("teacher", synth, "train.compile=true", "train.max_steps_per_epoch=2"), run_dir=tmp_path / "c")
    state = load_checkpoint(run / "last.pth")
    assert not any(k.startswith(("_orig_mod.", "module.", "backbone.", "head.")) for k in state["state_dict"])
    assert (run / "metrics.json").exists()


@pytest.mark.parametrize("override, expected", [
    ("data.root=/no/such/root", "data.root"),
    ("teacher.checkpoint=/no/such/teacher.pth", "/no/such/teacher.pth"),
    ("model.input_size=[32,32]", None),  # control: runs to completion
])
def test_cli_bad_input_gives_a_clear_error_not_a_traceback(synth, teacher_ckpt, tmp_path, override, expected):
    args = [sys.executable, "-m", "cdkd", "train", "--config", "tiny_student", "--out", str(tmp_path / "run"),
            "--set", f"data.root={synth}/mpii", "--set", f"teacher.checkpoint={teacher_ckpt}",
            "--set", "train.max_steps_per_epoch=1", "--set", override]
    proc = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
    if expected is None:
        assert proc.returncode == 0, proc.stderr[-2000:]
        return
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_etht_strength_xi_scales_the_temperature_updates_under_adam(synth, teacher_ckpt, tmp_path):
    """Adam ignores a gradient's scale, so the engine scales the ETHT group's lr by xi (Eq. 11-12)."""
    from cdkd.distill.etht import set_etht_lr

    moves = {}
    for xi_max in (0.2, 1.0):
        cfg = tiny("distill", synth, f"distill.xi_max={xi_max}", "distill.xi_epochs=1", "train.weight_decay=0.01",
                   teacher=teacher_ckpt)
        t = build_training(cfg, tmp_path / f"xi{xi_max}")
        t.distiller.set_epoch(5)  # past the ramp: xi == xi_max
        set_etht_lr(t.optimizer, t.distiller.xi)
        etht_group = [g for g in t.optimizer.param_groups if g.get("etht")]
        assert len(etht_group) == 1 and etht_group[0]["weight_decay"] == 0.0
        theta = t.distiller.temperature.theta
        start = float(theta)
        batch = next(iter(torch.utils.data.DataLoader(t.train_set, batch_size=4)))
        # Adam's first step is lr * sign(grad): exactly lr * xi here
        loss, _, _ = compute_losses(t.model, batch, t.cfg, t.device, t.teacher, t.distiller)
        t.optimizer.zero_grad()
        loss.backward()
        t.optimizer.step()
        moves[xi_max] = float(theta) - start
    assert moves[1.0] != 0.0
    assert abs(moves[1.0]) == pytest.approx(5 * abs(moves[0.2]), rel=1e-3)
    assert abs(moves[1.0]) == pytest.approx(cfg.train.lr, rel=1e-3)


def test_same_class_ablation_gets_the_teachers_class_count(synth, teacher_ckpt, tmp_path):
    from cdkd.pipeline import student_config

    cfg = student_config("tiny", "same-class", 32, 0, teacher_ckpt.parent, data_root=f"{synth}/mpii")
    assert cfg.model.split_ratio == cfg.teacher.split_ratio * cfg.teacher.input_size[0] / 32
    t = build_training(cfg, tmp_path / "same")
    assert t.distiller.student_classes == t.distiller.teacher_classes
    batch = next(iter(torch.utils.data.DataLoader(t.train_set, batch_size=4)))
    loss, terms, _ = compute_losses(t.model, batch, t.cfg, t.device, t.teacher, t.distiller)
    assert torch.isfinite(loss) and float(terms["logit"]) > 0
