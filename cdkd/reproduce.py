"""``python -m cdkd reproduce``: the whole reproduction, by executing the numbered notebooks.

Data (01), the teacher (02), four arms paired by seed at each resolution (03): the SimCC baseline,
CDKD in the paper's form, CDKD as released (``fidelity: official``) and the control (the paper's
form under an untrained teacher), then the tables with paired confidence intervals (04) and the
figures (05), executed headlessly with papermill; the executed copies land in the output folder
beside ``summary.md`` and ``figures/``. Finished runs are reused, so an interrupted reproduction
continues where it stopped, and ``--seeds`` adds seeds to an existing study.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

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
    start = time.perf_counter()
    papermill.execute_notebook(str(NOTEBOOK_DIR / notebook), str(out_path), parameters=params,
                               cwd=str(cwd), progress_bar=False, log_output=log_output, kernel_name="python3")
    seconds = time.perf_counter() - start
    data = json.loads(Path(out_path).read_text())
    Path(out_path).write_text(json.dumps(_scrub(data, str(root)), indent=1, ensure_ascii=False) + "\n")
    return seconds


ABLATION_LIST = "projector-ensemble,sape,necm,cca-etht,conv-feature,fc-feature,fc-logit,centred-merge"


def plan(args: argparse.Namespace) -> list[tuple[str, str, dict]]:
    """(notebook, executed copy name, parameters) in order."""
    common = {"preset": args.preset, "data_root": args.data_root, "out_dir": args.out, "device": args.device,
              "epochs": args.epochs, "n_train": args.n_train, "n_val": args.n_val,
              "progress": "lines"}  # train.progress: lines that --log-output streams
    steps = [
        ("01_data.ipynb", "01_data.ipynb", {**common, "res": args.res[-1]}),
        ("02_teacher.ipynb", "02_teacher.ipynb", common),
    ]
    for res in args.res:
        for seed in args.seeds:
            steps.append(("03_distill.ipynb", f"03_distill_r{res}_s{seed}.ipynb",
                          {**common, "res": res, "seed": seed, "variants": args.variants}))
    if args.shares or args.ablations:  # the weight sweep (its share 0 is the seed's baseline, reused) and ablations
        steps.append(("06_ablations.ipynb", "06_ablations.ipynb",
                      {**common, "res": args.sweep_res, "seed": args.seeds[0], "shares": args.shares,
                       "ablations": ABLATION_LIST if args.ablations else ""}))
    steps.append(("04_evaluate.ipynb", "04_evaluate.ipynb",
                  {"out_dir": args.out, "dataset": "mpii", "title": args.title, "note": args.note}))
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
        calls = []
        if path.exists():
            try:
                calls = list(json.loads(path.read_text()).get("calls", []))
            except (json.JSONDecodeError, AttributeError) as e:
                raise SystemExit(f"{path}: unreadable timing record ({e}); move it away to start a new one") from e
        self.machine = machine
        self.call = {"command": command, "commit": machine["git"], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "finished": False, "seconds": 0.0, "steps": []}
        self.calls = [*calls, self.call]
        self.write()

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


def cli(argv: list[str], command: str = "reproduce") -> int:
    p = argparse.ArgumentParser(prog="python -m cdkd reproduce", description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--preset", default="demo", help="preset family: demo (synthetic, CPU) or tiny (smoke test)")
    p.add_argument("--out", default=None, help="output folder (default results/<preset>)")
    p.add_argument("--data-root", default="", help="data root (default: the synthetic set of the size, "
                                                   "data/synth-n{train}-{val}-s0, one folder per size)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(6)),
                   help="student seeds; every arm trains each seed (paired) (default: 0-5)")
    p.add_argument("--res", type=int, nargs="+", default=[32, 64], help="student resolutions (default: 32 64)")
    p.add_argument("--variants", default="baseline,cdkd-paper,cdkd-official,cdkd-random-teacher",
                   help="arms, comma-separated (default: baseline,cdkd-paper,cdkd-official,cdkd-random-teacher)")
    p.add_argument("--epochs", type=int, default=0, help="training epochs of every run; 0: the presets' (default: 0)")
    p.add_argument("--n-train", type=int, default=0,
                   help="synthetic training persons; 0: the preset's (demo 1000, so that 4 arms x 2 resolutions x 6 "
                        "seeds fit 45 minutes on a 2-core CPU; tiny 30), as in the notebooks (default: 0)")
    p.add_argument("--n-val", type=int, default=0, help="synthetic validation persons; 0: the preset's (demo 1000, "
                                                        "tiny 20) (default: 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--shares", default="0,0.15,0.3,0.45",
                   help="notebook 06's distillation-weight sweep: shares of the update per distillation term, "
                        "comma-separated; '' skips it (default: 0,0.15,0.3,0.45)")
    p.add_argument("--sweep-res", type=int, default=32, help="resolution of the sweep and the ablations (default: 32)")
    p.add_argument("--ablations", action="store_true",
                   help="also run notebook 06's ablations (Tables III, V, VI; about 1-2 minutes each on 2 cores)")
    args = p.parse_args(argv)
    args.out = args.out or f"results/{args.preset}"
    cwd = Path.cwd()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.title = f"cdkd reproduction, preset '{args.preset}' (synthetic people)"
    args.note = (f"Made by `python -m cdkd reproduce --preset {args.preset}` "
                 f"(seeds {args.seeds}, resolutions {args.res}) on {platform.machine()}, {os.cpu_count()} CPU cores.")
    steps = plan(args)
    from cdkd.engine.run import environment_info

    timing = Timing(out / "timing.json", f"python -m cdkd reproduce {' '.join(argv)}".strip(), environment_info())
    start = time.perf_counter()
    for i, (notebook, name, params) in enumerate(steps, start=1):
        elapsed = time.perf_counter() - start
        print(f"[{i}/{len(steps)}] {name} (after {elapsed / 60:.1f} min) {json.dumps(params)}", flush=True)
        seconds = execute(notebook, out / name, params, cwd)
        timing.add(name, seconds)
        print(f"[{i}/{len(steps)}] {name} done in {seconds / 60:.1f} min; {len(steps) - i} notebooks left", flush=True)
    total = time.perf_counter() - start
    timing.finish(total)
    with open(out / "summary.md", "a") as f:
        f.write(timing.summary_text())
    print(f"done in {total / 60:.1f} min: {out / 'summary.md'}")
    return 0
