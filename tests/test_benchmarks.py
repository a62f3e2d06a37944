"""Smoke tests of the benchmark scripts: each runs in its cheapest mode and writes its result file,
so that an engine change that breaks a script fails here (train_step.py once broke silently when
``compute_losses`` changed its arguments). No speed is asserted: the numbers are the scripts' job."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_train_step_tiny_compares_the_pipelines(tmp_path):
    run_script("train_step.py", "--tiny", "--threads", "1", "--out", str(tmp_path / "out"),
               "--data", str(tmp_path / "data"))
    result = json.loads((tmp_path / "out" / "train_step.json").read_text())
    assert result["benchmark"] == "train_step" and result["quick"] is True
    size = result["summary"]["whole_steps"]["32"]
    rates = {(m, p): size[f"samples_per_s_{m}_{p}"] for m in ("baseline", "distill") for p in ("old", "new", "all")}
    rates["distill", "cold"] = size["samples_per_s_distill_cold"]
    rates["distill", "all-cold"] = size["samples_per_s_distill_all_cold"]
    assert all(v > 0 for v in rates.values()), rates
    # the ratios are the rates' ratios (3 significant digits)
    assert size["speedup_distill"] == pytest.approx(rates["distill", "new"] / rates["distill", "old"], rel=0.01)
    assert size["speedup_baseline"] == pytest.approx(rates["baseline", "new"] / rates["baseline", "old"], rel=0.01)
    assert size["distill_over_baseline"] == pytest.approx(rates["baseline", "new"] / rates["distill", "new"], rel=0.01)
    assert size["speedup_distill_cold"] == pytest.approx(rates["distill", "cold"] / rates["distill", "old"], rel=0.01)
    assert size["speedup_distill_all"] == pytest.approx(rates["distill", "all"] / rates["distill", "old"], rel=0.01)
    assert size["distill_over_baseline_all"] == pytest.approx(rates["baseline", "all"] / rates["distill", "all"],
                                                              rel=0.01)
    assert size["speedup_distill_all_cold"] == pytest.approx(rates["distill", "all-cold"] / rates["distill", "old"],
                                                             rel=0.01)
    steal = result["summary"]["steal_share"]
    assert steal is None or 0.0 <= steal <= 1.0
    whole = result["settings"]["whole_steps"]
    assert whole["pipelines"]["new"][:3] == ["data.cache=decoded", "train.threads=auto", "teacher.cache=disk"]
    assert whole["pipelines"]["cold"][:3] == whole["pipelines"]["new"][:3]
    assert whole["pipelines"]["old"][0] == "data.cache=none" and "teacher.cache=none" in whole["pipelines"]["old"]
    assert "teacher.forward_in=trainer" in whole["pipelines"]["old"]
    assert whole["thread_policy"]["new"]["setting"] == "auto" and whole["thread_policy"]["new"]["fits"]
    assert whole["pipelines"]["all"][:3] == ["data.cache=decoded", "train.threads=all", "teacher.cache=disk"]
    assert whole["thread_policy"]["all"]["loader_workers"] == 0 and whole["thread_policy"]["all"]["fits"]
    assert set(whole["cache_fill_seconds"]) == {"distill 32 new", "distill 32 all"}
    assert set(result["summary"]["targets_met"]) == {f"{k}{suffix} at 32" for suffix in ("", "_all") for k in
                                                     ("speedup_distill", "speedup_baseline", "distill_over_baseline")}
    assert [r[:2] for r in result["tables"][0]["rows"]] == [
        [32, "baseline"], [32, "baseline, threads=all"], [32, "distill"], [32, "distill, threads=all"],
        [32, "distill, cache cold"], [32, "distill, cache cold, threads=all"]]
    assert result["tables"][1]["rows"][0][0] == "demo 32 <- 128"  # part 2: model steps on random inputs
    assert result["settings"]["cases"][0]["threads"] == 1  # --threads 1
    cores = len(os.sched_getaffinity(0))
    floor = f"teacher-free distill / student step demo 32 <- 128 at {cores} threads"
    assert (floor in result["summary"]) == (cores > 1)  # the same steps on every core (train.threads=all)
    assert (tmp_path / "data" / "synth-24" / "mpii" / ".cache").is_dir()  # the new pipeline's decoded images


def test_train_step_under_load_writes_its_own_record(tmp_path):
    run_script("train_step.py", "--tiny", "--threads", "1", "--load", "1", "--out", str(tmp_path / "out"),
               "--data", str(tmp_path / "data"))
    assert not (tmp_path / "out" / "train_step.json").exists()
    result = json.loads((tmp_path / "out" / "train_step_loaded.json").read_text())
    assert result["command"].endswith("--load 1") and "busy-loop" in result["notes"][0]
    assert result["summary"]["whole_steps"]["32"]["samples_per_s_distill_new"] > 0


def test_data_pipeline_quick_and_the_report(tmp_path):
    out = tmp_path / "out"
    run_script("data_pipeline.py", "--quick", "--out", str(out))
    result = json.loads((out / "data_pipeline.json").read_text())
    names = [row[0] for row in result["tables"][0]["rows"]]
    assert "demo: student 64 + teacher 128, decoded cache" in names
    assert all(row[3] > 0 for row in result["tables"][0]["rows"])
    run_script("report.py", "--out", str(out))
    assert "Data pipeline" in (out / "README.md").read_text()


def test_report_renders_every_record_file(tmp_path):
    """Two records of one benchmark (train_step.json and train_step_loaded.json) are both shown, the
    benchmark's own file first."""
    from benchmarks.report import render

    for stem, title in (("train_step", "quiet"), ("train_step_loaded", "loaded")):
        record = {"benchmark": "train_step", "title": f"Training step, {title} machine", "summary": {"x": 1.0}}
        (tmp_path / f"{stem}.json").write_text(json.dumps(record))
    page = render(tmp_path)
    assert page.index("Training step, quiet machine") < page.index("Training step, loaded machine")


def test_train_step_slices_measure_the_share_diagnostics_at_a_demo_runs_rate(tmp_path):
    """The whole-step slices log (and so measure the Eq. 8 shares, two extra backward passes in a
    distill step) as often per step as a demo run does; before, 25-step slices logged 3 times."""
    import importlib.util

    from cdkd.config import load_config

    spec = importlib.util.spec_from_file_location("train_step", REPO / "benchmarks" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def logged(steps: int, log_every: int) -> int:  # the engine's rule (cdkd/engine/train.py, log_now)
        return sum(i % log_every == 0 or i == steps - 1 for i in range(steps))

    demo = load_config("demo_student")
    demo_rate = logged(4000 // demo.train.batch_size, demo.train.log_every) / (4000 // demo.train.batch_size)
    steps = bench.SLICE_STEPS  # what whole_steps slices by
    cfg = bench.whole_step_config(32, "distill", [], tmp_path, steps, None)
    assert cfg.train.max_steps_per_epoch == steps
    assert logged(steps, cfg.train.log_every) / steps == pytest.approx(demo_rate, rel=0.02)
