"""Tests of cdkd.viz and cdkd.explorer on small synthetic arrays (no dataset or model files needed)."""

from __future__ import annotations

import base64
import csv
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from cdkd import viz
from cdkd.codec import decode
from cdkd.data.topdown import IMAGENET_MEAN, IMAGENET_STD
from cdkd.engine.recorder import read_steps
from cdkd.explorer import PredictionExplorer, explore
from cdkd.joints import COCO_META, JOINTS_META, MPII_META

pytestmark = pytest.mark.timeout(60)

MEAN = np.array(IMAGENET_MEAN).reshape(3, 1, 1)
STD = np.array(IMAGENET_STD).reshape(3, 1, 1)


def normalise(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [h, w, 3] -> ImageNet-normalised [3, h, w] tensor, like the data pipeline."""
    x = rgb.transpose(2, 0, 1).astype(np.float64) / 255.0
    return torch.from_numpy((x - MEAN) / STD).float()


def explicit_merge(probs: np.ndarray, m: int) -> np.ndarray:
    """Eq. 6 written as a loop, independent of any reshape."""
    out = np.zeros(probs.size // m)
    for j in range(out.size):
        for i in range(j * m, j * m + m):
            out[j] += probs[i]
    return out


def softmax(z: np.ndarray, tau: float = 1.0) -> np.ndarray:
    e = np.exp((z - z.max()) / tau)
    return e / e.sum()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def sample(rng) -> dict:
    """A COCO-like paired sample: 16x16 student crop, 64x64 teacher crop (m=4), k=2."""
    k, size, big = 2.0, 16, 64
    joints = np.zeros((17, 3))
    joints[:, :2] = rng.uniform(1.5, size - 1.5, size=(17, 2))
    joints[:, 2] = 1.0
    joints[3, 2] = 0.0  # one unlabelled joint
    target = np.rint(joints[:, :2] * k).astype(np.int64)
    student = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    teacher = rng.integers(0, 256, size=(big, big, 3), dtype=np.uint8)
    return {
        "image": normalise(student), "teacher_image": normalise(teacher), "joints": torch.from_numpy(joints).float(),
        "target_x": torch.from_numpy(target[:, 0]), "target_y": torch.from_numpy(target[:, 1]),
        "target_weight": torch.from_numpy(joints[:, 2]).float(), "image_id": 7, "index": 0, "split_ratio": k,
    }


def make_records(rng, n: int = 3, joints: int = 16, small: int = 16, big: int = 64, k: float = 2.0) -> list[dict]:
    """MPII-like prediction records with logits at both resolutions."""
    records = []
    for i in range(n):
        record = {"index": i}
        for name, size in (("student", small), ("teacher", big)):
            xs = rng.normal(size=(joints, int(size * k)))
            ys = rng.normal(size=(joints, int(size * k)))
            gt = np.concatenate([rng.uniform(0, size, (joints, 2)), np.ones((joints, 1))], axis=1)
            coords, scores = decode(xs[None].astype(np.float32), ys[None].astype(np.float32), k)  # [1, J, 2], [1, J]
            record[name] = {
                "image": rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8),
                "pred": np.concatenate([coords, scores[..., None]], axis=-1)[0], "gt": gt,
                "x_logits": xs, "y_logits": ys, "split_ratio": k,
            }
        records.append(record)
    return records


def write_steps(path, columns: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)


def assert_png(fig: Figure, path) -> None:
    assert isinstance(fig, Figure)
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- images and keypoints ----------------------------------------------------------------------


def test_denormalize_inverts_imagenet_normalisation(rng):
    rgb = rng.integers(0, 256, size=(8, 12, 3), dtype=np.uint8)
    back = viz.denormalize(normalise(rgb))
    assert back.dtype == np.uint8 and back.shape == (8, 12, 3)
    np.testing.assert_array_equal(back, rgb)
    with pytest.raises(ValueError, match=r"\[3, h, w\]"):
        viz.denormalize(torch.zeros(8, 12, 3))


def test_draw_keypoints_hides_invisible_joints_and_their_limbs(rng):
    joints = np.concatenate([rng.uniform(0, 32, (17, 2)), np.ones((17, 1))], axis=1)
    fig = Figure()
    ax = fig.add_subplot()
    full = viz.draw_keypoints(ax, np.zeros((32, 32, 3), np.uint8), joints, COCO_META.skeleton,
                              names=COCO_META.joint_names)
    assert len(full["points"].get_offsets()) == 17
    assert len(full["limbs"].get_segments()) == len(COCO_META.skeleton)
    joints[15, 2] = 0.0  # left ankle: one limb (15, 13) disappears
    joints[0, 0] = np.nan  # nose: limbs (0, 1), (0, 2) disappear
    part = viz.draw_keypoints(fig.add_subplot(), None, joints, COCO_META.skeleton)
    assert len(part["points"].get_offsets()) == 15
    assert len(part["limbs"].get_segments()) == len(COCO_META.skeleton) - 3
    np.testing.assert_allclose(part["points"].get_offsets()[0], joints[1, :2])
    with pytest.raises(ValueError, match="beyond J=17"):
        viz.draw_keypoints(ax, None, joints, [(0, 17)])


def test_skeletons_and_names_are_consistent():
    for name, joints in (("coco", 17), ("mpii", 16)):
        edges = JOINTS_META[name].skeleton
        assert len(JOINTS_META[name].joint_names) == joints
        assert all(0 <= a < joints and 0 <= b < joints and a != b for a, b in edges)
        assert len(set(map(frozenset, edges))) == len(edges)
        assert {j for e in edges for j in e} == set(range(joints))  # every joint is on a limb
    assert viz.skeleton_for("mpii", 17) == ()
    assert viz.joint_names("mpii", 3) == ("joint0", "joint1", "joint2")


# ---- paired crops --------------------------------------------------------------------------------


def test_plot_paired_crops(sample, tmp_path):
    path = tmp_path / "crops.png"
    fig = viz.plot_paired_crops(sample, "coco", joint="left_shoulder", save=path)
    assert_png(fig, path)
    ax_t, _ax_s, ax_x, ax_y = fig.axes
    j = COCO_META.joint_names.index("left_shoulder")
    joints = sample["joints"].numpy()
    # the teacher panel shows the student joints scaled by m = 64 / 16 = 4
    teacher_points = next(c for c in ax_t.collections if isinstance(c, PathCollection)).get_offsets()
    np.testing.assert_allclose(teacher_points[0], joints[0, :2] * 4, rtol=1e-6)
    assert len(teacher_points) == 16  # joint 3 has visibility 0
    # one-hot x target: 16 px * k=2 (the sample's split_ratio) = 32 classes, a single 1 at target_x[j]
    heights = np.array([p.get_height() for p in ax_x.containers[0]])
    assert heights.size == 32 and heights.sum() == 1.0
    assert heights.argmax() == int(sample["target_x"][j])
    heights_y = np.array([p.get_height() for p in ax_y.containers[0]])
    assert heights_y.argmax() == int(sample["target_y"][j])
    with pytest.raises(KeyError, match="teacher_image"):
        viz.plot_paired_crops({k: v for k, v in sample.items() if k != "teacher_image"}, "coco")
    with pytest.raises(KeyError, match="split_ratio"):
        viz.plot_paired_crops({k: v for k, v in sample.items() if k != "split_ratio"}, "coco")


# ---- SimCC distributions and CCA ---------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_simcc_distribution_merge_equals_explicit_sums(rng, tmp_path, tau):
    k, m = 2.0, 4
    zt_x, zs_x = rng.normal(size=64 * 2) * 3, rng.normal(size=16 * 2)
    zt_y, zs_y = rng.normal(size=64 * 2) * 3, rng.normal(size=16 * 2)
    path = tmp_path / "cca.png"
    fig = viz.plot_simcc_distributions(torch.from_numpy(zt_x), zs_x, m, tau=tau, joint_name="thorax",
                                       teacher_y_logits=zt_y, student_y_logits=zs_y, split_ratio=k, save=path)
    assert_png(fig, path)
    assert len(fig.axes) == 4
    for row, (zt, zs) in enumerate(((zt_x, zs_x), (zt_y, zs_y))):
        ax_t, ax_m = fig.axes[2 * row], fig.axes[2 * row + 1]
        bars = next(c for c in ax_m.containers if isinstance(c, BarContainer))
        merged = np.array([p.get_height() for p in bars])
        expected = explicit_merge(softmax(zt, tau), m)
        np.testing.assert_allclose(merged, expected, rtol=1e-6, atol=1e-12)
        # merged bin j starts at teacher class j*m, i.e. pixel (j*m - 0.5)/k in the teacher frame
        np.testing.assert_allclose([p.get_x() for p in bars], (np.arange(zs.size) * m - 0.5) / k)
        np.testing.assert_allclose([p.get_width() for p in bars], m / k)
        teacher_stairs = ax_t.patches[0]
        np.testing.assert_allclose(teacher_stairs.get_data().values, softmax(zt, tau), rtol=1e-6)
        student_stairs = next(p for p in ax_m.patches if p not in bars.patches)
        np.testing.assert_allclose(student_stairs.get_data().values, softmax(zs, tau), rtol=1e-6)
        np.testing.assert_allclose(student_stairs.get_data().edges[[0, -1]], [-0.5 * m / k, (zs.size - 0.5) * m / k])


def test_simcc_distributions_checks_class_counts(rng):
    fig = viz.plot_simcc_distributions(rng.normal(size=24), rng.normal(size=8), 3, xlim="full")
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="C_t=24, m=4, C_s=8"):
        viz.plot_simcc_distributions(rng.normal(size=24), rng.normal(size=8), 4)
    with pytest.raises(ValueError, match="both"):
        viz.plot_simcc_distributions(rng.normal(size=24), rng.normal(size=8), 3, teacher_y_logits=np.zeros(24))


def test_simcc_probabilities_merge_matches_loop(rng):
    z = rng.normal(size=48)
    np.testing.assert_allclose(viz.simcc_probabilities(z, 2.0), softmax(z, 2.0), rtol=1e-12)
    merged = viz.simcc_probabilities(z, merge_to=8)  # m = 6
    np.testing.assert_allclose(merged, explicit_merge(softmax(z), 6), rtol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        viz.simcc_probabilities(z, 0.0)


# ---- predictions -------------------------------------------------------------------------------------


def test_plot_predictions_and_resolution_grid(rng, tmp_path):
    records = make_records(rng, n=3)
    view = records[0]["student"]
    path = tmp_path / "pred.png"
    fig = viz.plot_predictions(view["image"], view["pred"], view["gt"], "mpii", save=path)
    assert_png(fig, path)
    ax = fig.axes[0]
    limbs = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(limbs) == 2  # ground truth (dashed) and prediction
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ground truth", "prediction"]
    grid_path = tmp_path / "grid.png"
    grid = viz.plot_resolution_grid(records, "mpii", save=grid_path)
    assert_png(grid, grid_path)
    assert len(grid.axes) == 2 * 3
    assert grid.axes[0].get_images()[0].get_array().shape[:2] == (16, 16)
    assert grid.axes[3].get_images()[0].get_array().shape[:2] == (64, 64)  # second row: teacher
    with pytest.raises(KeyError, match="'teacher'"):
        viz.plot_resolution_grid([{"student": view}], "mpii")


# ---- training records ---------------------------------------------------------------------------------


def test_training_curves_handle_missing_columns(tmp_path):
    a, b = tmp_path / "distill", tmp_path / "baseline"
    a.mkdir()
    b.mkdir()
    write_steps(a / "steps.csv", ["step", "epoch", "loss", "task", "feature", "logit", "tau", "lr"],
                [[0, 0, 3.0, 2.0, 0.5, 0.5, 15.6, 1e-3], [10, 0, 2.5, 1.8, "", 0.4, 15.0, 1e-3],
                 [20, 1, 2.0, 1.5, 0.3, 0.2, 14.0, 1e-3]])
    write_steps(b / "steps.csv", ["step", "epoch", "loss", "task", "lr"],
                [[0, 0, 2.0, 2.0, 1e-3], [10, 0, 1.0, 1.0, 1e-3]])
    steps = read_steps(a)
    assert np.isnan(steps["feature"][1]) and steps["task"].tolist() == [2.0, 1.8, 1.5]
    path = tmp_path / "curves.png"
    fig = viz.plot_training_curves({"CDKD": a, "SimCC": b}, keys=("task", "feature", "xi"), smooth=2, save=path)
    assert_png(fig, path)
    assert len(fig.axes) == 3
    ax_task, ax_feature, ax_xi = fig.axes
    assert len(ax_task.lines) == 2
    assert len(ax_feature.lines) == 1  # baseline has no 'feature' column
    np.testing.assert_allclose(ax_feature.lines[0].get_xdata(), [0, 20])  # the empty cell is dropped
    np.testing.assert_allclose(ax_feature.lines[0].get_ydata(), [0.5, 0.4])  # moving average of 2
    assert len(ax_xi.lines) == 0 and "not recorded" in ax_xi.texts[0].get_text()
    by_name = viz.plot_training_curves([a], keys=("loss",))
    assert by_name.legends[0].get_texts()[0].get_text() == "distill"  # the folder name labels an unnamed run


def test_training_curves_validation_panel(tmp_path):
    import json

    run = tmp_path / "teacher"
    run.mkdir()
    write_steps(run / "steps.csv", ["step", "epoch", "task", "loss"], [[0, 0, 2.0, 2.0], [10, 1, 1.0, 1.0]])
    rows = [{"epoch": 0, "train": {"task": 2.0}}, {"epoch": 1, "train": {"task": 1.5}, "val": {"Mean": 40.0}},
            {"epoch": 2, "train": {"task": 1.0}, "val": {"Mean": 55.5}}]
    (run / "epochs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fig = viz.plot_training_curves({"teacher": run}, keys=("task",), val_metric="Mean")
    ax_task, ax_val = fig.axes
    np.testing.assert_allclose(ax_task.lines[0].get_ydata(), [2.0, 1.0])
    np.testing.assert_allclose(ax_val.lines[0].get_xdata(), [2, 3])  # epochs counted from 1
    np.testing.assert_allclose(ax_val.lines[0].get_ydata(), [40.0, 55.5])
    missing = viz.plot_training_curves({"teacher": run}, keys=("task",), val_metric="AP")
    assert not missing.axes[1].lines and "no validated epoch" in missing.axes[1].texts[0].get_text()


def test_people_on_image_and_zoomed_predictions(rng):
    joints = np.zeros((2, 16, 3))
    joints[0, :, :2] = rng.uniform(100, 130, (16, 2))
    joints[1, :, :2] = rng.uniform(300, 340, (16, 2))
    joints[..., 2] = 1.0
    joints[1, 0, 2] = 0.0  # unlabelled: not part of the box
    joints[1, 0, :2] = 790
    records = [SimpleNamespace(image="a.png", joints=joints[0]), SimpleNamespace(image="b.png", joints=joints[0]),
               SimpleNamespace(image="a.png", joints=joints[1])]
    path, boxes, gt = viz.people_on_image(records, 2, pad=0.0)
    assert path.name == "a.png" and boxes.shape == (2, 4) and gt.shape == (2, 16, 3)
    seen = joints[1, 1:, :2]
    np.testing.assert_allclose(boxes[1], [*seen.min(0), *(seen.max(0) - seen.min(0))])
    image = rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)
    pred = gt[..., :2] + 2.0
    fig = viz.plot_image_predictions(image, pred, gt[..., 2], boxes, "mpii", gt=gt)  # joint at x=792 hidden
    ax = fig.axes[0]
    x0, x1 = ax.get_xlim()
    assert x0 > 20 and x1 - x0 < 400  # zoomed to the two persons (x 100..340), not the 800-px image
    limbs = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(limbs) == 4  # skeleton of prediction and ground truth, per person
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ground truth", "prediction"]
    whole = viz.plot_image_predictions(image, pred, None, boxes, "mpii", zoom=False)
    assert whole.axes[0].get_xlim() == (0.0, 800.0)
    with pytest.raises(ValueError, match="gt must be"):
        viz.plot_image_predictions(image, pred, gt=gt[:, :3])


def test_read_steps_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="steps.csv"):
        read_steps(tmp_path)
    write_steps(tmp_path / "steps.csv", ["step", "loss"], [[0, 1.0], [1, "oops"]])
    with pytest.raises(ValueError, match=r"steps.csv, line 3, column 'loss'"):
        read_steps(tmp_path)


def test_plot_temperature_and_sau_weights(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [[s, 15.0 - s / 10, 0.5, 0.3, 0.2] for s in range(0, 50, 10)]
    write_steps(run / "steps.csv", ["step", "tau", "sau_w10", "sau_w2", "sau_w0"], rows)
    fig = viz.plot_temperature(run, save=tmp_path / "tau.png")
    assert_png(fig, tmp_path / "tau.png")
    ax_tau, ax_xi = fig.axes
    np.testing.assert_allclose(ax_tau.lines[0].get_ydata(), [r[1] for r in rows])
    assert not ax_xi.lines and "'xi' not recorded" in ax_xi.texts[0].get_text()
    assert viz.sau_columns(read_steps(run)) == ["sau_w0", "sau_w2", "sau_w10"]
    fig = viz.plot_sau_weights(run, save=tmp_path / "sau.png")
    assert_png(fig, tmp_path / "sau.png")
    areas = fig.axes[0].collections
    assert len(areas) == 3
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["w0", "w2", "w10"]
    empty = tmp_path / "baseline"
    empty.mkdir()
    write_steps(empty / "steps.csv", ["step", "task"], [[0, 1.0]])
    fig = viz.plot_sau_weights(empty)
    assert not fig.axes[0].collections and "no sau_w*" in fig.axes[0].texts[0].get_text()


# ---- result tables -------------------------------------------------------------------------------------


def test_plot_metric_bars_with_reference(tmp_path):
    table = {
        "CDKD (paper)": {"64x64": (11.0, 0.3, 12), "32x32": 11.1},
        "SimCC (baseline)": {"64x64": (10.4, 0.2, 12), "32x32": (10.5, 0.5, 6)},
        "CDKD (official)": {"64x64": (10.2, 0.1, 12)},
    }
    reference = {"SimCC (baseline)": {"64x64": 78.340}, "CDKD (paper)": {"64x64": 79.362, "32x32": 61.442},
                 "CAL": {"64x64": 77.0}}
    path = tmp_path / "bars.png"
    fig = viz.plot_metric_bars(table, reference=reference, ylabel="PCKh", reference_label="paper (real MPII)",
                               save=path)
    assert_png(fig, path)
    ax, ax_paper = fig.axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 3 and all(len(b) == 2 for b in bars)
    assert [b.get_label() for b in bars] == ["SimCC (baseline)", "CDKD (paper)", "CDKD (official)"]  # baseline first
    np.testing.assert_allclose([p.get_height() for p in bars[1]], [11.0, 11.1])
    assert np.isnan(bars[2][1].get_height())  # missing column leaves a gap
    # the paper's numbers have their own axis: ours is not stretched to 80, theirs all shown
    assert not [c for c in ax.collections if isinstance(c, PathCollection)]
    assert ax.get_ylim()[0] == 0 and 11.3 < ax.get_ylim()[1] < 20
    markers = [c for c in ax_paper.collections if isinstance(c, PathCollection)]
    assert len(markers) == 1 and markers[0].get_label() == "paper (real MPII)"
    np.testing.assert_allclose(sorted(markers[0].get_offsets()[:, 1]), [61.442, 78.340, 79.362])  # CAL: no bar
    assert ax_paper.get_ylim()[1] > 79.362 and ax_paper.get_title() == "paper (real MPII)"
    # each marker sits at the x of its arm's bar, in its colour
    cdkd_64 = bars[1][0]
    offsets = markers[0].get_offsets()
    k = int(np.argmin(np.abs(offsets[:, 1] - 79.362)))
    assert offsets[k, 0] == pytest.approx(cdkd_64.get_x() + cdkd_64.get_width() / 2)
    np.testing.assert_allclose(markers[0].get_facecolors()[k], cdkd_64.get_facecolor())
    # every finite bar states its mean and, where known, its number of seeds
    ours = sorted(t.get_text() for t in ax.texts)
    assert ours == sorted(["10.40 (n=12)", "10.50 (n=6)", "11.00 (n=12)", "11.10", "10.20 (n=12)"])
    for text in ax.texts:  # a tall bar holds its text inside, at its base
        assert text.get_color() == "white" and text.xy[1] < 1.0
    papers = sorted(t.get_text() for t in ax_paper.texts)
    assert papers == ["61.44", "78.34", "79.36"]
    assert "n=" not in fig._suptitle.get_text() and "6-12 seeds" in fig._suptitle.get_text()
    assert ax.get_ylabel() == "PCKh" and ax.get_xlabel() == "student input resolution"
    assert "std over seeds" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["64x64", "32x32"]
    short = viz.plot_metric_bars({"a": {"Mean": (1.0, 1.0, 3)}, "b": {"Mean": (80.0, 2.0, 3)}})
    assert len(short.axes) == 1  # no reference: no paper panel
    assert short.axes[0].get_xlabel() == "metric"
    low = next(t for t in short.axes[0].texts if t.get_text() == "1.00 (n=3)")
    assert low.xy[1] == 2.0 and low.get_va() == "bottom"  # above the error bar of a short bar
    zoomed = viz.plot_metric_bars({"a": {"Mean": (78.1, 0.2)}, "b": {"Mean": (79.0, 0.3)}}, zoom=True)
    assert zoomed.axes[0].get_ylim()[0] > 10  # zoom: truncated on request only
    with pytest.raises(ValueError, match=r"table\['x'\]\['Mean'\]"):
        viz.plot_metric_bars({"x": {"Mean": "high"}})


# ---- explorer -----------------------------------------------------------------------------------------


def test_explorer_render_static_and_widget(rng, tmp_path):
    records = make_records(rng, n=2)
    explorer = PredictionExplorer(records, "mpii", tau=2.0)
    assert len(explorer) == 2 and explorer.resolutions == ["student", "teacher"]
    path = tmp_path / "explorer.png"
    fig = explorer.render_static(1, "l_wrist", "student", save=path)
    assert_png(fig, path)
    assert len(fig.axes) == 3
    j = MPII_META.joint_names.index("l_wrist")
    ax_x = fig.axes[1]
    bars = next(c for c in ax_x.containers if isinstance(c, BarContainer))
    expected = explicit_merge(softmax(records[1]["teacher"]["x_logits"][j], 2.0), 4)
    np.testing.assert_allclose([p.get_height() for p in bars], expected, rtol=1e-6)
    # merged bins drawn in student pixels: teacher class j*m at (j*m - 0.5)/k, divided by the scale 4
    np.testing.assert_allclose([p.get_x() for p in bars], (np.arange(32) * 4 - 0.5) / 2 / 4)
    teacher_fig = explorer.render_static(0, 0, "teacher")
    assert len(teacher_fig.axes) == 3
    # the teacher view merges the teacher's own bins for the student's class count (m = 128 / 32 = 4)
    teacher_bars = next(c for c in teacher_fig.axes[1].containers if isinstance(c, BarContainer))
    np.testing.assert_allclose([p.get_height() for p in teacher_bars],
                               explicit_merge(softmax(records[0]["teacher"]["x_logits"][0], 2.0), 4), rtol=1e-6)
    assert teacher_fig.axes[0].get_title().startswith("sample 0")
    assert fig.axes[0].get_title().startswith("sample 1")
    # a student of another resolution under the same teacher: other merged bins (m = 2)
    wide = [dict(r, student=dict(r["student"], x_logits=rng.normal(size=(16, 64)), y_logits=rng.normal(size=(16, 64))))
            for r in records]
    wide_fig = PredictionExplorer(wide, "mpii", tau=2.0).render_static(0, 0, "teacher")
    wide_bars = next(c for c in wide_fig.axes[1].containers if isinstance(c, BarContainer))
    assert len(wide_bars) == 64 and len(teacher_bars) == 32
    with pytest.raises(ValueError, match="resolution"):
        explorer.render_static(0, 0, "medium")
    with pytest.raises(ValueError, match="unknown joint name"):
        explorer.render_static(0, "tail", "student")


def test_figures_render_inline_as_png(rng):
    """IPython shows a pyplot-free figure as an image, not as '<Figure size ...>' text."""
    from IPython.core.interactiveshell import InteractiveShell

    fig = PredictionExplorer(make_records(rng, n=1), "mpii").render_static(0, 0, "student")
    data, _ = InteractiveShell.instance().display_formatter.format(fig)
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n" or data["image/png"].startswith("iVBOR")
    assert len(data["image/png"]) > 5000


def test_explorer_widget_follows_every_control(rng):
    import ipywidgets  # noqa: F401  (a declared dependency: fail, do not skip, without it)
    records = make_records(rng, n=2)
    explorer = PredictionExplorer(records, "mpii", tau=2.0)
    box = explore(explorer, joint="l_wrist")
    assert explorer.controls["joint"].value == MPII_META.joint_names.index("l_wrist")
    assert "'l_wrist'" in explorer.figure._suptitle.get_text()
    seen = [explorer.output.outputs[0]["data"]["image/png"]]
    assert base64.b64decode(seen[0])[:4] == b"\x89PNG"
    for name, value in (("sample", 1), ("joint", 3), ("resolution", "teacher"), ("tau", 5.0)):
        explorer.controls[name].value = value
        assert len(explorer.output.outputs) == 1
        seen.append(explorer.output.outputs[0]["data"]["image/png"])
        assert seen[-1] != seen[-2], f"the image did not change with '{name}'"
    title = explorer.figure._suptitle.get_text()
    assert title.startswith("sample 1") and f"'{MPII_META.joint_names[3]}'" in title and "teacher" in title
    assert box.children[0].children[0] is explorer.controls["sample"]
    assert explore(records, "mpii").children


class FakeSimCC(torch.nn.Module):
    """A stand-in pose model: logits peak at fixed class indices, so the decode is known."""

    def __init__(self, size: int, k: float, joints: int):
        super().__init__()
        self.split_ratio, self.input_size, self.num_joints = k, (size, size), joints
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.bins = int(size * k)

    def forward(self, images):
        b = images.shape[0]
        x = torch.zeros(b, self.num_joints, self.bins)  # [B, J, W*k]
        x[:, :, 5] = 10.0 * self.scale
        y = torch.zeros(b, self.num_joints, self.bins)  # [B, J, H*k]
        y[:, :, 7] = 10.0 * self.scale
        return SimpleNamespace(x=x, y=y, feature=None)


class FakeDataset(list):
    dataset_name = "coco"


def test_explorer_from_models(rng, sample):
    dataset = FakeDataset([dict(sample, index=i) for i in range(5)])
    student, teacher = FakeSimCC(16, 2.0, 17), FakeSimCC(64, 2.0, 17)
    teacher.train()
    explorer = PredictionExplorer.from_models(student, teacher, dataset, n=3, batch_size=2)
    assert len(explorer) == 3 and teacher.training  # training mode restored
    record = explorer.records[2]
    assert record["index"] == 2 and record["image_id"] == 7
    np.testing.assert_allclose(record["student"]["pred"][:, :2], np.tile([2.5, 3.5], (17, 1)))
    assert record["teacher"]["x_logits"].shape == (17, 128)
    np.testing.assert_allclose(record["teacher"]["gt"][:, :2], sample["joints"].numpy()[:, :2] * 4, rtol=1e-6)
    assert record["teacher"]["image"].shape == (64, 64, 3)
    assert len(explorer.render_static(0, "nose", "student").axes) == 3
    alone = PredictionExplorer.from_models(student, None, dataset, n=2)
    assert alone.resolutions == ["student"]
    with pytest.raises(KeyError, match="teacher_image"):
        PredictionExplorer.from_models(student, teacher, FakeDataset([{"image": sample["image"]}]))


def test_plot_image_predictions_draws_every_person(tmp_path):
    from cdkd.viz import plot_image_predictions

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    kpts = rng.uniform(10, 110, (3, 17, 2))
    scores = np.ones((3, 17))
    scores[0, :5] = 0.0  # hidden joints
    boxes = np.array([[5, 5, 50, 100], [60, 10, 40, 90], [100, 20, 50, 90]], dtype=float)
    fig = plot_image_predictions(image, kpts, scores, boxes, "coco", save=tmp_path / "people.png")
    ax = fig.axes[0]
    assert len(ax.patches) == 3
    assert (tmp_path / "people.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="keypoints"):
        plot_image_predictions(image, kpts[0], dataset_name="coco")
