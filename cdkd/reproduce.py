"""``python -m cdkd reproduce``: the whole reproduction, by executing the numbered notebooks.

Data (01), the teacher (02), arms paired by seed at each resolution (03): by default the SimCC
baseline, CDKD in the paper's form and two controls with the paper arm's alpha and beta (the paper's
form under an untrained teacher, and under a shuffled teacher); CDKD as released
(``cdkd-official``), the components (``sape``, ``cca-etht``) and a fixed lower temperature
(``cdkd-paper-tau4``) by ``--variants``; a training-length curve by ``--curve-epochs``; then the
tables with paired confidence intervals and the answer (04) and the figures (05), executed
headlessly with papermill; the executed copies land in the output folder beside ``summary.md`` and
``figures/``. Finished runs are reused, so an interrupted reproduction continues where it stopped,
and ``--seeds`` / ``--res`` / ``--variants`` add runs to an existing study. The study of an output
folder is what its calls asked for: the summary counts the runs requested by any call recorded in
``timing.json`` (this one included) and lists the others it finds there (stray runs) as not counted.
A call of another preset on the same folder is refused.

Before anything runs, every notebook's parameters are checked (:func:`cdkd.pipeline.check_parameters`)
and the output folder is held (one writer at a time; the notebooks' kernels inherit the hold). A
failure inside a notebook ends in one line naming the notebook and the cell's error, with the full
traceback in ``logs/<notebook>.log`` under the output folder; a notebook is executed into a
temporary file that replaces the previous executed copy only when it has run to the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

from cdkd.config import ConfigError

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


PATH_PARAMETERS = ("data_root", "out_dir")


def _log_to_terminal() -> None:
    """Show papermill's log (cell starts, the kernel's printed lines) on stderr, once."""
    import logging
    import sys

    logger = logging.getLogger("papermill")
    if not any(getattr(h, "_cdkd", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("    %(message)s"))
        handler._cdkd = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _scrub(node, root: str):
    """``node`` (a notebook's JSON) with the absolute repository root removed from every string."""
    if isinstance(node, dict):
        return {k: _scrub(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_scrub(v, root) for v in node]
    if isinstance(node, str):
        return node.replace(root + "/", "").replace(root, ".")
    return node


def execute(notebook: str, out_path: Path, parameters: dict, cwd: Path, log_output: bool = True) -> float:
    """Run one notebook with papermill; returns the seconds it took.

    Path parameters (``data_root``, ``out_dir``) are taken relative to ``cwd`` (the CLI's folder) and
    passed relative to the repository root when they lie inside it (the notebooks resolve them
    against the root), so the executed copy carries no absolute path of this machine; any that
    papermill itself records (input/output paths) are made root-relative after the run. With
    ``log_output`` the kernel's output (training progress lines, epoch summaries) is streamed to
    the terminal as it comes (papermill's ``--log-output``).
    """
    import papermill

    from cdkd.notebook import repo_root

    root = repo_root()
    params = dict(parameters)
    for key in PATH_PARAMETERS:
        if params.get(key):
            path = Path(params[key])
            path = (path if path.is_absolute() else cwd / path).resolve()
            params[key] = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    if log_output:
        _log_to_terminal()
    out_path = Path(out_path)
    partial = partial_path(out_path)  # the previous executed copy stays until this one has run to the end
    start = time.perf_counter()
    papermill.execute_notebook(str(NOTEBOOK_DIR / notebook), str(partial), parameters=params,
                               cwd=str(cwd), progress_bar=False, log_output=log_output, kernel_name="python3")
    seconds = time.perf_counter() - start
    data = json.loads(partial.read_text())
    partial.write_text(json.dumps(_scrub(data, str(root)), indent=1, ensure_ascii=False) + "\n")
    os.chmod(partial, 0o666 & ~_umask())
    os.replace(partial, out_path)
    return seconds


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def partial_path(out_path: Path) -> Path:
    """Where a notebook is executed before it replaces ``out_path`` (a hidden sibling)."""
    return out_path.with_name(f".{out_path.stem}.partial.ipynb")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failure_line(name: str, err: BaseException, out: Path) -> str:
    """One line for a notebook that failed (the notebook, the cell's error, what to do); the full
    traceback goes to ``out/logs/<notebook>.log``, the partly executed copy beside it."""
    logs = out / "logs"
    log = logs / f"{Path(name).stem}.log"
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    text = "\n".join(getattr(err, "traceback", None) or []) or str(err)
    where = f" in cell {err.cell_index}" if getattr(err, "cell_index", None) is not None else ""
    reason = f"{ename}: {evalue}" if ename else (str(err).strip().splitlines() or [type(err).__name__])[-1]
    reason = " ".join(_ANSI.sub("", reason).split())
    if "Errno 28" in reason or "No space left" in reason:
        free = shutil.disk_usage(out).free if out.exists() else None
        reason += f" (disk of {out.resolve()}: {free / 2**20:.0f} MiB free)" if free is not None else ""
    try:
        logs.mkdir(parents=True, exist_ok=True)
        log.write_text(_ANSI.sub("", text) + "\n")
        partial = partial_path(out / name)
        if partial.exists():
            os.replace(partial, logs / f"{Path(name).stem}.failed.ipynb")
        kept = f"full traceback in {log}"
    except OSError as e:
        kept = f"(the traceback could not be written to {log}: {e.strerror})"
    return (f"cdkd reproduce: notebook {name} failed{where}: {reason}; {kept}; fix the cause and run the same "
            "command again (finished runs are reused)")


ABLATION_LIST = "projector-ensemble,sape,necm,cca-etht,conv-feature,fc-feature,fc-logit,centred-merge"


def requested_runs(args: argparse.Namespace) -> list[str]:
    """The run folders (under ``out/runs``) this call asks for: the only ones its summary counts."""
    from cdkd.pipeline import parse_shares, share_variant

    names = ["teacher"]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    names += [f"r{res}_s{seed}_{v}" for res in args.res for seed in args.seeds for v in variants]
    names += [f"r{args.sweep_res}_s{args.seeds[0]}_{share_variant(s)}" for s in parse_shares(args.shares)]
    if args.ablations:
        names += [f"r{args.sweep_res}_s{args.seeds[0]}_{a}" for a in ABLATION_LIST.split(",")]
    return list(dict.fromkeys(names))


def check_arguments(args: argparse.Namespace) -> None:
    """Every notebook's parameters, checked before anything runs (ConfigError naming the value)."""
    from cdkd.pipeline import check_parameters

    if not args.seeds or not args.res:
        raise ConfigError("--seeds and --res need at least one value each")
    for res in args.res:
        for seed in args.seeds:
            check_parameters(args.preset, args.out, seed=seed, res=res, variants=args.variants, device=args.device,
                             epochs=args.epochs, hold=False)
    if args.shares or args.ablations:
        check_parameters(args.preset, args.out, seed=args.seeds[0], res=args.sweep_res, shares=args.shares,
                         ablations=ABLATION_LIST if args.ablations else "", device=args.device, hold=False)
    for name, value in (("--n-train", args.n_train), ("--n-val", args.n_val), ("--curve-seeds", args.curve_seeds)):
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")


def plan(args: argparse.Namespace, study: list[str] | None = None) -> list[tuple[str, str, dict]]:
    """(notebook, executed copy name, parameters) in order; ``study``: the run folders notebook 04
    counts (:func:`study_runs`; default: the ones this call asks for)."""
    common = {"preset": args.preset, "data_root": args.data_root, "out_dir": args.out, "device": args.device,
              "epochs": args.epochs, "n_train": args.n_train, "n_val": args.n_val,
              "progress": "lines"}  # train.progress: lines that --log-output streams
    steps = [
        ("01_data.ipynb", "01_data.ipynb", {**common, "res": args.res[-1]}),
        ("02_teacher.ipynb", "02_teacher.ipynb", common),
    ]
    for res in args.res:
        for seed in args.seeds:  # the curve (baseline and paper arm at each length) with the first seeds
            curve = [int(e) for e in args.curve_epochs] if seed in args.seeds[:args.curve_seeds] else []
            steps.append(("03_distill.ipynb", f"03_distill_r{res}_s{seed}.ipynb",
                          {**common, "res": res, "seed": seed, "variants": args.variants, "curve_epochs": curve}))
    if args.shares or args.ablations:  # the weight sweep (its share 0 is the seed's baseline, reused) and ablations
        steps.append(("06_ablations.ipynb", "06_ablations.ipynb",
                      {**common, "res": args.sweep_res, "seed": args.seeds[0], "shares": args.shares,
                       "ablations": ABLATION_LIST if args.ablations else ""}))
    steps.append(("04_evaluate.ipynb", "04_evaluate.ipynb",
                  {"out_dir": args.out, "dataset": "mpii", "title": args.title, "note": args.note,
                   "only_runs": ",".join(study or requested_runs(args))}))
    for res in args.res:
        steps.append(("05_visualize.ipynb", f"05_visualize_r{res}.ipynb",
                      {**common, "res": res, "seed": args.seeds[0]}))
    return steps


def _commit(git: dict | None) -> str:
    git = git or {}
    if not git.get("commit"):
        return "an unknown commit"
    return git["commit"][:7] + (" with uncommitted changes" if git.get("dirty") else "")


class Timing:
    """``timing.json``: every call of ``reproduce`` on one output folder, written after each notebook.

    A resumed or extended study (finished runs are reused) is made by several calls; the file keeps
    each call's command, commit, notebook times and whether it finished, so that the time a study
    took is the sum over its calls, not the last call's (which may only have re-read finished runs).
    A call that was interrupted keeps the notebooks it finished, marked ``finished: false``.
    """

    def __init__(self, path: Path, command: str, machine: dict):
        self.path = path
        calls = self.read(path)
        self.machine = machine
        self.call = {"command": command, "commit": machine["git"], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "finished": False, "seconds": 0.0, "steps": []}
        self.calls = [*calls, self.call]
        self.write()

    @staticmethod
    def read(path: Path) -> list[dict]:
        """The calls recorded in ``path`` (none when it does not exist)."""
        if not path.exists():
            return []
        try:
            return list(json.loads(path.read_text()).get("calls", []))
        except (json.JSONDecodeError, AttributeError) as e:
            raise SystemExit(f"{path}: unreadable timing record ({e}); move it away to start a new one") from e

    def add(self, notebook: str, seconds: float) -> None:
        self.call["steps"].append({"notebook": notebook, "seconds": round(seconds, 1)})
        self.call["seconds"] = round(sum(s["seconds"] for s in self.call["steps"]), 1)
        self.write()

    def finish(self, seconds: float) -> None:
        self.call["seconds"], self.call["finished"] = round(seconds, 1), True
        self.write()

    @property
    def total_seconds(self) -> float:
        return round(sum(c["seconds"] for c in self.calls), 1)

    def write(self) -> None:
        record = {"command": self.call["command"], "total_seconds": self.total_seconds, "calls": self.calls,
                  "steps": self.call["steps"], "machine": self.machine}
        from cdkd.engine.run import atomic_write_text  # torch loads with it: not at ``--help``

        atomic_write_text(self.path, json.dumps(record, indent=2) + "\n")  # rewritten per notebook: never half a file

    def summary_text(self) -> str:
        m = self.machine
        where = (f"{m['cpu_count']} CPU cores ({m['processor']}, torch threads {m['torch_threads']}, "
                 f"GPU: {m['cuda'] or 'none'})")
        if len(self.calls) == 1:
            return (f"\n## Run time\n\n{self.total_seconds / 60:.1f} minutes in one call at {_commit(self.call['commit'])} "
                    f"on {where}; per notebook in `timing.json`.\n")
        lines = [f"\n## Run time\n\n{self.total_seconds / 60:.1f} minutes over {len(self.calls)} calls on this output "
                 f"folder (finished runs are reused between calls), the last on {where}; per notebook in `timing.json`:\n"]
        for i, c in enumerate(self.calls, start=1):
            state = "" if c["finished"] else ", interrupted"
            lines.append(f"{i}. `{c['command']}` at {_commit(c['commit'])}: {c['seconds'] / 60:.1f} min"
                         f" ({len(c['steps'])} notebooks{state})")
        return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    """The command line of ``reproduce`` (also used to read back the calls recorded in ``timing.json``)."""
    p = argparse.ArgumentParser(prog="python -m cdkd reproduce", description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--preset", default="demo", help="preset family: demo (synthetic, CPU) or tiny (smoke test)")
    p.add_argument("--out", default=None, help="output folder (default results/<preset>)")
    p.add_argument("--data-root", default="", help="data root (default: the synthetic set of the size, "
                                                   "data/synth-n{train}-{val}-s0, one folder per size)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="student seeds; every arm trains each seed (paired) (default: 0 1 2, what fits the main "
                        "job's 45 minutes on a 2-core CPU at one resolution; add seeds by further calls that list "
                        "every seed)")
    p.add_argument("--res", type=int, nargs="+", default=[32],
                   help="student resolutions (default: 32; 64 by a further call, e.g. --res 32 64)")
    p.add_argument("--variants", default="baseline,cdkd-paper,cdkd-random-teacher,cdkd-shuffled-teacher",
                   help="arms, comma-separated (default: baseline,cdkd-paper,cdkd-random-teacher,cdkd-shuffled-teacher; "
                        "also cdkd-official, cdkd-paper-tau4, sape, cca-etht and the ablations of cdkd.pipeline)")
    p.add_argument("--epochs", type=int, default=0, help="training epochs of every run; 0: the presets' (default: 0)")
    p.add_argument("--n-train", type=int, default=0,
                   help="synthetic training persons; 0: the preset's (demo 4000, on which the demo teacher reaches "
                        "PCKh >= 60; tiny 30), as in the notebooks (default: 0)")
    p.add_argument("--n-val", type=int, default=0, help="synthetic validation persons; 0: the preset's (demo 1000, "
                                                        "tiny 20) (default: 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--shares", default="",
                   help="notebook 06's distillation-weight sweep: shares of the update per distillation term, "
                        "comma-separated, e.g. 0,0.15,0.3,0.45; '' skips it (default: '')")
    p.add_argument("--curve-epochs", type=int, nargs="*", default=[],
                   help="training lengths of the curve: baseline and CDKD (paper) at each, first seed (see --curve-seeds), "
                        "every resolution, reported as PCKh against epochs in summary.md (e.g. 3 5 8; default: none)")
    p.add_argument("--curve-seeds", type=int, default=1,
                   help="how many of --seeds (the first ones) train the curve; with two or more the summary gives the "
                        "paired gap's 95%% CI at each length (default: 1)")
    p.add_argument("--sweep-res", type=int, default=32, help="resolution of the sweep and the ablations (default: 32)")
    p.add_argument("--ablations", action="store_true",
                   help="also run notebook 06's ablations (Tables III, V, VI; about 1-2 minutes each on 2 cores)")
    return p


def recorded_call(command: str) -> argparse.Namespace:
    """The arguments of a call recorded in ``timing.json`` (its ``command`` as typed)."""
    words = shlex.split(command)
    if words[:4] != ["python", "-m", "cdkd", "reproduce"]:
        raise ValueError(f"not a reproduce command: {command!r}")
    return parser().parse_args(words[4:])


def study_runs(calls: list[dict], args: argparse.Namespace) -> list[str]:
    """The study of an output folder: the runs requested by each recorded call, then by this one
    (``args``), in order, without repeats. A recorded call of another preset is a ConfigError:
    one folder holds one preset's study."""
    names: list[str] = []
    for call in calls:
        try:
            earlier = recorded_call(call["command"])
        except (ValueError, SystemExit, KeyError) as e:  # argparse exits on an unknown option
            raise ConfigError(f"{args.out}/timing.json: a recorded call cannot be read back "
                              f"({call.get('command')!r}); move timing.json away to start a new study") from e
        if earlier.preset != args.preset:
            raise ConfigError(f"{args.out} holds a study of preset '{earlier.preset}' (`{call['command']}` in "
                              f"timing.json); give preset '{args.preset}' its own --out")
        names += requested_runs(earlier)
    return list(dict.fromkeys(names + requested_runs(args)))


def cli(argv: list[str], command: str = "reproduce") -> int:
    args = parser().parse_args(argv)
    from cdkd.engine.cli import run_command

    return run_command(command, lambda: _reproduce(args, argv))


def _reproduce(args: argparse.Namespace, argv: list[str]) -> int:
    """The body of :func:`cli`: check, hold the folder, execute the notebooks in order."""
    from cdkd.engine.run import HELD_ENV, hold_folder, release_folder

    args.out = args.out or f"results/{args.preset}"
    from cdkd.pipeline import synthetic_size

    args.n_train, args.n_val = synthetic_size(args.preset, args.n_train, args.n_val)  # 0: the preset's
    cwd = Path.cwd()
    out = Path(args.out)
    check_arguments(args)  # before any data is generated or model trained
    command = shlex.join(["python", "-m", "cdkd", "reproduce", *argv])  # pastes back as it was typed
    held = hold_folder(out, command)  # one writer; the notebooks' kernels inherit the hold
    before = os.environ.get(HELD_ENV)
    os.environ[HELD_ENV] = os.pathsep.join(filter(None, [before, str(held)]))
    try:
        return _run_notebooks(args, out, cwd, command)
    finally:
        if before is None:
            os.environ.pop(HELD_ENV, None)
        else:
            os.environ[HELD_ENV] = before
        release_folder(held)


def _run_notebooks(args: argparse.Namespace, out: Path, cwd: Path, command: str) -> int:
    """Execute the planned notebooks in order; ``timing.json`` after each, the run time in ``summary.md``."""
    from cdkd.engine.run import environment_info

    timing_path = out / "timing.json"
    earlier = Timing.read(timing_path)
    study = study_runs(earlier, args)  # before timing.json records this call: a refused call leaves no trace
    args.title = f"cdkd reproduction, preset '{args.preset}' (synthetic people)"
    calls = [c["command"] for c in earlier] + [command]
    made_by = "; ".join(f"`{c}`" for c in dict.fromkeys(calls))
    args.note = (f"Made by {len(calls)} call{'s' if len(calls) > 1 else ''} on this folder ({made_by}) on "
                 f"{platform.machine()}, {os.cpu_count()} CPU cores; the summary counts every run they asked for.")
    steps = plan(args, study)
    timing = Timing(timing_path, command, environment_info())
    start = time.perf_counter()
    for i, (notebook, name, params) in enumerate(steps, start=1):
        elapsed = time.perf_counter() - start
        print(f"[{i}/{len(steps)}] {name} (after {elapsed / 60:.1f} min) {json.dumps(params)}", flush=True)
        try:
            seconds = execute(notebook, out / name, params, cwd)
        except Exception as err:  # the notebook's error (papermill, nbclient): one line, the traceback in a log
            print(failure_line(name, err, out), file=sys.stderr)
            return 2
        finally:
            partial_path(out / name).unlink(missing_ok=True)
        timing.add(name, seconds)
        print(f"[{i}/{len(steps)}] {name} done in {seconds / 60:.1f} min; {len(steps) - i} notebooks left", flush=True)
    total = time.perf_counter() - start
    timing.finish(total)
    with open(out / "summary.md", "a") as f:
        f.write(timing.summary_text())
    print(f"done in {total / 60:.1f} min: {out / 'summary.md'}")
    return 0
