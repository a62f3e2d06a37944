"""train.progress (bar | lines | none): what each mode prints, that nothing is patched, and that no
DataLoader worker process outlives its loop."""

from __future__ import annotations

import io
import multiprocessing
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import cdkd
import cdkd.engine
from cdkd import notebook
from cdkd.config import load_config
from cdkd.engine.progress import LineProgress, loader_batches
from cdkd.engine.train import fit


def engine_modules() -> dict[str, dict]:
    return {name: dict(vars(m)) for name, m in sys.modules.items() if name.startswith("cdkd.engine")}


def tiny_run(synth, tmp_path, progress: str, *extra: str):
    cfg = load_config("tiny_teacher", [f"data.root={synth}/mpii", "train.epochs=1", "train.max_steps_per_epoch=2",
                                       f"train.progress={progress}", *extra])
    return fit(cfg, run_dir=tmp_path / progress)


@pytest.mark.slow
def test_lines_mode_prints_plain_lines_and_replaces_nothing(synth, tmp_path, capfd):
    before = engine_modules()
    run = tiny_run(synth, tmp_path, "lines")
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert any(line.startswith("epoch 1/1: ") and "2/2" in line for line in lines), out  # the bar's last line
    assert any(line.startswith("evaluate: ") for line in lines), out
    assert "\r" not in out and "epoch 1/1" not in err
    assert "progress: lines" in (run / "config.yaml").read_text()  # recorded with the run
    after = engine_modules()
    replaced = [f"{m}.{k}" for m, names in before.items() for k, v in names.items() if after[m].get(k) is not v]
    assert not replaced, replaced
    assert not hasattr(notebook, "log_progress")


@pytest.mark.slow
def test_none_mode_prints_nothing_and_bar_mode_draws_a_bar(synth, tmp_path, capfd):
    tiny_run(synth, tmp_path, "none")
    out, err = capfd.readouterr()
    assert "epoch" not in out + err and "evaluate" not in out + err and "%" not in out + err, out + err
    tiny_run(synth, tmp_path, "bar")
    out, err = capfd.readouterr()
    assert "epoch 1/1" in err and "\r" in err  # tqdm's text bar (a terminal, not a notebook)


def test_the_progress_mode_is_recorded_but_is_no_result(synth, tmp_path):
    from cdkd.engine.run import NON_RESULT_KEYS, config_changes

    a = load_config("tiny_teacher", [f"data.root={synth}/mpii", "train.progress=lines"])
    b = load_config("tiny_teacher", [f"data.root={synth}/mpii", "train.progress=none"])
    assert a.train.progress == "lines"
    assert not config_changes(a, b, ignore=NON_RESULT_KEYS)
    assert config_changes(a, b, ignore=frozenset())  # recorded: it is in the config
    with pytest.raises(Exception, match="train.progress"):
        load_config("tiny_teacher", ["train.progress=widget"])


class Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return torch.tensor([i])


def test_no_worker_process_outlives_the_loop_even_on_an_error():
    """An iterator that something still references (a name in a frame that a kept traceback holds, as
    Jupyter keeps the last one; a bar wrapping it) keeps its workers alive; ``loader_batches`` shuts
    them down when the block is left, though its ``batches`` stay referenced the same way."""
    loader = DataLoader(Numbers(), batch_size=2, num_workers=2, multiprocessing_context="fork")

    def plain():
        batches = iter(loader)
        for batch in batches:
            raise RuntimeError(f"failed at {batch}")

    def wrapped():
        with loader_batches(loader) as batches:
            for batch in batches:
                raise RuntimeError(f"failed at {batch}")

    kept = []
    for run in (plain, wrapped):
        try:
            run()
        except RuntimeError as e:
            kept.append(e)  # the traceback (and its frames) stay alive
        alive = [p for p in multiprocessing.active_children() if p.is_alive()]
        if run is plain:
            assert alive, "the plain iterator's workers live on with the traceback (the cause)"
            kept.clear()  # frees the traceback, the iterator and its workers
        else:
            assert not alive, alive
    with loader_batches(loader, limit=3) as batches:
        assert [int(b[0]) for b in batches] == [0, 2, 4]
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]


def test_line_progress_prints_throttled_plain_lines():
    out = io.StringIO()
    bar = LineProgress(total=100, desc="epoch 1/3", file=out, mininterval=1000)
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
    bar = LineProgress(total=3, file=quick, mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert [line.split("/")[0][-1] for line in quick.getvalue().splitlines()] == ["0", "1", "2", "3"]
    transient = io.StringIO()  # the engine's bars use leave=False: the last state is still printed
    bar = LineProgress(total=10, file=transient, mininterval=1000, leave=False)
    bar.update(10)
    bar.close()
    assert [line.split(" [")[0] for line in transient.getvalue().splitlines()] == ["0% 0/10", "100% 10/10"]




@pytest.mark.notebook
def test_in_a_jupyter_kernel_no_loader_worker_outlives_fit(synth, tmp_path):
    """tqdm's notebook bar (train.progress=bar in a kernel) with forked workers: after each fit the
    kernel has no child process left (before the fix, the second fit left its two workers)."""
    import nbformat
    from nbclient import NotebookClient

    from cdkd.notebook import repo_root

    overrides = [f"data.root={synth}/mpii", "data.workers=2", "train.epochs=2", "train.max_steps_per_epoch=2",
                 "train.batch_size=4", "train.progress=bar"]
    count = ("import glob, os\n"
             "print('children', sum(open(p).read().split(') ')[1].split()[1] == str(os.getpid())"
             " for p in glob.glob('/proc/[0-9]*/stat')))")
    cells = ["import cdkd\nfrom cdkd.config import load_config\nfrom cdkd.engine.train import fit\n"
             f"cfg = load_config('tiny_teacher', {overrides!r})\nprint(cdkd.__file__)",
             f"fit(cfg, run_dir={str(tmp_path / 'a')!r})\n" + count,
             f"fit(cfg, run_dir={str(tmp_path / 'b')!r})\n" + count]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, kernel_name="python3", timeout=600,
                   resources={"metadata": {"path": str(repo_root())}}).execute()
    text = ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream") for c in nb.cells]
    assert text[0].strip() == str(Path(cdkd.__file__)), text[0]  # the kernel runs this checkout
    widgets = [o for c in nb.cells for o in c.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "the notebook bar (a widget) was used"
    for out in text[1:]:
        assert "children 0" in out and "Error" not in out, out
