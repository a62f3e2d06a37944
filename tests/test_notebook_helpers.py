"""cdkd.notebook: the repository root wherever the kernel runs, default folders, readable progress lines."""

import io
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


def test_line_progress_prints_throttled_plain_lines():
    out = io.StringIO()
    bar = notebook.LineProgress(total=100, desc="epoch 1/3", file=out, mininterval=1000)
    for _ in range(100):
        bar.update(1)
        bar.set_postfix({"loss": "0.5"}, refresh=False)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 2, lines  # the start and the end, nothing in between within mininterval
    assert lines[0].startswith("epoch 1/3: ") and "0/100" in lines[0]
    assert "100/100" in lines[-1] and "loss=0.5" in lines[-1]
    quick = io.StringIO()
    bar = notebook.LineProgress(total=3, file=quick, mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert [line.split("/")[0][-1] for line in quick.getvalue().splitlines()] == ["0", "1", "2", "3"]
    transient = io.StringIO()  # the engine's bars use leave=False: the last state is still printed
    bar = notebook.LineProgress(total=10, file=transient, mininterval=1000, leave=False)
    bar.update(10)
    bar.close()
    assert [line.split(" [")[0] for line in transient.getvalue().splitlines()] == ["0% 0/10", "100% 10/10"]


def test_log_progress_switches_the_training_bar(monkeypatch):
    import cdkd.engine.evaluate as evaluate
    import cdkd.engine.train as train

    monkeypatch.setattr(train, "tqdm", train.tqdm)  # restored after the test
    monkeypatch.setattr(evaluate, "tqdm", evaluate.tqdm)
    assert notebook.log_progress(5) is notebook.LineProgress
    assert train.tqdm is notebook.LineProgress and evaluate.tqdm is notebook.LineProgress
