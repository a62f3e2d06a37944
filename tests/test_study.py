"""The demo study's machinery (issue 20): the shuffled-teacher control, one calibration shared by the
arms of a seed, the merged target's entropy, the summary's mechanism columns, comparisons and answer,
the training-length curve and the teacher note."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import yaml

from cdkd.config import DistillConfig, config_from_dict, config_to_dict, load_config
from cdkd.distill import Distiller, cca_loss, normalised_entropy, roll_teacher

pytestmark = pytest.mark.timeout(300)


class Out(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor
    feature: torch.Tensor


def outputs(batch, joints=3, classes=(16, 16), feat=(4, 4), seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return Out(torch.randn(batch, joints, classes[0], generator=gen) * scale,
               torch.randn(batch, joints, classes[1], generator=gen) * scale,
               torch.randn(batch, joints, *feat, generator=gen))


# ----------------------------------------------------------------------------- control B


def test_roll_teacher_gives_every_crop_another_crops_output():
    teacher = outputs(5, classes=(32, 32), feat=(8, 8))
    rolled = roll_teacher(teacher)
    for field in ("x", "y", "feature"):
        a, b = getattr(teacher, field), getattr(rolled, field)
        for i in range(5):
            assert torch.equal(b[i], a[(i - 1) % 5])  # sample i gets sample i-1's output
            assert not torch.equal(b[i], a[i])  # nobody keeps its own


def _pair(shuffle: bool) -> Distiller:
    torch.manual_seed(0)  # same projector initialisation for both distillers
    cfg = dataclasses.replace(DistillConfig(), etht=False, tau=2.0)
    return Distiller(cfg, (3, 4, 4), (3, 8, 8), (16, 16), (32, 32), total_epochs=2, shuffle_teacher=shuffle)


def test_shuffled_distiller_receives_the_rolled_teacher():
    """With the shuffle, the loss is the plain distiller's loss on the rolled teacher outputs, and
    differs from the plain distiller's loss on the crops' own teacher outputs."""
    student, teacher = outputs(4, seed=1), outputs(4, classes=(32, 32), feat=(8, 8), seed=2, scale=3.0)
    weight, task = torch.ones(4, 3), torch.zeros(())
    shuffled = _pair(True)(student, teacher, weight, task)
    plain = _pair(False)
    on_rolled = plain(student, roll_teacher(teacher), weight, task)
    on_own = plain(student, teacher, weight, task)
    for term in ("feature", "logit"):
        assert float(shuffled.terms[term]) == pytest.approx(float(on_rolled.terms[term]), rel=1e-6)
        assert float(shuffled.terms[term]) != pytest.approx(float(on_own.terms[term]), rel=1e-3)


def test_teacher_shuffle_key_reaches_the_distiller(synth, teacher_ckpt, tmp_path):
    from cdkd.engine.train import build_training

    cfg = load_config("tiny_student", [f"data.root={synth}/mpii", f"teacher.checkpoint={teacher_ckpt}",
                                       "teacher.shuffle=true"])
    assert build_training(cfg, tmp_path / "run").distiller.shuffle_teacher is True
    cfg.teacher.shuffle = False
    assert build_training(cfg, tmp_path / "run2").distiller.shuffle_teacher is False


# ----------------------------------------------------------------------------- entropy of the target


def test_normalised_entropy_limits():
    assert float(normalised_entropy(torch.full((7,), 1 / 7))) == pytest.approx(1.0)
    assert float(normalised_entropy(torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(0.0)
    two = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert float(normalised_entropy(two)) == pytest.approx(math.log(2) / math.log(4))
    with pytest.raises(ValueError, match="at least 2 classes"):
        normalised_entropy(torch.ones(3, 1))


def test_target_entropy_rises_with_tau_and_counts_only_weighted_joints():
    student, teacher = outputs(2, seed=3), outputs(2, classes=(64, 64), seed=4, scale=8.0)
    cold = cca_loss(student.x, student.y, teacher.x, teacher.y, 1.0)["target_entropy"]
    hot = cca_loss(student.x, student.y, teacher.x, teacher.y, 15.62)["target_entropy"]
    assert 0.0 < float(cold) < float(hot) < 1.0
    # joint 0 of sample 0 alone: its target's entropy, averaged over both axes
    weight = torch.zeros(2, 3)
    weight[0, 0] = 1.0
    only = cca_loss(student.x, student.y, teacher.x, teacher.y, 2.0, weight)["target_entropy"]
    from cdkd.distill import merge_probs

    by_hand = [normalised_entropy(merge_probs(torch.softmax(t[0, 0] / 2.0, -1), 16)) for t in (teacher.x, teacher.y)]
    assert float(only) == pytest.approx(float(sum(by_hand) / 2), rel=1e-5)


def test_distiller_logs_the_target_entropy_only_with_a_logit_term():
    student, teacher = outputs(2, seed=5), outputs(2, classes=(32, 32), feat=(8, 8), seed=6)
    with_logit = _pair(False)(student, teacher, torch.ones(2, 3), torch.zeros(()))
    assert 0.0 < float(with_logit.terms["target_entropy"]) <= 1.0
    torch.manual_seed(0)
    cfg = dataclasses.replace(DistillConfig(), logit="none")
    no_logit = Distiller(cfg, (3, 4, 4), (3, 8, 8), (16, 16), (32, 32), total_epochs=2)(
        student, teacher, torch.ones(2, 3), torch.zeros(()))
    assert "target_entropy" not in no_logit.terms


# ----------------------------------------------------------------------------- one calibration per seed


def test_controls_and_components_take_the_paper_arms_weights(synth, teacher_ckpt, tmp_path):
    """The paper arm calibrates (share 0.1 here); control A, control B and a component arm of the same
    seed and resolution train with its alpha and beta and calibrate nothing; the paper arm is trained
    first when a control asks before it."""
    from cdkd.pipeline import train_students

    kwargs = {"teacher_dir": teacher_ckpt.parent, "data_root": f"{synth}/mpii",
              "extra": ("distill.calibrate_share=0.1",)}
    runs = train_students("tiny", "cdkd-shuffled-teacher,cdkd-random-teacher,cca-etht", 32, 0, tmp_path, **kwargs)
    paper_dir = tmp_path / "runs" / "r32_s0_cdkd-paper"
    paper = json.loads((paper_dir / "metrics.json").read_text())["config"]
    assert paper["distill"]["calibrate_share"] == 0.1
    assert (paper["distill"]["alpha"], paper["distill"]["beta"]) != (1.0, 1.0)  # calibrated, not the preset's
    for name, run_dir in runs.items():
        cfg = json.loads((run_dir / "metrics.json").read_text())["config"]
        assert cfg["distill"]["calibrate_share"] == 0.0, name
        assert cfg["distill"]["beta"] == paper["distill"]["beta"], name
        if name != "cca-etht":
            assert cfg["distill"]["alpha"] == paper["distill"]["alpha"], name
    recorded = {name: json.loads((d / "metrics.json").read_text())["config"]["teacher"] for name, d in runs.items()}
    assert recorded["cdkd-shuffled-teacher"]["shuffle"] and not recorded["cdkd-shuffled-teacher"]["random"]
    assert recorded["cdkd-random-teacher"]["random"] and not recorded["cdkd-random-teacher"]["shuffle"]
    # asked again, every finished run is reused (the shared weights reproduce the recorded config)
    again = train_students("tiny", "cdkd-shuffled-teacher", 32, 0, tmp_path, **kwargs)
    assert again["cdkd-shuffled-teacher"] == runs["cdkd-shuffled-teacher"]


def test_the_curve_reuses_study_runs_and_trains_other_lengths(synth, teacher_ckpt, tmp_path):
    from cdkd.pipeline import train_curve, train_students

    teacher = Path(shutil.copytree(teacher_ckpt.parent, tmp_path / "runs" / "teacher"))  # as in a study:
    kwargs = {"teacher_dir": teacher, "data_root": f"{synth}/mpii"}  # recorded as ../teacher/best.pth
    study = train_students("tiny", "baseline", 32, 0, tmp_path, **kwargs)  # tiny: 1 epoch, lr_steps [1]
    assert yaml.safe_load((study["baseline"] / "config.yaml").read_text())["teacher"]["checkpoint"].startswith("..")
    curve = train_curve("tiny", [2, 1], 32, 0, tmp_path, variants=("baseline",), **kwargs)
    assert sorted(curve) == [1, 2]
    assert curve[1]["baseline"] == study["baseline"] and not (tmp_path / "curve" / "r32_s0_baseline_e1").exists()
    assert curve[2]["baseline"] == tmp_path / "curve" / "r32_s0_baseline_e2"
    cfg = json.loads((curve[2]["baseline"] / "metrics.json").read_text())["config"]["train"]
    assert cfg["epochs"] == 2 and cfg["lr_steps"] == [1]
    assert train_curve("tiny", [], 32, 0, tmp_path, **kwargs) == {}

    from cdkd.report import curve_runs, curve_table

    table = curve_table(curve_runs(tmp_path), "mpii")
    assert "| 32x32 | 1 |" in table and "| 32x32 | 2 |" in table
    marked = {r["config"]["train"]["epochs"]: bool(r.get("in_study")) for r in curve_runs(tmp_path)}
    assert marked == {1: True, 2: False}  # the study's own length is the one the figure marks
    shutil.copytree(study["baseline"], tmp_path / "curve" / "r32_s0_baseline_e1")  # a length trained twice
    assert sum(r["config"]["train"]["epochs"] == 1 for r in curve_runs(tmp_path)) == 1  # is counted once


def test_reproduce_runs_the_curve_with_the_first_seed_only():
    from cdkd.reproduce import plan

    args = argparse.Namespace(preset="tiny", data_root="d", out="o", device="cpu", epochs=0, n_train=8, n_val=8,
                              res=[32, 64], seeds=[3, 4], variants="baseline", curve_epochs=[2, 4], shares="",
                              ablations=False, sweep_res=32, title="t", note="", curve_seeds=1)
    curves = {name: params["curve_epochs"] for nb, name, params in plan(args) if nb == "03_distill.ipynb"}
    assert curves == {"03_distill_r32_s3.ipynb": [2, 4], "03_distill_r32_s4.ipynb": [],
                      "03_distill_r64_s3.ipynb": [2, 4], "03_distill_r64_s4.ipynb": []}
    args.curve_seeds = 2  # the paired gap's CI at each length needs two or more seeds
    curves = {name: params["curve_epochs"] for nb, name, params in plan(args) if nb == "03_distill.ipynb"}
    assert all(lengths == [2, 4] for lengths in curves.values())


# ----------------------------------------------------------------------------- summary


def write_run(root, variant, seed, res, mean, entropy=0.9, tau=(15.62, 15.5), shares=(0.6, 0.2, 0.2), epochs=3,
              logit="cca"):
    mode = "baseline" if variant == "baseline" else "teacher" if variant == "teacher" else "distill"
    cfg = config_to_dict(config_from_dict({"train": {"mode": mode, "seed": seed, "epochs": epochs, "variant": variant},
                                           "distill": {"alpha": 2.0, "beta": 0.5, "logit": logit}}))
    train = {} if mode == "baseline" else {"tau": tau[1], "xi": 1.0, "target_entropy": entropy,
                                           "share_task": shares[0], "share_feature": shares[1],
                                           "share_logit": shares[2]}
    record = {"metrics": {"Mean": mean, "main": mean},
              "protocol": {"dataset": "mpii", "persons": 10, "boxes": "ground truth", "flip_test": False,
                           "metric": "PCKh@0.5"},
              "model": {"input_size": [res, res], "params": 1_000_000, "paper_gflops": 0.1, "gmacs": 0.12},
              "mode": mode, "config": cfg, "variant": variant, "seed": seed, "res": res, "best": mean,
              "first_epoch_train": {**train, "tau": tau[0]} if train else {}, "last_epoch_train": train}
    run = root / "runs" / (f"r{res}_s{seed}_{variant}" if variant != "teacher" else "teacher")
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(record))


def test_summary_reports_mechanism_controls_and_the_answer(tmp_path):
    from cdkd.report import answer, arms_table, load_runs, verdict, write_summary

    for seed in range(4):
        base = 30.0 + seed
        write_run(tmp_path, "baseline", seed, 32, base)
        write_run(tmp_path, "cdkd-paper", seed, 32, base + 0.1 * (seed % 2), entropy=0.987, shares=(0.6, 0.3, 0.1))
        write_run(tmp_path, "cdkd-random-teacher", seed, 32, base + 0.1 - 0.1 * seed)
        write_run(tmp_path, "cdkd-shuffled-teacher", seed, 32, base - 0.05 * seed)
        write_run(tmp_path, "sape", seed, 32, base + 1.0, tau=(1.0, 1.0), shares=(0.7, 0.3, 0.0), logit="none")
    runs = load_runs(tmp_path / "runs")
    table = arms_table(runs, "mpii")
    # no logit term: tau and the target's entropy do not apply
    assert "| component: SAPE alone | 4 | 32.50 ± 1.29 | +1.00 | [+1.00, +1.00] | - | 0.125 | 2 | 0.5 | - | - | 70% / 30% / 0% |" in table
    assert "tau (1st → last epoch)" in table and "target entropy" in table and "share task / feature / logit" in table
    assert "| 15.62 → 15.50 | 0.987 | 60% / 30% / 10% |" in table
    lines = verdict(runs, "mpii")
    assert any("CDKD (paper) did not differ significantly from the untrained teacher (control A)" in x for x in lines)
    assert any("CDKD (paper)" in x and "the shuffled teacher (control B)" in x for x in lines)
    (sentence,) = answer(runs, "mpii")
    assert sentence.startswith("- 32x32: no transfer of the teacher's knowledge is shown")
    assert "normalised entropy at tau 15.50 was 0.987 (1 = uniform)" in sentence
    assert "40% of the update (feature 30%, logit 10%)" in sentence
    text = write_summary(tmp_path, "mpii", title="t").read_text()
    assert "## The answer in one sentence" in text and sentence in text


def test_answer_says_transfer_when_the_paper_arm_beats_both_controls(tmp_path):
    from cdkd.report import answer, load_runs

    for seed in range(5):
        write_run(tmp_path, "baseline", seed, 64, 30.0)
        write_run(tmp_path, "cdkd-paper", seed, 64, 33.0 + 0.2 * seed)
        write_run(tmp_path, "cdkd-random-teacher", seed, 64, 30.0 + 0.1 * seed)
        write_run(tmp_path, "cdkd-shuffled-teacher", seed, 64, 30.5 - 0.1 * seed)
    (sentence,) = answer(load_runs(tmp_path / "runs"), "mpii")
    assert sentence.startswith("- 64x64: the teacher's knowledge transfers: CDKD (paper) beat the untrained teacher")
    assert "against the baseline CDKD (paper) beat it (Mean +3.40, 95% CI" in sentence
    assert "entropy" not in sentence  # no 'why' when there is an effect


def test_teacher_note_names_the_checkpoint_the_students_load(tmp_path):
    from cdkd.report import load_runs, teacher_note

    write_run(tmp_path, "teacher", 0, 128, 61.0)
    (teacher,) = load_runs(tmp_path / "runs")
    teacher["config"]["train"].update(epochs=12, val_every=12)
    assert "final-epoch weights (epoch 12; validated only then" in teacher_note(teacher)
    teacher["config"]["train"]["val_every"] = 3
    teacher["best"] = 63.0
    assert teacher_note(teacher).startswith("Warning: the students distil from `best.pth` (PCKh@0.5 63.00)")


def test_curve_table_gives_the_paired_gap_with_its_ci_at_each_length(tmp_path):
    from cdkd.report import curve_table, load_runs

    for seed, (b3, p3, b8, p8) in enumerate([(20.0, 24.0, 36.0, 42.0), (22.0, 25.0, 38.0, 43.0), (21.0, 26.0, 37.0, 41.0)]):
        for variant, e3, e8 in (("baseline", b3, b8), ("cdkd-paper", p3, p8)):
            write_run(tmp_path / "e3", variant, seed, 32, e3, epochs=3)
            write_run(tmp_path / "e8", variant, seed, 32, e8, epochs=8)
    write_run(tmp_path / "e8", "baseline", 3, 32, 99.0, epochs=8)  # no paper arm for seed 3: not paired
    runs = load_runs(tmp_path / "e3" / "runs") + load_runs(tmp_path / "e8" / "runs")
    table = curve_table(runs, "mpii")
    # gaps at 3 epochs: 4, 3, 5 -> +4.00, half-width t(0.975, 2) * 1 / sqrt(3) = 2.48
    assert "| 32x32 | 3 | 21.00 ± 1.00 | 25.00 ± 1.00 | 3/3 | +4.00 (3 seeds) | [+1.52, +6.48] |" in table
    assert "| 32x32 | 8 | 52.50 ± 31.01 | 42.00 ± 1.00 | 4/3 | +5.00 (3 seeds) | [+2.52, +7.48] |" in table
    one = curve_table([r for r in runs if r["seed"] == 0], "mpii")
    assert "| 32x32 | 3 | 20.00 | 24.00 | 1/1 | +4.00 (1 seed) | - |" in one
