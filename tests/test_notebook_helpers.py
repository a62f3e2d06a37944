"""cdkd.notebook: the repository root wherever the kernel runs, default folders, readable progress lines."""

import json
from pathlib import Path

import pytest

from cdkd import notebook

pytestmark = pytest.mark.timeout(60)


def make_clone(path: Path) -> Path:
    (path / "notebooks").mkdir(parents=True)
    (path / "pyproject.toml").write_text('[project]\nname = "cdkd"\n')
    return path


def test_repo_root_from_the_notebooks_folder_and_below(tmp_path, monkeypatch):
    monkeypatch.delenv(notebook.ROOT_ENV, raising=False)
    clone = make_clone(tmp_path / "clone")
    (clone / "notebooks" / "deep").mkdir()
    assert notebook.repo_root(clone) == clone
    assert notebook.repo_root(clone / "notebooks") == clone
    assert notebook.repo_root(clone / "notebooks" / "deep") == clone
    monkeypatch.chdir(clone / "notebooks")
    assert notebook.repo_root() == clone
    assert notebook.resolve("data/synth") == clone / "data/synth"
    assert notebook.default_out_dir("", "tiny") == clone / "runs" / "tiny"
    assert notebook.default_out_dir("results/demo", "demo") == clone / "results" / "demo"
    assert notebook.folders("demo", "/abs/data", "") == (Path("/abs/data"), clone / "runs" / "demo")


def test_other_projects_are_not_roots_and_the_env_wins(tmp_path, monkeypatch):
    monkeypatch.delenv(notebook.ROOT_ENV, raising=False)
    other = tmp_path / "other"
    (other / "notebooks").mkdir(parents=True)
    (other / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    found = notebook.repo_root(other / "notebooks")
    assert found != other  # falls back to this package's checkout (or the start folder)
    assert found == Path(notebook.__file__).resolve().parents[1] or found == (other / "notebooks").resolve()
    monkeypatch.setenv(notebook.ROOT_ENV, str(tmp_path))
    assert notebook.repo_root(other) == tmp_path


def test_shown_writes_paths_relative_to_the_root(tmp_path):
    root = tmp_path / "clone"
    value = {"teacher": root / "runs/demo/runs/teacher", "list": [str(root / "data"), 3], "outside": Path("/elsewhere/x")}
    assert notebook.shown(value, root) == {"teacher": "runs/demo/runs/teacher", "list": ["data", 3], "outside": "/elsewhere/x"}


@pytest.mark.parametrize("first", [0, 1])
def test_the_data_step_for_two_sizes_works_in_either_order(tmp_path, monkeypatch, first):
    """Notebooks and reproduce asking for different sizes (here tiny's 30 + 20 and 12 + 8 persons)
    get one folder per size under the root, whichever comes first; asking again reuses it."""
    from cdkd import pipeline

    monkeypatch.setenv(notebook.ROOT_ENV, str(tmp_path))
    sizes = [(0, 0), (12, 8)]  # 0: the preset's
    order = sizes if first == 0 else sizes[::-1]
    roots = {size: pipeline.ensure_data("", *size, preset="tiny") for size in order}
    assert roots[(0, 0)] == tmp_path / "data" / "synth-n30-20-s0"
    assert roots[(12, 8)] == tmp_path / "data" / "synth-n12-8-s0"
    for size, root in roots.items():
        summary = json.loads((root / "synth_summary.json").read_text())
        assert summary["requested"] == dict(zip(("train", "val"), pipeline.synthetic_size("tiny", *size)))
        assert pipeline.ensure_data("", *size, preset="tiny") == root  # reused
    assert notebook.folders("tiny", "", "")[0] == ""  # left to ensure_data, not the root itself
