"""Results tables: grouping by method and resolution, mean ± std over seeds, paired differences."""

import json
import math

import pytest

from cdkd.config import config_from_dict, config_to_dict
from cdkd.report import ablation_table, arms_table, bar_table, load_runs, markdown_table, paired_difference, summarize, verdict, write_summary


def write_run(root, folder, mode, fidelity, seed, res, mean, feature="sape"):
    cfg = config_to_dict(config_from_dict({"train": {"mode": mode, "seed": seed},
                                           "distill": {"fidelity": fidelity, "feature": feature}}))
    record = {"metrics": {"Mean": mean, "Head": mean + 1, "Mean@0.1": mean / 10},
              "protocol": {"dataset": "mpii", "persons": 10, "boxes": "ground truth", "flip_test": True,
                           "flip_shift": "exact", "metric": "PCKh@0.5"},
              "model": {"input_size": [res, res], "params": 1_000_000, "paper_gflops": 0.1, "gmacs": 0.12},
              "mode": mode, "config": cfg, "variant": folder.split("_", 2)[-1] if folder.startswith("r") else mode,
              "seed": seed, "res": res}
    run = root / "runs" / folder
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(record))


@pytest.fixture
def results(tmp_path):
    for seed, (b, p) in enumerate([(30.0, 32.0), (31.0, 30.0), (29.0, 33.0)]):
        write_run(tmp_path, f"r32_s{seed}_baseline", "baseline", "paper", seed, 32, b)
        write_run(tmp_path, f"r32_s{seed}_cdkd-paper", "distill", "paper", seed, 32, p)
    write_run(tmp_path, "r32_s0_necm", "distill", "paper", 0, 32, 31.5, feature="none")
    write_run(tmp_path, "teacher", "teacher", "paper", 0, 128, 60.0)
    return tmp_path


def test_runs_are_grouped_by_method_and_resolution(results):
    runs = load_runs(results / "runs")
    labels = {r["label"] for r in runs}
    assert labels == {"SimCC (baseline)", "CDKD (paper)", "ablation: necm", "teacher"}
    table = summarize(runs, ("Mean",))
    mean, std, n = table[("CDKD (paper)", 32)]["Mean"]
    assert (mean, n) == (pytest.approx(31.6667, abs=1e-4), 3)
    assert std == pytest.approx(math.sqrt(((32 - mean) ** 2 + (30 - mean) ** 2 + (33 - mean) ** 2) / 2))


def test_paired_difference_and_verdict(results):
    runs = load_runs(results / "runs")
    d = paired_difference(runs, "CDKD (paper)", 32, "Mean")
    assert d["per_seed"] == {0: 2.0, 1: -1.0, 2: 4.0} and d["wins"] == 2 and d["losses"] == 1
    lines = verdict([r for r in runs if r["label"] != "teacher"], "mpii")
    # +1.67 with a sample std of 2.52 over 3 seeds: t(0.975, 2) = 4.303 gives a half-width of 6.25
    line = next(line for line in lines if "CDKD (paper)" in line)
    assert "did not differ significantly from the baseline: Mean difference +1.67" in line
    assert "95% CI [-4.58, +7.92]" in line and "paired t-test" in line and "Wilcoxon" in line
    assert "half-width, 6.25, is the smallest mean difference" in line


def test_verdict_says_beat_only_when_the_interval_excludes_zero(tmp_path):
    for seed, (b, p) in enumerate([(30.0, 33.0), (31.0, 34.5), (29.0, 32.0), (30.5, 33.0), (30.0, 33.5)]):
        write_run(tmp_path, f"r32_s{seed}_baseline", "baseline", "paper", seed, 32, b)
        write_run(tmp_path, f"r32_s{seed}_cdkd-paper", "distill", "paper", seed, 32, p)
        write_run(tmp_path, f"r32_s{seed}_cdkd-random-teacher", "distill", "paper", seed, 32, b - 1.0 - 0.1 * seed)
    runs = load_runs(tmp_path / "runs")
    lines = verdict(runs, "mpii")
    assert any(line.startswith("- 32x32, CDKD (paper) beat the baseline: Mean difference +3.10") for line in lines)
    assert any("control: CDKD (paper), untrained teacher was worse than the baseline" in line for line in lines)
    text = write_summary(tmp_path, "mpii", title="t").read_text()
    assert "| 32x32 | CDKD (paper) | 5 |" in text


def test_summary_and_ablation_tables(results):
    text = write_summary(results, "mpii", title="t").read_text()
    assert "| CDKD (paper) | 32x32 | 3 |" in text and "61.442" in text  # the paper's 32x32 CDKD number
    assert "| teacher | 128x128 | 1 |" in text
    assert "| necm | 31.50 | 78.772 |" in ablation_table(results, 32, 0)
    assert "Head" in markdown_table(load_runs(results / "runs"), "mpii")


def test_tables_put_the_baseline_first_then_the_paper_arm_then_the_controls(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, f"r32_s{seed}_cdkd-shuffled-teacher", "distill", "paper", seed, 32, 28.0)
        write_run(tmp_path, f"r32_s{seed}_cdkd-paper", "distill", "paper", seed, 32, 33.0)
        write_run(tmp_path, f"r32_s{seed}_baseline", "baseline", "paper", seed, 32, 30.0)
        write_run(tmp_path, f"r32_s{seed}_cca-etht", "distill", "paper", seed, 32, 32.0, feature="none")
    text = write_summary(tmp_path, "mpii", title="t").read_text()
    students = text.split("## Students")[1].split("\n## ")[0]
    rows = [line.split(" | ")[0].lstrip("| ") for line in students.splitlines() if "| 32x32 |" in line]
    assert rows[:2] == ["SimCC (baseline)", "CDKD (paper)"] and rows[-1].startswith("control:"), rows
    arms = [line.split(" | ")[1] for line in text.splitlines() if line.startswith("| 32x32 | ")]
    assert arms[:2] == ["SimCC (baseline)", "CDKD (paper)"] and arms[-1].startswith("control:"), arms


def test_an_empty_variant_list_trains_nothing(tmp_path):
    """Notebook 06 with ablations="" (the main job runs only its sweep) must not ask for a variant ''."""
    from cdkd.pipeline import train_students

    assert train_students("tiny", "", 32, 0, tmp_path) == {}
    assert train_students("tiny", " , ", 32, 0, tmp_path) == {}


def test_sweep_points_are_not_study_arms(tmp_path):
    for seed, (b, p) in enumerate([(30.0, 33.0), (31.0, 34.5)]):
        write_run(tmp_path, f"r32_s{seed}_baseline", "baseline", "paper", seed, 32, b)
        write_run(tmp_path, f"r32_s{seed}_cdkd-paper", "distill", "paper", seed, 32, p)
    write_run(tmp_path, "r32_s0_share-0.3", "distill", "paper", 0, 32, 29.0)
    runs = load_runs(tmp_path / "runs")
    assert "sweep: share 0.3 per term" in {r["label"] for r in runs}
    assert not any("sweep" in line for line in verdict(runs, "mpii"))
    assert "sweep" not in arms_table(runs, "mpii")
    bars = bar_table(runs, "mpii")  # figure 04
    assert set(bars) == {"SimCC (baseline)", "CDKD (paper)"}
    assert bars["CDKD (paper)"]["32x32"][0] == pytest.approx(33.75)
