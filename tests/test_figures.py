"""Figures that read true (issue 23, item 5): labelled axes, whole-epoch validation axes, tau against its
range, nothing clipped or covered, the paper's numbers given to the rows they belong to."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer

from cdkd import viz
from cdkd.explorer import PredictionExplorer
from cdkd.report import ablation_table, write_summary
from tests.test_report import write_run
from tests.test_viz import make_records, write_steps

pytestmark = pytest.mark.timeout(60)


def make_run(folder, tau: list[float], epochs: int = 3, val_epochs: tuple[int, ...] = (2,), config: str | None = None):
    folder.mkdir()
    rows = [[10 * i, i // 2, 80.0 - i, 1.0, 5.0, t, min(1.0, 0.5 * (i // 2))] for i, t in enumerate(tau)]
    write_steps(folder / "steps.csv", ["step", "epoch", "task", "feature", "logit", "tau", "xi"], rows)
    records = [{"epoch": e, "train": {"task": 1.0}, **({"val": {"Mean": 10.0 + e}} if e in val_epochs else {})}
               for e in range(epochs)]
    (folder / "epochs.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    if config is not None:
        (folder / "config.yaml").write_text(config)
    return folder


def test_training_curves_label_every_axis_and_count_whole_epochs(tmp_path):
    a = make_run(tmp_path / "cdkd", [15.6] * 6)
    b = make_run(tmp_path / "base", [15.6] * 6)
    fig = viz.plot_training_curves({"cdkd": a, "base": b}, keys=("task", "feature", "logit"), val_metric="Mean")
    assert [ax.get_ylabel() for ax in fig.axes] == ["L_ori", "L_fea (before alpha)", "L_logit (before beta)", "Mean"]
    assert all(ax.get_xlabel() for ax in fig.axes)
    val = fig.axes[-1]
    # one validation per run, at epoch 3 of 3: a marker on an axis of the whole epochs 1..3
    assert val.get_xlim() == (0.5, 3.5)
    assert [line.get_xdata().tolist() for line in val.lines] == [[3], [3]]
    assert set(val.get_xticks()) >= {1.0, 2.0, 3.0} and all(float(t).is_integer() for t in val.get_xticks())
    assert val.get_legend() is None and all(ax.get_legend() is None for ax in fig.axes)  # no legend over a curve
    legend = fig.legends[0]  # one, below the panels, each run's last validation value
    assert [t.get_text() for t in legend.get_texts()] == ["cdkd: 12.00", "base: 12.00"]
    assert "epoch 3 only" in val.get_title()
    colours = [[line.get_color() for line in ax.lines] for ax in fig.axes]
    assert all(c == colours[0] for c in colours) and len(set(colours[0])) == 2  # one colour per run everywhere
    smoothed = viz.plot_training_curves([a], keys=("task",), smooth=3)
    assert smoothed.axes[0].get_ylabel() == "L_ori, mean of 3 logged steps"


def test_temperature_is_drawn_against_its_range(tmp_path):
    config = "distill:\n  tau_min: 1.0\n  tau_range: 20.0\n"
    tiny = make_run(tmp_path / "tiny", [15.621, 15.621, 15.61, 15.605, 15.599, 15.599], config=config)
    fig = viz.plot_temperature(tiny)
    ax_tau, ax_xi = fig.axes
    assert ax_tau.get_ylim() == (1.0, 21.0)  # the whole range tau = 1 + 20 sigmoid(theta) can take
    title = ax_tau.get_title()
    assert "barely moved" in title and "learned" not in title
    assert "15.621 -> 15.599" in title and "-0.022" in title and "0.1% of its range [1, 21]" in title
    assert sorted(t.get_text() for t in ax_tau.texts) == ["end 15.599", "start 15.621"]
    assert ax_tau.get_ylabel() == "tau" and ax_xi.get_ylabel() == "xi" and ax_xi.get_ylim() == (-0.05, 1.05)
    assert fig.stated == {"tau_first": "15.621", "tau_last": "15.599", "tau_change": "-0.022"}
    moved = make_run(tmp_path / "moved", [15.6, 15.0, 13.0, 11.0, 9.0, 8.0], config=config)
    title = viz.plot_temperature(moved).axes[0].get_title()
    assert "barely" not in title and "moved" in title and "-7.600" in title and "38.0%" in title
    bare = make_run(tmp_path / "bare", [5.0, 5.0, 5.01, 5.02, 5.02, 5.02])  # no config.yaml: padded axis
    low, high = viz.plot_temperature(bare).axes[0].get_ylim()
    assert low <= 4.0 and high >= 6.02
    assert viz.plot_temperature(bare, bounds=(1.0, 11.0)).axes[0].get_ylim() == (1.0, 11.0)


def test_tau_bounds_error_names_the_file(tmp_path):
    (tmp_path / "config.yaml").write_text("distill:\n  tau_min: fast\n")
    with pytest.raises(ValueError, match="config.yaml"):
        viz.tau_bounds(tmp_path)


@pytest.mark.parametrize("resolution", ["student", "teacher"])
def test_explorer_distributions_are_not_clipped_or_covered(resolution):
    records = make_records(np.random.default_rng(1), n=1, small=32, big=128)
    fig = PredictionExplorer(records, "mpii", tau=0.3).render_static(0, 9, resolution)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes[1:]:
        bars = next(c for c in ax.containers if isinstance(c, BarContainer))
        heights = [p.get_height() for p in bars]
        assert max(heights) < ax.get_ylim()[1]  # the tallest merged bar is inside the axis
        legend = ax.get_legend().get_window_extent(renderer)
        axis_box = ax.get_window_extent(renderer)
        assert axis_box.x0 <= legend.x0 and legend.x1 <= axis_box.x1  # the legend stays in its panel
        for patch in bars:
            box = patch.get_window_extent(renderer)
            overlap_x = box.x1 > legend.x0 and box.x0 < legend.x1
            assert not (overlap_x and box.y1 > legend.y0), "a merged bar is under the legend"


def test_summary_gives_the_paper_number_to_its_own_row_and_ablations_name_both_resolutions(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"r32_s{seed}_baseline", "baseline", "paper", seed, 32, 30.0 + seed)
        write_run(tmp_path, f"r32_s{seed}_cdkd-paper", "distill", "paper", seed, 32, 31.0 + seed)
        write_run(tmp_path, f"r32_s{seed}_cdkd-official", "distill", "official", seed, 32, 29.0 + seed)
    text = write_summary(tmp_path, "mpii", title="t").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[-1] for line in text.splitlines()
            if line.startswith("| ") and "32x32 | 2 |" in line}
    assert rows == {"CDKD (official)": "-", "CDKD (paper)": "61.442", "SimCC (baseline)": "59.560"}
    head = ablation_table(tmp_path, 32, 0).splitlines()[0]
    assert "32x32" in head and "64x64" in head and "not 32x32" in head
    write_run(tmp_path, "r64_s0_baseline", "baseline", "paper", 0, 64, 40.0)
    head64 = ablation_table(tmp_path, 64, 0).splitlines()
    assert head64[0] == "| Variant (ours, 64x64, seed 0) | Mean | Paper (real MPII, 64x64) |"
    assert head64[2] == "| baseline | 40.00 | 78.340 |"


def test_length_curve_has_a_panel_per_resolution_with_seed_counts_and_spread():
    def run(label, res, epochs, seed, mean):
        return {"label": label, "resolution": res, "seed": seed, "metrics": {"Mean": mean},
                "config": {"train": {"epochs": epochs}}}

    runs = [run("SimCC (baseline)", 32, 5, s, 30.0 + s) for s in range(3)]
    runs += [run("CDKD (paper)", 32, 5, s, 33.0 + s) for s in range(3)]
    runs += [run("SimCC (baseline)", 32, 3, 0, 20.0), run("CDKD (paper)", 32, 3, 0, 24.0),
             run("SimCC (baseline)", 64, 3, 0, 18.0), run("control: x", 64, 3, 0, 1.0),
             run("SimCC (baseline)", 64, 5, 0, 25.0), run("SimCC (baseline)", 64, 5, 1, 27.0),
             run("CDKD (paper)", 64, 5, 0, 29.0)]
    runs[0]["in_study"] = True  # a study run at 5 epochs (32x32)
    fig = viz.plot_length_curve(runs)
    ax32, ax64 = fig.axes
    assert ax32.get_title() == "32x32 students" and ax64.get_title() == "64x64 students"
    assert list(ax32.get_xticks()) == [3, 5] and ax32.get_xlabel().startswith("training epochs")
    base = ax32.lines[0]
    assert base.get_xdata().tolist() == [3, 5] and base.get_ydata().tolist() == [20.0, 31.0]
    assert [t.get_text() for t in ax32.get_xticklabels()] == ["3\nn=1", "5\nn=3"]
    assert [t.get_text() for t in ax64.get_xticklabels()] == ["3\nn=1/0", "5\nn=2/1"]  # arms differ: per arm
    assert [t.get_text() for t in ax32.get_legend().get_texts()] == [
        "SimCC (baseline)", "CDKD (paper)", "the study's length (5 epochs)"]  # the study's line last
    assert [t.get_text() for t in ax64.get_legend().get_texts()] == ["SimCC (baseline)", "CDKD (paper)"]  # no control, no study line
    empty = viz.plot_length_curve([])
    assert "no curve runs" in empty.axes[0].texts[0].get_text()
