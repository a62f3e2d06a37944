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


def execute(notebook: str, out_path: Path, parameters: dict, cwd: Path) -> float:
    """Run one notebook with papermill; returns the seconds it took."""
    import papermill

    start = time.perf_counter()
    papermill.execute_notebook(str(NOTEBOOK_DIR / notebook), str(out_path), parameters=parameters,
                               cwd=str(cwd), progress_bar=False, kernel_name="python3")
    return time.perf_counter() - start


def plan(args: argparse.Namespace) -> list[tuple[str, str, dict]]:
    """(notebook, executed copy name, parameters) in order."""
    common = {"preset": args.preset, "data_root": args.data_root, "out_dir": args.out, "device": args.device,
              "epochs": args.epochs, "n_train": args.n_train, "n_val": args.n_val}
    steps = [
        ("01_data.ipynb", "01_data.ipynb", {**common, "res": args.res[-1]}),
        ("02_teacher.ipynb", "02_teacher.ipynb", common),
    ]
    for res in args.res:
        for seed in args.seeds:
            steps.append(("03_distill.ipynb", f"03_distill_r{res}_s{seed}.ipynb",
                          {**common, "res": res, "seed": seed, "variants": args.variants}))
    if args.ablations:
        steps.append(("06_ablations.ipynb", "06_ablations.ipynb", {**common, "res": args.res[-1]}))
    steps.append(("04_evaluate.ipynb", "04_evaluate.ipynb",
                  {"out_dir": args.out, "dataset": "mpii", "title": args.title, "note": args.note}))
    for res in args.res:
        steps.append(("05_visualize.ipynb", f"05_visualize_r{res}.ipynb",
                      {**common, "res": res, "seed": args.seeds[0]}))
    return steps


def cli(argv: list[str], command: str = "reproduce") -> int:
    p = argparse.ArgumentParser(prog="python -m cdkd reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo", help="preset family: demo (synthetic, CPU) or tiny (smoke test)")
    p.add_argument("--out", default=None, help="output folder (default results/<preset>)")
    p.add_argument("--data-root", default=None, help="synthetic data root (default data/synth, tiny: data/tiny)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="student seeds; every arm trains each seed (paired) (default: 0 1 2 3 4)")
    p.add_argument("--res", type=int, nargs="+", default=[32, 64], help="student resolutions (default: 32 64)")
    p.add_argument("--variants", default="baseline,cdkd-paper,cdkd-official,cdkd-random-teacher",
                   help="arms, comma-separated (default: baseline,cdkd-paper,cdkd-official,cdkd-random-teacher)")
    p.add_argument("--epochs", type=int, default=0, help="0: the presets' epochs")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--ablations", action="store_true", help="also run notebook 06 (Tables III, V, VI)")
    args = p.parse_args(argv)
    args.out = args.out or f"results/{args.preset}"
    args.data_root = args.data_root or ("data/tiny" if args.preset == "tiny" else "data/synth")
    cwd = Path.cwd()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.title = f"cdkd reproduction, preset '{args.preset}' (synthetic people)"
    args.note = (f"Made by `python -m cdkd reproduce --preset {args.preset}` "
                 f"(seeds {args.seeds}, resolutions {args.res}) on {platform.machine()}, {os.cpu_count()} CPU cores.")
    steps = plan(args)
    from tqdm.auto import tqdm

    timings = []
    start = time.perf_counter()
    for notebook, name, params in tqdm(steps, desc="reproduce", unit="notebook"):
        tqdm.write(f"-> {name} {json.dumps(params)}")
        seconds = execute(notebook, out / name, params, cwd)
        timings.append({"notebook": name, "seconds": round(seconds, 1)})
    total = time.perf_counter() - start
    from cdkd.engine.run import environment_info

    record = {"command": f"python -m cdkd reproduce {' '.join(argv)}".strip(), "total_seconds": round(total, 1),
              "steps": timings, "machine": environment_info()}
    (out / "timing.json").write_text(json.dumps(record, indent=2))
    with open(out / "summary.md", "a") as f:
        f.write(f"\n## Run time\n\n{total / 60:.1f} minutes in all on {record['machine']['cpu_count']} CPU cores "
                f"({record['machine']['processor']}, torch threads {record['machine']['torch_threads']}, "
                f"GPU: {record['machine']['cuda'] or 'none'}); per notebook in `timing.json`.\n")
    print(f"done in {total / 60:.1f} min: {out / 'summary.md'}")
    return 0
