"""Shared pieces of the cdkd benchmarks: arguments, timing, and the result files.

Every benchmark script writes ``results/bench/<name>.json``::

    {"benchmark": name, "title": ..., "description": ..., "command": ..., "quick": bool,
     "device": "cpu" | "cuda", "created": ISO time, "seconds": wall time of the script,
     "environment": cdkd.engine.run.environment_info(), "settings": {...},
     "summary": {label: value}, "tables": [{"title", "columns", "rows"}], "notes": [...]}

and ``benchmarks/report.py`` renders all of them into ``results/bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "bench"


def parse_args(description: str, argv: list[str] | None, extra: Callable | None = None) -> argparse.Namespace:
    """The options every benchmark takes: ``--quick``, ``--device``, ``--out``, ``--threads``.

    Args:
        description: the script's one-line purpose.
        argv: arguments (None: ``sys.argv[1:]``).
        extra: optional ``f(parser)`` adding script-specific options.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer iterations and cases (CPU-friendly)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the models run")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder of the result files")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but torch.cuda.is_available() is False")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return args


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that wall-clock times cover it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device | str) -> float:
    """Seconds one call of ``fn`` takes, GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(fns: dict[str, Callable[[], object]], device: torch.device | str, warmup: int, iters: int) -> dict:
    """Time several functions in interleaved rounds; medians resist other load on the machine.

    Each round calls every function once, in order, so that slow phases of a shared machine hit
    all of them alike.

    Args:
        fns: name -> function of no arguments.
        device: where the work runs (for synchronisation).
        warmup: untimed rounds first.
        iters: timed rounds.
    Returns:
        name -> ``{'median_s', 'min_s', 'max_s', 'iters'}``.
    """
    for _ in range(warmup):
        for fn in fns.values():
            timed(fn, device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            samples[name].append(timed(fn, device))
    return {
        name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s), "iters": len(s)}
        for name, s in samples.items()
    }


def command_line(script: str, args: argparse.Namespace) -> str:
    """The command that reproduces a result file."""
    parts = [f"python benchmarks/{script}"]
    if args.quick:
        parts.append("--quick")
    if args.device != "cpu":
        parts.append(f"--device {args.device}")
    if args.threads > 0:
        parts.append(f"--threads {args.threads}")
    if getattr(args, "load", 0):
        parts.append(f"--load {args.load}")
    return " ".join(parts)


def write_result(args: argparse.Namespace, name: str, script: str, started: float, **payload) -> Path:
    """Write ``<out>/<name>.json`` with the machine description and the payload.

    Args:
        args: the parsed options (quick, device, out).
        name: file stem, e.g. ``'train_step'``.
        script: the script's file name, for the reproducing command.
        started: ``time.perf_counter()`` at the start of the script.
        **payload: title, description, settings, summary, tables, notes.
    Returns:
        The path written.
    """
    from cdkd.engine.run import environment_info

    record = {
        "benchmark": name,
        "command": command_line(script, args),
        "quick": bool(args.quick),
        "device": args.device,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "environment": environment_info(),
        **payload,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, default=_plain) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path


def _plain(value):
    """JSON fallback for numpy numbers and paths."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def round_to(value: float, digits: int = 3) -> float:
    """``value`` with ``digits`` significant digits (tables stay readable, JSON stays numeric)."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")
