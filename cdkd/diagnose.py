"""``python -m cdkd diagnose``: how much each term of Eq. 8 moves the student, printed for a run's
first batches (gradient norms and shares of the Adam update).

The command on top of the engine: the arithmetic is :mod:`cdkd.distill.shares`, the measurement
over a run's batches (and the calibration rule ``distill.calibrate_share``) is
:mod:`cdkd.engine.calibrate`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import warnings

from cdkd.distill.shares import PARTS
from cdkd.engine.calibrate import measure


def cli(argv: list[str], command: str = "diagnose") -> int:
    """``python -m cdkd diagnose --config PRESET [--set KEY=VALUE ...] [--batches N] [--json]``."""
    p = argparse.ArgumentParser(
        prog="python -m cdkd diagnose",
        description="Measure how much each term of Eq. 8 (task, alpha*L_fea, beta*L_logit) moves the student: "
                    "gradient norms on the student's parameters and each term's share of the Adam update.")
    p.add_argument("--config", "-c", required=True, help="preset name or YAML file (e.g. mpii_w32_64_distill)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value (repeatable)")
    p.add_argument("--batches", type=int, default=4, help="training batches to average over (default: 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    from cdkd.engine.cli import run_command

    return run_command(command, lambda: _diagnose(args))


def _diagnose(args: argparse.Namespace) -> int:
    """The body of :func:`cli`: measure and print."""
    from cdkd.config import ConfigError, load_config

    if args.batches <= 0:
        raise ConfigError(f"--batches must be positive, got {args.batches}")
    cfg = load_config(args.config, args.overrides)
    with contextlib.redirect_stdout(sys.stderr):  # progress and calibration messages; stdout is the result
        t = build_for_diagnosis(cfg)
        try:
            result = measure(t, args.batches)
        finally:
            shutil.rmtree(t.run_dir.parent, ignore_errors=True)  # the scratch run folder
    check_measured(result)
    result["config"] = args.config
    result["teacher"] = t.teacher_source
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "shares_per_batch"}, indent=2))
        return 0
    print(f"{args.config}: w={result['loss_weight']:g}, alpha={result['alpha']:g}, beta={result['beta']:g}, "
          f"{result['batches']} batches, teacher: {t.teacher_source}")
    print(f"{'term':<10}{'grad norm':>14}{'ratio to task':>16}{'share of update':>18}")
    for k in PARTS:
        ratio = 1.0 if k == "task" else result["grad_norm_ratio"][k]
        print(f"{k:<10}{result['grad_norm'][k]:>14.4g}{ratio:>16.3g}{result['shares'][k]:>18.3%}")
    return 0


def check_measured(result: dict) -> None:
    """Refuse (one line) a measurement that would print ``nan%`` or non-JSON ``NaN``: a zero or
    non-finite task gradient, or any non-finite norm or share."""
    from cdkd.config import ConfigError

    values = {f"{key} {k}": v for key in ("grad_norm", "shares") for k, v in result[key].items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise ConfigError(f"diagnose: non-finite results ({', '.join(f'{k} = {v}' for k, v in bad.items())}) with "
                          f"loss.weight = {result['loss_weight']!r}, alpha = {result['alpha']!r}, beta = "
                          f"{result['beta']!r}; give finite weights")
    if result["grad_norm"]["task"] <= 0:
        raise ConfigError(f"diagnose: the task term has zero gradient on the student (loss.weight = "
                          f"{result['loss_weight']!r}); shares relative to it are undefined; give loss.weight > 0")


def build_for_diagnosis(cfg):
    """The run's Training without a run folder; a missing teacher checkpoint is replaced by a
    randomly initialised teacher (with a warning), so every preset can be diagnosed."""
    import tempfile
    from pathlib import Path

    from cdkd.engine.train import build_training

    source = "none (baseline)"
    if cfg.train.mode == "distill":
        if cfg.teacher.random:
            source = "random (teacher.random)"
        elif cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).exists():
            source = cfg.teacher.checkpoint
        else:
            warnings.warn(f"teacher checkpoint '{cfg.teacher.checkpoint}' not found: using a RANDOMLY INITIALISED "
                          f"{cfg.teacher.arch} teacher; the gradient norms of the distillation terms are not those "
                          "of a trained teacher", stacklevel=2)
            print(f"warning: teacher checkpoint '{cfg.teacher.checkpoint}' not found; using a randomly initialised "
                  f"teacher", file=sys.stderr)
            cfg.teacher.random = True
            source = "random (no checkpoint)"
    tmp = tempfile.mkdtemp(prefix="cdkd-diagnose-")
    try:
        t = build_training(cfg, Path(tmp) / "run")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed diagnosis leaves no scratch folder
        raise
    t.teacher_source = source
    return t
