"""Every notebook executes headlessly (papermill) on the tiny preset and produces its tables and figures."""

import json
from pathlib import Path

import nbformat
import pytest

from cdkd.reproduce import NOTEBOOK_DIR, cli

NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_clean_with_one_parameters_cell(name):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert nb.cells[0].cell_type == "markdown", "a markdown header comes first"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "stored without outputs"
            assert "\ndef " not in "\n" + cell.source and "\nclass " not in "\n" + cell.source


@pytest.mark.notebook
@pytest.mark.slow
def test_reproduce_tiny_executes_every_notebook(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    code = cli(["--preset", "tiny", "--seeds", "0", "--out", str(out), "--data-root", str(tmp_path / "data"),
                "--n-train", "30", "--n-val", "20", "--ablations"])
    assert code == 0
    executed = {p.name for p in out.glob("*.ipynb")}
    assert {"01_data.ipynb", "02_teacher.ipynb", "03_distill_r32_s0.ipynb", "03_distill_r64_s0.ipynb",
            "04_evaluate.ipynb", "05_visualize_r32.ipynb", "06_ablations.ipynb"} <= executed
    figures = {p.name for p in (out / "figures").glob("*.png")}
    for expected in ("01_paired_crops.png", "02_teacher_curve.png", "03_curves_r32_s0.png", "04_main_metric.png",
                     "05_student_joint_r32.png", "05_sau_weights_r32.png", "05_resolution_grid_r64.png", "05_predict_r32.png"):
        assert expected in figures
        assert (out / "figures" / expected).stat().st_size > 5000
    summary = (out / "summary.md").read_text()
    assert "| SimCC (baseline) | 32x32 | 1 |" in summary and "| CDKD (paper) | 64x64 | 1 |" in summary
    assert "Did CDKD beat the baseline?" in summary and "Run time" in summary
    ablations = (out / "ablations.md").read_text()
    assert "| necm |" in ablations and "| conv-feature |" in ablations
    timing = json.loads((out / "timing.json").read_text())
    assert len(timing["steps"]) == len(executed)
    nb = nbformat.read(out / "04_evaluate.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.notebook
@pytest.mark.slow
def test_distill_notebook_runs_alone_on_a_fresh_machine(tmp_path, monkeypatch):
    """`papermill notebooks/03_distill.ipynb out.ipynb -p res 32` needs nothing prepared beforehand."""
    import papermill

    monkeypatch.chdir(tmp_path)
    papermill.execute_notebook(str(NOTEBOOK_DIR / "03_distill.ipynb"), str(tmp_path / "out.ipynb"),
                               parameters={"preset": "tiny", "res": 32, "data_root": "data/synth", "out_dir": "results",
                                           "n_train": 30, "n_val": 20, "variants": "baseline,cdkd-paper"},
                               cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    assert (tmp_path / "data/synth/mpii/annot/gt_valid.mat").exists()
    assert (tmp_path / "results/runs/teacher/best.pth").exists()
    for variant in ("baseline", "cdkd-paper"):
        assert (tmp_path / f"results/runs/r32_s0_{variant}/metrics.json").exists()
    assert (tmp_path / "results/figures/03_curves_r32_s0.png").exists()
