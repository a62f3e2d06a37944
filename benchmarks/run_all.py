"""Run every cdkd benchmark, each in its own process, then write ``results/bench/README.md``.

    python benchmarks/run_all.py [--quick] [--device cpu|cuda] [--only train_step,eval_speed]

A benchmark that fails is reported and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("train_step", "data_pipeline", "inference", "projector_memory", "eval_speed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and cases (CPU-friendly)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", default=str(HERE.parent / "results" / "bench"), help="folder of the results")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    args = parser.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    common = ["--device", args.device, "--out", args.out] + (["--quick"] if args.quick else [])
    if args.threads > 0:
        common += ["--threads", str(args.threads)]
    failed = []
    for name in chosen:
        start = time.perf_counter()
        print(f"== {name}", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *common], check=False)
        print(f"== {name}: {'ok' if done.returncode == 0 else 'FAILED'} in {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
        if done.returncode != 0:
            failed.append(name)
    subprocess.run([sys.executable, str(HERE / "report.py"), "--out", args.out], check=False)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
