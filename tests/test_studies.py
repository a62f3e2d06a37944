"""Studies that cannot be corrupted, mixed or stranded (issue 22): one test (or group) per failure.

Locks, resume only into its own folder, a summary of the call's own runs, calibration and diagnose
refusals, portable records, early parameter checks, one-line notebook failures, file modes, quoting,
export arguments. Each fails on the code before the fix; everything runs on tiny data written here.
"""

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cdkd import pipeline, report, reproduce
from cdkd.config import ConfigError, load_config
from cdkd.data.synthetic import synthesize
from cdkd.engine.run import HELD_ENV, FolderInUseError, hold_folder, release_folder
from cdkd.engine.train import RunFolderError, fit, staging_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, train=24, val=8, seed=5)
    return root


@pytest.fixture(autouse=True)
def no_inherited_hold(monkeypatch):
    monkeypatch.delenv(HELD_ENV, raising=False)


def teacher_cfg(synth: Path, *extra: str):
    return load_config("tiny_teacher", [f"data.root={synth}/mpii", "train.max_steps_per_epoch=1",
                                        "data.max_samples=8", *extra])


@pytest.fixture(scope="module")
def finished(synth, tmp_path_factory):
    return fit(teacher_cfg(synth), run_dir=tmp_path_factory.mktemp("finished") / "run")


def snapshot(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.startswith(".cdkd.lock")}


def epochs_of(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "epochs.jsonl").read_text().splitlines()]


# --- 1. a finished run is never overwritten by a --resume of another folder -----------------------
def test_resume_refuses_a_checkpoint_of_another_folder(synth, finished, tmp_path):
    other = Path(shutil.copytree(finished, tmp_path / "other"))
    run = Path(shutil.copytree(finished, tmp_path / "t1"))
    before = snapshot(run)
    with pytest.raises(RunFolderError, match="not a checkpoint of the run folder"):
        fit(teacher_cfg(synth, "train.lr=0.5"), run_dir=run, resume=other / "last.pth", accept_config_change=True)
    assert snapshot(run) == before


def test_resume_of_a_killed_overwrite_continues_it_and_then_replaces_the_run(synth, finished, tmp_path):
    run = Path(shutil.copytree(finished, tmp_path / "t1"))
    before = snapshot(run)
    new = teacher_cfg(synth, "train.epochs=2", "train.lr=0.002")
    fit(new, run_dir=run, overwrite=True, stop_after=1)  # "killed" after epoch 0 of the replacement
    assert snapshot(run) == before and (staging_dir(run) / "last.pth").exists()
    with pytest.raises(RunFolderError, match="give --overwrite as well"):  # the command: refused
        fit(new, run_dir=run, resume=staging_dir(run) / "last.pth")
    assert snapshot(run) == before
    fit(new, run_dir=run, resume=staging_dir(run) / "last.pth", overwrite=True)  # continues the replacement
    assert not staging_dir(run).exists()
    assert epochs_of(run) == [0, 1]  # one run's epochs, not the old epoch 0 beside the new epoch 1
    metrics = json.loads((run / "metrics.json").read_text())
    best = torch.load(run / "best.pth", weights_only=True)
    assert metrics["config"]["train"]["lr"] == 0.002 == best["config"]["train"]["lr"]


# --- 2. one writer per folder -----------------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, time
    from cdkd.engine.run import hold_folder
    hold_folder(sys.argv[1], command="holder-test " + sys.argv[1])
    print("held", flush=True)
    time.sleep(60)
""")


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(synth, tmp_path, capsys):
    folder = tmp_path / "K"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid} .*holder-test"):
            fit(teacher_cfg(synth), run_dir=folder)
        assert not (folder / "config.yaml").exists()
        rc = reproduce.cli(["--preset", "tiny", "--out", str(folder), "--data-root", str(synth), "--shares", ""])
        err = capsys.readouterr().err
        assert rc == 2 and f"pid {holder.pid}" in err and len(err.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    assert (folder / ".cdkd.lock.json").exists()  # the dead holder's record is still there: a stale lock
    held = hold_folder(folder)  # taken over
    assert json.loads((folder / ".cdkd.lock.json").read_text())["pid"] == os.getpid()
    release_folder(held)


# --- 3. a study's summary counts only the runs its call asked for -----------------------------------
def test_summary_counts_only_the_requested_runs_and_lists_the_others(finished, tmp_path):
    runs = tmp_path / "K" / "runs"
    record = json.loads((finished / "metrics.json").read_text())
    for seed in (0, 1, -1):
        (runs / f"r64_s{seed}_baseline").mkdir(parents=True)
        row = {**record, "variant": "baseline", "seed": seed, "res": 64}
        (runs / f"r64_s{seed}_baseline" / "metrics.json").write_text(json.dumps(row))
    path = report.write_summary(tmp_path / "K", only="teacher,r64_s0_baseline")
    text = path.read_text()
    counted = [r["seed"] for r in report.load_runs(runs, "teacher,r64_s0_baseline")]
    assert counted == [0]
    assert "not counted" in text and "`r64_s-1_baseline`" in text and "`r64_s1_baseline`" in text
    assert "seed 1" not in text.split("not counted")[0]


def test_reproduce_asks_notebook_04_for_its_own_runs(tmp_path):
    p = reproduce.plan(_args(tmp_path, seeds=[0], res=[32], variants="baseline,cdkd-paper", shares="0,0.2"))
    params = next(params for nb, _, params in p if nb == "04_evaluate.ipynb")
    assert params["only_runs"].split(",") == ["teacher", "r32_s0_baseline", "r32_s0_cdkd-paper", "r32_s0_share-0.2"]


def test_a_study_is_every_run_its_calls_asked_for_and_one_preset_only(tmp_path):
    """An extension call (64x64, more arms) does not drop the runs of the calls before it from the summary."""
    calls = [{"command": "python -m cdkd reproduce --preset tiny --seeds 0 1"},
             {"command": "python -m cdkd reproduce --preset tiny --seeds 0 --variants 'baseline,sape'"}]
    args = _args(tmp_path, seeds=[0], res=[64], variants="baseline")
    runs = reproduce.study_runs(calls, args)
    default_arms = reproduce.parser().parse_args([]).variants.split(",")
    assert runs[0] == "teacher" and runs.count("teacher") == 1
    assert {f"r32_s{s}_{v}" for s in (0, 1) for v in default_arms} <= set(runs)
    assert "r32_s0_sape" in runs and "r32_s1_sape" not in runs and runs[-1] == "r64_s0_baseline"
    with pytest.raises(ConfigError, match="preset 'demo'.*own --out"):
        reproduce.study_runs([{"command": "python -m cdkd reproduce --seeds 0"}], args)
    with pytest.raises(ConfigError, match="timing.json"):
        reproduce.study_runs([{"command": "rm -rf /"}], args)


def _args(tmp_path, **change):
    import argparse

    values = dict(preset="tiny", out=str(tmp_path / "K"), data_root="data/tiny", seeds=[0, 1], res=[32],
                  variants="baseline", epochs=0, n_train=10, n_val=10, device="auto", shares="", sweep_res=32,
                  ablations=False, title="t", note="", curve_epochs=[], curve_seeds=1)
    values.update(change)
    return argparse.Namespace(**values)


# --- 4. calibration fails loudly ---------------------------------------------------------------------
def test_calibration_refuses_a_nan_share(synth):
    with pytest.raises(ConfigError, match="calibrate_share"):
        load_config("tiny_student", [f"data.root={synth}/mpii", "distill.calibrate_share=nan"])


def test_calibration_refuses_a_zero_task_gradient(synth, tmp_path):
    cfg = load_config("tiny_student", [f"data.root={synth}/mpii", "teacher.random=true", "data.max_samples=8",
                                       "distill.calibrate_share=0.2", "distill.calibrate_batches=1", "loss.weight=0"])
    with pytest.raises(ConfigError, match="zero gradient"):
        fit(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "last.pth").exists()


# --- 5. a copied study is reused, not retrained -----------------------------------------------------
def test_a_copied_study_is_reused_and_its_records_hold_no_absolute_path(synth, tmp_path, monkeypatch):
    kwargs = dict(data_root=f"{synth}/mpii", epochs=1, device="cpu", extra=("data.max_samples=8",
                                                                             "train.max_steps_per_epoch=1"))
    study = tmp_path / "K"
    teacher_kwargs = {k: v for k, v in kwargs.items() if k != "extra"}
    pipeline.reuse_or_train(pipeline.teacher_config("tiny", **teacher_kwargs, extra=kwargs["extra"]),
                            study / "runs" / "teacher", force=False)
    pipeline.train_students("tiny", "baseline,cdkd-paper", 32, 0, study, **kwargs)
    for name in ("config.yaml", "metrics.json"):
        assert str(study) not in (study / "runs" / "r32_s0_cdkd-paper" / name).read_text()
    copy = Path(shutil.copytree(study, tmp_path / "moved" / "K3"))
    shutil.rmtree(study)  # moved, not copied: the old paths no longer exist

    def no_training(*args, **kw):
        raise AssertionError("a finished run of the copied study was trained again")

    monkeypatch.setattr("cdkd.engine.train.fit", no_training)
    pipeline.reuse_or_train(pipeline.teacher_config("tiny", **teacher_kwargs, extra=kwargs["extra"]),
                            copy / "runs" / "teacher", force=False)
    runs = pipeline.train_students("tiny", "baseline,cdkd-paper", 32, 0, copy, **kwargs)
    assert sorted(runs) == ["baseline", "cdkd-paper"]


# --- 6. bad parameters fail before anything runs ----------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--shares", "0.7"], "share 0.7"),
    (["--shares", "0,x"], "'x' is not a number"),
    (["--variants", "bogus"], "unknown variant 'bogus'"),
    (["--res", "48"], "model.input_size"),
    (["--seeds", "-1"], "'seed' is -1"),
    (["--device", "cuda"], "CUDA is not available"),
])
def test_reproduce_checks_arguments_before_any_notebook(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(reproduce, "execute", lambda *a, **k: pytest.fail("a notebook ran before the check"))
    rc = reproduce.cli(["--preset", "tiny", "--out", str(tmp_path / "K"), "--data-root", str(tmp_path / "d"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists() and not (tmp_path / "K" / "timing.json").exists()


def test_components_and_ablations_are_accepted_as_variants(tmp_path):
    """Every arm a student config can be built for passes the check (the study's component arms too)."""
    pipeline.check_parameters("tiny", tmp_path / "K", seed=0, res=32, variants="baseline,sape,cca-etht,cdkd-paper-tau4")


def test_notebook_parameters_are_checked_in_the_first_cell(tmp_path):
    import nbformat

    with pytest.raises(ConfigError, match="'seed' is -1"):
        pipeline.check_parameters("tiny", tmp_path / "K", seed=-1, res=32, variants="baseline")
    with pytest.raises(ConfigError, match="input_size"):
        pipeline.check_parameters("tiny", tmp_path / "K", seed=0, res=48, variants="baseline")
    for name in ("01_data", "02_teacher", "03_distill", "04_evaluate", "05_visualize", "06_ablations"):
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", [])
        assert "pipeline.check_parameters(" in code[1].source, name
        assert all(not c.get("outputs") for c in code), name


# --- 7. diagnose on non-finite or zero gradients ----------------------------------------------------
@pytest.mark.parametrize("weight, needle", [("nan", "non-finite"), ("0", "zero gradient")])
def test_diagnose_refuses_nan_or_zero_task_gradient_in_one_line(synth, tmp_path, monkeypatch, capsys, weight, needle):
    import tempfile

    from cdkd.diagnose import cli

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rc = cli(["--config", "tiny_student", "--set", f"data.root={synth}/mpii", "--set", "teacher.random=true",
              "--set", "data.max_samples=8", "--set", f"loss.weight={weight}", "--batches", "1", "--json"])
    out, err = capsys.readouterr()
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert "NaN" not in out
    assert not list(tmp_path.glob("cdkd-diagnose-*"))


def test_a_failing_diagnose_leaves_no_scratch_folder(tmp_path, monkeypatch, capsys):
    import tempfile

    from cdkd.diagnose import cli

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rc = cli(["--config", "tiny_teacher", "--set", f"data.root={tmp_path}/missing", "--batches", "1"])
    assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("cdkd-diagnose-*"))


# --- 8. one line instead of a traceback -------------------------------------------------------------
def _papermill_error(ename: str, evalue: str):
    from papermill.exceptions import PapermillExecutionError

    return PapermillExecutionError(cell_index=5, exec_count=3, source="x", ename=ename, evalue=evalue,
                                   traceback=["\x1b[31mTraceback (most recent call last)\x1b[0m", "  line 1",
                                              f"{ename}: {evalue}"])


@pytest.mark.parametrize("ename, evalue, needle", [
    ("ConfigError", "runs/teacher holds a finished run with another config (train.lr: 1 -> 2); keep the values",
     "ConfigError: runs/teacher holds a finished run"),
    ("OSError", "[Errno 28] No space left on device: '/x/last.pth'", "MiB free"),
])
def test_a_notebook_failure_is_one_line_with_the_traceback_in_a_log(synth, tmp_path, monkeypatch, capsys,
                                                                    ename, evalue, needle):
    out = tmp_path / "K"

    def failing(notebook, out_path, params, cwd, log_output=True):
        raise _papermill_error(ename, evalue)

    monkeypatch.setattr(reproduce, "execute", failing)
    rc = reproduce.cli(["--preset", "tiny", "--out", str(out), "--data-root", str(synth), "--shares", ""])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "01_data.ipynb" in err and needle in err and "cell 5" in err and "run the same command again" in err
    log = out / "logs" / "01_data.log"
    assert str(log) in err and "Traceback" in log.read_text() and "\x1b" not in log.read_text()


def test_refused_config_change_advises_what_a_command_accepts(synth, finished, tmp_path):
    run = Path(shutil.copytree(finished, tmp_path / "run"))
    with pytest.raises(ConfigError) as info:
        pipeline.reuse_or_train(teacher_cfg(synth, "train.lr=0.5"), run, force=False)
    assert "force=True" not in str(info.value) and "--out" in str(info.value)


def test_a_killed_notebook_keeps_the_good_executed_copy(tmp_path, monkeypatch):
    import papermill

    good = tmp_path / "01_data.ipynb"
    good.write_text('{"good": true}')

    def killed(source, out_path, **kw):
        Path(out_path).write_text('{"partial": ')
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", killed)
    with pytest.raises(KeyboardInterrupt):
        reproduce.execute("01_data.ipynb", good, {}, tmp_path, log_output=False)
    assert good.read_text() == '{"good": true}'


def test_export_refuses_a_bad_opset_or_tolerance(finished, tmp_path, capsys):
    from cdkd.export import cli

    for argv, needle in ((["--opset", "1"], "--opset is 1"), (["--tolerance", "-1"], "--tolerance is -1")):
        out = tmp_path / "m.onnx"
        rc = cli(["--checkpoint", str(finished / "best.pth"), "--out", str(out), *argv])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1 and not out.exists()


# --- extras: file modes, the recorded command's quoting -------------------------------------------
def test_records_have_the_users_file_mode(finished, synth, tmp_path):
    old = os.umask(0o022)
    try:
        run = fit(teacher_cfg(synth), run_dir=tmp_path / "run")
    finally:
        os.umask(old)
    for name in ("config.yaml", "metrics.json", "environment.json", "skipped.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name


def test_recorded_command_keeps_its_quoting(synth, tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "execute", lambda *a, **k: 0.0)
    argv = ["--preset", "tiny", "--out", str(tmp_path / "K"), "--data-root", str(synth), "--shares", "",
            "--seeds", "0"]
    assert reproduce.cli(argv) == 0
    command = json.loads((tmp_path / "K" / "timing.json").read_text())["command"]
    assert shlex.split(command)[4:] == argv and "--shares '' --seeds 0" in command
    assert stat.S_IMODE((tmp_path / "K" / "timing.json").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_moved_checkout_matches_its_records(tmp_path, monkeypatch):
    from cdkd.engine.run import config_changes, portable_config

    def cfg(root: Path):
        return load_config("tiny_student", [f"data.root={root}/data/tiny/mpii",
                                            f"teacher.checkpoint={root}/results/K/runs/teacher/best.pth"])

    old, new = tmp_path / "old", tmp_path / "new"
    monkeypatch.setenv("CDKD_ROOT", str(old))
    record = portable_config(cfg(old), old / "results/K/runs/r32_s0_cdkd-paper")
    assert record["data"]["root"] == "data/tiny/mpii" and record["teacher"]["checkpoint"] == "../teacher/best.pth"
    monkeypatch.setenv("CDKD_ROOT", str(new))
    assert config_changes(record, cfg(new), run_dir=new / "results/K/runs/r32_s0_cdkd-paper") == {}
    assert config_changes(record, cfg(old), run_dir=new / "results/K/runs/r32_s0_cdkd-paper")  # really compared


# --- a committed study is explored without training (notebook 05's ``study``) ------------------------
def test_study_models_finds_the_committed_runs_and_refuses_what_cannot_be_explored(finished, tmp_path):
    study = tmp_path / "S"
    shutil.copytree(finished, study / "runs" / "teacher")
    student = Path(shutil.copytree(finished, study / "runs" / "r32_s0_cdkd-paper"))
    assert pipeline.study_models(study, 32, 0, "cdkd-paper") == (study / "runs" / "teacher", student)
    with pytest.raises(ConfigError, match="out_dir.*study being explored"):
        pipeline.study_models(study, 32, 0, "cdkd-paper", out_dir=study / "." )
    (student / "best.pth").unlink()  # as in a clone: only some runs carry their checkpoint
    with pytest.raises(FileNotFoundError, match=r"r32_s0_cdkd-paper: best.pth missing.*with a checkpoint: teacher"):
        pipeline.study_models(study, 32, 0, "cdkd-paper")
    with pytest.raises(FileNotFoundError, match="r64_s0_baseline: metrics.json"):
        pipeline.study_models(study, 64, 0, "baseline")


def test_a_run_config_loads_with_its_recorded_paths_from_any_directory(synth, finished, tmp_path, monkeypatch):
    """A JupyterLab kernel runs in notebooks/: a recorded relative data root must not be read from there."""
    import yaml

    from cdkd.engine.run import load_run_config

    run = Path(shutil.copytree(finished, tmp_path / "S" / "runs" / "r"))
    values = yaml.safe_load((run / "config.yaml").read_text())
    values["data"]["root"] = os.path.relpath(synth / "mpii", run)  # ../../../synth..: relative to the run
    assert values["data"]["root"].startswith("..")
    (run / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    recorded = (run / "config.yaml").read_text()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert not Path(values["data"]["root"]).exists()  # read from here, the recorded path misses
    assert Path(load_run_config(run).data.root) == (synth / "mpii").resolve()
    assert (run / "config.yaml").read_text() == recorded
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad/config.yaml.*not a mapping"):
        load_run_config(tmp_path / "bad")
