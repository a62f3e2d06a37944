"""The gradient-share diagnostic, its training log columns, the calibration rule and the control arm."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cdkd.config import ConfigError, load_config
from cdkd.distill.shares import part_gradients, shares_from
from cdkd.engine.calibrate import calibrate, measure
from cdkd.engine.train import build_training, compute_losses, fit

REPO = Path(__file__).resolve().parents[1]


def student(synth, teacher, *extra):
    return load_config("tiny_student", [f"data.root={synth}/mpii", f"teacher.checkpoint={teacher}", *extra])


def test_shares_from_known_gradients():
    """Hand-made gradients: the shares are the preconditioned norms' fractions; ratios are raw norms."""
    grads = {"task": [torch.tensor([3.0, 0.0])], "feature": [torch.tensor([0.0, 4.0])], "logit": [torch.zeros(2)]}
    plain = shares_from(grads, None)
    assert plain["shares"] == pytest.approx({"task": 3 / 7, "feature": 4 / 7, "logit": 0.0})
    assert plain["grad_norm_ratio"]["feature"] == pytest.approx(4 / 3)
    adam = shares_from(grads, [torch.tensor([9.0, 1.0])])  # sqrt(v) = (3, 1): u_task = (1, 0), u_feature = (0, 4)
    assert adam["shares"]["task"] == pytest.approx(1 / 5, rel=1e-6)
    assert adam["shares"]["feature"] == pytest.approx(4 / 5, rel=1e-6)


def test_part_gradients_add_up_to_the_total(synth, teacher_ckpt, tmp_path):
    """Eq. 8 is a sum, so the parts' gradients add up to the total's on the student."""
    t = build_training(student(synth, teacher_ckpt, "distill.alpha=3", "distill.beta=2"), tmp_path / "run")
    batch = next(iter(torch.utils.data.DataLoader(t.train_set, batch_size=4)))
    total, _, parts = compute_losses(t.model, batch, t.cfg, t.device, t.teacher, t.distiller)
    params = [p for p in t.bare_model.parameters() if p.requires_grad]
    grads = part_gradients(parts, params)
    total.backward()
    for j, p in enumerate(params):
        torch.testing.assert_close(grads["task"][j] + grads["feature"][j] + grads["logit"][j], p.grad,
                                   rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads["feature"]) and any(g.abs().sum() > 0 for g in grads["logit"])


def test_measure_scales_with_the_weights_and_official_feature_has_no_share(synth, teacher_ckpt, tmp_path):
    small = measure(build_training(student(synth, teacher_ckpt, "distill.alpha=0.01", "distill.beta=0.01"),
                                   tmp_path / "a"), batches=2)
    large = measure(build_training(student(synth, teacher_ckpt, "distill.alpha=10", "distill.beta=10"),
                                   tmp_path / "b"), batches=2)
    assert sum(small["shares"].values()) == pytest.approx(1.0)
    assert large["shares"]["feature"] > small["shares"]["feature"]
    assert large["shares"]["logit"] > small["shares"]["logit"]
    assert large["grad_norm_ratio"]["feature"] == pytest.approx(1000 * small["grad_norm_ratio"]["feature"], rel=1e-3)
    official = measure(build_training(student(synth, teacher_ckpt, "distill.fidelity=official"), tmp_path / "c"), 2)
    assert official["shares"]["feature"] == 0.0  # the released code detaches the student feature


def test_calibration_gives_each_term_the_requested_share(synth, teacher_ckpt, tmp_path):
    cfg = student(synth, teacher_ckpt, "distill.calibrate_share=0.25", "distill.calibrate_batches=3")
    t = build_training(cfg, tmp_path / "run")
    assert (t.cfg.distill.alpha, t.cfg.distill.beta) != (1.0, 1.0)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert (saved.distill.alpha, saved.distill.beta) == (t.cfg.distill.alpha, t.cfg.distill.beta)
    # with the chosen weights and the same rule (v from the task gradient), each term has 1/4
    again = calibrate(t, 0.25, batches=3)
    assert again == pytest.approx((t.cfg.distill.alpha, t.cfg.distill.beta), rel=1e-4)
    # deterministic: a second build (as on resume) chooses the same values
    t2 = build_training(student(synth, teacher_ckpt, "distill.calibrate_share=0.25", "distill.calibrate_batches=3"),
                        tmp_path / "run2")
    assert (t2.cfg.distill.alpha, t2.cfg.distill.beta) == (t.cfg.distill.alpha, t.cfg.distill.beta)
    with pytest.raises(ConfigError, match="calibrate_share"):
        build_training(student(synth, teacher_ckpt, "distill.calibrate_share=0.6"), tmp_path / "bad")


def test_training_logs_shares_and_records_the_run(synth, teacher_ckpt, tmp_path):
    cfg = student(synth, teacher_ckpt, "train.log_every=1", "train.variant=cdkd-paper", "train.seed=4")
    run = fit(cfg, run_dir=tmp_path / "run")
    with open(run / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        shares = [float(row[f"share_{k}"]) for k in ("task", "feature", "logit")]
        assert sum(shares) == pytest.approx(1.0) and min(shares) >= 0 and shares[1] > 0 and shares[2] > 0
    record = json.loads((run / "metrics.json").read_text())
    assert (record["variant"], record["seed"], record["res"]) == ("cdkd-paper", 4, 32)
    assert record["teacher"] == str(teacher_ckpt)
    assert {"tau", "xi", "share_feature"} <= set(record["last_epoch_train"])


def test_random_teacher_control(synth, teacher_ckpt, tmp_path):
    """teacher.random builds an untrained teacher of the configured arch: same shapes, other outputs."""
    trained = build_training(student(synth, teacher_ckpt), tmp_path / "a")
    control = build_training(student(synth, teacher_ckpt, "teacher.random=true"), tmp_path / "b")
    batch = next(iter(torch.utils.data.DataLoader(trained.train_set, batch_size=2)))
    with torch.no_grad():
        a, b = trained.teacher(batch["teacher_image"]), control.teacher(batch["teacher_image"])
    assert a.x.shape == b.x.shape and not torch.allclose(a.x, b.x)


def test_diagnose_cli_on_a_paper_preset_without_its_teacher(synth):
    """Every preset can be diagnosed: a missing teacher checkpoint becomes a random teacher, with a warning."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "cdkd", "diagnose", "--config", "mpii_w32_32_distill", "--batches", "1", "--json",
           "--set", f"data.root={synth}/mpii", "--set", "model.arch=hrnet_w8_tiny",
           "--set", "teacher.arch=hrnet_w8_tiny", "--set", "train.batch_size=4", "--set", "data.workers=0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert "randomly initialised" in proc.stderr
    assert sum(out["shares"].values()) == pytest.approx(1.0)
    assert set(out["grad_norm_ratio"]) == {"feature", "logit"} and out["teacher"].startswith("random")
    bad = subprocess.run([sys.executable, "-m", "cdkd", "diagnose", "--config", "no_such_preset"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no preset named" in bad.stderr and "Traceback" not in bad.stderr


PRESETS = sorted(p.stem for p in (REPO / "cdkd" / "presets").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_diagnose_runs_on_every_preset_with_its_own_models(preset, synth):
    """Every preset, with its real architectures and resolutions (only the batch is made small and the
    data synthetic): the shares are a distribution, and a term that is off (teacher, baseline) or
    detached (the released feature term) has none."""
    from cdkd.diagnose import build_for_diagnosis

    fmt = "coco" if preset.startswith("coco") else "mpii"
    extra = [f"data.root={synth}/{fmt}", "train.batch_size=2", "data.workers=0"]
    if fmt == "coco":
        extra += ["data.train_set=train", "data.val_set=val", "data.det_file="]
    cfg = load_config(preset, extra)
    no_teacher = cfg.train.mode == "distill" and not (
        cfg.teacher.random or (cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).exists()))
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED") if no_teacher else contextlib.nullcontext():
        t = build_for_diagnosis(cfg)
    out = measure(t, 1)
    shares = out["shares"]
    assert sum(shares.values()) == pytest.approx(1.0) and all(0.0 <= v <= 1.0 for v in shares.values())
    assert shares["task"] > 0
    if cfg.train.mode != "distill":
        assert shares["feature"] == 0.0 and shares["logit"] == 0.0
    else:
        d = cfg.distill
        assert (shares["logit"] > 0) == (d.logit != "none" and d.beta != 0)
        feature_flows = d.feature != "none" and d.alpha != 0 and not t.distiller.fidelity.detach_student_feature
        assert (shares["feature"] > 0) == feature_flows
