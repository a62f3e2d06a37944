"""Every notebook executes headlessly (papermill) on the tiny preset and produces its tables and figures."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from cdkd.reproduce import NOTEBOOK_DIR, cli, execute

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


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_tracked_notebook_is_what_the_git_filter_stores(name):
    """The README's install makes git read notebooks through nbstripout (extra key
    metadata.language_info): a tracked notebook must come out of that filter unchanged (no outputs,
    no execution counts, no kernel version), else JupyterLab's save shows up in git status."""
    path = NOTEBOOK_DIR / name
    stored = subprocess.run([sys.executable, "-m", "nbstripout", "-t", "--extra-keys", "metadata.language_info",
                             str(path)], capture_output=True, text=True, check=True).stdout
    assert stored == path.read_text(), f"{path}: run nbstripout on it (outputs, counts or metadata left in)"
    nb = nbformat.reads(stored, as_version=4)
    assert nb.metadata == {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                          "name": "python3"}}, "the kernelspec JupyterLab writes, nothing more"


def test_readme_install_filters_source_notebooks_not_executed_copies(tmp_path):
    """The README's install line, run in a fresh repository holding our ``.gitattributes``: git strips
    ``notebooks/*.ipynb`` and leaves the executed copies under ``results/`` (evidence) as they are."""
    root = NOTEBOOK_DIR.parent
    line = next(l for l in (root / "README.md").read_text().splitlines() if l.startswith("nbstripout --install"))
    install = line.split("#")[0].strip()
    assert install in (root / ".ci" / "run").read_text(), "CI runs the README's install"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitattributes").write_text((root / ".gitattributes").read_text())
    subprocess.run(["bash", "-c", install], cwd=tmp_path, check=True, capture_output=True)

    def attr(path: str) -> str:
        out = subprocess.run(["git", "check-attr", "filter", path], cwd=tmp_path, capture_output=True, text=True,
                             check=True).stdout
        return out.strip().rsplit(": ", 1)[-1]

    assert attr("notebooks/03_distill.ipynb") == "nbstripout"
    assert attr("results/demo/03_distill_r32_s0.ipynb") == "unspecified"
    assert (tmp_path / ".gitattributes").read_text() == (root / ".gitattributes").read_text()


@pytest.mark.notebook
@pytest.mark.slow
def test_reproduce_tiny_executes_every_notebook(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    code = cli(["--preset", "tiny", "--seeds", "0", "--res", "32", "64", "--out", str(out),
                "--data-root", str(tmp_path / "data"),
                "--n-train", "30", "--n-val", "20", "--ablations", "--shares", "0,0.15,0.45"])
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
    assert "control: CDKD (paper), untrained teacher" in summary and "95% CI" in summary
    ablations = (out / "ablations.md").read_text()
    assert "| necm |" in ablations and "| conv-feature |" in ablations
    sweep = (out / "share_sweep.md").read_text().splitlines()
    assert len(sweep) == 2 + 3  # header + the 3 requested shares (0 is the seed's baseline run)
    assert (out / "figures" / "06_share_sweep.png").stat().st_size > 5000
    timing = json.loads((out / "timing.json").read_text())
    assert len(timing["steps"]) == len(executed)
    nb = nbformat.read(out / "04_evaluate.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    for name in sorted(executed):
        nb = nbformat.read(out / name, as_version=4)
        cells = figure_cells(nb)
        missing = [c.source.splitlines()[-1][:60] for c in cells if not png_outputs(c)]
        assert not missing, f"{name}: figure cells without an inline image/png: {missing}"
        assert str(NOTEBOOK_DIR.parent) not in (out / name).read_text(), f"{name} carries the repository's absolute path"
    assert len(figure_cells(nbformat.read(out / "05_visualize_r32.ipynb", as_version=4))) == 6
    # the teacher's bins merged for each student: different figures at 32x32 and 64x64
    assert (out / "figures/05_teacher_joint_r32.png").read_bytes() != (out / "figures/05_teacher_joint_r64.png").read_bytes()
    # a figure of results/ is evidence: executing notebook 01 again draws the same crops, byte for byte
    again = tmp_path / "again"
    execute("01_data.ipynb", tmp_path / "01_again.ipynb", {"preset": "tiny", "data_root": str(tmp_path / "data"),
                                                          "out_dir": str(again), "res": 64}, tmp_path, log_output=False)
    for name in ("01_paired_crops.png", "01_paired_crops_2.png"):
        assert (again / "figures" / name).read_bytes() == (out / "figures" / name).read_bytes(), name


def figure_cells(nb) -> list:
    """Code cells whose last line makes a figure from the package (a ``viz.plot_*`` or ``render_static`` call)."""
    out = []
    for cell in nb.cells:
        last = cell.source.strip().splitlines()[-1] if cell.cell_type == "code" and cell.source.strip() else ""
        if last.startswith(("viz.plot_", "explorer.render_static")):
            out.append(cell)
    return out


def png_outputs(cell) -> list[str]:
    return [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]


def test_figure_cells_are_found():
    """The selector above must see the figure cells of every figure-making notebook."""
    counts = {name: len(figure_cells(nbformat.read(NOTEBOOK_DIR / name, as_version=4))) for name in NOTEBOOKS}
    assert counts["01_data.ipynb"] == 2 and counts["05_visualize.ipynb"] == 6 and counts["04_evaluate.ipynb"] == 1


@pytest.mark.notebook
@pytest.mark.slow
def test_user_command_in_notebooks_folder_writes_only_git_ignored_root_folders(tmp_path, monkeypatch):
    """JupyterLab runs the kernel in notebooks/: the defaults still resolve against the repository root,
    go to runs/<preset> (git-ignored), create nothing in notebooks/ and never touch results/."""
    import shutil

    import papermill

    clone = tmp_path / "clone"
    (clone / "notebooks").mkdir(parents=True)
    shutil.copy(NOTEBOOK_DIR.parent / "pyproject.toml", clone / "pyproject.toml")
    shutil.copy(NOTEBOOK_DIR / "03_distill.ipynb", clone / "notebooks" / "03_distill.ipynb")
    monkeypatch.delenv("CDKD_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(clone / "notebooks" / "03_distill.ipynb"), str(out),
                               parameters={"preset": "tiny", "res": 32, "n_train": 30, "n_val": 20,
                                           "variants": "baseline,cdkd-paper"},
                               cwd=str(clone / "notebooks"), progress_bar=False, kernel_name="python3")
    assert sorted(p.name for p in (clone / "notebooks").iterdir()) == ["03_distill.ipynb"]
    assert sorted(p.name for p in clone.iterdir()) == ["data", "notebooks", "pyproject.toml", "runs"]
    assert [p.name for p in (clone / "data").iterdir()] == ["synth-n30-20-s0"]
    assert (clone / "data/synth-n30-20-s0/mpii/annot/gt_valid.mat").exists()  # one folder per size
    assert (clone / "runs/tiny/runs/teacher/best.pth").exists()
    for variant in ("baseline", "cdkd-paper"):
        assert (clone / f"runs/tiny/runs/r32_s0_{variant}/metrics.json").exists()
    assert (clone / "runs/tiny/figures/03_curves_r32_s0.png").exists()
    nb = nbformat.read(out, as_version=4)
    cells = figure_cells(nb)
    assert len(cells) == 2 and all(png_outputs(c) for c in cells), "every figure is shown inline as PNG"
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert str(clone) not in text, "cell outputs carry no absolute paths of this machine"
    assert "runs/tiny/runs/teacher" in text


EXPLORER_CELLS = [
    """from tests.test_viz import make_records
import numpy as np
from cdkd.explorer import PredictionExplorer

explorer = PredictionExplorer(make_records(np.random.default_rng(0), n=3), "mpii")
explorer.widget(joint="l_wrist")""",
    """import asyncio, base64, hashlib, json
from cdkd import viz

async def settled():
    # the kernel's loop runs the deferred render; a cell that only waits lets it (as a user's pause would)
    await asyncio.sleep(1.0)
    outputs = explorer.output.outputs
    png = base64.b64decode(outputs[0]["data"]["image/png"])
    c = explorer.controls
    readout = {"sample": str(c["sample"].value), "joint": c["joint"].label, "resolution": c["resolution"].value,
               "tau": np.format_float_positional(c["tau"].value, precision=3, unique=False, fractional=False,
                                                 trim="k").rstrip(".")}
    return [len(outputs), hashlib.sha1(png).hexdigest(), viz.png_description(png) == readout, explorer.renders]

seen = [["start", *(await settled())]]
for name, value in (("sample", 2), ("joint", 0), ("resolution", "teacher"), ("tau", 4.0), ("sample", 1)):
    explorer.controls[name].value = value
    seen.append([name, *(await settled())])
for value in (0.2, 0.5, 2.0, 8.0, 25.0):  # a burst: only its last value is drawn
    explorer.controls["tau"].value = value
seen.append(["burst", *(await settled())])
print(json.dumps(seen))""",
]


@pytest.mark.notebook
def test_explorer_controls_redraw_in_a_kernel(tmp_path):
    """In a real kernel, each change of a control puts a new PNG into the explorer's output widget, whose
    stated values equal the controls' readouts; a burst of changes is drawn once, at its last state."""
    import json

    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in EXPLORER_CELLS])
    NotebookClient(nb, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(NOTEBOOK_DIR.parent)}}).execute()
    shown = nb.cells[0].outputs[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in shown
    seen = json.loads(nb.cells[1].outputs[0]["text"])
    assert [s[1] for s in seen] == [1] * 7, "one image in the output at a time"
    digests = [s[2] for s in seen]
    assert len(set(digests)) == len(digests), f"an image did not change: {seen}"
    assert all(s[3] for s in seen), f"a figure's stated values differ from the readouts: {seen}"
    assert [s[4] for s in seen] == [1, 2, 3, 4, 5, 6, 7], f"renders per step: {seen}"


def cell_value(cell):
    """The Python value of a cell's displayed result (the notebooks show dicts of plain numbers)."""
    import ast

    result = next(o for o in cell.outputs if o.get("output_type") == "execute_result")
    return ast.literal_eval(result["data"]["text/plain"])


@pytest.mark.notebook
def test_method_walkthrough_checks_the_equations(tmp_path):
    """Notebook 07 on one real batch: Eq. 6 sums to one, Eq. 4 is the weighted sum, Eq. 8 adds up, the
    reversal layer multiplies the gradient by -xi, and its figure is shown inline."""
    import math

    import papermill

    out = tmp_path / "07.ipynb"
    before = sorted(NOTEBOOK_DIR.iterdir())
    papermill.execute_notebook(str(NOTEBOOK_DIR / "07_method.ipynb"), str(out),
                               parameters={"data_root": str(tmp_path / "data"), "n_train": 12, "n_val": 8},
                               cwd=str(NOTEBOOK_DIR), progress_bar=False, kernel_name="python3")
    nb = nbformat.read(out, as_version=4)
    by_source = {c.source.splitlines()[0]: c for c in nb.cells if c.cell_type == "code" and c.source}
    merge = cell_value(by_source["from cdkd.distill import cca"])
    assert merge["m"] == 4 and merge["merged"] == (4, 16, 64)
    assert all(abs(v - 1) < 1e-5 for v in merge["merged sums (min, max)"])
    ensemble = cell_value(next(c for k, c in by_source.items() if k.startswith("projected =")))
    assert ensemble["F_out"] == ensemble["F^t"] == (4, 16, 32, 32) and ensemble["F_out == sum_k w_k P_k"] is True
    total = cell_value(next(c for k, c in by_source.items() if k.startswith('{"L_total"')))
    assert math.isclose(total["L_total"], total["L_ori + alpha L_fea + beta L_logit"], rel_tol=1e-6)
    reversal = cell_value(by_source["xi = etht.xi_schedule(3, 10)"])
    assert math.isclose(reversal["ratio (= -1)"], -1.0, rel_tol=1e-4) and reversal["xi"] > 0
    step = cell_value(next(c for k, c in by_source.items() if k.startswith("anchor = ")))
    assert math.isclose(step["theta step / (lr x xi x dL/dtheta)"], 1.0, rel_tol=1e-3)  # xi applied exactly once
    assert step["L_logit"][1] > step["L_logit"][0]
    assert png_outputs(by_source["from cdkd import viz"])
    assert sorted(NOTEBOOK_DIR.iterdir()) == before, "the kernel ran in notebooks/ and created nothing there"
